"""Chapter 3 (the KV cache): a KV-cache calculator widget, the pure functions behind it, and figures.

    estimate = kv_cache_estimate(32, 8, 128, "fp16", seq_len=2048, batch_size=64,
                                 gpu_memory_bytes=80 * 2**30, weight_bytes=16 * 10**9)
    kv_cache_calculator()                      # ipywidgets: sliders and dropdowns -> the same numbers
    Markdown(scaling_mermaid("llama-3-8b"))    # the lab's §3.5 diagram, its numbers computed
    plot_decode_times(cached, uncached)        # per-step and cumulative time, with and without a cache
    contiguous_snapshot([5, 9], [20, 3], "reserve_max", 64)   # slots right after admission

Every byte count comes from labkit.memory (kv_cache_bytes_per_token, dtype_bytes, format_bytes) and
every allocation count from labkit.fragmentation's simulator; this module only arranges them.
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
from labkit.fragmentation import SimConfig, SimRequest, simulate

__all__ = [
    "KVCacheEstimate",
    "contiguous_snapshot",
    "kv_bytes_for_batch",
    "kv_cache_calculator",
    "kv_cache_estimate",
    "max_sequences",
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


def kv_bytes_for_batch(bytes_per_token: int, seq_lens: Sequence[int]) -> int:
    """KV bytes of a batch whose sequences hold `seq_lens` tokens each (lengths may differ)."""
    if isinstance(bytes_per_token, bool) or not isinstance(bytes_per_token, int) or bytes_per_token < 0:
        raise ValueError(f"bytes_per_token must be an int >= 0, got {bytes_per_token!r}")
    for i, n in enumerate(seq_lens):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"seq_lens[{i}] = {n!r}: a sequence length is an int >= 0")
    return bytes_per_token * sum(seq_lens)


def max_sequences(
    gpu_memory_bytes: int,
    weight_bytes: int,
    bytes_per_token: int,
    seq_len: int,
    gpu_memory_utilization: float = 0.9,
) -> int:
    """How many sequences of `seq_len` tokens fit in the KV cache, vLLM's way: the budget is
    int(utilization x GPU memory) - weights, and each sequence keeps its whole length.

    Raises ValueError when the weights alone do not fit in the usable memory (as
    labkit.memory.kv_cache_budget does), since then not even one token fits.
    """
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
    if bytes_per_token < 1 or seq_len < 1:
        raise ValueError(f"bytes_per_token ({bytes_per_token}) and seq_len ({seq_len}) must both be >= 1")
    usable = int(gpu_memory_utilization * gpu_memory_bytes)
    budget = usable - weight_bytes
    if budget <= 0:
        raise ValueError(
            f"the weights ({memory.format_bytes(weight_bytes)}) do not fit in "
            f"{gpu_memory_utilization:.0%} of {memory.format_bytes(gpu_memory_bytes)}: use a "
            "smaller weight dtype, a bigger GPU or a higher gpu_memory_utilization"
        )
    return budget // (bytes_per_token * seq_len)


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


def contiguous_snapshot(
    prompt_lens: Sequence[int], output_lens: Sequence[int], policy: str, max_model_len: int
) -> dict[str, int]:
    """Slots of a contiguous KV allocator right after it has admitted every request (all prefilled).

    Runs labkit.fragmentation's simulator with every request arriving at step 0 and room for all,
    and returns {"live": tokens whose K/V is stored, "reserved": slots the requests' future tokens
    will fill, "internal": slots they will never fill}. policy: reserve_max, reserve_pow2, reserve_exact.
    """
    if policy == "paged" or policy not in ("reserve_max", "reserve_pow2", "reserve_exact"):
        raise ValueError(
            f"policy must be a contiguous one (reserve_max, reserve_pow2, reserve_exact), got {policy!r}"
        )
    if len(prompt_lens) != len(output_lens) or not prompt_lens:
        raise ValueError("give one prompt length and one output length per request (at least one request)")
    reqs = [SimRequest(i, 0, int(p), int(o)) for i, (p, o) in enumerate(zip(prompt_lens, output_lens))]
    config = SimConfig(policy, capacity_tokens=max_model_len * len(reqs), max_model_len=max_model_len)
    timeline = simulate(reqs, config, record="event").timeline
    admitted = [s for s in timeline if s.event == "admit" and s.num_running == len(reqs)]
    assert admitted, "the simulator did not admit every request at once"
    snap = admitted[0]
    return {"live": snap.live, "reserved": snap.reserved, "internal": snap.internal}


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


def plot_decode_times(
    cached: Any, uncached: Any, prompt_len: int, probes: Sequence[tuple[int, float]] = ()
) -> Figure:
    """Per-step and cumulative decode time with and without a KV cache.

    cached, uncached: labkit.measure.DecodeTrace (step_seconds, token_forwards). probes: extra
    (sequence length, seconds) of single uncached steps at lengths the full uncached loop did not
    reach. x axis: the sequence length the step reads (prompt_len + step index)."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for trace, label, color in ((cached, "with KV cache", "#2b8a3e"), (uncached, "without cache", "#e03131")):
        x = [prompt_len + i for i in range(len(trace.step_seconds))]
        ax1.plot(
            x[1:],
            [1e3 * t for t in trace.step_seconds[1:]],
            ".",
            ms=3,
            color=color,
            label=f"{label} ({trace.token_forwards:,} token-forwards)",
        )
        total, cum = 0.0, []
        for t in trace.step_seconds:
            total += t
            cum.append(total)
        ax2.plot(x, cum, color=color, label=label)
    steps = sorted([t for tr in (cached, uncached) for t in tr.step_seconds[1:]] + [p[1] for p in probes])
    if steps:  # a busy machine makes a few steps very slow: keep the axis on the typical ones
        top = max([steps[int(0.95 * (len(steps) - 1))]] + [p[1] for p in probes])
        ax1.set_ylim(0, 1.25e3 * top)
    if probes:
        ax1.plot(
            [p[0] for p in probes],
            [1e3 * p[1] for p in probes],
            "x",
            color="#e03131",
            ms=7,
            label="without cache: single steps, longer sequences",
        )
    ax1.set(
        xlabel="tokens in the sequence at this step",
        ylabel="ms per step (the prefill step left out)",
        title="time per decode step",
    )
    ax2.set(
        xlabel="tokens in the sequence at this step",
        ylabel="seconds since the first step",
        title="cumulative time",
    )
    for ax in (ax1, ax2):
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
