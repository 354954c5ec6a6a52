"""Chapter 5 (the engine): the real timeline of a run as a Gantt chart, and batching strategies measured.

    plot_gantt(engine.scheduler.history, engine.timeline)   # one row per request, one cell per step
    rows = batching_comparison(make_engine, prompts, params, batch_size=4)
    plot_batching(rows)

`history` is what `labkit.exercises.ch5.StudentScheduler` records each step ([(request id,
num_computed_tokens, num_new_tokens, sample)], preempted ids); `timeline` is `LLMEngine.timeline`
(one StepStats per step, with its start time and duration). Nothing here runs a model of its own
except `batching_comparison`, which times the engines it is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = ["batching_comparison", "plot_batching", "plot_gantt"]

_PREFILL, _DECODE, _PREEMPT = "#1c7ed6", "#2f9e44", "#e03131"


def plot_gantt(history: Sequence[tuple[list, list]], timeline: Sequence[Any], title: str = "") -> Figure:
    """Each request's steps on the engine's clock: blue = prefill (or recomputation after a preemption),
    green = decode, a red cross = preempted at that step. Bar width = the step's measured duration."""
    rows: dict[str, int] = {}
    for scheduled, preempted in history:
        for rid, *_ in scheduled:
            rows.setdefault(rid, len(rows))
        for rid in preempted:
            rows.setdefault(rid, len(rows))
    fig = Figure(figsize=(10, 0.45 * len(rows) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    t0 = timeline[0].start_time if timeline else 0.0
    for (scheduled, preempted), stats in zip(history, timeline):
        x, w = (stats.start_time - t0) * 1e3, stats.duration_s * 1e3
        for rid, computed, new, _ in scheduled:
            decode = new == 1 and computed > 0
            ax.barh(rows[rid], w, left=x, height=0.7, color=_DECODE if decode else _PREFILL,
                    alpha=0.9 if decode else 0.9, edgecolor="white", linewidth=0.3)
            if not decode:
                ax.text(x + w / 2, rows[rid], str(new), ha="center", va="center", fontsize=6, color="white")
        for rid in preempted:
            ax.plot(x, rows[rid], marker="x", color=_PREEMPT, markersize=9, mew=2)
    ax.set_yticks(range(len(rows)), list(rows))
    ax.invert_yaxis()
    ax.set(xlabel="engine time (ms)", ylabel="request",
           title=title or f"{len(history)} steps, {len(rows)} requests (numbers: tokens of a prefill chunk)")
    fig.legend(handles=[Patch(color=_PREFILL, label="prefill / recompute"), Patch(color=_DECODE, label="decode"),
                       Patch(color=_PREEMPT, label="preempted (x)")], fontsize=8, loc="outside right upper")
    return fig


def batching_comparison(make_engine: Callable[[int], Any], prompts: Sequence[Any], params: Sequence[Any],
                        batch_size: int) -> list[dict[str, Any]]:
    """Static batching (groups of batch_size run to completion, one after another) against continuous
    batching (all queued, at most batch_size running), on the same requests. make_engine(max_num_seqs)
    returns a fresh LLMEngine. Rows: strategy, seconds, steps, tokens, tokens/s, and the outputs."""
    rows = []
    for strategy in ("static", "continuous"):
        engine = make_engine(batch_size)
        outputs, steps = [], 0
        start = time.perf_counter()
        groups = ([range(i, min(i + batch_size, len(prompts))) for i in range(0, len(prompts), batch_size)]
                  if strategy == "static" else [range(len(prompts))])
        for group in groups:
            outputs += engine.generate([prompts[i] for i in group], [params[i] for i in group], use_tqdm=False)
            steps = len(engine.timeline)
        seconds = time.perf_counter() - start
        tokens = sum(len(o.token_ids) for o in outputs)
        rows.append({"strategy": strategy, "seconds": seconds, "steps": steps, "tokens": tokens,
                     "tokens/s": tokens / seconds, "outputs": [o.token_ids for o in outputs]})
    return rows


def plot_batching(rows: Sequence[dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(8, 3), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    names = [r["strategy"] for r in rows]
    ax1.bar(names, [r["steps"] for r in rows], color=["#adb5bd", "#1c7ed6"])
    ax1.set(ylabel="engine steps", title="steps to serve every request")
    ax2.bar(names, [r["tokens/s"] for r in rows], color=["#adb5bd", "#1c7ed6"])
    ax2.set(ylabel="output tokens / s", title="throughput (this machine)")
    return fig
