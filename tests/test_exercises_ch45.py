"""labkit.exercises: the sequence checker shrinks a failure to a short program; the chi-square verdict
accepts draws from the right distribution and rejects others; the references agree with labkit."""

from __future__ import annotations

import random
import re

import pytest
import torch

from labkit import grading as g
from labkit.exercises import ch4, ch5
from labkit.exercises.sequences import Program, check_program


class _Counter:
    """A correct counter, and a buggy one that forgets every third increment."""

    def __init__(self, buggy: bool = False):
        self.value, self.calls, self.buggy = 0, 0, buggy

    def add(self, n: int) -> int:
        self.calls += 1
        if not (self.buggy and self.calls % 3 == 0):
            self.value += n
        return self.value


def _programs(rng: random.Random) -> list[Program]:
    return [Program("Counter", (), [("add", (rng.randint(1, 9),)) for _ in range(30)]) for _ in range(5)]


def test_check_program_passes_a_correct_class(capsys):
    check_program(_Counter, _Counter, _programs, observe=lambda c: c.value, name="Counter")
    assert "5 random call sequences passed" in capsys.readouterr().out


def test_check_program_reports_the_shortest_failing_sequence():
    with pytest.raises(g.CheckFailed) as err:
        check_program(lambda: _Counter(buggy=True), _Counter, _programs, observe=lambda c: c.value, name="Counter")
    text = str(err.value)
    assert "shortest failing sequence found: 3 calls, shrunk from a failing sequence of 30" in text
    assert len(re.findall(r"obj\.add\(", text.split("expected:")[0])) == 3  # the input shows the 3 calls


def test_chi_square_verdict_accepts_the_right_law_and_rejects_a_wrong_one():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(12, generator=gen) * 1.5
    probs = ch5.reference_probs(logits, 0.5, -1, 1.0)
    right = torch.multinomial(torch.tensor(probs), 2000, replacement=True, generator=gen).bincount(minlength=12)
    wrong_probs = ch5.reference_probs(logits, 1.0, -1, 1.0)  # temperature ignored
    wrong = torch.multinomial(torch.tensor(wrong_probs), 2000, replacement=True, generator=gen).bincount(minlength=12)
    ok = {"same seed, same token": True}
    assert ch5.chi_square_verdict(probs, {**ok, "counts": right.tolist()}) is None
    assert "chi-square" in ch5.chi_square_verdict(probs, {**ok, "counts": wrong.tolist()})
    filtered = ch5.reference_probs(logits, 1.0, 3, 1.0)
    outside = [i for i, p in enumerate(filtered) if p == 0][0]
    counts = [0] * 12
    counts[outside] = 1
    assert "probability 0" in ch5.chi_square_verdict(filtered, {**ok, "counts": counts})


def test_reference_allocator_contract():
    a = ch4.ReferenceAllocator(2)
    b0 = a.allocate()
    a.fork(b0)
    assert a.ref_counts[b0] == 2 and a.num_free_blocks == 1
    a.free(b0)
    a.free(b0)
    with pytest.raises(ValueError):
        a.free(b0)  # double free
    with pytest.raises(ValueError):
        a.fork(5)  # outside the pool
    a.allocate(), a.allocate()
    with pytest.raises(RuntimeError):
        a.allocate()


def test_reference_slot_mapping_and_paged_decode_agree_with_dense_attention():
    assert ch4.reference_slot_mapping([7, 19, 4], 15, 18, 16) == [127, 304, 305]
    gen = torch.Generator().manual_seed(1)
    H, Hkv, D, B = 4, 2, 8, 4
    k_cache, v_cache = torch.randn(6, B, Hkv, D, generator=gen), torch.randn(6, B, Hkv, D, generator=gen)
    table, L = [4, 1, 5], 10
    q = torch.randn(H, D, generator=gen)
    out = ch4.reference_paged_decode(q, k_cache, v_cache, table, L)
    k = k_cache[table].flatten(0, 1)[:L].repeat_interleave(H // Hkv, 1)
    v = v_cache[table].flatten(0, 1)[:L].repeat_interleave(H // Hkv, 1)
    dense = torch.einsum("ht,thd->hd", torch.softmax(torch.einsum("hd,thd->ht", q, k) / D**0.5, -1), v)
    torch.testing.assert_close(out, dense)
