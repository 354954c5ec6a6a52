"""labkit.memory against real oracles (HF models on the meta device, the SmolLM2 GGUF file, a real
forward pass's KV cache, torch's FLOP counter) and the lab's numbers, right and corrected."""

import math

import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from labkit import assets, memory
from labkit.memory import PRESETS, ModelShape

# Published totals (model cards / papers) that the derived counts must reproduce.
PUBLISHED_PARAMS = {
    "gpt2": 124_439_808,
    "llama-2-13b": 13_015_864_320,
    "llama-3-8b": 8_030_261_248,
    "smollm2-135m": 134_515_008,
}

# The same models as HF config objects, with the config.json values typed in afresh (not from PRESETS).
HF_CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(
        n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),
    "llama-2-13b": lambda: transformers.LlamaConfig(
        hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
        intermediate_size=13824, vocab_size=32000, tie_word_embeddings=False, max_position_embeddings=4096),
    "llama-3-8b": lambda: transformers.LlamaConfig(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False, max_position_embeddings=8192),
    "smollm2-135m": lambda: transformers.LlamaConfig(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192),
    "qwen3-0.6b": lambda: transformers.Qwen3Config(
        hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        intermediate_size=3072, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=40960),
}


def hf_param_count(config) -> int:
    """Parameters of the real HF model built from `config`, on the meta device (no memory, no hub)."""
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors are yielded once


# ---------------------------------------------------------------------------------------------
# Parameter counts


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_param_count_matches_hf_model(name):
    assert PRESETS[name].num_params == hf_param_count(HF_CONFIGS[name]())


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_preset_param_count_matches_published_total(name):
    assert PRESETS[name].num_params == PUBLISHED_PARAMS[name]


def test_qwen3_is_about_0_6b_with_0_44b_outside_embeddings():
    shape = PRESETS["qwen3-0.6b"]
    assert shape.num_params == 596_049_920  # Qwen's card: 0.6B total, 0.44B non-embedding
    assert round(shape.num_layer_params / 1e9, 2) == 0.44
    assert shape.num_attention_heads * shape.head_dim == 2048 > shape.hidden_size  # q wider than hidden


@pytest.fixture(scope="module")
def smollm2_gguf():
    gguf = pytest.importorskip("gguf")
    return gguf.GGUFReader(assets.path("smollm2-135m-instruct-q4_1"))


def test_smollm2_count_equals_the_real_gguf_tensors(smollm2_gguf):
    reader = smollm2_gguf
    measured = sum(int(t.n_elements) for t in reader.tensors)
    assert measured == PRESETS["smollm2-135m"].num_params == 134_515_008
    # The file's own metadata agrees with the preset's shape.
    meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith("llama.")}
    s = PRESETS["smollm2-135m"]
    keys = ["block_count", "embedding_length", "feed_forward_length", "attention.head_count",
            "attention.head_count_kv", "vocab_size"]
    assert [meta[f"llama.{k}"] for k in keys] == [
        s.num_hidden_layers, s.hidden_size, s.intermediate_size, s.num_attention_heads, s.num_key_value_heads,
        s.vocab_size]


def test_weight_bytes_reproduces_gguf_quantized_tensor_sizes(smollm2_gguf):
    # GGUF block layouts as (dtype, group_size, scale bytes per group): Q4_1 = fp16 scale + fp16 min.
    layouts = {"Q4_1": ("int4", 32, 4), "Q8_0": ("int8", 32, 2), "F32": ("fp32", None, 0)}
    seen = set()
    for t in smollm2_gguf.tensors:
        dtype, group, scale = layouts[t.tensor_type.name]
        computed = memory.weight_bytes(int(t.n_elements), dtype, group_size=group, scale_bytes=scale)
        assert computed == int(t.n_bytes)
        seen.add(t.tensor_type.name)
    assert seen == set(layouts)


@settings(max_examples=12, deadline=None)
@given(
    layers=st.integers(1, 4), kv=st.integers(1, 4), group=st.integers(1, 4),
    head_dim=st.sampled_from([8, 16, 24]),
    width=st.sampled_from([4, 8, 16]), inter=st.integers(8, 200), vocab=st.integers(10, 500),
    tied=st.booleans(), attn_bias=st.booleans(), mlp_bias=st.booleans(),
    model_type=st.sampled_from(["llama", "qwen2", "qwen3"]),
)
def test_from_hf_config_counts_like_hf_for_random_llama_family(
        layers, kv, group, head_dim, width, inter, vocab, tied, attn_bias, mlp_bias, model_type):
    hidden = kv * group * width  # transformers insists that heads divide hidden, even with head_dim given
    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=kv * group,
                  num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab, tie_word_embeddings=tied)
    if model_type == "llama":
        cfg = transformers.LlamaConfig(**common, head_dim=head_dim, attention_bias=attn_bias,
                                       mlp_bias=mlp_bias)
    elif model_type == "qwen2":
        cfg = transformers.Qwen2Config(**common)  # head_dim = hidden / heads; q, k, v biases
    else:
        cfg = transformers.Qwen3Config(**common, head_dim=head_dim, attention_bias=attn_bias)
    assert ModelShape.from_hf_config(cfg).num_params == hf_param_count(cfg)


@settings(max_examples=6, deadline=None)
@given(layers=st.integers(1, 3), heads=st.sampled_from([1, 2, 4]), hidden=st.sampled_from([16, 32]),
       vocab=st.integers(10, 300), positions=st.integers(8, 64),
       n_inner=st.one_of(st.none(), st.integers(8, 64)))
def test_from_hf_config_counts_like_hf_for_random_gpt2(layers, heads, hidden, vocab, positions, n_inner):
    cfg = transformers.GPT2Config(n_layer=layers, n_head=heads, n_embd=hidden, vocab_size=vocab,
                                  n_positions=positions, n_inner=n_inner)
    assert ModelShape.from_hf_config(cfg).num_params == hf_param_count(cfg)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_from_hf_config_object_and_dict_give_the_preset(name):
    cfg = HF_CONFIGS[name]()
    assert ModelShape.from_hf_config(cfg, name=name) == PRESETS[name]
    assert ModelShape.from_hf_config(cfg.to_dict(), name=name) == PRESETS[name]


def test_from_hf_config_plain_config_json_dicts():
    # As written in the hub's config.json files (a subset of keys), no transformers objects involved.
    smollm2 = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
               "num_hidden_layers": 30, "num_key_value_heads": 3, "vocab_size": 49152,
               "tie_word_embeddings": True, "max_position_embeddings": 8192, "head_dim": 64}
    # no model_type: read as GPT-2 because of "n_embd"
    gpt2 = {"n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024, "vocab_size": 50257}
    assert ModelShape.from_hf_config(smollm2, name="smollm2-135m") == PRESETS["smollm2-135m"]
    assert ModelShape.from_hf_config(gpt2, name="gpt2") == PRESETS["gpt2"]


def test_from_hf_config_rejects_other_architectures():
    with pytest.raises(ValueError, match="'bert'"):
        ModelShape.from_hf_config({"model_type": "bert", "hidden_size": 768})


# ---------------------------------------------------------------------------------------------
# The lab's numbers (chapters 1-3), right ones pinned, wrong ones corrected


def test_lab_kv_cache_numbers_for_llama_3_8b():
    s = PRESETS["llama-3-8b"]
    per_token = memory.kv_cache_bytes_per_token(s)
    assert per_token == 131_072 == 2 * 32 * 8 * 128 * 2  # §3.4 Q1: 128 KiB
    assert memory.format_bytes(per_token, "KiB") == "128.0 KiB"
    seq = memory.kv_cache_bytes(s, 2048)
    assert seq == 268_435_456 and seq / 2**30 == 0.25  # §3.4 Q2: 0.25 GiB (268.4 MB)
    assert memory.format_bytes(seq) == "268.4 MB (256.0 MiB)"
    batch64 = memory.kv_cache_bytes(s, 2048, batch_size=64)
    assert batch64 == 16 * 2**30  # §3.5: "16 GB" is 16 GiB, i.e. 17.2 GB
    assert memory.format_bytes(batch64) == "17.2 GB (16.0 GiB)"
    # §3.5 diagram: 512 / 1024 / 4096 tokens -> 64 / 128 / 512 MiB (the lab writes "MB").
    for seq_len, mib in [(512, 64), (1024, 128), (4096, 512)]:
        assert memory.kv_cache_bytes(s, seq_len) == mib * 2**20


def test_lab_embedding_example_keeps_mb_and_mib_apart():
    n = memory.embedding_bytes(50_000, 4_096, "fp16")
    assert n == 409_600_000
    assert memory.format_bytes(n) == "409.6 MB (390.6 MiB)"
    assert memory.format_bytes(n, "MB") == "409.6 MB" and memory.format_bytes(n, "MiB") == "390.6 MiB"


def test_embedding_share_of_a_13b_model_is_about_1_3_percent_not_2_to_3():
    frac = memory.embedding_fraction("llama-2-13b")
    assert frac == 32000 * 5120 / PRESETS["llama-2-13b"].num_params
    assert 0.012 < frac < 0.013  # the embedding is about 1.25% of the parameters


def test_lab_13b_table_right_rows_and_wrong_row():
    rows = {r.component: r for r in memory.lab_table_13b()}
    assert rows["Weights"].training == 26 * 10**9 and rows["Weights"].inference_int4 == 6.5 * 10**9
    assert rows["Gradients"].training == 26 * 10**9
    assert rows["Optimizer states"].training == 52 * 10**9  # what the lab printed...
    assert "wrong" in rows["Optimizer states"].note
    assert rows["Total"].training == 144 * 10**9  # 26 + 26 + 52 + 40: consistent with its wrong row
    shape = PRESETS["smollm2-135m"]  # ...while Adam's m and v take 8 bytes per parameter:
    assert memory.training_footprint(shape, 1, 1).optimizer_states == 8 * shape.num_params
    assert 2 * memory.weight_bytes(13 * 10**9, "fp32") == 104 * 10**9  # two fp32 moments: 104 GB for 13e9, not 52


def test_corrected_13b_table_is_16_bytes_per_param_plus_activations():
    shape = PRESETS["llama-2-13b"]
    n = shape.num_params
    rows = {r.component: r for r in memory.corrected_table_13b(shape, batch_size=1, seq_len=2048)}
    assert rows["Weights"].training == 2 * n and rows["Gradients"].training == 2 * n
    assert rows["fp32 master weights"].training == 4 * n and rows["Optimizer states"].training == 8 * n
    act = rows["Activations"].training
    assert rows["Total"].training == 16 * n + act
    assert 40e9 < act < 80e9  # the lab's "40-80 GB" holds for one 2,048-token sequence without recompute
    kv = rows["KV cache"].inference_fp16
    assert kv == memory.kv_cache_bytes(shape, 2048) == 2 * 40 * 40 * 128 * 2 * 2048
    assert rows["Weights"].inference_int4 == math.ceil(n / 2 + math.ceil(n / 128) * 2)
    table = memory.format_table(memory.corrected_table_13b())
    assert table.count("\n") == 2 + len(rows) - 1 and "104.1 GB" in table


def test_training_activation_formula_hand_worked():
    shape = PRESETS["llama-2-13b"]
    s, b, h, a, L = 2048, 1, 5120, 40, 40
    expected = L * s * b * h * (34 + 5 * a * s / h)  # Korthikanti et al. 2022, per layer, summed
    assert memory.training_activation_bytes(shape, b, s) == pytest.approx(expected, rel=1e-12)
    assert memory.training_activation_bytes(shape, b, s, "selective") == L * 34 * s * b * h
    assert memory.training_activation_bytes(shape, b, s, "full") == L * 2 * s * b * h
    assert memory.training_activation_bytes(shape, 4, s) == 4 * memory.training_activation_bytes(shape, 1, s)


def test_mixed_precision_adam_is_16_bytes_per_parameter():
    shape = PRESETS["smollm2-135m"]
    fp = memory.training_footprint(shape, 1, 128)
    assert fp.total - fp.activations == 16 * shape.num_params
    pure16 = memory.training_footprint(shape, 1, 128, master_weights=False, optimizer="sgd")
    assert pure16.total - pure16.activations == 4 * shape.num_params


def test_int4_weights_with_and_without_group_scales():
    assert memory.weight_bytes(13 * 10**9, "int4") == 6_500_000_000  # the lab's idealised 0.5 bytes/param
    with_scales = memory.weight_bytes(13 * 10**9, "int4", group_size=128, scale_bytes=2)
    assert with_scales == 6_500_000_000 + math.ceil(13e9 / 128) * 2
    assert memory.weight_bytes(3, "int4") == 2  # half bytes round up
    assert memory.weight_bytes("llama-2-13b", "bf16") == 2 * PRESETS["llama-2-13b"].num_params


def test_kv_formula_matches_a_real_forward_pass_cache():
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=8,
                                   num_key_value_heads=2, head_dim=16, intermediate_size=96, vocab_size=100)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(torch.float16).eval()
    ids = torch.randint(0, 100, (3, 11))  # batch 3, 11 tokens
    with torch.no_grad():
        out = model(ids, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    measured = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    shape = ModelShape.from_hf_config(cfg)
    assert measured == memory.kv_cache_bytes(shape, 11, batch_size=3, kv_dtype="fp16")


def test_decode_flops_match_torch_flop_counter():
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=80, vocab_size=120,
                                   attn_implementation="eager")  # explicit matmuls the counter sees
    model = transformers.LlamaForCausalLM(cfg).eval()
    batch, ctx = 2, 9
    with torch.no_grad():
        prefill = model(torch.randint(0, 120, (batch, ctx)), use_cache=True)
        cache = getattr(prefill, "cache", None) or prefill.past_key_values
        with FlopCounterMode(display=False) as counter:
            model(torch.randint(0, 120, (batch, 1)), cache=cache, use_cache=True, logits_to_keep=1)
    expected = memory.forward_flops(ModelShape.from_hf_config(cfg), 1, context_len=ctx, batch_size=batch)
    assert counter.get_total_flops() == expected


# ---------------------------------------------------------------------------------------------
# Chapter 3: what the cache saves (token-forwards with and without it)


def test_token_forwards_and_dot_products_for_100_tokens():
    assert memory.token_forwards(100, cached=False) == 5050
    assert memory.token_forwards(100, cached=True) == 100
    assert memory.attention_dot_products(100, cached=True) == 5050  # still 1 + 2 + ... + 100
    assert memory.attention_dot_products(100, cached=False) == 171_700


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60))
def test_counts_match_a_brute_force_generation_loop(n):
    forwards = {True: 0, False: 0}
    dots = {True: 0, False: 0}
    for step in range(1, n + 1):  # step `step` produces token number `step`
        forwards[True] += 1
        dots[True] += step  # the one new query against all `step` keys
        forwards[False] += step  # re-run every position
        dots[False] += sum(range(1, step + 1))  # every position's causal row again
    for cached in (True, False):
        assert memory.token_forwards(n, cached) == forwards[cached]
        assert memory.attention_dot_products(n, cached) == dots[cached]


# ---------------------------------------------------------------------------------------------
# GPUs, capacity and roofline bounds


def test_decode_of_13b_fp16_on_h100_is_milliseconds_not_0_1_ms():
    bound = memory.decode_step_bound("llama-2-13b", "H100-SXM", weight_dtype="fp16")
    shape = PRESETS["llama-2-13b"]
    read = 2 * (shape.num_params - 32000 * 5120 + 5120) + memory.kv_cache_bytes_per_token(shape)
    assert bound.bytes_moved == read
    assert bound.memory_s == pytest.approx(read / 3.35e12)
    assert 7e-3 < bound.seconds < 8.5e-3 and bound.bound == "memory"  # ~8 ms, not < 0.1 ms
    faster = memory.decode_step_bound("llama-2-13b", memory.get_gpu("H100-SXM", memory_bandwidth=6.7e12),
                                      weight_dtype="fp16")
    assert faster.memory_s == pytest.approx(bound.memory_s / 2)


def test_decode_reads_the_cache_and_prefill_is_compute_bound():
    short = memory.decode_step_bound("llama-3-8b", "H200", batch_size=32, context_len=0)
    long = memory.decode_step_bound("llama-3-8b", "H200", batch_size=32, context_len=4096)
    assert long.bytes_moved - short.bytes_moved == memory.kv_cache_bytes("llama-3-8b", 4096, 32, "bf16")
    prefill = memory.prefill_bound("llama-3-8b", "H100-SXM", 2048)
    assert prefill.bound == "compute" and prefill.compute_s == prefill.flops / 989.4e12


def test_prefill_flops_hand_worked():
    shape = ModelShape("tiny", num_hidden_layers=2, hidden_size=8, num_attention_heads=2,
                       num_key_value_heads=1, intermediate_size=16, vocab_size=10, tie_word_embeddings=True)
    layer_weights = 2 * (8 * 8 + 2 * 8 * 4 + 8 * 8 + 3 * 8 * 16)  # q, k, v, o, gate/up/down per layer
    pairs = 3 * (3 + 1) // 2  # causal (query, key) pairs for 3 new tokens
    expected = 2 * layer_weights * 3 + 2 * 10 * 8 + 4 * 2 * 2 * 4 * pairs
    assert memory.forward_flops(shape, 3) == expected


def test_max_num_seqs_hand_worked():
    shape, gpu = PRESETS["llama-3-8b"], memory.GPUS["H100-SXM"]
    budget = int(0.9 * 80 * 2**30) - 2 * shape.num_params
    assert memory.kv_cache_budget(shape, gpu, gpu_memory_utilization=0.9) == budget
    assert memory.max_num_seqs(shape, gpu, 2048) == budget // (131_072 * 2048) == 228
    with pytest.raises(ValueError, match="do not fit"):
        memory.max_num_seqs("llama-2-13b", "RTX-4090", 2048, weight_dtype="fp32")


def test_gpu_table_and_overrides():
    assert memory.GPUS["H200"].memory_bandwidth == 4.8e12
    assert memory.get_gpu("A100-80GB", peak_flops=1e15).peak_flops == 1e15
    assert memory.gpus_needed(81 * 2**30, "H100-SXM") == 2
    with pytest.raises(ValueError, match="'B300'"):
        memory.get_gpu("B300")
    with pytest.raises(ValueError, match="bandwith"):
        memory.get_gpu("H200", bandwith=1)


# ---------------------------------------------------------------------------------------------
# Units and bad input


def test_format_bytes_units():
    assert memory.format_bytes(512) == "512 B"
    assert memory.format_bytes(1536, "KiB") == "1.5 KiB" and memory.format_bytes(1536, "kB") == "1.5 kB"
    assert memory.format_bytes(26 * 10**9, "GB", 0) == "26 GB"
    assert memory.format_bytes(2**30, "GB", 3) == "1.074 GB"
    with pytest.raises(ValueError, match="ambiguous"):
        memory.format_bytes(1024, "KB")
    with pytest.raises(ValueError, match="'PB'"):
        memory.format_bytes(1024, "PB")


def test_dtype_names():
    assert memory.dtype_bytes("bf16") == memory.dtype_bytes("bfloat16") == 2
    assert memory.dtype_bytes(torch.bfloat16) == memory.dtype_bytes("half") == 2
    assert memory.dtype_bytes("int4") == 0.5
    with pytest.raises(ValueError, match="'fp13'"):
        memory.dtype_bytes("fp13")


BASE = dict(name="x", num_hidden_layers=2, hidden_size=64, num_attention_heads=8, num_key_value_heads=2,
            intermediate_size=128, vocab_size=100, tie_word_embeddings=False)


@pytest.mark.parametrize("field,value,pattern", [
    ("num_hidden_layers", 0, "num_hidden_layers must be an integer >= 1, got 0"),
    ("hidden_size", -64, "hidden_size must be an integer >= 1, got -64"),
    ("vocab_size", 10.5, "vocab_size must be an integer"),
    ("num_attention_heads", True, "num_attention_heads must be an integer"),
    ("num_key_value_heads", 3, "num_key_value_heads=3 must divide num_attention_heads=8"),
    ("hidden_size", 60, "hidden_size=60 is not divisible by num_attention_heads=8"),
    ("head_dim", 0, "head_dim must be an integer >= 1, got 0"),
    ("arch", "mamba", "arch must be one of"),
])
def test_bad_shapes_name_the_value_and_rule(field, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        ModelShape(**{**BASE, field: value})


def test_bad_calls_name_the_value_and_rule():
    with pytest.raises(ValueError, match="unknown preset 'llama-4'"):
        memory.get_preset("llama-4")
    with pytest.raises(ValueError, match="seq_len must be an integer >= 1, got 0"):
        memory.kv_cache_bytes("llama-3-8b", 0)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got -2"):
        memory.kv_cache_bytes("llama-3-8b", 16, batch_size=-2)
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        memory.weight_bytes(100, "int3")
    with pytest.raises(ValueError, match="group_size must be an integer >= 1, got 0"):
        memory.weight_bytes(100, "int4", group_size=0)
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 1, got 0"):
        memory.embedding_bytes(0, 4096)
    with pytest.raises(ValueError, match="recompute must be one of"):
        memory.training_activation_bytes("gpt2", 1, 8, recompute="some")
    with pytest.raises(ValueError, match="gpu_memory_utilization must be a fraction in \\(0, 1\\], got 1.5"):
        memory.kv_cache_budget("gpt2", "H200", gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="num_tokens must be an integer >= 1, got 0"):
        memory.token_forwards(0, cached=True)


def test_presets_are_frozen_and_derived():
    with pytest.raises(AttributeError):
        PRESETS["gpt2"].hidden_size = 1  # type: ignore[misc]
    counts = PRESETS["gpt2"].param_counts()
    assert sum(counts.values()) == PRESETS["gpt2"].num_params and counts["lm_head"] == 0
    assert np.isclose(memory.embedding_fraction("gpt2"), 50257 * 768 / 124_439_808)


def test_gpu_headroom_of_the_13b_training_total():
    """3 x 80 GiB hold 257.7 GB; mixed-precision training of Llama-2-13B needs 256.1 GB: 99.4% full."""
    total = memory.training_footprint("llama-2-13b", 1, 2048).total
    room = memory.gpu_headroom(total, "H100-SXM")
    assert room["num_gpus"] == memory.gpus_needed(total, "H100-SXM") == 3
    assert room["capacity"] == 3 * 80 * 2**30
    assert room["headroom_bytes"] == 3 * 80 * 2**30 - total
    assert 0.99 < room["fraction_used"] < 1.0
    assert memory.gpu_headroom(total, "H100-SXM", num_gpus=4)["fraction_used"] < 0.75


def test_training_is_about_nine_times_inference_in_the_corrected_table():
    rows = {r.component: r for r in memory.corrected_table_13b()}
    assert 9 < rows["Total"].training / rows["Total"].inference_fp16 < 9.5


def test_batch_64_decode_at_2048_tokens_is_dominated_by_the_kv_cache():
    h100 = memory.get_gpu("H100-SXM")
    empty = memory.decode_step_bound("llama-2-13b", h100, batch_size=64, weight_dtype="fp16", kv_dtype="fp16")
    full = memory.decode_step_bound("llama-2-13b", h100, batch_size=64, context_len=2048, weight_dtype="fp16",
                                    kv_dtype="fp16")
    assert 130e9 < full.bytes_moved < 135e9 and full.bound == "memory"
    assert 4.5 < full.seconds / empty.seconds < 5.5
    assert memory.kv_cache_bytes("llama-2-13b", 2048, 64) > h100.memory_bytes  # the KV alone does not fit


def test_max_sequences_budget_of_zero_raises_and_usable_memory_is_truncated():
    assert memory.max_sequences(1001, 0, 1, 1, 0.9) == 900  # int(900.9)
    with pytest.raises(ValueError, match="do not fit"):
        memory.max_sequences(1000, 900, 1, 1, 0.9)
    assert memory.kv_bytes_for_batch(10, [1, 2, 0]) == 30
