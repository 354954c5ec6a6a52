"""labkit.grading: right answers pass, typical wrong answers fail with a message a student can act on.

Covers check_function, check_value, check_class, the delegation guard (aliases, closures, super(),
swallowed tripwires), the time limit (signal and thread paths, swallowed timeouts, restored timers),
stderr silence, fresh and replayable randomness, the generators and explain_difference.
"""

from __future__ import annotations

import copy
import os
import random
import signal
import sys
import threading
import time
import types
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import grading as g
from labkit.grading import CheckFailed

# --------------------------------------------------------------------------------------------------
# A reference module, as labkit modules are: functions and a class a student re-implements
# --------------------------------------------------------------------------------------------------

REF_SRC = '''
def merge(ids, pair, new_id):
    """Replace every occurrence of pair in ids by new_id, left to right."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def encode(ids, merges):
    """Apply merges in order (uses merge)."""
    for pair, new_id in merges:
        ids = merge(ids, pair, new_id)
    return ids


def mean(xs):
    if not xs:
        raise ValueError("mean of an empty list")
    return sum(xs) / len(xs)


class Pool:
    """A free list of block ids 0..n-1: allocate the lowest free ids, free them back."""

    def __init__(self, num_blocks):
        self.num_blocks = num_blocks
        self.free = list(range(num_blocks))

    @property
    def num_free(self):
        return len(self.free)

    def allocate(self, n):
        if n > len(self.free):
            raise MemoryError(f"need {n} blocks, {len(self.free)} free")
        taken, self.free = self.free[:n], self.free[n:]
        return taken

    def release(self, ids):
        self.free = sorted(self.free + list(ids))
'''


@pytest.fixture(scope="module")
def ref():
    mod = types.ModuleType("fake_labkit_ref")
    exec(compile(REF_SRC, "fake_labkit_ref.py", "exec"), mod.__dict__)
    sys.modules[mod.__name__] = mod
    yield mod
    del sys.modules[mod.__name__]


MERGE_CASES = [
    g.case([1, 2, 3, 1, 2], (1, 2), 9),
    g.case([], (1, 2), 9),
    g.case([1, 1, 1], (1, 1), 7),
    g.args(g.token_ids(4, max_len=24), g.pairs(4), g.ints(4, 99)),
]


def right_merge(ids, pair, new_id):
    out = []
    i = 0
    while i < len(ids):
        if ids[i : i + 2] == list(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def failure(fn, *args, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        fn(*args, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------------------------------
# check_function
# --------------------------------------------------------------------------------------------------


def test_right_answer_passes_and_returns_none(ref, capsys):
    assert g.check_function(right_merge, ref.merge, MERGE_CASES, n=50) is None
    assert "right_merge: 53 cases passed" in capsys.readouterr().out


def test_wrong_result_names_input_expected_received_difference_hint_and_seed(ref):
    def skips_one(ids, pair, new_id):
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
                out.append(new_id)
            else:
                out.append(ids[i])
            i += 1
        return out

    msg = failure(g.check_function, skips_one, ref.merge, MERGE_CASES, hint="skip both ids of the pair")
    assert "skips_one: wrong result, case 1 of" in msg
    assert "input:      skips_one(ids=[1, 2, 3, 1, 2], pair=(1, 2), new_id=9)" in msg
    assert "expected:   [9, 3, 9]" in msg
    assert "received:   [9, 2, 3, 9, 2]" in msg
    assert "difference: lengths 3 and 5; at [1]: expected 3, received 2" in msg
    assert "hint: skip both ids of the pair" in msg
    assert "seed" in msg and "Traceback" not in msg


def test_missing_return_is_called_out(ref):
    msg = failure(g.check_function, lambda ids, pair, new_id: None, ref.merge, MERGE_CASES)
    assert "received None (did the function forget to `return`?)" in msg


def test_wrong_container_type_is_called_out(ref):
    msg = failure(
        g.check_function,
        lambda ids, pair, new_id: tuple(right_merge(ids, pair, new_id)),
        ref.merge,
        MERGE_CASES,
    )
    assert "expected a list, received a tuple" in msg


def test_student_exception_reported_with_type_message_and_line(ref):
    def crashes(ids, pair, new_id):
        out = []
        for i in range(len(ids)):
            out.append(ids[i + 1])  # off the end
        return out

    with pytest.raises(CheckFailed) as info:
        g.check_function(crashes, ref.merge, MERGE_CASES)
    msg = str(info.value)
    assert "your code raised IndexError: list index out of range, case 1 of" in msg
    assert "in crashes: `out.append(ids[i + 1])  # off the end`" in msg
    assert "expected:  [9, 3, 9]" in msg
    assert info.value.__suppress_context__ and "Traceback" not in msg


def test_stub_says_not_written_yet(ref):
    def stub(ids, pair, new_id):
        raise NotImplementedError("Task 3: merge a pair (t3-merge): replace this line with your code")

    msg = failure(g.check_function, stub, ref.merge, MERGE_CASES)
    assert msg.startswith("stub: not written yet: `stub` raised NotImplementedError: Task 3: merge a pair (t3-merge)")


def test_not_written_yet_names_the_function_that_raised(ref):
    def helper(ids):
        raise NotImplementedError("Task 2: count pairs (t2-pair-counts): replace this line with your code")

    def uses_helper(ids, pair, new_id):  # a finished task that calls an unfinished one
        return helper(ids)

    msg = failure(g.check_function, uses_helper, ref.merge, MERGE_CASES)
    assert "not written yet: `helper` raised NotImplementedError: Task 2" in msg


def test_changing_the_input_in_place_fails(ref):
    def in_place(ids, pair, new_id):
        result = right_merge(ids, pair, new_id)
        ids[:] = result
        return result

    msg = failure(g.check_function, in_place, ref.merge, MERGE_CASES)
    assert "changed its argument `ids` in place" in msg
    assert "afterwards: [9, 3, 9]" in msg


def test_expected_exception_must_be_raised(ref):
    msg = failure(g.check_function, lambda xs: sum(xs) / max(len(xs), 1), ref.mean, [g.case([])])
    assert "expected an exception" in msg and "raises ValueError: mean of an empty list" in msg
    msg = failure(
        g.check_function, lambda xs: xs[0] / 0 if not xs else sum(xs) / len(xs), ref.mean, [g.case([])]
    )
    assert "your code raised IndexError" in msg
    g.check_function(
        lambda xs: sum(xs) / len(xs) if xs else (_ for _ in ()).throw(ValueError("empty")),
        ref.mean,
        [g.case([]), g.case([1.0, 2.0])],
        verbose=False,
    )


def test_fixed_cases_accept_tuples_single_values_and_calls():
    seen = []

    def echo(*args, **kwargs):
        seen.append((args, kwargs))
        return args, kwargs

    g.check_function(echo, lambda *a, **k: (a, k), [(1, 2), "x", g.case(3, k=4)], verbose=False)
    assert seen == [((1, 2), {}), (("x",), {}), ((3,), {"k": 4})]


# --------------------------------------------------------------------------------------------------
# The delegation guard
# --------------------------------------------------------------------------------------------------


def test_calling_the_reference_by_module_attribute_fails(ref):
    msg = failure(
        g.check_function,
        lambda ids, pair, new_id: sys.modules["fake_labkit_ref"].merge(ids, pair, new_id),
        ref.merge,
        MERGE_CASES,
    )
    assert "your code called fake_labkit_ref.merge, the reference this task is checked against" in msg


def test_alias_imported_before_the_check_fails(ref):
    ns = {}
    cell = "from fake_labkit_ref import merge as m\n\ndef student(ids, pair, k):\n    return m(ids, pair, k)"
    exec(cell, ns)  # a solution cell that imported the reference under another name
    msg = failure(g.check_function, ns["student"], ref.merge, MERGE_CASES)
    assert "called fake_labkit_ref.merge" in msg


def test_real_labkit_alias_fails_and_the_reference_still_works_afterwards():
    from labkit.tokenizer import merge as m  # what a student might write in a solution cell

    def student(ids, pair, new_id):
        return m(ids, pair, new_id)

    msg = failure(g.check_function, student, m, MERGE_CASES)
    assert "called labkit.tokenizer.merge" in msg
    import labkit.tokenizer

    assert labkit.tokenizer.merge([1, 2, 3], (1, 2), 9) == [9, 3]


def test_default_argument_closure_and_indirect_calls_fail(ref):
    def default_arg(ids, pair, new_id, _m=ref.merge):
        return _m(ids, pair, new_id)

    def make_closure():
        fn = ref.merge
        return lambda ids, pair, new_id: fn(ids, pair, new_id)

    def indirect(ids, pair, new_id):  # through another reference function that uses merge
        return ref.encode(ids, [(pair, new_id)])

    for student in (default_arg, make_closure(), indirect):
        assert "called fake_labkit_ref.merge" in failure(g.check_function, student, ref.merge, MERGE_CASES)


def test_swallowing_the_tripwire_does_not_help(ref):
    def sneaky(ids, pair, new_id):
        try:
            return ref.merge(ids, pair, new_id)
        except BaseException:
            return right_merge(ids, pair, new_id)

    assert "called fake_labkit_ref.merge" in failure(g.check_function, sneaky, ref.merge, MERGE_CASES)


def test_forbid_extends_the_guard_and_guard_false_disables_it(ref):
    def via_encode(ids, pair, new_id):
        return ref.encode(ids, [(pair, new_id)])

    assert "called fake_labkit_ref.encode" in failure(
        g.check_function, via_encode, right_merge, MERGE_CASES, forbid=[ref.encode]
    )
    g.check_function(via_encode, ref.merge, MERGE_CASES, guard=False, verbose=False)


def test_guard_restores_the_reference_after_a_failure_and_a_timeout(ref):
    code = ref.merge.__code__
    failure(g.check_function, lambda ids, pair, new_id: ref.merge(ids, pair, new_id), ref.merge, MERGE_CASES)
    failure(g.check_function, lambda ids, pair, new_id: time.sleep(5), ref.merge, MERGE_CASES, time_limit=0.2)
    assert ref.merge.__code__ is code
    assert ref.merge([1, 2], (1, 2), 5) == [5]


def test_guard_handles_methods_with_free_variables():
    class Base:
        def size(self):
            return 1

    class Ref(Base):
        def size(self):  # uses super(): its code has the free variable __class__
            return super().size() + 1

    class Student(Ref):  # inherits the reference's method: delegation
        pass

    msg = failure(g.check_class, Student, Ref, {"size": lambda rng: ()})
    assert "your code called" in msg and "Ref.size" in msg
    assert Ref().size() == 2


# --------------------------------------------------------------------------------------------------
# Time limit
# --------------------------------------------------------------------------------------------------


def _endless(ids, pair, new_id):
    while True:
        pass


def _endless_swallowing(ids, pair, new_id):
    while True:
        try:
            time.sleep(0.01)
        except Exception:  # must not catch the time limit
            pass


def _endless_bare_except(ids, pair, new_id):
    while True:
        try:
            sum(range(1000))
        except:  # noqa: E722 -- even this must not keep the check running forever
            pass


@pytest.mark.parametrize("student", [_endless, _endless_swallowing, _endless_bare_except])
def test_endless_loop_fails_within_the_time_limit(ref, student):
    t = time.perf_counter()
    msg = failure(g.check_function, student, ref.merge, MERGE_CASES, time_limit=0.5)
    elapsed = time.perf_counter() - t
    assert "no result within the time limit (0.5 s for the whole check), case 1 of" in msg
    assert "Is there a loop that never ends?" in msg
    assert elapsed < 2.0, elapsed


def test_time_scale_stretches_every_limit(ref, monkeypatch):
    monkeypatch.setenv(g.TIME_SCALE_ENV, "0.5")
    t = time.perf_counter()
    msg = failure(g.check_function, _endless, ref.merge, MERGE_CASES, time_limit=0.8)
    assert "(0.4 s for the whole check)" in msg and time.perf_counter() - t < 1.5


def test_time_limit_restores_the_previous_alarm_handler_and_timer(ref):
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        failure(g.check_function, _endless, ref.merge, MERGE_CASES, time_limit=0.2)
        delay, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25 < delay <= 30, delay
        assert signal.getsignal(signal.SIGALRM) is not None and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_time_limit_outside_the_main_thread_uses_a_worker_thread(ref):
    box = {}

    def run():
        t = time.perf_counter()
        try:
            g.check_function(_endless, ref.merge, MERGE_CASES, time_limit=0.3)
        except CheckFailed as e:
            box["msg"], box["elapsed"] = str(e), time.perf_counter() - t
        try:
            g.check_function(right_merge, ref.merge, MERGE_CASES, verbose=False)
            box["ok"] = True
        except CheckFailed as e:
            box["ok"] = str(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert "no result within the time limit" in box["msg"]
    assert box["elapsed"] < 3.0 and box["ok"] is True


def test_time_is_charged_to_student_code_only(ref):
    def slow_reference(ids, pair, new_id):
        time.sleep(0.05)
        return ref.merge(ids, pair, new_id)

    g.check_function(
        right_merge, slow_reference, MERGE_CASES, n=10, time_limit=0.3, guard=False, verbose=False
    )


# --------------------------------------------------------------------------------------------------
# Nothing on stderr
# --------------------------------------------------------------------------------------------------


def test_nothing_reaches_stderr(ref, capfd):
    def noisy(ids, pair, new_id):
        warnings.warn("a warning", UserWarning, stacklevel=1)
        print("debug to stderr", file=sys.stderr)
        os.write(2, b"raw fd 2\n")
        print("debug to stdout")
        return right_merge(ids, pair, new_id)

    g.check_function(noisy, ref.merge, MERGE_CASES, n=3)
    g.check_value(1.0, 1.0, "one")
    out, err = capfd.readouterr()
    assert err == ""
    assert "debug" not in out and "noisy: 6 cases passed" in out


def test_what_the_student_printed_is_quoted_on_failure(ref, capfd):
    def chatty(ids, pair, new_id):
        print("trying", ids)
        return []

    msg = failure(g.check_function, chatty, ref.merge, MERGE_CASES)
    assert "your code printed: trying [1, 2, 3, 1, 2]" in msg
    assert capfd.readouterr().err == ""


# --------------------------------------------------------------------------------------------------
# Randomness
# --------------------------------------------------------------------------------------------------


def _recorder(log):
    def gen(rng):
        value = rng.getrandbits(64)
        log.append(value)
        return value

    return gen


def test_each_run_draws_fresh_inputs():
    a, b = [], []
    g.check_function(abs, abs, [_recorder(a)], n=5, guard=False, verbose=False)
    g.check_function(abs, abs, [_recorder(b)], n=5, guard=False, verbose=False)
    assert len(a) == len(b) == 5 and a != b


def test_the_seed_in_a_failure_replays_the_same_inputs(monkeypatch):
    seen = []

    def student(x):
        return -1

    msg = failure(g.check_function, student, abs, [_recorder(seen)], n=3, guard=False)
    seed = int(msg.split("inputs drawn from seed ")[1].split(";")[0])
    replay = []
    failure(g.check_function, student, abs, [_recorder(replay)], n=3, guard=False, seed=seed)
    assert replay == seen[:1]
    monkeypatch.setenv(g.SEED_ENV, str(seed))
    again = []
    failure(g.check_function, student, abs, [_recorder(again)], n=3, guard=False)
    assert again == seen[:1]


# --------------------------------------------------------------------------------------------------
# check_value
# --------------------------------------------------------------------------------------------------


def test_check_value(capsys):
    g.check_value(12.5 * (1 + 1e-12), 12.5, "peak_gib")
    assert "✓ peak_gib is right" in capsys.readouterr().out
    msg = failure(g.check_value, 25.0, 12.5, "peak_gib", rtol=1e-3, hint="bytes per element: 2")
    assert "peak_gib: wrong value." in msg and "expected:   12.5" in msg and "received:   25.0" in msg
    assert "relative error 1" in msg and "hint: bytes per element: 2" in msg
    g.check_value(12.51, 12.5, "approx", rtol=1e-3)
    assert "received None" in failure(g.check_value, None, 3, "answer")
    assert "at [2]: expected 4, received 3" in failure(g.check_value, [1, 2, 3], [1, 2, 4], "ids")


# --------------------------------------------------------------------------------------------------
# check_class
# --------------------------------------------------------------------------------------------------


class RightPool:
    def __init__(self, num_blocks):
        self._free = set(range(num_blocks))

    @property
    def num_free(self):
        return len(self._free)

    def allocate(self, n):
        if n > len(self._free):
            raise MemoryError("out of blocks")
        taken = sorted(self._free)[:n]
        self._free -= set(taken)
        return taken

    def release(self, ids):
        self._free |= set(ids)


def _methods(ref):
    def gen_release(rng, pool):  # release some of the blocks the reference has handed out
        used = sorted(set(range(pool.num_blocks)) - set(pool.free))
        return (rng.sample(used, rng.randint(1, len(used))),) if used else None

    return {"allocate": lambda rng, pool: (rng.randint(0, pool.num_free + 1),), "release": gen_release}


def test_check_class_right_class_passes(ref, capsys):
    methods = _methods(ref)
    g.check_class(
        RightPool, ref.Pool, methods, init=g.args(g.ints(1, 12)), observe=["num_free"], n=15, steps=25
    )
    assert "RightPool: 15 sequences of 25 calls passed" in capsys.readouterr().out


def test_check_class_wrong_result_shows_the_call_history(ref):
    class HighestFirst(RightPool):
        def allocate(self, n):
            if n > len(self._free):
                raise MemoryError("out of blocks")
            taken = sorted(self._free, reverse=True)[:n]
            self._free -= set(taken)
            return taken

    methods = _methods(ref)
    msg = failure(g.check_class, HighestFirst, ref.Pool, methods, init=g.case(8), hint="lowest ids first")
    assert "HighestFirst: wrong result of the last call (sequence 1 of 10)." in msg
    assert "obj = Pool(num_blocks=8)" in msg or "obj = Pool(8)" in msg
    assert "obj.allocate(" in msg and "expected:" in msg and "hint: lowest ids first" in msg


def test_check_class_expected_exception_and_missing_method(ref):
    class NeverFull(RightPool):
        def allocate(self, n):
            taken = sorted(self._free)[:n]
            self._free -= set(taken)
            return taken

    methods = _methods(ref)
    msg = failure(g.check_class, NeverFull, ref.Pool, methods, init=g.case(2), n=30)
    assert "should raise an exception but returned a value" in msg and "raises MemoryError" in msg

    class NoRelease:
        def __init__(self, num_blocks):
            self.inner = RightPool(num_blocks)

        num_free = property(lambda self: self.inner.num_free)

        def allocate(self, n):
            return self.inner.allocate(n)

    assert "your class has no method `release`" in failure(
        g.check_class, NoRelease, ref.Pool, methods, init=g.case(4), n=30
    )


def test_check_class_observe_catches_wrong_state(ref):
    class LeakyRelease(RightPool):
        def release(self, ids):
            self._free |= set(list(ids)[1:])  # forgets one block

    methods = _methods(ref)
    msg = failure(g.check_class, LeakyRelease, ref.Pool, methods, init=g.case(6), observe=["num_free"], n=30)
    assert "wrong state after the last call" in msg
    assert "num_free" in msg


def test_check_class_delegating_class_fails(ref):
    class Wrapper:
        def __init__(self, num_blocks):
            self.inner = ref.Pool(num_blocks)

        def allocate(self, n):
            return self.inner.allocate(n)

    msg = failure(g.check_class, Wrapper, ref.Pool, {"allocate": lambda rng: (1,)}, init=g.case(4))
    assert "your code called fake_labkit_ref.Pool" in msg


def test_check_class_endless_method_fails_in_time(ref):
    class Stuck(RightPool):
        def allocate(self, n):
            while True:
                pass

    t = time.perf_counter()
    msg = failure(
        g.check_class, Stuck, ref.Pool, {"allocate": lambda rng: (1,)}, init=g.case(4), time_limit=0.3
    )
    assert "no result within the time limit" in msg and time.perf_counter() - t < 2


# --------------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------------


def test_generators_stay_in_range():
    rng = random.Random(0)
    for _ in range(200):
        ids = g.token_ids(7, min_len=2, max_len=5)(rng)
        assert 2 <= len(ids) <= 5 and all(0 <= i < 7 for i in ids)
        shape = g.shapes((2, 3), max_dim=4)(rng)
        assert 2 <= len(shape) <= 3 and all(1 <= d <= 4 for d in shape)
        assert 3 <= g.ints(3, 5)(rng) <= 5
        a, b = g.pairs(3)(rng)
        assert 0 <= a < 3 and 0 <= b < 3
        assert len(g.texts("ascii", 5, 20)(rng)) <= 20
    call = g.args(g.ints(1, 1), k=g.choice(["x"]))(rng)
    assert call == g.Call((1,), {"k": "x"})
    t = g.tensors(g.shapes(2, max_dim=3), dtype="float32")(rng)
    assert t.dtype == torch.float32 and t.ndim == 2 and (t.abs() <= 1).all()
    i = g.tensors((4,), dtype=torch.int64, low=0, high=5)(rng)
    assert i.dtype == torch.int64 and i.min() >= 0 and i.max() < 5


def test_text_kinds_cover_what_they_promise():
    rng = random.Random(1)
    ascii_texts = [g.texts("ascii", 10, 80)(rng) for _ in range(100)]
    unicode_texts = "".join(g.texts("unicode", 10, 80)(rng) for _ in range(100))
    spaced = "".join(g.texts("whitespace", 10, 80)(rng) for _ in range(100))
    assert all(t.isascii() for t in ascii_texts)
    assert any(ord(c) > 0xFFFF for c in unicode_texts) and any(0x80 <= ord(c) < 0x800 for c in unicode_texts)
    assert "\n" in spaced and "\t" in spaced and "   " in spaced
    with pytest.raises(ValueError, match="kind must be one of"):
        g.texts("emoji")


# --------------------------------------------------------------------------------------------------
# explain_difference
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "received", "says"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, "keys differ: missing [], unexpected ['b']"),
        ({"a": [1, 2]}, {"a": [1, 3]}, "at ['a'][1]: expected 2, received 3"),
        ("hello world", "hello_world", "first difference at character 5"),
        (b"\x00\x01", b"\x00\x02", "first difference at byte 1"),
        ({1, 2}, {2, 3}, "missing {1}, unexpected {3}"),
        (True, 1, "expected a bool (True), received a int (1)"),
        (3, 3.5, "expected the integer 3, received 3.5"),
        (1.0, 1.1, "relative error 0.1"),
        (torch.zeros(2, 3), torch.zeros(3, 2), "expected shape (2, 3), received shape (3, 2)"),
        (
            torch.zeros(2),
            torch.zeros(2, dtype=torch.float64),
            "expected dtype torch.float32, received dtype torch.float64",
        ),
        (
            torch.tensor([1.0, 2.0]),
            torch.tensor([1.0, 2.5]),
            "values differ at 1 of 2 positions; first at index (1,)",
        ),
        (np.arange(4), np.arange(4) + 1, "values differ at 4 of 4 positions"),
        (torch.zeros(2), [0.0, 0.0], "expected a torch.Tensor, received a list"),
    ],
)
def test_explain_difference_messages(expected, received, says):
    assert says in g.explain_difference(expected, received)


def test_explain_difference_tolerances():
    assert g.explain_difference(1.0, 1.0 + 1e-10) is None
    assert g.explain_difference(torch.tensor([1.0]), torch.tensor([1.0 + 1e-6])) is None
    assert g.explain_difference(torch.tensor([1.0]), torch.tensor([1.001])) is not None
    assert g.close(rtol=1e-2)(torch.tensor([1.0]), torch.tensor([1.001])) is None
    assert g.close(check_dtype=False)(torch.zeros(2), torch.zeros(2, dtype=torch.float64)) is None
    assert g.explain_difference(float("nan"), float("nan")) is None
    assert g.explain_difference(torch.tensor([float("nan")]), torch.tensor([float("nan")])) is None


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(values)
def test_a_value_matches_its_copy(x):
    assert g.explain_difference(x, copy.deepcopy(x)) is None


@settings(max_examples=150, deadline=None)
@given(values, values)
def test_unequal_values_are_explained(x, y):
    if x != y or type(x) is not type(y):
        explained = g.explain_difference(x, y)
        if explained is None:  # only numbers equal in value (1 == 1.0) may pass across types
            assert x == y
        else:
            assert isinstance(explained, str) and explained


def test_short_reprs_say_how_long_things_are():
    assert g.short("x" * 1000, 60).endswith("(1000 chars)")
    assert "... (500 items)" in g.short(list(range(500)), 60)
    assert g.short(torch.arange(20)).startswith("tensor(shape=(20,), dtype=torch.int64, [0, 1, 2")
    assert g.short((1,)) == "(1,)" and g.short(set()) == "set()"


# --------------------------------------------------------------------------------------------------
# Two modes: a student's kernel (print, go on) and the autograder (raise); self_check
# --------------------------------------------------------------------------------------------------


def _wrong_double(x):
    return x * 3


def _double(x):
    return x * 2


def test_failed_check_shows_message_not_traceback():
    with pytest.raises(CheckFailed) as info:
        g.check_function(_wrong_double, _double, [g.case(2)], verbose=False)
    lines = info.value._render_traceback_()
    assert lines[0].startswith("CheckFailed: _wrong_double: wrong result") and "Traceback" not in "".join(lines)


def test_in_a_students_kernel_a_failed_check_prints_and_returns(monkeypatch, capsys):
    from labkit.grading import checks

    monkeypatch.setattr(checks, "_interactive", lambda: True)
    assert g.check_function(_wrong_double, _double, [g.case(2)]) is None  # Run All goes on
    out = capsys.readouterr().out
    assert out.startswith("✗ _wrong_double: wrong result") and "expected:   4" in out
    assert checks.RESULTS[-1].passed is False


def test_under_the_autograder_the_seed_cannot_be_pinned(monkeypatch):
    from labkit.grading import checks

    monkeypatch.setenv(g.SEED_ENV, "7")
    assert checks._fresh_seed(None) == 7
    monkeypatch.setattr(checks, "GRADED", True)
    assert {checks._fresh_seed(None) for _ in range(5)} != {7}


def test_self_check_lists_visible_tests(tmp_path, capsys):
    import nbformat

    from autograder.authoring import notebook, readonly, tests

    cells = [
        readonly("from labkit import grading as g", "setup"),
        tests("g.check_function(double, lambda x: x * 2, [g.case(3)])", "t1-double-tests", points=2),
        tests("g.check_function(triple, lambda x: x * 3, [g.case(3)])", "t2-triple-tests", points=1),
    ]
    path = tmp_path / "nb.ipynb"
    nbformat.write(notebook(cells), str(path))
    namespace = {"g": g, "double": lambda x: x * 2, "triple": lambda x: x * 2}
    g.self_check(path, namespace=namespace)
    out = capsys.readouterr().out
    assert "PASS  t1-double-tests" in out and "FAIL  t2-triple-tests" in out
    assert "wrong result" in out and "2 of 3 points pass the visible tests" in out
