"""The pieces of confined grading that run without a kernel: the wire format and name analysis."""

from __future__ import annotations

import contextlib
import copy
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


# --------------------------------------------------------------------------------------------------
# Chapter 3's decode loops: a served model (labkit/grading/served.py), "$M" on the wire
# --------------------------------------------------------------------------------------------------


def _served(seed: int = 5):
    from labkit.exercises.ch3 import TINY
    from labkit.grading.served import ServedModel
    from labkit.loader import random_model

    return ServedModel(random_model(TINY, seed=seed)), random_model(TINY, seed=seed)


def _client_over_json(owner):
    """The kernel's ModelClient of `owner`, its requests answered as autograder.confine.Link does."""
    grader, kernel = wire.Storages(), wire.Storages(rebuild=True)
    data = json.loads(json.dumps(wire.encode(owner, storages=grader)))

    def client(key, info):
        from labkit.grading.served import ModelClient

        def ask(request):
            answer = grader.served[key].serve(json.loads(json.dumps(request)))
            return wire.decode(json.loads(json.dumps(wire.encode(answer))))

        return ModelClient(info, ask)

    kernel.client = client
    return wire.decode(data, storages=kernel)


def test_a_served_model_runs_and_records_every_forward_its_owner_is_asked_for():
    from labkit import contiguous_kv_cache as lck
    from labkit import measure

    owner, real = _served()
    for model in (owner, _client_over_json(owner)):  # in process, and as the kernel gets it
        cache = lck.for_model(lck.ContiguousKVCache, model, 8)
        served = [lck.forward(model, cache, [3, 1, 4]), lck.forward(model, cache, [1])]
        assert len(cache) == 4  # the cache got each layer's K/V, as with the real model
        whole = measure.last_token_logits(model, [3, 1, 4, 1])  # a new sequence
        assert torch.equal(whole, served[1])  # logits depend on the tokens, not on how they were split
        mine = lck.for_model(lck.ContiguousKVCache, real, 8)
        expected = [lck.forward(real, mine, [3, 1, 4]), lck.forward(real, mine, [1])]
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(served, expected))
        assert torch.allclose(cache.k, mine.k, atol=1e-5)
    assert owner.sequences == [[3, 1, 4, 1], [3, 1, 4, 1]] * 2 and owner.token_forwards == 16
    with pytest.raises(AttributeError, match="lck.forward"):
        owner.model.embed_tokens  # noqa: B018 (no way into the weights)
    with pytest.raises(TypeError, match="measure.last_token_logits"):
        owner([1])


def test_a_served_model_crosses_one_way_and_checks_every_request():
    owner, _ = _served()
    assert "$M" not in wire.encode(owner, {})  # from the kernel it is a handle, never a served object
    with pytest.raises(ValueError):  # the grading process takes no "$M" from the kernel
        wire.decode(json.loads(json.dumps(wire.encode(owner))))
    for bad in ({"seq": None, "ids": [True]}, {"seq": None, "ids": [1.0]}, {"seq": None, "ids": []},
                {"seq": 7, "ids": [1]}, {"seq": "0", "ids": [1]}, {"seq": None, "ids": [1], "pos": 0},
                {"seq": None, "ids": [97]}, {"seq": None, "ids": [1] * 2000}, [1, 2]):  # fmt: skip
        with pytest.raises((ValueError, IndexError)):
            owner.serve(bad)
    assert owner.sequences == []  # nothing recorded for a refused request
    first = owner.serve({"seq": None, "ids": [5, 6]})
    assert first["seq"] == 0 and first["logits"].shape == (97,) and owner.serve({"seq": 0, "ids": [7]})["seq"] == 0
    assert owner.sequences == [[5, 6, 7]]  # positions come from the owner's record of sequence 0
    owner.max_total = 4
    with pytest.raises(ValueError, match="token-forwards"):  # a kernel asking without end costs bounded work
        owner.serve({"seq": None, "ids": [1, 2]})


def _link_with_fake_kernel(kernel, timeout: float = 5.0):
    """A confine.Link whose kernel is `kernel(stream)`, a thread at the other end of a socket pair."""
    import socket
    import threading

    ours, theirs = socket.socketpair()
    link = confine.Link.__new__(confine.Link)
    link.conn, link.timeout, link.stuck, link.storages = ours, timeout, False, wire.Storages()
    ours.settimeout(timeout)

    def run(stream):
        with contextlib.suppress(Exception):  # the grader's side closed: the fake kernel stops
            kernel(stream)

    threading.Thread(target=run, args=(theirs.makefile("rwb"),), daemon=True).start()
    return link


def _send(stream, message) -> None:
    data = json.dumps(message).encode()
    stream.write(len(data).to_bytes(8, "big") + data)
    stream.flush()


def _read(stream):
    return json.loads(stream.read(int.from_bytes(stream.read(8), "big")))


def test_the_link_answers_a_served_objects_requests_during_a_call_and_only_for_a_while():
    owner, _ = _served()
    answers = []

    def kernel(stream):  # asks the served model twice (once wrongly) during the call, then replies
        key = _read(stream)["args"][0]["$M"]
        for request in ({"seq": None, "ids": [4, 2]}, {"seq": None, "ids": [-1]}):
            _send(stream, {"cb": key, "request": request})
            answers.append(_read(stream))
        _send(stream, {"value": 7})

    link = _link_with_fake_kernel(kernel)
    assert link.request({"op": "call", "args": [wire.encode(owner, storages=link.storages)]}) == {"value": 7}
    assert wire.decode(answers[0]["value"])["logits"].shape == (97,) and answers[1]["error"] == "IndexError"
    assert owner.sequences == [[4, 2]]
    link.conn.close()

    def spam(stream):  # never replies, only asks (here for an object that was never sent)
        _read(stream)
        while True:
            _send(stream, {"cb": "M1", "request": {"seq": None, "ids": [1]}})
            _read(stream)

    link = _link_with_fake_kernel(spam, timeout=0.3)
    with pytest.raises(confine.KernelStuck):
        link.request({"op": "describe", "name": "x"})
    assert link.stuck
    link.conn.close()


# --------------------------------------------------------------------------------------------------
# t3-7 and t3-8 graded by `make grade`: judged in the grading process, cheats and all
# --------------------------------------------------------------------------------------------------

CH3 = "03_kv_cache"
LOOP_TESTS = {"t3-7-generate-uncached-tests": 2.0, "t3-8-generate-cached-tests": 3.0}

CACHED_LOOP = """
def generate_uncached(model, prompt_ids, max_new_tokens):  # a cached loop where task 7 asks for none
    cache = lck.for_model(lck.ContiguousKVCache, model, len(prompt_ids) + max_new_tokens)
    logits, new_ids = lck.forward(model, cache, prompt_ids), []
    for step in range(max_new_tokens):
        new_ids.append(int(torch.argmax(logits)))
        if step + 1 < max_new_tokens:
            logits = lck.forward(model, cache, new_ids[-1:])
    return new_ids
"""
RECOMPUTING_LOOP = """
def generate_cached(model, prompt_ids, max_new_tokens):  # the whole sequence each step, in fresh caches
    ids = list(prompt_ids)
    for _ in range(max_new_tokens):
        cache = lck.for_model(ContiguousKVCache, model, len(ids))
        ids.append(int(torch.argmax(lck.forward(model, cache, ids))))
    return ids[len(prompt_ids):]
"""
PATCH_EVERYTHING = """
import contextlib
import labkit.grading as lg, labkit.grading.checks as lc
for m in (lg, lc):
    m.check_function = lambda *a, **k: None
ch3.check_generate_uncached = ch3.check_generate_cached = lambda *a, **k: None
measure.count_token_forwards = contextlib.contextmanager(lambda model: (yield {"count": 0}))
with contextlib.suppress(Exception):  # and the served model's bookkeeping (labkit/grading/served.py)
    from labkit.grading import served
    served.ServedModel.token_forwards = property(lambda self: 0)
    ch3.same_loop = lambda expected, received: None
    ch3.run_served = lambda generate, seed, prompt_ids, n: ch3.LoopRun([], [])
"""
OWN_MODEL = """
import inspect
from labkit.loader import random_model

def _own_greedy(model, prompt_ids, max_new_tokens, cached):
    seed = 0  # the check's seed, if a caller's frame holds it (it did when the check ran in the kernel)
    f = inspect.currentframe()
    while f is not None:
        if isinstance(f.f_locals.get("seed"), int):
            seed = f.f_locals["seed"]
        f = f.f_back
    mine = random_model(ch3.TINY, seed=seed)  # greedy decoding on the kernel's own copy
    cache = lck.for_model(lck.ContiguousKVCache, mine, len(prompt_ids) + max_new_tokens)
    logits, ids = lck.forward(mine, cache, prompt_ids), []
    for step in range(max_new_tokens):
        ids.append(int(torch.argmax(logits)))
        if step + 1 < max_new_tokens:
            logits = lck.forward(mine, cache, ids[-1:])
    sequence = list(prompt_ids) + ids
    if cached:  # the grader's model, for show only: the right pattern of forwards
        cache = lck.for_model(lck.ContiguousKVCache, model, len(sequence))
        lck.forward(model, cache, prompt_ids)
        for t in ids[:-1]:
            lck.forward(model, cache, [t])
    else:
        for i in range(max_new_tokens):
            measure.last_token_logits(model, sequence[:len(prompt_ids) + i])
    return ids

def generate_uncached(model, prompt_ids, max_new_tokens):
    return _own_greedy(model, prompt_ids, max_new_tokens, cached=False)
"""
PADDED = CACHED_LOOP.replace("    return new_ids\n", """\
    extra = sum(len(prompt_ids) + i for i in range(max_new_tokens)) - (len(prompt_ids) + max_new_tokens - 1)
    while extra > 0:  # junk forwards, to reach the count of an uncached loop
        measure.last_token_logits(model, [0] * min(extra, 50))
        extra -= min(extra, 50)
    return new_ids
""")
UNUSUAL_UNCACHED = """
def generate_uncached(model, prompt_ids, max_new_tokens):
    ids = list(prompt_ids)
    while len(ids) < len(prompt_ids) + max_new_tokens:
        fresh = lck.for_model(lck.ContiguousKVCache, model, len(ids))  # a new cache each step: no reuse
        ids.append(lck.forward(model, fresh, ids).argmax().item())
    return ids[len(prompt_ids):]
"""
UNUSUAL_CACHED = """
class ListCache:  # the cache of task 6 grown with torch.cat, its own class
    def __init__(self, num_layers, max_len, num_kv_heads, head_dim, dtype=torch.float32):
        self.k = [torch.zeros(0, num_kv_heads, head_dim, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.zeros(0, num_kv_heads, head_dim, dtype=dtype) for _ in range(num_layers)]

    def append(self, layer, k, v):
        self.k[layer], self.v[layer] = torch.cat([self.k[layer], k]), torch.cat([self.v[layer], v])

    def view(self, layer):
        return self.k[layer], self.v[layer]

    def __len__(self):
        return len(self.k[-1])

def generate_cached(model, prompt_ids, max_new_tokens):
    cache, new_ids = lck.for_model(ListCache, model, 0), []
    for t in prompt_ids:  # the prompt one token at a time: the same positions, more calls
        logits = lck.forward(model, cache, [t])
    while True:
        new_ids.append(max(range(len(logits)), key=lambda i: float(logits[i])))
        if len(new_ids) == max_new_tokens:
            return new_ids
        logits = lck.forward(model, cache, new_ids[-1:])
"""
CALLS_REFERENCE = {
    "t3-7-generate-uncached": "def generate_uncached(model, prompt_ids, max_new_tokens):\n"
    "    return ch3.reference_generate_uncached(model, prompt_ids, max_new_tokens)\n",
    "t3-8-generate-cached": "def generate_cached(model, prompt_ids, max_new_tokens):\n"
    "    return ch3.reference_generate_cached(model, prompt_ids, max_new_tokens)\n",
}
# student -> ({answer cell: new source}, expected score of each loop test, text the executed notebook shows)
LOOP_SUBMISSIONS = {
    "solution": ({}, LOOP_TESTS, ""),
    "unusual-but-right": ({"t3-7-generate-uncached": UNUSUAL_UNCACHED, "t3-8-generate-cached": UNUSUAL_CACHED},
                          LOOP_TESTS, ""),
    "patches-checks-and-counters": ({"t3-7-generate-uncached": PATCH_EVERYTHING + CACHED_LOOP,
                                     "t3-8-generate-cached": RECOMPUTING_LOOP}, {}, "token positions"),
    "answers-from-its-own-model": ({"t3-7-generate-uncached": OWN_MODEL,
                                    "t3-8-generate-cached": "def generate_cached(model, prompt_ids, n):\n"
                                    "    return _own_greedy(model, prompt_ids, n, cached=True)\n"},
                                   {}, "new ids"),
    "calls-the-reference-generate": (CALLS_REFERENCE, {}, "the reference this task is checked against"),
    "pads-the-forwards": ({"t3-7-generate-uncached": PADDED},
                          {"t3-8-generate-cached-tests": 3.0}, "sequence(s)"),
}  # fmt: skip


def _loop_course(root):
    """A course whose notebook holds chapter 3's set-up and tasks 7 and 8, cells as in solutions/."""
    import nbformat
    from notebook_tools import SOLUTIONS, apply_mistake, load_mistakes

    from autograder import course
    from autograder.authoring import notebook, write

    full = nbformat.read(str(SOLUTIONS / f"{CH3}.ipynb"), 4)
    at = {c.metadata.get("nbgrader", {}).get("grade_id"): i for i, c in enumerate(full.cells)}
    cells = [full.cells[at["setup"]]]
    for task in ("t3-7-generate-uncached", "t3-8-generate-cached"):  # its "## Task" heading, answer, tests
        cells += full.cells[at[task] - 1: at[task] + 2]
    cells = [copy.deepcopy(c) for c in cells]
    sol = notebook(cells)
    write(sol, root / course.SOURCE_DIR / course.ASSIGNMENT / f"{CH3}.ipynb")
    mistake = next(m for m in load_mistakes(CH3) if m.name == "cached-loop-recomputes")
    students = {name: (sources, expected, says) for name, (sources, expected, says) in LOOP_SUBMISSIONS.items()}
    students["mistake-cached-loop-recomputes"] = ({}, {"t3-7-generate-uncached-tests": 2.0}, mistake.says)
    for name, (sources, _, _) in students.items():
        nb = apply_mistake(sol, mistake) if name.startswith("mistake-") else copy.deepcopy(sol)
        for grade_id, source in sources.items():
            next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id).source = source
        write(nb, root / course.SUBMITTED_DIR / name / course.ASSIGNMENT / f"{CH3}.ipynb")
    return students


@pytest.fixture(scope="module")
def graded_loops(tmp_path_factory):
    import os
    import subprocess
    import sys
    import time

    from autograder import course

    root = tmp_path_factory.mktemp("loops")
    students = _loop_course(root)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop(course.GRADEBOOK_URL_ENV, None)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "autograder.grade", "--root", str(root), "-j", "2", "--quick",
                           "--no-feedback", "--cell-timeout", "120"],
                          capture_output=True, text=True, env=env, cwd=course.ROOT, timeout=900)  # fmt: skip
    print(f"\ngraded {len(students)} submissions of tasks 7-8 in {time.perf_counter() - t:.0f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, students


@pytest.mark.slow
@pytest.mark.parametrize("student", [*LOOP_SUBMISSIONS, "mistake-cached-loop-recomputes"])
def test_decode_loops_are_judged_in_the_grading_process(graded_loops, student):
    """Every test cell confined (no fallback to the kernel), and each submission scores as expected:
    the solution and an unusual right answer full marks; checks, counters or the served model's
    bookkeeping patched in the kernel, an answer from the kernel's own model with the grader's
    called for show, the reference generate, junk forwards: 0; the typical mistake loses t3-8."""
    import nbformat

    from autograder import course, grade
    from autograder.student import log_path

    root, students = graded_loops
    _, expected, says = students[student]
    got = grade.read_scores(root)[student][CH3]
    assert {k: s for k, (s, _) in got.items()} == {k: expected.get(k, 0.0) for k in LOOP_TESTS}
    executed = nbformat.read(str(root / course.AUTOGRADED_DIR / student / course.ASSIGNMENT / f"{CH3}.ipynb"), 4)
    for cell in executed.cells:
        if cell.metadata.get("nbgrader", {}).get("grade"):
            assert cell.metadata["labkit"]["confined"] is True, cell.metadata
    assert "judged in the kernel" not in log_path(root, student).read_text()
    if says:
        failed = [c.metadata["labkit"]["message"] + "".join(o.get("text", "") for o in c.outputs)
                  for c in executed.cells if c.metadata.get("labkit", {}).get("failed")]  # fmt: skip
        assert failed and all(says in text for text in failed), failed
