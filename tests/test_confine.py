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


def test_set_up_cell_with_line_magics_runs_in_the_grading_process():
    trusted = confine.Trusted()
    trusted.setup_run("%matplotlib inline\nimport math\n!ls\nradius = math.sqrt(4)\n", remote=None)
    assert trusted.ok and trusted.ns["radius"] == 2.0  # else every test cell would go back to the kernel


def _across(value, sender: wire.Storages, receiver: wire.Storages):
    return wire.decode(json.loads(json.dumps(wire.encode(value, storages=sender))), storages=receiver)


def test_tensors_cross_with_their_storage_and_come_back_into_it():
    grader, kernel = wire.Storages(), wire.Storages(rebuild=True)
    x = torch.randn(10, 4)
    views = [x, x[2:5], x.t(), x[0]]
    got = _across(views, grader, kernel)
    for a, b in zip(views, got):
        assert torch.equal(a, b) and a.stride() == b.stride() and a.storage_offset() == b.storage_offset()
    assert len({t.untyped_storage().data_ptr() for t in got}) == 1  # one storage, as in the grader
    assert got[3].untyped_storage().nbytes() == 160
    got[1][0, 0] = 99.0  # changed in place by the student's code, then sent back
    back = _across(got[1], kernel, grader)
    assert x[2, 0] == 99.0 and back.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    buffer = torch.zeros(8)  # a kernel-side buffer seen twice in one session: one storage here too
    first, second = _across(buffer[:2], kernel, grader), _across(buffer[:4], kernel, grader)
    assert first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr()


def test_labkit_objects_cross_by_state_and_keep_their_identity():
    from labkit.exercises.ch4 import ReferenceAllocator

    grader, kernel = wire.Storages(), wire.Storages(rebuild=True)
    allocator = ReferenceAllocator(5)
    there = _across([allocator, allocator], grader, kernel)
    assert there[0] is there[1] and there[0].num_free_blocks == 5
    there[0]._allocator.allocate()  # the student's code takes a block ...
    assert _across(there[0], kernel, grader) is allocator and allocator.num_free_blocks == 4  # ... here too
    forged = {"$o": "labkit.exercises.ch4.ReferenceAllocator", "key": "o1", "peer": True, "state": {"$d": []}}
    with pytest.raises(ValueError):  # the kernel names an object the grader never sent
        wire.decode(forged, storages=grader)


def test_objects_of_rebuildable_functions_are_rebuilt_by_the_kernel_only():
    from labkit import measure

    model, optimizer = measure.toy_training_step(3)
    data = json.loads(json.dumps(wire.encode((model, optimizer))))
    model2, optimizer2 = wire.decode(data, storages=wire.Storages(rebuild=True))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    assert optimizer2.param_groups[0]["params"][0] is next(model2.parameters())  # one call, two items
    with pytest.raises(ValueError):  # the grading process never runs what the kernel names
        wire.decode(data)
    for label in ("labkit.measure.random_mlp", "os.system", "labkit.assets.fetch"):  # not @rebuildable
        forged = {"$r": label, "args": {"$l": [1]}, "kwargs": {"$d": []}, "item": None, "call": 1}
        with pytest.raises(ValueError):
            wire.decode(forged, storages=wire.Storages(rebuild=True))


def test_queues_enums_generators_and_ordered_dicts_cross():
    import collections

    from labkit.scheduler import RequestStatus

    gen = torch.Generator().manual_seed(5)
    value = [collections.deque([1, 2], 4), RequestStatus.RUNNING, collections.OrderedDict(b=1, a=2), gen]
    queue, status, ordered, gen2 = wire.decode(json.loads(json.dumps(wire.encode(value))))
    assert queue == value[0] and queue.maxlen == 4 and status is RequestStatus.RUNNING
    assert type(ordered) is collections.OrderedDict and list(ordered) == ["b", "a"]
    assert torch.equal(torch.rand(3, generator=gen2), torch.rand(3, generator=gen))
