"""The pieces of confined grading that run without a kernel: the wire format and name analysis."""

from __future__ import annotations

import json
import math

import pytest
import torch

from autograder import confine, wire
from labkit import memory


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        3,
        2**70,
        -0.5,
        math.inf,
        "é",
        b"\x00\xff",
        [1, (2, 3)],
        {(1, 2): [3], "k": {4}},
        frozenset({1}),
        torch.arange(6, dtype=torch.int64).reshape(2, 3),
        torch.randn(3, dtype=torch.bfloat16),
        memory.get_preset("llama-2-13b"),
    ],  # fmt: skip
)
def test_wire_round_trip(value):
    back = wire.decode(json.loads(json.dumps(wire.encode(value))))
    if isinstance(value, torch.Tensor):
        assert back.dtype == value.dtype and torch.equal(back, value)
    else:
        assert back == value and type(back) is type(value)


def test_wire_refuses_what_it_cannot_send_and_never_imports_outside_labkit():
    with pytest.raises(wire.Unsendable):
        wire.encode(lambda x: x)
    handles = {}
    assert wire.encode(object(), handles)["$h"] == 1 and len(handles) == 1
    fake = {"$dc": "Popen", "type": "subprocess.Popen", "fields": {"args": "x"}}
    assert type(wire.decode(fake)).__module__ == "types"  # a plain made-up dataclass, not subprocess's
    with pytest.raises(ValueError):
        wire.decode({"$A": "O", "shape": [1], "data": ""})  # object arrays would unpickle


def test_free_names_are_what_the_cell_reads_from_outside():
    src = "def helper(x):\n    return x + y\nimport os\nz = merge(helper(1), pair)\nprint(z, len(os.sep))\n"
    assert sorted(confine.free_names(src)) == ["merge", "pair", "y"]
