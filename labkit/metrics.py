"""What the engine measures: per-request latencies and the per-step timeline.

`RequestMetrics` is a read-only view of the scheduler's `Request`, which records each time where
its event happens (arrival, first scheduled, each token, finish); the derived latencies are
properties. `StepStats` is one row of `LLMEngine.timeline`, one per `step()`, for plots.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labkit.scheduler import Request


class RequestMetrics:
    """Times (time.monotonic seconds) and counts of one request, read from its Request record."""

    def __init__(self, request: Request):
        self._request = request

    arrival_time = property(lambda self: self._request.arrival_time)
    first_scheduled_time = property(lambda self: self._request.first_scheduled_time)
    first_token_time = property(lambda self: self._request.first_token_time)
    last_token_time = property(lambda self: self._request.last_token_time)
    finished_time = property(lambda self: self._request.finished_time)
    num_prompt_tokens = property(lambda self: self._request.num_prompt_tokens)
    num_output_tokens = property(lambda self: self._request.num_output_tokens)
    num_cached_tokens = property(lambda self: self._request.num_cached_tokens)  # prefix-cache hits
    num_preemptions = property(lambda self: self._request.num_preemptions)

    @property
    def queue_time(self) -> float | None:
        """Seconds from arrival to the first step that ran it."""
        return _since(self.arrival_time, self.first_scheduled_time)

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from arrival to the first output token (queue + prefill)."""
        return _since(self.arrival_time, self.first_token_time)

    @property
    def time_per_output_token(self) -> float | None:
        """Mean seconds between output tokens after the first (None with fewer than 2 tokens)."""
        if self.num_output_tokens < 2 or self.first_token_time is None:
            return None
        return (self.last_token_time - self.first_token_time) / (self.num_output_tokens - 1)

    @property
    def e2e_latency(self) -> float | None:
        return _since(self.arrival_time, self.finished_time)

    def __repr__(self) -> str:
        return f"RequestMetrics(ttft={self.time_to_first_token}, e2e={self.e2e_latency})"


def _since(start: float, end: float | None) -> float | None:
    return None if end is None else end - start


@dataclass
class StepStats:
    """One row of the per-step timeline (for plots)."""

    step: int
    start_time: float  # seconds since the engine was created (or its timeline reset)
    duration_s: float
    num_seqs: int  # requests in the batch
    num_prefill_tokens: int  # prompt (or recomputed) tokens run this step
    num_decode_tokens: int  # generated tokens fed back (1 per decoding request)
    num_sampled: int  # tokens sampled
    num_running: int  # requests holding blocks after scheduling
    num_waiting: int  # requests queued after scheduling
    num_blocks_used: int  # KV blocks held by requests after scheduling
    num_blocks_total: int
    num_preempted: int  # requests preempted while scheduling this step
    num_finished: int  # requests that finished in this step


def timeline_columns(timeline: list[StepStats]) -> dict[str, list]:
    """The timeline as columns {field: [value per step]}, ready for plotting or a DataFrame."""
    return {f.name: [getattr(s, f.name) for s in timeline] for f in fields(StepStats)}


__all__ = ["RequestMetrics", "StepStats", "timeline_columns"]
