"""The small protocols the engine needs from its parts, so that a student's class can replace ours.

`LLMEngine` talks to four parts, and only through the methods and attributes listed here:

    KVCache           which physical blocks each request holds, and the K/V tensors themselves
    Scheduler         who runs in the next step and how many of their tokens; stopping; preemption
    SchedulerOutput   one step's plan: a list of ScheduledRequest
    Sampler           logits -> one token id per row

Any object with these members works (they are `typing.Protocol`s: no inheritance needed, and
`isinstance(obj, Sampler)` checks the members are there, not their signatures). The reference
implementations are `labkit.kv_cache.PagedKVCache`, `labkit.scheduler.Scheduler` and
`labkit.sampler.Sampler`; `labkit.engine.check_protocol` names whatever a replacement lacks.
The reference scheduler uses only what `KVCache` names, and the engine only what `KVCache`,
`Scheduler`, `SchedulerOutput`, `ScheduledRequest` and `Sampler` name (tests/test_protocols.py plugs in
classes written from this file alone).

The requests a scheduler receives are `labkit.scheduler.Request` records, made by the engine. A
scheduler keeps them up to date: `status` (RequestStatus), `num_computed_tokens`, each sampled token
through `append_output_token` (which also records the token's time), and `finish_reason` (and
`stop_reason`, for a stop token) when it ends one; the reference scheduler also records
`first_scheduled_time`, `num_cached_tokens` and `num_preemptions`, which only the metrics read.

What is deliberately NOT in the protocols: how blocks are chosen (free lists, prefix hashing,
eviction order), how the waiting queue is ordered, how preemption victims are picked, how tokens are
drawn. Those are the parts a student writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class KVCache(Protocol):
    """Block bookkeeping plus the per-layer K/V tensors `[num_blocks, block_size, num_kv_heads, head_dim]`."""

    block_size: int  # tokens per block

    @property
    def num_blocks(self) -> int: ...  # physical blocks in the cache

    @property
    def num_free_blocks(self) -> int: ...  # blocks no request holds (cached-but-unused count as free)

    @property
    def kv_caches(self) -> list[tuple[torch.Tensor, torch.Tensor]]: ...  # (k_cache, v_cache) per layer

    def get_computed_blocks(self, token_ids: Sequence[int]) -> tuple[list[int], int]: ...

    def allocate_slots(
        self,
        request_id: str,
        token_ids: Sequence[int],
        num_computed_tokens: int,
        num_new_tokens: int,
        computed_blocks: Sequence[int] = (),
    ) -> bool: ...

    def free(self, request_id: str) -> None: ...

    def block_table(self, request_id: str) -> list[int]: ...


@runtime_checkable
class ScheduledRequest(Protocol):
    """One request's share of a step: compute its tokens [num_computed_tokens, + num_new_tokens)."""

    request_id: str
    num_computed_tokens: int  # tokens whose K/V are already in the cache (context before this step)
    num_new_tokens: int  # query rows this step: 1 for a decode, a chunk for a prefill
    token_ids: list[int]  # the ids of those new tokens
    block_table: list[int]  # physical block of each logical block, covering every position run
    sample: bool  # True when the step reaches the last known token: sample the next one


@runtime_checkable
class SchedulerOutput(Protocol):
    scheduled: Sequence[ScheduledRequest]  # batch order
    preempted_request_ids: Sequence[str]  # preempted while building this step


@runtime_checkable
class Scheduler(Protocol):
    """Continuous batching. `Request` objects are labkit.scheduler.Request (or anything alike)."""

    def add_request(self, request: Any) -> None: ...  # raises ValueError for a request that can never run

    def abort_request(self, request_id: str) -> Any: ...  # KeyError for an unknown id

    def finish_request(
        self, request_id: str, reason: Any, stop_reason: int | str | None = None
    ) -> Any: ...  # the engine found a stop string: reason FinishReason.STOP, stop_reason the string

    def schedule(self) -> SchedulerOutput: ...

    def update_from_output(
        self, scheduler_output: SchedulerOutput, sampled_token_ids: dict[str, int]
    ) -> list[Any]: ...  # -> newly finished

    def has_unfinished_requests(self) -> bool: ...


@runtime_checkable
class Sampler(Protocol):
    def sample(
        self, logits: torch.Tensor, params: list[Any], generators: list[torch.Generator | None] | None = None
    ) -> torch.Tensor:
        ...
        # logits (N, V) float, one SamplingParams and generator (or None) per row -> (N,) int64


def missing_members(obj: Any, protocol: type) -> list[str]:
    """Names a protocol asks for that `obj` does not have (empty when it satisfies the protocol)."""
    names = [n for n in dir(protocol) if not n.startswith("_")]
    names += list(getattr(protocol, "__annotations__", {}))
    return sorted({n for n in names if not hasattr(obj, n)})


__all__ = ["KVCache", "Sampler", "ScheduledRequest", "Scheduler", "SchedulerOutput", "missing_members"]
