"""Figures for chapters 2-4: KV cache scaling, footprint breakdown, KV utilization per policy, and
paged waste against block size.

Each function returns a matplotlib `Figure` built without pyplot (no global state, so a notebook
shows it once, as the cell's value). Numbers come from `labkit.memory` and `labkit.fragmentation`;
nothing here computes a figure of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from labkit import memory
from labkit.fragmentation import SimResult, SimSummary

__all__ = ["plot_footprint_breakdown", "plot_kv_cache_scaling", "plot_utilization_over_time",
           "plot_waste_vs_block_size"]

_CATEGORIES = ("live", "reserved", "internal", "external", "free")
_CATEGORY_COLORS = ("#2b8a3e", "#f08c00", "#e03131", "#862e9c", "#dee2e6")
_COMPONENT_COLORS = {"weights": "#1c7ed6", "gradients": "#f08c00", "master_weights": "#fab005",
                     "optimizer_states": "#e03131", "activations": "#7048e8", "kv_cache": "#2b8a3e"}


def plot_kv_cache_scaling(shape: memory.ModelShape | str = "llama-3-8b",
                          seq_lens: Sequence[int] | None = None,
                          batch_sizes: Sequence[int] = (1, 4, 16, 64), *, kv_dtype: Any = "fp16",
                          gpu: memory.GPUSpec | str | None = None, weight_dtype: Any = "bf16",
                          gpu_memory_utilization: float = 0.9) -> Figure:
    """KV cache (GiB) against sequence length, one line per batch size; with `gpu`, a horizontal
    line at the memory left for the KV cache after the weights."""
    shape = shape if isinstance(shape, memory.ModelShape) else memory.get_preset(shape)
    seq_lens = list(seq_lens or [2**k for k in range(7, 16)])  # 128 ... 32,768 tokens
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for b in batch_sizes:
        gib = [memory.kv_cache_bytes(shape, s, b, kv_dtype) / 2**30 for s in seq_lens]
        ax.plot(seq_lens, gib, marker="o", ms=3, label=f"batch {b}")
    if gpu is not None:
        spec = memory.get_gpu(gpu)
        budget = memory.kv_cache_budget(shape, spec, gpu_memory_utilization=gpu_memory_utilization,
                                        weight_dtype=weight_dtype)
        ax.axhline(budget / 2**30, color="k", ls="--", lw=1,
                   label=f"{spec.name}: KV budget after {weight_dtype} weights")
    per_token = memory.kv_cache_bytes_per_token(shape, kv_dtype)
    ax.set(xscale="log", yscale="log", xlabel="sequence length (tokens)", ylabel="KV cache (GiB, 2^30 bytes)",
           title=f"{shape.name}: {memory.format_bytes(per_token, 'KiB')} per token ({kv_dtype})")
    ax.set_xticks(seq_lens, [f"{s:,}" for s in seq_lens], rotation=45)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig


def plot_footprint_breakdown(shape: memory.ModelShape | str = "llama-2-13b", batch_size: int = 1,
                             seq_len: int = 2048, *,
                             weight_dtypes: Sequence[str] = ("fp32", "bf16", "int8", "int4"),
                             recompute: str = "none", int4_group_size: int | None = 128) -> Figure:
    """Stacked bars (GB, 10^9 bytes): mixed-precision Adam training, then inference with weights in
    each of `weight_dtypes` (KV cache and activations for batch_size x seq_len in fp16)."""
    shape = shape if isinstance(shape, memory.ModelShape) else memory.get_preset(shape)
    bars = {"training\n(mixed-precision Adam)": memory.training_footprint(
        shape, batch_size, seq_len, recompute=recompute)}
    for dt in weight_dtypes:
        group = int4_group_size if memory.dtype_bytes(dt) < 1 else None
        bars[f"inference\n{dt} weights"] = memory.inference_footprint(
            shape, batch_size, seq_len, weight_dtype=dt, group_size=group)
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    for comp, color in _COMPONENT_COLORS.items():
        heights = np.array([fp.as_dict()[comp] / 1e9 for fp in bars.values()])
        if heights.any():
            ax.bar(x, heights, bottom=bottom, color=color, label=comp.replace("_", " "))
            bottom += heights
    for xi, total in zip(x, bottom):
        ax.text(xi, total, f"{total:,.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, list(bars), fontsize=8)
    params = f"{shape.num_params / 1e9:.2f}B parameters"
    ax.set(ylabel="GB (10^9 bytes)", title=f"{shape.name}: batch {batch_size} x {seq_len} tokens ({params})")
    ax.legend(fontsize=8)
    return fig


def plot_utilization_over_time(results: Mapping[str, SimResult]) -> Figure:
    """For each policy, where the KV slots go at the end of every step (stacked shares of capacity)."""
    if not results:
        raise ValueError("results is empty: pass {policy: SimResult}, e.g. from compare_policies(...)")
    fig = Figure(figsize=(8, 2.2 * len(results)), layout="constrained")
    axes = fig.subplots(len(results), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, res) in zip(axes, results.items()):
        a = res.as_arrays("step")
        shares = [a[c] / res.config.capacity_tokens for c in _CATEGORIES]
        ax.stackplot(a["step"], *shares, labels=_CATEGORIES, colors=_CATEGORY_COLORS, step="post")
        live = res.summary().live_fraction
        ax.set(ylim=(0, 1), ylabel="share of KV", title=f"{name}: {live:.1%} live while requests wait")
    axes[0].legend(loc="upper right", fontsize=7, ncol=len(_CATEGORIES))
    axes[-1].set_xlabel("decode step")
    return fig


def plot_waste_vs_block_size(summaries: Sequence[SimSummary]) -> Figure:
    """Paged KV waste (reserved + internal + external, share of capacity) against block size."""
    paged = [s for s in summaries if s.block_size is not None]
    if not paged:
        raise ValueError("no paged summaries: pass waste_vs_block_size(...) or paged SimSummary objects")
    sizes = [s.block_size for s in paged]
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(sizes, [100 * s.waste_fraction for s in paged], marker="o", label="waste (allocated, no token)")
    ax.plot(sizes, [100 * s.free_fraction for s in paged], marker="s", ls="--", label="free")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.set(xlabel="block size (tokens)", ylabel="% of KV capacity",
           title=f"paged KV cache, capacity {paged[0].capacity_tokens:,} tokens")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig
