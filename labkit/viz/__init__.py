"""Figures used by the notebooks; each submodule holds one chapter's figures and returns
matplotlib Figures. Nothing in labkit imports this package."""

from labkit.viz.memory import (
    plot_footprint_breakdown,
    plot_kv_cache_scaling,
    plot_utilization_over_time,
    plot_waste_vs_block_size,
)

__all__ = [
    "plot_footprint_breakdown",
    "plot_kv_cache_scaling",
    "plot_utilization_over_time",
    "plot_waste_vs_block_size",
]
