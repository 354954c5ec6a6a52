"""labkit.viz.kvcache: the KV-cache calculator's pure functions against labkit.memory and
labkit.fragmentation, the widget wired to them, the computed Mermaid diagram and the decode figure."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure

from labkit import fragmentation, measure, memory
from labkit.viz import kvcache

PRESETS = sorted(memory.PRESETS)
GPUS = sorted(memory.GPUS)


def test_llama3_8b_hand_worked():
    e = kvcache.kv_cache_estimate(32, 8, 128, "fp16", seq_len=2048, batch_size=64)
    assert e.bytes_per_token == 2 * 32 * 8 * 128 * 2  # K and V x layers x KV heads x head dim x fp16
    assert e.bytes_per_sequence == e.bytes_per_token * 2048 == 2**28  # 0.25 GiB
    assert e.bytes_for_batch == 64 * 2**28 == 16 * 2**30  # 16 GiB


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(PRESETS),
    st.sampled_from(["fp32", "fp16", "bf16", "fp8", "int8", "int4"]),
    st.integers(1, 200_000),
    st.integers(1, 512),
)
def test_estimate_agrees_with_labkit_memory(preset, dtype, seq_len, batch):
    s = memory.get_preset(preset)
    e = kvcache.kv_cache_estimate(
        s.num_hidden_layers,
        s.num_key_value_heads,
        s.head_dim,
        dtype,
        seq_len=seq_len,
        batch_size=batch,
        weight_bytes=memory.weight_bytes(s, "bf16"),
    )
    assert e.bytes_per_token == memory.kv_cache_bytes_per_token(s, dtype)
    assert e.bytes_per_sequence == memory.kv_cache_bytes(s, seq_len, 1, dtype)
    assert e.bytes_for_batch == memory.kv_cache_bytes(s, seq_len, batch, dtype)
    assert e.fits == (e.bytes_for_batch <= e.budget_bytes)
    assert (
        e.max_sequences * e.bytes_per_sequence
        <= e.budget_bytes
        < (e.max_sequences + 1) * e.bytes_per_sequence
    )


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(PRESETS),
    st.sampled_from(GPUS),
    st.sampled_from(["fp32", "bf16", "int8", "int4"]),
    st.integers(1, 131_072),
    st.sampled_from([0.5, 0.8, 0.9, 1.0]),
)
def test_max_sequences_is_vllm_rule_as_labkit_memory_computes_it(preset, gpu, wdtype, seq_len, util):
    s, spec = memory.get_preset(preset), memory.get_gpu(gpu)
    args = (
        spec.memory_bytes,
        memory.weight_bytes(s, wdtype),
        memory.kv_cache_bytes_per_token(s, "bf16"),
        seq_len,
        util,
    )
    try:
        expected = memory.max_num_seqs(s, spec, seq_len, gpu_memory_utilization=util, weight_dtype=wdtype)
    except ValueError:
        with pytest.raises(ValueError, match="do not fit"):
            memory.max_sequences(*args)
        return
    assert memory.max_sequences(*args) == expected


def test_max_sequences_rejects_bad_arguments():
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        memory.max_sequences(10**10, 0, 10, 10, gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="must both be >= 1"):
        memory.max_sequences(10**10, 0, 0, 10)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(PRESETS), st.lists(st.integers(0, 50_000), max_size=20))
def test_kv_bytes_for_batch_sums_sequences(preset, lens):
    per_token = memory.kv_cache_bytes_per_token(preset)
    expected = sum(memory.kv_cache_bytes(preset, n, 1) for n in lens if n > 0)
    assert memory.kv_bytes_for_batch(per_token, lens) == expected


def test_kv_bytes_for_batch_rejects_bad_lengths():
    with pytest.raises(ValueError, match="seq_lens\\[1\\]"):
        memory.kv_bytes_for_batch(10, [3, -1])
    with pytest.raises(ValueError, match="bytes_per_token"):
        memory.kv_bytes_for_batch(2.5, [3])


def test_contiguous_snapshot_hand_worked():
    # prompts 5 and 9, outputs 20 and 3: final lengths 25 and 12
    assert fragmentation.contiguous_snapshot([5, 9], [20, 3], "reserve_max", 64) == {
        "live": 14,
        "reserved": 23,
        "internal": (64 - 25) + (64 - 12),
    }
    assert fragmentation.contiguous_snapshot([5, 9], [20, 3], "reserve_pow2", 64) == {
        "live": 14,
        "reserved": 23,
        "internal": (32 - 25) + (16 - 12),
    }
    assert fragmentation.contiguous_snapshot([5, 9], [20, 3], "reserve_exact", 64) == {
        "live": 14,
        "reserved": 23,
        "internal": 0,
    }
    assert fragmentation.contiguous_snapshot([40], [50], "reserve_pow2", 100)["internal"] == 10  # 128 capped at 100


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_contiguous_snapshot_invariants(data):
    max_len = data.draw(st.sampled_from([16, 100, 2048]))
    prompts = data.draw(st.lists(st.integers(1, max_len - 1), min_size=1, max_size=10))
    outputs = [data.draw(st.integers(1, max_len - p)) for p in prompts]
    policy = data.draw(st.sampled_from(["reserve_max", "reserve_pow2", "reserve_exact"]))
    snap = fragmentation.contiguous_snapshot(prompts, outputs, policy, max_len)
    assert snap["live"] == sum(prompts) and snap["reserved"] == sum(outputs)
    assert snap["internal"] >= 0
    if policy == "reserve_max":
        assert sum(snap.values()) == max_len * len(prompts)


def test_contiguous_snapshot_rejects_paged_and_mismatched_lists():
    with pytest.raises(ValueError, match="contiguous"):
        fragmentation.contiguous_snapshot([1], [1], "paged", 16)
    with pytest.raises(ValueError, match="one prompt length"):
        fragmentation.contiguous_snapshot([1, 2], [1], "reserve_max", 16)


def test_scaling_mermaid_prints_computed_sizes():
    text = kvcache.scaling_mermaid("llama-3-8b", seq_lens=(512, 2048), batch_sizes=(1, 64))
    per_token = memory.kv_cache_bytes_per_token("llama-3-8b")
    assert text.startswith("```mermaid\nflowchart") and text.endswith("```")
    assert f"{per_token:,} B" in text
    assert f"512 tokens: {memory.kv_cache_bytes('llama-3-8b', 512) // 2**20} MiB" in text
    assert f"batch 64: {memory.kv_cache_bytes('llama-3-8b', 2048, 64) // 2**30} GiB" in text


def test_calculator_widget_follows_its_controls():
    box = kvcache.kv_cache_calculator(preset="llama-3-8b", gpu="H100-SXM")
    c = box.controls
    s = memory.get_preset("llama-3-8b")
    assert (c["layers"].value, c["kv_heads"].value, c["head_dim"].value) == (
        s.num_hidden_layers,
        s.num_key_value_heads,
        s.head_dim,
    )
    assert c["gpu_memory_gib"].value * 2**30 == memory.get_gpu("H100-SXM").memory_bytes
    c["batch_size"].value = 64
    e = box.estimate()
    assert e.bytes_for_batch == memory.kv_cache_bytes(s, 2048, 64)
    assert e.max_sequences == memory.max_num_seqs(s, "H100-SXM", 2048)
    assert f"{e.max_sequences:,}" in box.output.value and "the batch fits" in box.output.value
    c["preset"].value = "smollm2-135m"
    assert c["layers"].value == memory.get_preset("smollm2-135m").num_hidden_layers
    c["gpu"].value = "RTX-4090"
    c["preset"].value = "llama-2-13b"
    c["weight_dtype"].value = "fp32"  # 52 GB of weights on a 24 GiB card
    assert box.estimate().max_sequences == 0 and "do not fit" in box.output.value
    assert "does NOT fit" in box.output.value


def test_plot_decode_times_draws_both_loops():
    c = measure.DecodeTrace([1, 2, 3], [0.5, 0.01, 0.01], 7)
    u = measure.DecodeTrace([1, 2, 3], [0.5, 0.6, 0.7], 18)
    fig = kvcache.plot_decode_times(c, u, prompt_len=5, probes=[(20, 2.0)])
    assert isinstance(fig, Figure)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("18 token-forwards" in t for t in labels)
    assert len(fig.axes) == 3


def test_best_steps_and_probes_take_the_fastest_run():
    a = measure.DecodeTrace([1, 2, 3], [0.5, 0.02, 0.01], 7)
    b = measure.DecodeTrace([1, 2, 3], [0.4, 0.01, 0.03], 7)
    assert kvcache.best_steps([a, b]).step_seconds == [0.4, 0.01, 0.01]
    assert kvcache.best_steps(a).step_seconds == a.step_seconds
    assert kvcache.best_probes([(20, 2.0), (10, 1.0), (20, 1.5)]) == [(10, 1.0), (20, 1.5)]
    fig = kvcache.plot_decode_times([a, b], b, prompt_len=5, probes=[(20, 2.0), (20, 1.0)])
    assert min(fig.axes[0].lines[-1].get_ydata()) == 1e3 * 1.0  # the probe drawn at its best time


def test_fragmentation_is_what_contiguous_snapshot_runs():
    # the reference really is the simulator: the same numbers from a hand-built run
    reqs = [fragmentation.SimRequest(0, 0, 7, 9)]
    res = fragmentation.simulate(
        reqs, fragmentation.SimConfig("reserve_max", 32, max_model_len=32), record="event"
    )
    admit = next(s for s in res.timeline if s.event == "admit")
    assert fragmentation.contiguous_snapshot([7], [9], "reserve_max", 32) == {
        "live": admit.live,
        "reserved": admit.reserved,
        "internal": admit.internal,
    }
