"""Chapter 5 (the engine): references, case generators, one-call checks and the adapters that plug the
student's functions into `LLMEngine`.

The student writes plain functions (a state machine, `schedule`, `build_batch`, `update_request`,
`sample_row`); `StudentScheduler`, `StudentSampler` and `StudentModelRunner` wrap them into objects that
satisfy `labkit.protocols` without subclassing labkit's parts, and `student_engine` builds an engine
from them.
"""

from __future__ import annotations

import functools
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from labkit import grading as g
from labkit.attention import AttentionMetadata
from labkit.engine import EngineConfig, LLMEngine
from labkit.exercises.sequences import Program, check_program
from labkit.kv_cache import PagedKVCache
from labkit.runner import ModelInput, ModelRunner
from labkit.sampler import Sampler, filter_logits
from labkit.scheduler import FinishReason, Request, RequestStatus, Scheduler, SchedulerConfig

S = RequestStatus

# ---- Task 1: the request state machine --------------------------------------------------------------------

TRANSITIONS = {
    (S.WAITING, "schedule"): S.RUNNING,
    (S.WAITING, "abort"): S.CANCELLED,
    (S.RUNNING, "preempt"): S.PREEMPTED,
    (S.RUNNING, "finish"): S.FINISHED,
    (S.RUNNING, "abort"): S.CANCELLED,
    (S.PREEMPTED, "schedule"): S.RUNNING,
    (S.PREEMPTED, "abort"): S.CANCELLED,
}
EVENTS = ("schedule", "preempt", "finish", "abort")


def reference_next_status(status: RequestStatus, event: str) -> RequestStatus:
    if (status, event) not in TRANSITIONS:
        raise ValueError(f"no transition from {status.name} on {event!r}")
    return TRANSITIONS[(status, event)]


def check_next_status(next_status, hidden: bool = False) -> None:
    visible = [g.case(S.WAITING, "schedule"), g.case(S.RUNNING, "finish"), g.case(S.FINISHED, "schedule")]
    every = [g.case(s, e) for s in RequestStatus for e in EVENTS]
    g.check_function(next_status, reference_next_status, every if hidden else visible,
                     hint="a preempted request goes back to waiting and can be scheduled again; finished and "
                          "cancelled requests never move; an impossible transition raises ValueError")


# ---- what one step schedules for one request ----------------------------------------------------------------


@dataclass
class ScheduledSeq:
    """One request's share of a step (the labkit.protocols.ScheduledRequest fields)."""

    request_id: str
    num_computed_tokens: int
    num_new_tokens: int
    token_ids: list[int]
    block_table: list[int]
    sample: bool


@dataclass
class StepPlan:
    scheduled: list[ScheduledSeq]
    preempted_request_ids: list[str]


# ---- Task 4: the per-step update of one request -----------------------------------------------------------


def reference_update_request(request: Request, token_id: int, kv_cache: Any, max_model_len: int):
    """Append a sampled token; on EOS, a stop token, max_tokens or max_model_len finish the request and
    free its blocks. Returns the FinishReason or None."""
    request.append_output_token(token_id)
    params = request.sampling_params
    reason = None
    if token_id == request.eos_token_id and not getattr(params, "ignore_eos", False):
        reason = FinishReason.STOP
    elif token_id in (getattr(params, "stop_token_ids", None) or ()):
        reason = FinishReason.STOP
    elif request.num_output_tokens >= request.max_tokens or request.num_tokens >= max_model_len:
        reason = FinishReason.LENGTH
    if reason is not None:
        kv_cache.free(request.request_id)
        request.status, request.finish_reason = S.FINISHED, reason
    return reason


def _update_case(rng: random.Random) -> g.Call:
    prompt = [rng.randint(0, 5) for _ in range(rng.randint(1, 12))]
    outputs = [rng.randint(1, 5) for _ in range(rng.randint(0, 8))]
    max_tokens = len(outputs) + rng.choice([1, 1, 2, 5])
    max_model_len = len(prompt) + len(outputs) + rng.choice([1, 1, 3, 40])
    return g.case(prompt, outputs, max_tokens, rng.choice([0, 3, None]), rng.random() < 0.2,
                  rng.choice([[], [4], [2, 5]]), rng.randint(0, 5), max_model_len)


def _run_update(update_request, prompt, outputs, max_tokens, eos, ignore_eos, stop_ids, token, max_model_len):
    from labkit.sampler import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos, stop_token_ids=stop_ids)
    request = Request("r", prompt, params, eos_token_id=eos, output_token_ids=outputs)
    request.max_tokens, request.status = max_tokens, S.RUNNING
    request.num_computed_tokens = request.num_tokens
    kv = PagedKVCache(1, 1, 1, num_blocks=16, block_size=4, enable_prefix_caching=False)
    kv.allocate_slots("r", request.all_token_ids, 0, request.num_tokens)
    reason = update_request(request, token, kv, max_model_len)
    return reason, request.output_token_ids, request.status, request.finish_reason, kv.num_free_blocks


def check_update_request(update_request, hidden: bool = False) -> None:
    fixed = [g.case([1, 2], [], 1, 0, False, [], 3, 10), g.case([1, 2], [3], 5, 0, False, [], 0, 10),
             g.case([1, 2], [3], 5, 0, True, [], 0, 10), g.case([1, 2, 3], [4], 5, None, False, [], 1, 5)]
    def yours(*case):
        return _run_update(update_request, *case)

    def reference(*case):
        return _run_update(reference_update_request, *case)

    g.check_function(yours, reference, fixed + [_update_case], n=200 if hidden else 20,
                     name="update_request", forbid=[reference_update_request],
                     hint="the result is (reason, output ids, status, finish_reason, free blocks); EOS counts "
                          "unless ignore_eos; max_tokens counts output tokens, max_model_len all tokens; a "
                          "finished request frees its blocks")


# ---- the scheduler adapter -----------------------------------------------------------------------------------


class StudentScheduler:
    """A labkit.protocols.Scheduler around the student's `schedule` (and `update_request`) functions.

    Keeps the queues, the per-request bookkeeping the engine reads (first_scheduled_time, ...), and a
    `history` of every step: [(request_id, num_computed_tokens, num_new_tokens, sample), ...] and the
    preempted ids, for the Gantt chart."""

    def __init__(self, config: SchedulerConfig, kv_cache: Any, schedule_fn, update_fn=reference_update_request):
        self.config, self.kv_cache = config, kv_cache
        self.schedule_fn, self.update_fn = schedule_fn, update_fn
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.history: list[tuple[list[tuple[str, int, int, bool]], list[str]]] = []

    def add_request(self, request: Request) -> None:
        max_tokens = request.sampling_params.max_tokens
        request.max_tokens = max_tokens if max_tokens is not None else self.config.max_model_len - request.num_tokens
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish_request(self, request_id: str, reason: Any, stop_reason: int | str | None = None) -> Request:
        request = self.requests.pop(request_id)
        if request in self.running:
            self.running.remove(request)
            self.kv_cache.free(request_id)
        elif request in self.waiting:
            self.waiting.remove(request)
        reason = FinishReason(reason)
        request.status = S.CANCELLED if reason == FinishReason.ABORT else S.FINISHED
        request.finish_reason, request.finished_time = reason, time.monotonic()
        request.stop_reason = stop_reason
        return request

    def abort_request(self, request_id: str) -> Request:
        return self.finish_request(request_id, FinishReason.ABORT)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def schedule(self) -> StepPlan:
        pairs, preempted = self.schedule_fn(self.waiting, self.running, self.kv_cache, self.config.max_num_seqs,
                                            self.config.max_num_batched_tokens)
        scheduled = []
        for request, num_new in pairs:
            start = request.num_computed_tokens
            if request.first_scheduled_time is None:
                request.first_scheduled_time, request.num_cached_tokens = time.monotonic(), start
            scheduled.append(ScheduledSeq(request.request_id, start, num_new,
                                          request.all_token_ids[start:start + num_new],
                                          self.kv_cache.block_table(request.request_id),
                                          start + num_new == request.num_tokens))
        for request in preempted:
            request.num_preemptions += 1
        self.history.append(([(s.request_id, s.num_computed_tokens, s.num_new_tokens, s.sample)
                              for s in scheduled], [r.request_id for r in preempted]))
        return StepPlan(scheduled, [r.request_id for r in preempted])

    def update_from_output(self, plan: StepPlan, sampled_token_ids: dict[str, int]) -> list[Request]:
        finished = []
        for s in plan.scheduled:
            request = self.requests.get(s.request_id)
            if request is None:
                continue  # aborted since it was scheduled
            request.num_computed_tokens += s.num_new_tokens
            if not s.sample:
                continue
            token_id = int(sampled_token_ids[s.request_id])
            reason = self.update_fn(request, token_id, self.kv_cache, self.config.max_model_len)
            if reason is not None:
                if reason == FinishReason.STOP and token_id in request.sampling_params.stop_token_ids:
                    request.stop_reason = token_id  # what the engine reports (EOS leaves it None)
                self.running.remove(request)
                del self.requests[s.request_id]
                request.finished_time = time.monotonic()
                finished.append(request)
        return finished


# ---- Task 2: schedule(), checked against labkit's Scheduler on random workloads --------------------------------


def _prompt(request_id: str, group: int, length: int) -> list[int]:
    """Prompt ids: the first 8 depend only on `group` (a shared prefix), the rest on the request."""
    salt = sum(map(ord, request_id))
    return [(group * 7 + i) % 29 + 1 if i < 8 else (salt * 13 + i * 5) % 29 + 1 for i in range(length)]


def _fake_token(request_id: str, position: int) -> int:
    return (sum(map(ord, request_id)) * 31 + position * 17) % 37  # 0 is EOS: about 1 token in 37


class SchedulerHarness:
    """A scheduler (labkit's, or the student's in StudentScheduler) over a tiny PagedKVCache, stepped with a
    fake model whose sampled token depends only on (request id, position)."""

    def __init__(self, schedule_fn, num_blocks, block_size, max_num_seqs, token_budget, max_model_len=64):
        config = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=token_budget,
                                 max_model_len=max_model_len)
        kv = PagedKVCache(1, 1, 1, num_blocks=num_blocks, block_size=block_size)
        self.kv = kv
        self.scheduler = Scheduler(config, kv) if schedule_fn is None else StudentScheduler(config, kv, schedule_fn)

    def add(self, request_id: str, group: int, prompt_len: int, max_tokens: int) -> None:
        from labkit.sampler import SamplingParams

        params = SamplingParams(max_tokens=max_tokens)
        self.scheduler.add_request(Request(request_id, _prompt(request_id, group, prompt_len), params, eos_token_id=0))

    def step(self) -> tuple[list[tuple[str, int, int]], list[str]]:
        plan = self.scheduler.schedule()
        sampled = {s.request_id: _fake_token(s.request_id, s.num_computed_tokens + s.num_new_tokens)
                   for s in plan.scheduled if s.sample}
        self.scheduler.update_from_output(plan, sampled)
        return ([(s.request_id, s.num_computed_tokens, s.num_new_tokens) for s in plan.scheduled],
                list(plan.preempted_request_ids))


def _harness_state(h: SchedulerHarness) -> tuple:
    s = h.scheduler
    return [r.request_id for r in s.waiting], [r.request_id for r in s.running], h.kv.num_free_blocks


def schedule_programs(rng: random.Random, count: int, steps: int) -> list[Program]:
    programs = []
    for _ in range(count):
        block_size, num_blocks = rng.choice([2, 4, 8]), rng.randint(4, 16)
        init = (num_blocks, block_size, rng.randint(1, 4), rng.choice([4, 8, 16, 64]))
        calls, n = [], 0
        for _ in range(steps):
            if rng.random() < 0.35:
                prompt_len = rng.randint(1, 24)
                max_tokens = rng.randint(1, 12)
                while -(-(prompt_len + max_tokens - 1) // block_size) > num_blocks:
                    prompt_len, max_tokens = max(1, prompt_len // 2), max(1, max_tokens // 2)
                calls.append(("add", (f"r{n}", rng.randint(0, 2), prompt_len, max_tokens)))
                n += 1
            else:
                calls.append(("step", ()))
        programs.append(Program("Harness", init, calls))
    return programs


def check_schedule(schedule, hidden: bool = False) -> None:
    """Random workloads (arrivals, steps) on a small cache: every step's plan, preemptions and queues."""
    def programs(rng):
        fixed = Program("Harness", (4, 4, 4, 64), [("add", ("a", 0, 6, 8)), ("add", ("b", 1, 6, 8)),
                                                   ("step", ()), ("step", ()), ("step", ()), ("step", ()),
                                                   ("step", ())])
        return [fixed] + schedule_programs(rng, 40 if hidden else 10, 50 if hidden else 25)

    check_program(functools.partial(SchedulerHarness, schedule), functools.partial(SchedulerHarness, None),
                  programs, observe=_harness_state, name="schedule", forbid=[Scheduler],
                  hint="running requests first, oldest first, until the token budget is spent; when blocks run "
                       "out preempt the NEWEST running request; admit waiting requests in order (prefix hits "
                       "from get_computed_blocks) only if nobody was preempted, and stop at the first that "
                       "does not fit")


# ---- Task 3: the flat batch ------------------------------------------------------------------------------------


def reference_build_batch(scheduled: list, block_size: int) -> dict[str, list]:
    meta = AttentionMetadata.build([s.num_computed_tokens + s.num_new_tokens for s in scheduled],
                                   [s.num_new_tokens for s in scheduled], [s.block_table for s in scheduled],
                                   block_size)
    qsl = meta.query_start_loc_list
    return {
        "input_ids": [t for s in scheduled for t in s.token_ids],
        "positions": meta.positions().tolist(),
        "slot_mapping": meta.slot_mapping.tolist(),
        "query_start_loc": qsl,
        "seq_lens": meta.seq_lens_list,
        "block_tables": meta.block_tables.tolist(),
        "logits_indices": [qsl[i + 1] - 1 for i, s in enumerate(scheduled) if s.sample],
    }


def _batch_case(rng: random.Random) -> g.Call:
    block_size = rng.choice([1, 2, 4, 16])
    scheduled, used = [], rng.sample(range(200), 200)
    for i in range(rng.randint(1, 5)):
        decode = rng.random() < 0.5
        computed = rng.randint(1, 40) if decode else rng.choice([0, 0, rng.randint(0, 30)])
        new = 1 if decode else rng.randint(1, 20)
        table = [used.pop() for _ in range(-(-(computed + new) // block_size))]
        scheduled.append(ScheduledSeq(f"r{i}", computed, new, [rng.randint(0, 999) for _ in range(new)], table,
                                      decode or rng.random() < 0.7))
    return g.case(scheduled, block_size)


def check_build_batch(build_batch, hidden: bool = False) -> None:
    fixed = g.case([ScheduledSeq("a", 0, 3, [5, 6, 7], [2], True), ScheduledSeq("b", 4, 1, [9], [0, 1], True)], 4)
    g.check_function(build_batch, reference_build_batch, [fixed, _batch_case], n=80 if hidden else 15,
                     forbid=[AttentionMetadata.build, ModelRunner.prepare_inputs],
                     hint="positions continue from num_computed_tokens; the slot of position p is "
                          "block_table[p // B] * B + p % B; block tables padded with -1; the sampled row of a "
                          "request is its LAST row")


class StudentModelRunner(ModelRunner):
    """labkit's ModelRunner with the flat batch built by the student's `build_batch`."""

    def __init__(self, build_batch, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.build_batch = build_batch

    def prepare_inputs(self, scheduled) -> ModelInput:
        b, dev = self.build_batch(list(scheduled), self.block_size), self.device
        as_tensor = functools.partial(torch.tensor, device=dev)
        meta = AttentionMetadata(
            slot_mapping=as_tensor(b["slot_mapping"], dtype=torch.int64),
            query_start_loc=as_tensor(b["query_start_loc"], dtype=torch.int32),
            seq_lens=as_tensor(b["seq_lens"], dtype=torch.int32),
            block_tables=as_tensor(b["block_tables"], dtype=torch.int32),
            max_query_len=max(b - a for a, b in zip(b["query_start_loc"], b["query_start_loc"][1:])),
            max_seq_len=max(b["seq_lens"]),
        )
        rows = [i for i, s in enumerate(scheduled) if s.sample]
        return ModelInput(as_tensor(b["input_ids"], dtype=torch.int64), as_tensor(b["positions"], dtype=torch.int64),
                          meta, as_tensor(b["logits_indices"], dtype=torch.int64),
                          [scheduled[i].request_id for i in rows])


# ---- Task 5: the sampler, checked statistically ---------------------------------------------------------------

ALPHA = 1e-6  # per chi-square test; a check runs at most 10, so a correct sampler fails < 1 run in 100,000
NUM_DRAWS = 2000


class StudentSampler:
    """A labkit.protocols.Sampler that draws each row with the student's `sample_row`."""

    def __init__(self, sample_row):
        self.sample_row = sample_row

    def sample(self, logits: torch.Tensor, params: list, generators: list | None = None) -> torch.Tensor:
        generators = generators if generators is not None else [None] * len(params)
        return torch.tensor([int(self.sample_row(row, p.temperature, p.top_k, p.top_p, gen))
                             for row, p, gen in zip(logits.float(), params, generators)], dtype=torch.int64)


def reference_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> list[float]:
    """The distribution labkit's Sampler draws from, (V,) probabilities."""
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(), logits.shape[0]).double().tolist()
    kept = filter_logits(logits[None] / temperature, torch.tensor([top_k]), torch.tensor([top_p]))[0]
    return kept.double().softmax(-1).tolist()


def _draw_counts(sample_row, logits, temperature, top_k, top_p, seed) -> dict:
    gen = torch.Generator().manual_seed(seed)
    counts = [0] * logits.shape[0]
    for _ in range(NUM_DRAWS):
        counts[int(sample_row(logits.clone(), temperature, top_k, top_p, gen))] += 1
    first = [int(sample_row(logits.clone(), temperature, top_k, top_p, torch.Generator().manual_seed(seed)))
             for _ in range(2)]
    return {"counts": counts, "same seed, same token": first[0] == first[1]}


def chi_square_verdict(expected_probs: list[float], received: dict) -> str | None:
    """None when the draws fit the distribution (chi-square p-value >= ALPHA), else a sentence."""
    if not received["same seed, same token"]:
        return "two draws from generators with the same seed differ: draw with the `generator` you are given"
    counts, n = received["counts"], sum(received["counts"])
    for token, (p, c) in enumerate(zip(expected_probs, counts)):
        if p == 0 and c > 0:
            return f"token {token} was drawn {c} times but has probability 0 (temperature/top-k/top-p remove it)"
    expected = [p * n for p in expected_probs]
    cells, small_e, small_c = [], 0.0, 0  # pool cells expecting < 5 draws, as the test requires
    for e, c in zip(expected, counts):
        if e >= 5:
            cells.append((e, c))
        elif e > 0:
            small_e, small_c = small_e + e, small_c + c
    if small_e > 0:
        cells.append((small_e, small_c))
    if len(cells) < 2:
        return None
    stat = sum((c - e) ** 2 / e for e, c in cells)
    df = len(cells) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                            torch.tensor(stat / 2, dtype=torch.float64)))
    if p_value >= ALPHA:
        return None
    worst = max(range(len(counts)), key=lambda t: abs(counts[t] - expected[t]))
    return (f"the {n} draws do not follow the expected distribution (chi-square {stat:.1f} on {df} degrees of "
            f"freedom, p = {p_value:.1e} < {ALPHA:g}); e.g. token {worst}: drawn {counts[worst]} times, expected "
            f"{expected[worst]:.0f}")


def _sampler_case(rng: random.Random, temperature: float, top_k: int, top_p: float) -> g.Call:
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    return g.case(torch.randn(12, generator=gen) * 1.5, temperature, top_k, top_p, rng.randrange(2**31))


SAMPLER_PARAMS = [(1.0, -1, 1.0), (0.5, -1, 1.0), (0.0, -1, 1.0), (1.0, 3, 1.0), (1.0, -1, 0.7)]
HIDDEN_SAMPLER_PARAMS = [(2.0, -1, 1.0), (0.8, 5, 0.9), (1.3, -1, 0.5), (0.7, 1, 1.0), (1.0, 12, 0.99)]


def check_sampler(sample_row, hidden: bool = False) -> None:
    params = SAMPLER_PARAMS + (HIDDEN_SAMPLER_PARAMS if hidden else [])
    cases = [functools.partial(_sampler_case, temperature=t, top_k=k, top_p=p) for t, k, p in params]

    def reference(logits, temperature, top_k, top_p, seed):
        return reference_probs(logits, temperature, top_k, top_p)

    g.check_function(functools.partial(_draw_counts, sample_row), reference, cases, n=1, name="sample_row",
                     compare=chi_square_verdict, forbid=[Sampler, filter_logits], time_limit=60,
                     hint=f"divide the logits by the temperature BEFORE the softmax (0 = argmax); top-k keeps the k "
                          f"largest; top-p keeps the smallest prefix of the sorted distribution whose mass "
                          f"reaches top_p; draw with `generator`. The expected column is the probability of each "
                          f"token; {NUM_DRAWS} draws are compared by a chi-square test at level {ALPHA:g}")


# ---- the student's engine -------------------------------------------------------------------------------------


def student_engine(model, tokenizer, config: EngineConfig, *, schedule, build_batch, sample_row,
                   update_request=reference_update_request, kv_cache=None) -> LLMEngine:
    """LLMEngine whose scheduler, flat-batch builder and sampler are the student's functions.

    The student's parts enter through LLMEngine's own arguments (labkit.protocols)."""
    scheduler = functools.partial(StudentScheduler, schedule_fn=schedule, update_fn=update_request)

    def runner(model, kv_cache, device):
        return StudentModelRunner(build_batch, model, kv_cache.kv_caches, kv_cache.block_size, device)

    engine = LLMEngine(model, tokenizer, config, scheduler=scheduler, kv_cache=kv_cache,
                       sampler=StudentSampler(sample_row), runner=runner)
    return engine


# ---- experiment: the sort-and-skip scheduler starves a long prompt ---------------------------------------------


def starvation(policy: str, num_steps: int = 200, long_prompt: int = 160, num_blocks: int = 16,
               block_size: int = 16) -> dict[str, Any]:
    """Two 8-token prompts arrive every step (4 output tokens each) and a long prompt at step 5, with a
    fake model and no chunked prefill. Returns the step at which the long prompt first ran (None: never) and
    how many short requests finished."""
    config = SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=256, max_model_len=256,
                             enable_chunked_prefill=False, policy=policy)
    scheduler = Scheduler(config, PagedKVCache(1, 1, 1, num_blocks=num_blocks, block_size=block_size))
    from labkit.sampler import SamplingParams

    params = SamplingParams(max_tokens=4, ignore_eos=True)
    started, finished, n = None, 0, 0
    for step in range(num_steps):
        if step == 5:
            scheduler.add_request(Request("long", [1] * long_prompt, params))
        for _ in range(2):
            scheduler.add_request(Request(f"s{n}", [2 + n % 50] * 8, params))
            n += 1
        plan = scheduler.schedule()
        if started is None and any(s.request_id == "long" for s in plan.scheduled):
            started = step
        done = scheduler.update_from_output(plan, {s.request_id: 5 for s in plan.scheduled if s.sample})
        finished += sum(r.request_id != "long" for r in done)
    return {"policy": policy, "long prompt first scheduled at step": started, "short requests finished": finished}


__all__ = [
    "ALPHA",
    "StudentModelRunner",
    "StudentSampler",
    "StudentScheduler",
    "ScheduledSeq",
    "check_build_batch",
    "check_next_status",
    "check_sampler",
    "check_schedule",
    "check_update_request",
    "chi_square_verdict",
    "reference_build_batch",
    "reference_next_status",
    "reference_probs",
    "reference_update_request",
    "starvation",
    "student_engine",
]
