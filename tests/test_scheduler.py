"""Scheduler: continuous batching, chunked prefill, FCFS vs shortest-prompt-first, preemption, abort.

No model is needed. `FakeRunner` plays the engine: it stores every new token's id into the real KV
tensor at its slot (the whole batch first, as attention does), reads each request's context back
through its block table, and "samples" a token that is a fixed function of that context. So the
tokens a request generates depend only on its prompt, and any scheduling, paging, prefix-caching or
preemption bug either trips an assertion or changes the output, which is compared with a plain
generation loop (`reference_output`) that has no scheduler at all.
"""

import random
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from kv_invariants import check_cache

from labkit.attention import AttentionMetadata
from labkit.kv_cache import PagedKVCache
from labkit.scheduler import (
    FinishReason,
    Request,
    RequestStatus,
    Scheduler,
    SchedulerConfig,
    SchedulerOutput,
)


@dataclass
class Params:  # duck-types labkit.sampler.SamplingParams
    max_tokens: int | None = 8
    ignore_eos: bool = False
    stop_token_ids: list[int] = field(default_factory=list)


def slots(s, block_size: int) -> list[int]:
    """The slots of a ScheduledRequest's new tokens, as the engine's flat batch computes them."""
    meta = AttentionMetadata.build([s.seq_len], [s.num_new_tokens], [s.block_table], block_size)
    return meta.slot_mapping.tolist()


def next_token(context: list[int], vocab: int) -> int:
    """The fake model: the next token is a fixed function of the whole context."""
    return (sum((i + 1) * t for i, t in enumerate(context)) * 7919 + len(context)) % vocab


def reference_output(prompt, params, eos_token_id, vocab, max_model_len):
    """What the request must produce: plain generation, one token at a time, no scheduler."""
    tokens, out = list(prompt), []
    max_tokens = params.max_tokens if params.max_tokens is not None else max_model_len - len(prompt)
    while True:
        t = next_token(tokens, vocab)
        tokens.append(t)
        out.append(t)
        if (t == eos_token_id and not params.ignore_eos) or t in (params.stop_token_ids or ()):
            return out
        if len(out) >= max_tokens or len(tokens) >= max_model_len:
            return out


class FakeRunner:
    """The engine's part, minus the model (see the module docstring)."""

    def __init__(self, scheduler: Scheduler, vocab: int = 1000, script=None):
        self.scheduler, self.vocab, self.script = scheduler, vocab, script
        self.kv = scheduler.kv_cache
        self.steps = 0

    def step(self) -> tuple[SchedulerOutput, list[Request]]:
        out = self.scheduler.schedule()
        config = self.scheduler.config
        assert sum(s.num_new_tokens for s in out.scheduled) <= config.max_num_batched_tokens
        assert len(out.scheduled) <= config.max_num_seqs
        assert len({s.request_id for s in out.scheduled}) == len(out.scheduled)
        k, v = (t[..., 0, 0] for t in self.kv.kv_caches[0])  # (num_blocks, block_size)
        for s in out.scheduled:  # 1. store the whole batch's new tokens (token id in K, position in V)
            c, n = s.num_computed_tokens, s.num_new_tokens
            assert n >= 1 and s.token_ids == s.request.all_token_ids[c:c + n]
            assert s.sample == (c + n == s.request.num_tokens)
            slot_ids = torch.tensor(slots(s, self.kv.block_size))
            k.view(-1)[slot_ids] = torch.tensor(s.token_ids, dtype=k.dtype)
            v.view(-1)[slot_ids] = torch.arange(c, c + n, dtype=v.dtype)
        sampled = {}
        for s in out.scheduled:  # 2. read each context through the block table, "run the model"
            table = torch.tensor(s.block_table)
            context = [int(x) for x in k[table].flatten()[:s.seq_len]]
            assert context == s.request.all_token_ids[:s.seq_len], f"{s.request_id}: wrong K/V in the cache"
            assert v[table].flatten()[:s.seq_len].tolist() == list(range(s.seq_len))
            if s.sample:
                sampled[s.request_id] = self.script.pop(0) if self.script else next_token(context, self.vocab)
        self.steps += 1
        return out, self.scheduler.update_from_output(out, sampled)

    def run_until_done(self, max_steps: int = 10_000, check=False) -> None:
        while self.scheduler.has_unfinished_requests():
            assert self.steps < max_steps, "the scheduler made no progress"
            self.step()
            if check:
                check_cache(self.kv)


def make(num_blocks=64, block_size=4, prefix=True, **config) -> tuple[Scheduler, FakeRunner]:
    config = dict(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=64) | config
    kv = PagedKVCache(1, 1, 1, num_blocks, block_size, enable_prefix_caching=prefix)
    scheduler = Scheduler(SchedulerConfig(**config), kv)
    return scheduler, FakeRunner(scheduler)


def add(scheduler, rid, prompt, eos=None, **params) -> Request:
    request = Request(rid, list(prompt), Params(**params), eos_token_id=eos)
    scheduler.add_request(request)
    return request


def rows(out: SchedulerOutput) -> list[tuple[str, int, int, bool]]:
    return [(s.request_id, s.num_computed_tokens, s.num_new_tokens, s.sample) for s in out.scheduled]


# ---- hand-worked steps ---------------------------------------------------------------------------


def test_block_tables_and_slots_in_the_output():
    scheduler, runner = make(num_blocks=16, block_size=4, prefix=False)
    add(scheduler, "A", range(10))
    add(scheduler, "B", range(100, 105))
    out, _ = runner.step()
    a, b = out.scheduled
    assert (a.block_table, slots(a, 4)) == ([0, 1, 2], list(range(10)))
    assert (b.block_table, slots(b, 4)) == ([3, 4], [12, 13, 14, 15, 16])
    out, _ = runner.step()  # decodes: A's position 10 (block 2), B's position 5 (block 4)
    assert [(slots(s, 4), s.seq_len, s.is_decode) for s in out.scheduled] == [([10], 11, True),
                                                                                  ([17], 6, True)]


def test_chunked_prefill_splits_a_long_prompt():
    scheduler, runner = make(max_num_batched_tokens=8)
    request = add(scheduler, "A", range(1, 21))  # 20 tokens with a budget of 8: 8 + 8 + 4
    assert [rows(runner.step()[0]) for _ in range(4)] == [
        [("A", 0, 8, False)], [("A", 8, 8, False)], [("A", 16, 4, True)], [("A", 20, 1, True)]]
    assert request.num_output_tokens == 2 and request.num_computed_tokens == 21


def test_long_prefill_token_threshold_caps_each_chunk():
    scheduler, runner = make(long_prefill_token_threshold=6)
    add(scheduler, "A", range(1, 21))
    assert [rows(runner.step()[0]) for _ in range(4)] == [
        [("A", 0, 6, False)], [("A", 6, 6, False)], [("A", 12, 6, False)], [("A", 18, 2, True)]]


def test_mixed_batch_decodes_first_then_prefill_with_the_leftover_budget():
    scheduler, runner = make(max_num_batched_tokens=8)
    add(scheduler, "A", range(1, 6))
    assert rows(runner.step()[0]) == [("A", 0, 5, True)]
    add(scheduler, "B", range(10, 20))
    out, _ = runner.step()
    assert rows(out) == [("A", 5, 1, True), ("B", 0, 7, False)]  # one decode + a 7-token chunk
    assert [s.is_decode for s in out.scheduled] == [True, False]
    assert rows(runner.step()[0]) == [("A", 6, 1, True), ("B", 7, 3, True)]


def test_prefix_hits_in_the_same_step_and_later():
    scheduler, runner = make(block_size=4)
    system = list(range(50, 58))  # 8 tokens = 2 full blocks shared by everyone
    a = add(scheduler, "A", system + [1, 2])
    b = add(scheduler, "B", system + [3, 4, 5])
    assert rows(runner.step()[0]) == [("A", 0, 10, True), ("B", 8, 3, True)]  # B reuses A's blocks
    assert (a.num_cached_tokens, b.num_cached_tokens) == (0, 8)
    assert scheduler.kv_cache.block_table("B")[:2] == scheduler.kv_cache.block_table("A")[:2]
    runner.run_until_done(check=True)
    c = add(scheduler, "C", system + [1, 2])  # A's blocks are free now but still cached
    runner.run_until_done()
    assert c.num_cached_tokens == 8 and c.output_token_ids == a.output_token_ids


def test_preemption_of_the_newest_and_its_later_completion():
    scheduler, runner = make(num_blocks=4, block_size=2, prefix=False)  # 8 token slots in all
    a = add(scheduler, "A", [1, 2, 3], max_tokens=4)  # 2 blocks each at first
    b = add(scheduler, "B", [4, 5, 6], max_tokens=4)
    assert rows(runner.step()[0]) == [("A", 0, 3, True), ("B", 0, 3, True)]
    assert rows(runner.step()[0]) == [("A", 3, 1, True), ("B", 3, 1, True)]  # position 3: same blocks
    c = add(scheduler, "C", [7], max_tokens=1)  # needs 1 block
    out, _ = runner.step()  # A's position 4 needs a 3rd block; none is free: B (the newest) yields
    assert rows(out) == [("A", 4, 1, True)] and out.preempted_request_ids == ["B"]
    assert b.status == RequestStatus.PREEMPTED and b.num_computed_tokens == 0
    assert len(b.output_token_ids) == 2 and list(scheduler.waiting) == [b, c]
    assert "B" not in scheduler.kv_cache.block_tables
    # One block is free again, enough for C, but no one is admitted in a step that had to preempt,
    # and next step B (5 tokens = 3 blocks), at the head of the queue, does not fit: C waits behind it.
    assert scheduler.kv_cache.num_free_blocks == 1
    out, finished = runner.step()  # A finishes
    assert rows(out) == [("A", 5, 1, True)] and finished == [a]
    assert rows(runner.step()[0]) == [("B", 0, 5, True), ("C", 0, 1, True)]  # B: prompt + 2 outputs
    runner.run_until_done()
    assert (b.status, b.finish_reason, b.num_preemptions, scheduler.num_preemptions) == (
        RequestStatus.FINISHED, FinishReason.LENGTH, 1, 1)
    for r in (a, b):
        assert r.output_token_ids == reference_output(r.prompt_token_ids, r.sampling_params, None, 1000, 64)
    assert scheduler.kv_cache.num_free_blocks == 4


def test_no_admission_in_a_step_that_had_to_preempt():
    # Under FCFS the victim heads the queue and needs more blocks than are free, so this matters for
    # the lab's skipping policy: a short newcomer would take the block the victim just gave back.
    scheduler, runner = make(num_blocks=4, block_size=2, prefix=False, policy="shortest_prompt_first")
    add(scheduler, "A", [1, 2, 3], max_tokens=4)
    add(scheduler, "B", [4, 5, 6], max_tokens=4)
    runner.step()
    runner.step()
    add(scheduler, "C", [7], max_tokens=1)
    out, _ = runner.step()
    assert rows(out) == [("A", 4, 1, True)] and out.preempted_request_ids == ["B"]
    assert scheduler.kv_cache.num_free_blocks == 1  # C would fit
    assert rows(runner.step()[0]) == [("A", 5, 1, True), ("C", 0, 1, True)]
    runner.run_until_done(check=True)


def test_preempted_requests_return_to_the_front_oldest_first():
    scheduler, runner = make(num_blocks=6, block_size=2, prefix=False)
    for rid, prompt in [("A", [1, 2, 3, 4]), ("B", [5, 6, 7, 8]), ("C", [9]), ("D", [9])]:
        add(scheduler, rid, prompt, max_tokens=4)  # 2 + 2 + 1 + 1 blocks: the cache is full
    runner.step()
    add(scheduler, "E", [9], max_tokens=1)
    out, _ = runner.step()  # A and B each need a 3rd block: D, then C, are preempted
    assert rows(out) == [("A", 4, 1, True), ("B", 4, 1, True)] and out.preempted_request_ids == ["D", "C"]
    assert [r.request_id for r in scheduler.waiting] == ["C", "D", "E"]
    runner.run_until_done(check=True)


def test_stop_conditions():
    scheduler, runner = make()
    runner.script = [7, 5, 7, 5, 5, 3, 9]  # taken in batch order: eos, ignore, stop, eos, ...
    eos = add(scheduler, "eos", [1], eos=5, max_tokens=10)
    ignore = add(scheduler, "ignore", [1], eos=5, max_tokens=3, ignore_eos=True)
    stop = add(scheduler, "stop", [1], eos=5, max_tokens=10, stop_token_ids=[3])
    runner.run_until_done()
    assert (eos.output_token_ids, eos.finish_reason) == ([7, 5], FinishReason.STOP)  # EOS is kept
    assert (ignore.output_token_ids, ignore.finish_reason) == ([5, 5, 9], FinishReason.LENGTH)
    assert (stop.output_token_ids, stop.finish_reason) == ([7, 3], FinishReason.STOP)
    scheduler, runner = make(max_model_len=8)
    whole = add(scheduler, "whole", [1, 2, 3], max_tokens=None)  # None: up to max_model_len
    runner.run_until_done()
    assert whole.num_tokens == 8 and whole.finish_reason == FinishReason.LENGTH


def test_finish_request_for_a_stop_string_and_finished_ids_in_the_next_output():
    scheduler, runner = make()
    request = add(scheduler, "A", [1, 2, 3])
    runner.step()
    assert scheduler.finish_request("A", "stop") is request
    assert (request.status, request.finish_reason) == (RequestStatus.FINISHED, FinishReason.STOP)
    assert scheduler.kv_cache.num_free_blocks == scheduler.kv_cache.num_blocks
    out, _ = runner.step()
    assert not out.scheduled and out.finished_request_ids == {"A"}
    assert runner.step()[0].finished_request_ids == set()


def test_abort_waiting_running_and_unknown():
    scheduler, runner = make(max_num_seqs=1)
    running, waiting = add(scheduler, "run", [1, 2, 3]), add(scheduler, "wait", [4, 5])
    runner.step()
    assert scheduler.abort_request("wait") is waiting and scheduler.abort_request("run") is running
    for r in (running, waiting):
        assert (r.status, r.finish_reason) == (RequestStatus.CANCELLED, FinishReason.ABORT)
    assert not scheduler.has_unfinished_requests() and scheduler.kv_cache.num_free_blocks == 64
    with pytest.raises(KeyError, match="'nope'"):
        scheduler.abort_request("nope")
    with pytest.raises(KeyError, match="'run'"):
        scheduler.abort_request("run")  # already aborted
    # Aborted between schedule() and update_from_output(): the sampled token is dropped.
    request = add(scheduler, "late", [1, 2])
    out = scheduler.schedule()
    scheduler.abort_request("late")
    assert scheduler.update_from_output(out, {"late": 7}) == [] and request.output_token_ids == []


def test_update_from_output_rejects_wrong_samples():
    scheduler, _ = make(max_num_batched_tokens=4)
    add(scheduler, "A", range(10))
    out = scheduler.schedule()  # a partial prefill: nothing to sample
    with pytest.raises(ValueError, match="partial prefill"):
        scheduler.update_from_output(out, {"A": 1})
    scheduler, _ = make()
    add(scheduler, "A", range(3))
    with pytest.raises(KeyError, match="no sampled token for request 'A'"):
        scheduler.update_from_output(scheduler.schedule(), {})


# ---- admission policy ----------------------------------------------------------------------------


@pytest.mark.parametrize("policy, first_batch", [("fcfs", ["A"]), ("shortest_prompt_first", ["C", "A"])])
def test_a_request_that_does_not_fit_blocks_the_queue_under_fcfs_only(policy, first_batch):
    scheduler, runner = make(enable_chunked_prefill=False, max_num_batched_tokens=16, max_model_len=16,
                             policy=policy)
    add(scheduler, "A", range(12), max_tokens=2)
    add(scheduler, "B", range(100, 115), max_tokens=1)  # 15 tokens > the 4 left: it waits ...
    add(scheduler, "C", range(200, 202), max_tokens=2)  # ... and under FCFS C waits behind it
    assert [s.request_id for s in runner.step()[0].scheduled] == first_batch
    runner.run_until_done(check=True)


def run_stream(policy: str, steps: int, seed: int = 0) -> tuple[Scheduler, Request, int | None]:
    """Short prompts arrive 2 per step from step 0; one long prompt arrives at step 3.
    Returns the scheduler, the long request and the step in which it finished (None if it did not)."""
    rng = random.Random(seed)
    scheduler, runner = make(num_blocks=16, block_size=4, prefix=False, max_num_seqs=16, policy=policy)
    long, finished_at = None, None
    for step in range(steps):
        for j in range(2):  # a short request needs up to 2 blocks, the long one 11 of the 16
            add(scheduler, f"s{step}.{j}", [rng.randrange(1000) for _ in range(4)], max_tokens=4)
        if step == 3:
            long = add(scheduler, "long", [rng.randrange(1000) for _ in range(40)], max_tokens=2)
        if long in runner.step()[1]:
            finished_at = step
        check_cache(scheduler.kv_cache)
    return scheduler, long, finished_at


def test_shortest_prompt_first_starves_a_long_prompt_while_fcfs_serves_it():
    # FCFS: the long prompt is served within a few steps of its arrival at step 3.
    _, long, finished_at = run_stream("fcfs", steps=60)
    assert long.status == RequestStatus.FINISHED and finished_at <= 3 + 10
    # The lab's policy: as long as short prompts keep coming, the long one is never even admitted,
    # however long we wait (its wait grows with the horizon: it is unbounded).
    for steps in (60, 300):
        scheduler, long, _ = run_stream("shortest_prompt_first", steps=steps)
        assert long.status == RequestStatus.WAITING and long.first_scheduled_time is None
        assert 2 * steps - len(scheduler.requests) > steps  # while plenty of short ones finished


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt, max_tokens, message", [
    ([], 4, "'x' has an empty prompt: give it at least one token"),
    ([1] * 60, 5, r"prompt \(60 tokens\) \+ max_tokens \(5\) = 65 > max_model_len=64: shorten"),
    ([1] * 64, None, "prompt of 64 tokens leaves no room under max_model_len=64"),
    ([1] * 3, 0, "max_tokens=0 must be >= 1"),
    ([1] * 40, 10, r"may need 13 KV blocks \(40 \+ 10 - 1 tokens, block_size 4\) but the cache has 12: give"),
])
def test_requests_that_can_never_be_served_are_rejected(prompt, max_tokens, message):
    scheduler, runner = make(num_blocks=12)
    with pytest.raises(ValueError, match=message):
        add(scheduler, "x", prompt, max_tokens=max_tokens)
    assert not scheduler.has_unfinished_requests()
    ok = add(scheduler, "x", [1, 2, 3], max_tokens=2)  # the scheduler stays usable (and the id free)
    runner.run_until_done()
    assert ok.status == RequestStatus.FINISHED
    add(scheduler, "y", [1])
    with pytest.raises(ValueError, match="request id 'y' is already in use"):
        add(scheduler, "y", [2])
    with pytest.raises(ValueError, match="request 'x' has status finished and 2 output tokens"):
        scheduler.add_request(ok)  # a finished request is not queued again


def test_bad_token_ids_are_rejected():
    with pytest.raises(TypeError):
        Request("r", [1, 2.5], Params())


@pytest.mark.parametrize("config, message", [
    (dict(max_num_seqs=0), "max_num_seqs=0 must be >= 1"),
    (dict(max_num_batched_tokens=0), "max_num_batched_tokens=0"),
    (dict(policy="lifo"), "policy='lifo' is unknown: use 'fcfs' or 'shortest_prompt_first'"),
    (dict(enable_chunked_prefill=False, max_num_batched_tokens=100, max_model_len=200),
     "max_num_batched_tokens=100: raise it, lower max_model_len or enable chunked prefill"),
    (dict(enable_chunked_prefill=False, long_prefill_token_threshold=8), "set enable_chunked_prefill=True"),
    (dict(long_prefill_token_threshold=-1), "long_prefill_token_threshold=-1 must be >= 0"),
])
def test_bad_configs(config, message):
    with pytest.raises(ValueError, match=message):
        SchedulerConfig(**config)


# ---- load and randomized sequences ---------------------------------------------------------------


def test_load_200_requests_through_a_cache_that_holds_about_10():
    rng = random.Random(0)
    scheduler, runner = make(num_blocks=60, block_size=4, max_num_seqs=32, max_num_batched_tokens=64)
    system = [rng.randrange(1000) for _ in range(8)]  # half the prompts share it: prefix hits
    requests = []
    for i in range(200):
        prompt = [rng.randrange(1000) for _ in range(rng.randint(4, 20))]
        prompt = system + prompt if i % 2 else prompt
        requests.append(Request(f"r{i}", prompt, Params(max_tokens=rng.randint(4, 20)), eos_token_id=0))
    pending = list(requests)
    while pending or scheduler.has_unfinished_requests():
        for _ in range(min(10, len(pending))):  # 10 arrive per step until all 200 are in
            scheduler.add_request(pending.pop(0))
        runner.step()
        check_cache(scheduler.kv_cache)
    assert all(r.status == RequestStatus.FINISHED for r in requests)
    assert scheduler.num_preemptions > 0 and sum(r.num_cached_tokens > 0 for r in requests) > 0
    for r in requests:
        assert r.output_token_ids == reference_output(r.prompt_token_ids, r.sampling_params, 0, 1000, 64)
    assert scheduler.kv_cache.num_free_blocks == 60 and not scheduler.kv_cache.block_tables


class SchedulerMachine(RuleBasedStateMachine):
    """Random configurations and random sequences of add / step / abort, checked after every rule."""

    MAX_MODEL_LEN = 16

    @initialize(block_size=st.sampled_from([1, 2, 4]), num_blocks=st.integers(1, 24),
                max_num_seqs=st.integers(1, 6), budget=st.integers(1, 24), chunked=st.booleans(),
                threshold=st.sampled_from([0, 0, 3]), prefix=st.booleans(),
                policy=st.sampled_from(["fcfs", "shortest_prompt_first"]))
    def setup(self, block_size, num_blocks, max_num_seqs, budget, chunked, threshold, prefix, policy):
        if not chunked:
            budget, threshold = max(budget, self.MAX_MODEL_LEN), 0
        config = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                                 max_model_len=self.MAX_MODEL_LEN, enable_chunked_prefill=chunked,
                                 long_prefill_token_threshold=threshold, policy=policy)
        self.kv = PagedKVCache(1, 1, 1, num_blocks, block_size, enable_prefix_caching=prefix)
        self.scheduler = Scheduler(config, self.kv)
        self.runner = FakeRunner(self.scheduler, vocab=4)
        self.added: list[Request] = []

    @rule(prompt=st.lists(st.integers(0, 3), max_size=14), max_tokens=st.integers(0, 8),
          ignore_eos=st.booleans())
    def add(self, prompt, max_tokens, ignore_eos):
        request = Request(f"r{len(self.added)}.{len(prompt)}", prompt, Params(max_tokens, ignore_eos),
                          eos_token_id=3)
        n = len(prompt) + max_tokens
        fits = (prompt and max_tokens >= 1 and n <= self.MAX_MODEL_LEN
                and -(-(n - 1) // self.kv.block_size) <= self.kv.num_blocks)
        if not fits:
            with pytest.raises(ValueError):
                self.scheduler.add_request(request)
            return
        self.scheduler.add_request(request)
        self.added.append(request)

    @rule()
    def step(self):
        self.runner.step()

    @precondition(lambda self: self.scheduler.requests)
    @rule(data=st.data())
    def abort(self, data):
        rid = data.draw(st.sampled_from(sorted(self.scheduler.requests)))
        assert self.scheduler.abort_request(rid).status == RequestStatus.CANCELLED

    @invariant()
    def consistent(self):
        check_cache(self.kv)
        s = self.scheduler
        assert len(s.running) <= s.config.max_num_seqs
        assert all(r.status == RequestStatus.RUNNING for r in s.running)
        assert all(r.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED) for r in s.waiting)
        assert {r.request_id for r in s.running} == set(self.kv.block_tables)  # only running hold blocks
        assert {r.request_id for r in [*s.running, *s.waiting]} == set(s.requests)
        assert len(s.running) + len(s.waiting) == len(s.requests)

    def teardown(self):
        self.runner.run_until_done(max_steps=self.runner.steps + 5000, check=True)
        assert self.kv.num_free_blocks == self.kv.num_blocks and not self.kv.block_tables
        for r in self.added:
            assert r.is_finished
            if r.status == RequestStatus.FINISHED:  # aborted ones stop anywhere
                assert r.output_token_ids == reference_output(r.prompt_token_ids, r.sampling_params, 3, 4,
                                                              self.MAX_MODEL_LEN)


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
