"""labkit.viz.memory: every figure draws, and draws the numbers labkit computes."""

import io

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from labkit import memory, viz
from labkit.fragmentation import WorkloadConfig, compare_policies, make_workload, waste_vs_block_size

matplotlib.use("Agg")


def render(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    return buf.getvalue()


@pytest.fixture(scope="module")
def small_runs():
    workload = make_workload(WorkloadConfig(num_requests=80, arrival_rate=4.0, seed=2))
    return workload, compare_policies(workload, 8192, max_model_len=2048)


def test_kv_cache_scaling_plots_the_calculator_values():
    fig = viz.plot_kv_cache_scaling("llama-3-8b", seq_lens=[512, 2048, 8192], batch_sizes=(1, 64),
                                    gpu="H100-SXM")
    assert isinstance(fig, Figure) and render(fig).startswith(b"\x89PNG")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3  # two batch sizes and the GPU's KV budget
    assert np.allclose(lines[1].get_ydata(), [4, 16, 64])  # batch 64: 16 GiB at 2,048 tokens
    budget = memory.kv_cache_budget("llama-3-8b", "H100-SXM") / 2**30
    assert np.allclose(lines[2].get_ydata(), budget)


def test_footprint_breakdown_bars_add_up_to_the_footprints():
    fig = viz.plot_footprint_breakdown("llama-2-13b", 1, 2048, weight_dtypes=("bf16", "int4"))
    render(fig)
    ax = fig.axes[0]
    assert len(ax.get_xticks()) == 3  # training, inference bf16, inference int4
    tops = {}
    for patch in ax.patches:
        x = round(patch.get_x() + patch.get_width() / 2)
        tops[x] = max(tops.get(x, 0), patch.get_y() + patch.get_height())
    training = memory.training_footprint("llama-2-13b", 1, 2048).total / 1e9
    int4 = memory.inference_footprint("llama-2-13b", 1, 2048, weight_dtype="int4", group_size=128).total / 1e9
    assert tops[0] == pytest.approx(training) and tops[2] == pytest.approx(int4)


def test_utilization_over_time_one_panel_per_policy(small_runs):
    _, runs = small_runs
    fig = viz.plot_utilization_over_time(runs)
    render(fig)
    assert len(fig.axes) == len(runs)
    for ax, name in zip(fig.axes, runs):
        assert ax.get_title().startswith(name)
        assert len(ax.collections) == 5  # live, reserved, internal, external, free
    with pytest.raises(ValueError, match="results is empty"):
        viz.plot_utilization_over_time({})


def test_waste_vs_block_size_plots_the_summaries(small_runs):
    workload, _ = small_runs
    summaries = waste_vs_block_size(workload, 8192, [4, 16, 64])
    fig = viz.plot_waste_vs_block_size(summaries)
    render(fig)
    waste_line = fig.axes[0].get_lines()[0]
    assert list(waste_line.get_xdata()) == [4, 16, 64]
    assert np.allclose(waste_line.get_ydata(), [100 * s.waste_fraction for s in summaries])
    contiguous = compare_policies(workload, 8192, policies=["reserve_max"])["reserve_max"].summary()
    with pytest.raises(ValueError, match="no paged summaries"):
        viz.plot_waste_vs_block_size([contiguous])


def test_figures_need_no_pyplot_state():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    viz.plot_kv_cache_scaling()
    viz.plot_footprint_breakdown()
    assert plt.get_fignums() == before  # nothing left for a notebook to show twice
