"""Chapter 3 (the KV cache): a KV-cache calculator widget, the pure functions behind it, and figures.

    estimate = kv_cache_estimate(32, 8, 128, "fp16", seq_len=2048, batch_size=64,
                                 gpu_memory_bytes=80 * 2**30, weight_bytes=16 * 10**9)
    kv_cache_calculator()                      # ipywidgets: sliders and dropdowns -> the same numbers
    Markdown(scaling_mermaid("llama-3-8b"))    # the lab's §3.5 diagram, its numbers computed
    plot_decode_times(cached, uncached)        # per-step and cumulative time, with and without a cache

Every byte count comes from labkit.memory (kv_cache_bytes_per_token, kv_bytes_for_batch,
max_sequences, format_bytes); this module only arranges them. The graded references live there and
in labkit.fragmentation (contiguous_snapshot), not here.
What it does not do: model weights sharded over several GPUs, activation memory (pass it inside
`weight_bytes` if you want it reserved), or paged allocation (chapter 4).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure

from labkit import memory
from labkit.memory import kv_bytes_for_batch, max_sequences

__all__ = [
    "KVCacheEstimate",
    "best_probes",
    "best_steps",
    "kv_cache_calculator",
    "kv_cache_estimate",
    "plot_decode_times",
    "scaling_mermaid",
]


# ---------------------------------------------------------------------------------------- pure functions
def _kv_shape(num_layers: int, num_kv_heads: int, head_dim: int) -> memory.ModelShape:
    """A ModelShape carrying only what the KV cache depends on (layers, KV heads, head_dim)."""
    return memory.ModelShape(
        "kv-calculator",
        num_hidden_layers=num_layers,
        hidden_size=num_kv_heads * head_dim,
        num_attention_heads=num_kv_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=1,
        vocab_size=1,
        tie_word_embeddings=True,
        head_dim=head_dim,
    )


@dataclass(frozen=True)
class KVCacheEstimate:
    """What the calculator shows; every field in bytes except the counts."""

    bytes_per_token: int  # 2 (K and V) x layers x KV heads x head_dim x dtype bytes
    bytes_per_sequence: int  # x seq_len
    bytes_for_batch: int  # x batch_size
    usable_bytes: int  # int(gpu_memory_utilization x GPU memory)
    weight_bytes: int
    budget_bytes: int  # usable - weights (may be negative: the weights do not fit)
    max_sequences: int  # sequences of seq_len that fit in the budget (0 when none)
    fits: bool  # the whole batch fits next to the weights

    @property
    def batch_share_of_budget(self) -> float:
        return self.bytes_for_batch / self.budget_bytes if self.budget_bytes > 0 else float("inf")


def kv_cache_estimate(
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    kv_dtype: Any = "fp16",
    *,
    seq_len: int = 2048,
    batch_size: int = 1,
    gpu_memory_bytes: int = 80 * 2**30,
    weight_bytes: int = 0,
    gpu_memory_utilization: float = 0.9,
) -> KVCacheEstimate:
    """The calculator's numbers for one setting of its controls (pure: no widgets, no state)."""
    per_token = memory.kv_cache_bytes_per_token(_kv_shape(num_layers, num_kv_heads, head_dim), kv_dtype)
    per_seq = per_token * seq_len
    batch = kv_bytes_for_batch(per_token, [seq_len] * batch_size)
    usable = int(gpu_memory_utilization * gpu_memory_bytes)
    budget = usable - weight_bytes
    fit = (
        max_sequences(gpu_memory_bytes, weight_bytes, per_token, seq_len, gpu_memory_utilization)
        if budget > 0
        else 0
    )
    return KVCacheEstimate(per_token, per_seq, batch, usable, weight_bytes, budget, fit, budget >= batch)


# ----------------------------------------------------------------------------------------------- figures
def scaling_mermaid(
    shape: memory.ModelShape | str = "llama-3-8b",
    seq_lens: Sequence[int] = (512, 1024, 2048, 4096),
    batch_sizes: Sequence[int] = (1, 4, 16, 64),
    batch_seq_len: int = 2048,
    kv_dtype: Any = "fp16",
) -> str:
    """The lab's §3.5 diagram as Mermaid source, every number computed (binary units: the sizes are
    exact powers of two). Show it with IPython.display.Markdown."""
    s = shape if isinstance(shape, memory.ModelShape) else memory.get_preset(shape)
    per_token = memory.kv_cache_bytes_per_token(s, kv_dtype)
    fmt = lambda b: memory.format_bytes(b, _binary_unit(b), precision=2).replace(".00 ", " ")  # noqa: E731
    lines = [
        "```mermaid",
        "flowchart LR",
        f'    CFG["{s.name}<br/>L = {s.num_hidden_layers} layers<br/>H_kv = {s.num_key_value_heads} KV heads'
        f'<br/>D = {s.head_dim} head dim<br/>{memory.dtype_bytes(kv_dtype):g} bytes ({kv_dtype})"]',
        f'    TOK["per token<br/>2 x L x H_kv x D x bytes<br/>= {per_token:,} B = {fmt(per_token)}"]',
        "    CFG --> TOK",
        '    subgraph SEQ ["one sequence"]',
    ]
    lines += [f'        S{i}["{n:,} tokens: {fmt(per_token * n)}"]' for i, n in enumerate(seq_lens)]
    lines += ["    end", f'    subgraph BATCH ["batch of {batch_seq_len:,}-token sequences"]']
    lines += [
        f'        B{i}["batch {b}: {fmt(memory.kv_cache_bytes(s, batch_seq_len, b, kv_dtype))}"]'
        for i, b in enumerate(batch_sizes)
    ]
    lines += ["    end", "    TOK --> SEQ", "    SEQ --> BATCH", "```"]
    return "\n".join(lines)


def _binary_unit(num_bytes: float) -> str:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if num_bytes >= memory.UNITS[unit]:
            return unit
    return "B"


def best_steps(traces: Any) -> Any:
    """One DecodeTrace whose step i took the least time step i took in any of `traces` (a trace, or a
    list of traces of the same loop): on a busy machine the best of several runs is the honest curve."""
    traces = list(traces) if isinstance(traces, (list, tuple)) else [traces]
    best = [min(t.step_seconds[i] for t in traces) for i in range(min(len(t.step_seconds) for t in traces))]
    return type(traces[0])(list(traces[0].token_ids), best, traces[0].token_forwards)


def best_probes(probes: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """(length, least seconds) for each length timed one or more times, in length order."""
    best: dict[int, float] = {}
    for length, seconds in probes:
        best[length] = min(seconds, best.get(length, float("inf")))
    return sorted(best.items())


def plot_decode_times(
    cached: Any, uncached: Any, prompt_len: int, probes: Sequence[tuple[int, float]] = ()
) -> Figure:
    """Per-step time, token-forwards per step, and cumulative time of decoding with and without a KV cache.

    cached, uncached: a labkit.measure.DecodeTrace each, or a list of traces of repeated runs (each step
    is drawn at its best time over the runs). probes: (sequence length, seconds) of single uncached steps
    at lengths the full uncached loop did not reach; a length timed several times is drawn at its best.
    x axis: the sequence length the step reads (prompt_len + step index)."""
    cached, uncached, probes = best_steps(cached), best_steps(uncached), best_probes(probes)
    fig = Figure(figsize=(14, 4), layout="constrained")
    ax1, ax3, ax2 = fig.subplots(1, 3)
    for trace, label, color in ((cached, "with KV cache", "#2b8a3e"), (uncached, "without cache", "#e03131")):
        x = [prompt_len + i for i in range(len(trace.step_seconds))]
        ax1.plot(x[1:], [1e3 * t for t in trace.step_seconds[1:]], ".", ms=3, color=color,
                 label=f"{label} ({trace.token_forwards:,} token-forwards)")
        per_step = [1] * len(x) if trace is cached else x  # positions pushed through the model at that step
        ax3.plot(x[1:], per_step[1:], color=color, label=label)
        total, cum = 0.0, []
        for t in trace.step_seconds:
            total += t
            cum.append(total)
        ax2.plot(x, cum, color=color, label=label)
    steps = sorted([t for tr in (cached, uncached) for t in tr.step_seconds[1:]] + [p[1] for p in probes])
    if steps:  # keep the axis on the typical steps
        top = max([steps[int(0.95 * (len(steps) - 1))]] + [p[1] for p in probes])
        ax1.set_ylim(0, 1.25e3 * top)
    if probes:
        ax1.plot([p[0] for p in probes], [1e3 * p[1] for p in probes], "x", color="#e03131", ms=7,
                 label="without cache: single steps, longer sequences (best of repeats)")
        ax3.plot([p[0] for p in probes], [p[0] for p in probes], "x", color="#e03131", ms=7)
    ax1.set(xlabel="tokens in the sequence at this step", ylabel="ms per step, best of repeated runs",
            title="time per decode step")
    ax3.set(xlabel="tokens in the sequence at this step", ylabel="token positions through the model",
            title="token-forwards per decode step")
    ax2.set(xlabel="tokens in the sequence at this step", ylabel="seconds since the first step",
            title="cumulative time")
    for ax in (ax1, ax2, ax3):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


# -------------------------------------------------------------------------------------------- the widget
def _estimate_html(e: KVCacheEstimate, seq_len: int, batch_size: int) -> str:
    f = memory.format_bytes
    rows = [
        ("KV per token", f"{e.bytes_per_token:,} B = {f(e.bytes_per_token, 'KiB', 1)}"),
        (f"KV per sequence ({seq_len:,} tokens)", f(e.bytes_per_sequence)),
        (f"KV for the batch ({batch_size} x {seq_len:,})", f(e.bytes_for_batch)),
        ("usable GPU memory", f(e.usable_bytes)),
        ("weights", f(e.weight_bytes)),
        (
            "left for the KV cache",
            f(e.budget_bytes) if e.budget_bytes > 0 else "nothing: the weights do not fit",
        ),
        (f"sequences of {seq_len:,} tokens that fit", f"{e.max_sequences:,}"),
    ]
    verdict = (
        "<b style='color:#2b8a3e'>the batch fits</b>"
        if e.fits
        else "<b style='color:#e03131'>the batch does NOT fit</b>"
    )
    share = min(e.batch_share_of_budget, 1.0) if e.budget_bytes > 0 else 1.0
    bar = (
        f"<div style='width:320px;height:12px;background:#dee2e6'><div style='width:{320 * share:.0f}px;"
        f"height:12px;background:{'#2b8a3e' if e.fits else '#e03131'}'></div></div>"
    )
    body = "".join(
        f"<tr><td>{html.escape(k)}</td><td style='text-align:right'>{html.escape(v)}</td></tr>"
        for k, v in rows
    )
    return f"<table>{body}</table>{verdict}: {min(e.batch_share_of_budget, 9.99):.0%} of the KV budget{bar}"


def kv_cache_calculator(preset: str = "llama-3-8b", gpu: str = "H100-SXM", weight_dtype: str = "bf16"):
    """An ipywidgets calculator: model shape, dtype, sequence length, batch and GPU -> KV memory.

    Picking a preset fills layers, KV heads and head_dim and the weights' size; every number shown is
    `kv_cache_estimate(...)` of the current controls. Returns the widget (display it as a cell's value).
    """
    import ipywidgets as w

    style = {"description_width": "150px"}
    presets = w.Dropdown(
        options=sorted(memory.PRESETS), value=preset, description="model preset", style=style
    )
    layers = w.BoundedIntText(1, min=1, max=512, description="layers", style=style)
    kv_heads = w.BoundedIntText(1, min=1, max=256, description="KV heads", style=style)
    head_dim = w.BoundedIntText(2, min=2, max=1024, step=2, description="head dim", style=style)
    kv_dtype = w.Dropdown(
        options=["fp32", "fp16", "bf16", "fp8", "int8", "int4"],
        value="fp16",
        description="KV dtype",
        style=style,
    )
    wdtype = w.Dropdown(
        options=["fp32", "bf16", "fp16", "int8", "int4"],
        value=weight_dtype,
        description="weights dtype",
        style=style,
    )
    seq_len = w.IntSlider(
        2048,
        min=128,
        max=131072,
        step=128,
        description="sequence length",
        style=style,
        continuous_update=False,
    )
    batch = w.IntSlider(1, min=1, max=512, description="batch size", style=style, continuous_update=False)
    gpus = w.Dropdown(options=sorted(memory.GPUS), value=gpu, description="GPU", style=style)
    gib = w.BoundedFloatText(80.0, min=1.0, max=4096.0, description="GPU memory (GiB)", style=style)
    util = w.FloatSlider(0.9, min=0.5, max=1.0, step=0.01, description="memory utilization", style=style)
    out = w.HTML()

    def weights() -> int:
        return memory.weight_bytes(memory.get_preset(presets.value), wdtype.value)

    def estimate() -> KVCacheEstimate:  # the numbers on display
        return kv_cache_estimate(
            layers.value,
            kv_heads.value,
            head_dim.value,
            kv_dtype.value,
            seq_len=seq_len.value,
            batch_size=batch.value,
            gpu_memory_bytes=int(gib.value * 2**30),
            weight_bytes=weights(),
            gpu_memory_utilization=util.value,
        )

    def refresh(*_: Any) -> None:
        out.value = _estimate_html(estimate(), seq_len.value, batch.value)

    def load_preset(*_: Any) -> None:
        s = memory.get_preset(presets.value)
        layers.value, kv_heads.value, head_dim.value = s.num_hidden_layers, s.num_key_value_heads, s.head_dim
        refresh()

    def load_gpu(*_: Any) -> None:
        gib.value = memory.get_gpu(gpus.value).memory_bytes / 2**30
        refresh()

    presets.observe(load_preset, "value")
    gpus.observe(load_gpu, "value")
    for control in (layers, kv_heads, head_dim, kv_dtype, wdtype, seq_len, batch, gib, util):
        control.observe(refresh, "value")
    load_preset()
    load_gpu()
    box = w.VBox(
        [
            w.HBox(
                [
                    w.VBox([presets, layers, kv_heads, head_dim, kv_dtype, wdtype]),
                    w.VBox([seq_len, batch, gpus, gib, util]),
                ]
            ),
            out,
        ]
    )
    box.estimate = estimate  # for tests and curious students
    box.controls = {
        "preset": presets,
        "layers": layers,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "kv_dtype": kv_dtype,
        "weight_dtype": wdtype,
        "seq_len": seq_len,
        "batch_size": batch,
        "gpu": gpus,
        "gpu_memory_gib": gib,
        "gpu_memory_utilization": util,
    }
    box.output = out
    return box
