"""Continuous batching: which requests run in the next step, and how many of their tokens.

What it does
- Keeps a `waiting` queue and a `running` list of `Request`s. Each `schedule()` builds one batch under
  two limits: at most `max_num_seqs` requests and at most `max_num_batched_tokens` new tokens.
  Running requests go first, oldest first (a decode is 1 token; an unfinished prefill gets its next
  chunk); waiting requests are then admitted with the tokens left over, so one batch can mix
  prefills and decodes, as in vLLM v1.
- Chunked prefill: a long prompt is computed over several steps, `num_new_tokens` at a time. Only the
  step that completes it samples a token (`ScheduledRequest.sample`).
- Admission is first-come-first-served by default: a waiting request that does not fit blocks the
  queue, so nobody overtakes it and it cannot starve. `policy="shortest_prompt_first"` reproduces the
  lab's scheduler (sort by prompt length, skip what does not fit): higher short-prompt throughput,
  but a long prompt can wait forever while short ones keep arriving.
- Preemption by recompute: when a running request needs a block and none is free, the newest running
  request gives all its blocks back and goes to the FRONT of the waiting queue (status PREEMPTED).
  Its output tokens are kept; on re-admission prompt + outputs are recomputed as one prefill (cheaply,
  when its blocks are still in the prefix cache).
- Stopping: EOS (unless ignore_eos), a stop token, max_tokens, max_model_len; `abort_request`;
  `finish_request` for reasons found outside (stop strings, found by the detokenizer).

What it does not do
- It runs no model and samples nothing: the engine turns a `SchedulerOutput` into a flat batch, runs
  the model, samples the requests whose `sample` is True and calls `update_from_output`.
- No priorities, no swapping to CPU, no speculative decoding, no parallel sampling (n > 1).

`sampling_params` is duck-typed: any object with `max_tokens` (int, or None for "until max_model_len"),
and optionally `ignore_eos` (default False) and `stop_token_ids` (default none).
"""

import enum
import operator
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from labkit.kv_cache import PagedKVCache


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # in the waiting queue, holds no blocks
    RUNNING = "running"  # holds blocks; scheduled each step while the token budget lasts
    PREEMPTED = "preempted"  # back in the waiting queue (at the front), blocks given back
    FINISHED = "finished"  # stopped normally (see finish_reason)
    CANCELLED = "cancelled"  # aborted


class FinishReason(enum.Enum):
    STOP = "stop"  # EOS, a stop token id, or a stop string (reported through finish_request)
    LENGTH = "length"  # max_tokens or max_model_len reached
    ABORT = "abort"  # abort_request


@dataclass(eq=False)
class Request:
    """One generation request and the scheduler's state for it.

    `num_computed_tokens` counts the tokens whose K/V are in the cache; the request's next step
    computes tokens from there. `all_token_ids` is prompt + outputs (kept in step with
    `output_token_ids` by `append_output_token`).
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: Any  # needs .max_tokens; .ignore_eos and .stop_token_ids are optional
    eos_token_id: int | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at the first admission
    max_tokens: int | None = None  # set by add_request from sampling_params (None: up to max_model_len)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    num_preemptions: int = 0
    finish_reason: FinishReason | None = None
    all_token_ids: list[int] = field(init=False, repr=False)

    def __post_init__(self):
        self.prompt_token_ids = [operator.index(t) for t in self.prompt_token_ids]  # ints only, a copy
        self.output_token_ids = [operator.index(t) for t in self.output_token_ids]
        self.all_token_ids = self.prompt_token_ids + self.output_token_ids

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status in (RequestStatus.FINISHED, RequestStatus.CANCELLED)

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 64  # requests in one batch; bounds the running list
    max_num_batched_tokens: int = 2048  # new tokens in one batch (decodes + prefill chunks): step cost
    max_model_len: int = 2048  # prompt + output tokens of one request
    enable_chunked_prefill: bool = True  # split long prompts over steps; else a prompt is one piece
    long_prefill_token_threshold: int = 0  # >0: at most this many tokens of one prefill per step
    policy: str = "fcfs"  # "fcfs" | "shortest_prompt_first" (the lab's; can starve long prompts)

    def __post_init__(self):
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.long_prefill_token_threshold < 0:
            raise ValueError(f"long_prefill_token_threshold={self.long_prefill_token_threshold} must "
                             f"be >= 0 (0 turns the cap off)")
        if self.long_prefill_token_threshold and not self.enable_chunked_prefill:
            raise ValueError("long_prefill_token_threshold caps prefill chunks: set "
                             "enable_chunked_prefill=True or the threshold to 0")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(f"without chunked prefill a whole prompt of up to max_model_len="
                             f"{self.max_model_len} tokens must fit one batch, but max_num_batched_tokens="
                             f"{self.max_num_batched_tokens}: raise it, lower max_model_len or enable "
                             f"chunked prefill")
        if self.policy not in ("fcfs", "shortest_prompt_first"):
            raise ValueError(f"policy={self.policy!r} is unknown: use 'fcfs' or 'shortest_prompt_first'")


@dataclass
class ScheduledRequest:
    """One request's part of the step: compute tokens [num_computed_tokens, + num_new_tokens)."""

    request: Request
    num_computed_tokens: int  # tokens already in the KV cache: the context before this step
    num_new_tokens: int  # query length this step: 1 for a decode, k for a prefill chunk
    token_ids: list[int]  # the new tokens' ids, all_token_ids[num_computed : num_computed + num_new]
    block_table: list[int]  # the request's physical blocks, covering every position up to the end
    slot_mapping: list[int]  # where the new tokens' K/V go: one slot per new token
    sample: bool  # True when this step computes the last known token: sample the next one

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def seq_len(self) -> int:
        """Context length after this step (what attention's seq_lens wants)."""
        return self.num_computed_tokens + self.num_new_tokens

    @property
    def is_decode(self) -> bool:
        """One new token after the prompt (a decode), as opposed to (a chunk of) a prefill."""
        return self.num_new_tokens == 1 and self.num_computed_tokens >= self.request.num_prompt_tokens


@dataclass
class SchedulerOutput:
    """One step's batch. What the engine does with it:

    1. Flatten `scheduled` in order: input ids = concat(s.token_ids); positions = concat(range(
       s.num_computed_tokens, s.seq_len)); slot_mapping = concat(s.slot_mapping); query_start_loc =
       cumsum([0] + [s.num_new_tokens]); seq_lens = [s.seq_len]; block_tables = [s.block_table]
       padded with -1 to (num_seqs, max_blocks).
    2. Run the model; take the logits of each row with `s.sample` (its last token, at
       query_start_loc[i + 1] - 1) and sample with `s.request.sampling_params`.
    3. `scheduler.update_from_output(output, {s.request_id: token for the sampled rows})`, then
       detokenize; a stop string found there ends a request with `finish_request(id, "stop")`.
    4. Drop per-request state (e.g. generators) of `finished_request_ids`.
    """

    scheduled: list[ScheduledRequest]  # batch order: running (oldest first), then newly admitted
    preempted_request_ids: list[str]  # preempted during this schedule()
    finished_request_ids: set[str]  # finished or aborted since the previous schedule(): drop their state

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    """Continuous batching with chunked prefill, FCFS admission and preemption by recompute."""

    def __init__(self, config: SchedulerConfig, kv_cache: PagedKVCache):
        self.config = config
        self.kv_cache = kv_cache
        self.waiting: deque[Request] = deque()  # admission order; preempted requests at the front
        self.running: list[Request] = []  # admission order; the newest (last) is preempted first
        self.requests: dict[str, Request] = {}  # every unfinished request, by id
        self.num_preemptions = 0  # in total, over all requests
        self._finished_ids: set[str] = set()  # finished since the last schedule()

    # ---- requests in and out -----------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        """Queue a request. ValueError (and nothing changes) if it could never be served."""
        self._check_request(request)
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def _check_request(self, request: Request) -> None:
        rid, num_prompt, max_len = request.request_id, request.num_prompt_tokens, self.config.max_model_len
        if rid in self.requests:
            raise ValueError(f"request id {rid!r} is already in use: give each request a unique id")
        if request.status != RequestStatus.WAITING or request.output_token_ids:
            raise ValueError(f"request {rid!r} has status {request.status.value} and "
                             f"{request.num_output_tokens} output tokens: add a new Request instead")
        if num_prompt == 0:
            raise ValueError(f"request {rid!r} has an empty prompt: give it at least one token (e.g. BOS)")
        max_tokens = request.sampling_params.max_tokens
        if max_tokens is None:
            if num_prompt >= max_len:
                raise ValueError(f"request {rid!r}: its prompt of {num_prompt} tokens leaves no room under "
                                 f"max_model_len={max_len}: shorten the prompt or raise max_model_len")
            max_tokens = max_len - num_prompt
        if max_tokens < 1:
            raise ValueError(f"request {rid!r}: max_tokens={max_tokens} must be >= 1: ask for at least "
                             f"one token")
        if num_prompt + max_tokens > max_len:
            raise ValueError(f"request {rid!r}: prompt ({num_prompt} tokens) + max_tokens ({max_tokens}) = "
                             f"{num_prompt + max_tokens} > max_model_len={max_len}: shorten the prompt, "
                             f"lower max_tokens or raise max_model_len")
        # The last sampled token is never fed back, so at most prompt + max_tokens - 1 positions.
        needed = self.kv_cache.num_blocks_needed(num_prompt + max_tokens - 1)
        if needed > self.kv_cache.num_blocks:
            raise ValueError(f"request {rid!r} may need {needed} KV blocks ({num_prompt} + {max_tokens} - 1 "
                             f"tokens, block_size {self.kv_cache.block_size}) but the cache has "
                             f"{self.kv_cache.num_blocks}: give the cache more memory or blocks, or "
                             f"shorten the prompt or max_tokens")
        request.max_tokens = max_tokens

    def abort_request(self, request_id: str) -> Request:
        """Cancel an unfinished request (waiting or running) and free its blocks."""
        return self.finish_request(request_id, FinishReason.ABORT)

    def finish_request(self, request_id: str, reason: FinishReason | str) -> Request:
        """End an unfinished request for a reason found outside the scheduler (stop string, abort)."""
        if request_id not in self.requests:
            raise KeyError(f"no unfinished request {request_id!r}: it was never added, or already "
                           f"finished or aborted")
        request = self.requests[request_id]
        self._finish(request, FinishReason(reason))
        return request

    def _finish(self, request: Request, reason: FinishReason) -> None:
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
            self.kv_cache.free(request.request_id)
        else:  # waiting or preempted: in the waiting queue, holding no blocks
            self.waiting.remove(request)
        request.status = RequestStatus.CANCELLED if reason == FinishReason.ABORT else RequestStatus.FINISHED
        request.finish_reason = reason
        request.finished_time = time.monotonic()
        del self.requests[request.request_id]
        self._finished_ids.add(request.request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    # ---- one step ----------------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Choose this step's batch and reserve KV slots for every token in it."""
        budget = self.config.max_num_batched_tokens  # new tokens still allowed in this batch
        scheduled: list[ScheduledRequest] = []
        preempted: list[Request] = []

        # 1. Running requests, oldest first: each gets a decode or its next prefill chunk.
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = self._chunk(request.num_tokens - request.num_computed_tokens, budget)
            if not self._allocate_or_preempt(request, num_new, preempted):
                break  # it preempted itself: it was the newest, so no running request is left after it
            scheduled.append(self._scheduled(request, num_new))
            budget -= num_new
            i += 1

        # 2. Waiting requests, with what is left (not after a preemption: memory is short already).
        if not preempted:
            for request in self._admission_order():
                if budget == 0 or len(self.running) == self.config.max_num_seqs:
                    break
                admitted = self._admit(request, budget)
                if admitted is None and self.config.policy == "fcfs":
                    break  # no one overtakes a request that does not fit, so it cannot starve
                if admitted is not None:  # (the lab's policy simply skips one that does not fit)
                    scheduled.append(admitted)
                    budget -= admitted.num_new_tokens

        finished, self._finished_ids = self._finished_ids, set()
        return SchedulerOutput(scheduled, [r.request_id for r in preempted], finished)

    def _chunk(self, num_tokens: int, budget: int) -> int:
        """How many of a request's `num_tokens` uncomputed tokens to compute this step."""
        threshold = self.config.long_prefill_token_threshold
        return min(num_tokens, budget, threshold) if threshold else min(num_tokens, budget)

    def _allocate_or_preempt(self, request: Request, num_new: int, preempted: list[Request]) -> bool:
        """Reserve slots for the request's next `num_new` tokens, preempting the newest running
        requests until they fit. False if the request had to preempt itself."""
        while not self.kv_cache.allocate_slots(request.request_id, request.all_token_ids,
                                               request.num_computed_tokens, num_new):
            victim = self.running.pop()
            self._preempt(victim)
            preempted.append(victim)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request) -> None:
        self.kv_cache.free(request.request_id)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0  # recompute prompt + outputs on re-admission
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)  # victims are taken newest first, so the oldest ends up in front

    def _admission_order(self) -> list[Request]:
        if self.config.policy == "shortest_prompt_first":
            return sorted(self.waiting, key=lambda r: r.num_prompt_tokens)  # stable: ties by arrival
        return list(self.waiting)

    def _admit(self, request: Request, budget: int) -> ScheduledRequest | None:
        """Move a waiting request to running with its first chunk, or None if it does not fit now."""
        computed_blocks, num_cached = self.kv_cache.get_computed_blocks(request.all_token_ids)
        num_new = request.num_tokens - num_cached
        if not self.config.enable_chunked_prefill and num_new > budget:
            return None
        num_new = self._chunk(num_new, budget)
        if not self.kv_cache.allocate_slots(request.request_id, request.all_token_ids, num_cached,
                                            num_new, computed_blocks):
            return None
        self.waiting.remove(request)
        self.running.append(request)
        request.status = RequestStatus.RUNNING
        request.num_computed_tokens = num_cached
        if request.first_scheduled_time is None:
            request.first_scheduled_time = time.monotonic()
            request.num_cached_tokens = num_cached
        return self._scheduled(request, num_new)

    def _scheduled(self, request: Request, num_new: int) -> ScheduledRequest:
        start, end = request.num_computed_tokens, request.num_computed_tokens + num_new
        return ScheduledRequest(
            request=request,
            num_computed_tokens=start,
            num_new_tokens=num_new,
            token_ids=request.all_token_ids[start:end],
            block_table=self.kv_cache.block_table(request.request_id),
            slot_mapping=self.kv_cache.slot_mapping(request.request_id, start, end),
            sample=end == request.num_tokens,
        )

    # ---- after the model ran -----------------------------------------------------------------------

    def update_from_output(self, scheduler_output: SchedulerOutput,
                           sampled_token_ids: dict[str, int]) -> list[Request]:
        """Record a finished step: advance num_computed_tokens, append the sampled tokens (one for each
        request with `sample` True), stop requests that are done. Returns the newly finished ones."""
        newly_finished = []
        for s in scheduler_output.scheduled:
            request = s.request
            if request.is_finished:
                continue  # aborted between schedule() and now: its token, if any, is dropped
            assert request.num_computed_tokens == s.num_computed_tokens, "update_from_output called twice?"
            request.num_computed_tokens += s.num_new_tokens
            if not s.sample:
                if s.request_id in sampled_token_ids:
                    raise ValueError(f"request {s.request_id!r} was a partial prefill this step and must "
                                     f"not be sampled: sample only the requests whose `sample` is True")
                continue
            if s.request_id not in sampled_token_ids:
                raise KeyError(f"no sampled token for request {s.request_id!r}, whose `sample` is True")
            token_id = operator.index(sampled_token_ids[s.request_id])
            request.append_output_token(token_id)
            if request.first_token_time is None:
                request.first_token_time = time.monotonic()
            reason = self._check_stop(request, token_id)
            if reason is not None:
                self._finish(request, reason)
                newly_finished.append(request)
        return newly_finished

    def _check_stop(self, request: Request, token_id: int) -> FinishReason | None:
        params = request.sampling_params
        if token_id == request.eos_token_id and not getattr(params, "ignore_eos", False):
            return FinishReason.STOP
        if token_id in (getattr(params, "stop_token_ids", None) or ()):
            return FinishReason.STOP
        if request.num_output_tokens >= request.max_tokens or request.num_tokens >= self.config.max_model_len:
            return FinishReason.LENGTH
        return None
