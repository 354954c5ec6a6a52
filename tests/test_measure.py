"""labkit.measure: byte counts of real tensors, footprints of a training step and an inference pass,
decode loops with and without a KV cache. Oracles: hand-worked storages, transformers' Llama (loss and
greedy generation), dense attention, the GGUF file's own tensor table, labkit.memory's formulas."""

import math
import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import measure, memory
from labkit.loader import from_hf_model, random_model
from labkit.measure import sequence_logits
from labkit.model import ModelConfig

TINY = ModelConfig(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


# ---------------------------------------------------------------------------------------------- bytes
def test_storage_bytes_counts_each_storage_once_and_whole():
    a = torch.zeros(4, 5)  # 80 bytes
    b = torch.zeros(3, dtype=torch.float16)  # 6 bytes
    assert measure.storage_bytes([a]) == 80
    assert measure.storage_bytes([a, a, a.T, a[1:], a.reshape(-1)[::3]]) == 80  # views share a's storage
    assert measure.storage_bytes([a[2:]]) == 80  # a slice keeps its whole storage alive
    assert measure.storage_bytes([a, b]) == 86
    assert measure.storage_bytes([]) == 0
    assert measure.storage_bytes([torch.zeros(0)]) == 0
    emb = torch.nn.Embedding(10, 4)
    assert measure.storage_bytes([emb.weight, emb.weight.T]) == 10 * 4 * 4  # a tied output head


def test_storage_bytes_rejects_non_tensors():
    with pytest.raises(TypeError, match="expects tensors"):
        measure.storage_bytes([torch.zeros(2), [1, 2]])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 6), st.integers(1, 6), st.sampled_from(["f32", "f16", "i64"])),
        min_size=1,
        max_size=5,
    ),
    st.randoms(use_true_random=False),
)
def test_storage_bytes_is_the_sum_over_bases_whatever_views_are_listed(specs, rnd):
    dtypes = {"f32": torch.float32, "f16": torch.float16, "i64": torch.int64}
    bases = [torch.zeros(r, c, dtype=dtypes[d]) for r, c, d in specs]
    views = [lambda t: t, lambda t: t[1:], lambda t: t.T, lambda t: t[:, -1]]
    picked = [rnd.choice(views)(rnd.choice(bases)) for _ in range(rnd.randint(1, 8))]
    used = {id(b): b for b in bases for t in picked if t.untyped_storage().data_ptr() == b.data_ptr()}
    assert measure.storage_bytes(picked) == sum(b.numel() * b.element_size() for b in used.values())
    assert measure.storage_bytes(picked + picked) == measure.storage_bytes(picked)


# ------------------------------------------------------------------------------------------- tracers
def test_peak_live_bytes_follows_a_chain_of_ops():
    x = torch.randn(256, 256)  # 256 KiB each
    one = x.numel() * 4
    with torch.no_grad(), measure.PeakLiveBytes() as tracer:
        a = x @ x
        b = a @ x  # a and b alive
        del a
        c = b.relu()  # b and c alive
        del b
    assert tracer.peak == 2 * one
    assert tracer.current == one  # c
    del c
    assert tracer.current == 0


def test_saved_for_backward_sees_what_autograd_keeps():
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(4, 5, requires_grad=True)
    with measure.saved_for_backward() as saved:
        y = torch.tanh(x @ w)  # mm saves x and w; tanh saves its output
    ptrs = {t.untyped_storage().data_ptr() for t in saved}
    assert {x.data_ptr(), w.data_ptr(), y.data_ptr()} <= ptrs


# ------------------------------------------------------------------------------------------ footprint
def _tiny_hf(tie: bool, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("tie", [True, False])
def test_training_step_footprint_matches_the_formula(tie):
    hf = _tiny_hf(tie)
    model = from_hf_model(hf)
    ids = [[random.Random(i).randrange(97) for _ in range(11)] for i in range(3)]
    fp = measure.training_step_footprint(model, lambda m: measure.causal_lm_loss(m, ids))
    n = sum(p.numel() for p in model.parameters())
    shape = memory.ModelShape.from_hf_config(hf.config)
    assert fp.num_params == n == shape.num_params  # a tied head counted once
    formula = memory.training_footprint(shape, 3, 11, param_dtype="fp32", master_weights=False)
    assert fp.parameters == formula.weights
    assert fp.gradients == formula.gradients
    num_tensors = len(list(model.parameters()))
    assert fp.optimizer_states == formula.optimizer_states + 4 * num_tensors  # + AdamW's fp32 `step` scalars
    assert fp.activations > 0
    assert fp.per_param()["parameters"] == 4.0
    assert all(p.grad is None for p in model.parameters())  # left clean


def test_causal_lm_loss_matches_transformers():
    hf = _tiny_hf(tie=True, seed=3)
    model = from_hf_model(hf)
    ids = [[random.Random(7 + i).randrange(97) for _ in range(n)] for i, n in enumerate((9, 4, 13))]
    ours = measure.causal_lm_loss(model, ids)
    # HF averages per sequence; recombine the per-token losses over all sequences
    total, count = 0.0, 0
    with torch.no_grad():
        for s in ids:
            logits = hf(torch.tensor([s])).logits[0, :-1]
            total += F.cross_entropy(logits, torch.tensor(s[1:]), reduction="sum").item()
            count += len(s) - 1
    assert ours.item() == pytest.approx(total / count, rel=1e-5)
    ours.backward()  # differentiable through labkit's model
    assert model.model.embed_tokens.weight.grad is not None


def test_causal_lm_loss_rejects_too_short_sequences():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        measure.causal_lm_loss(random_model(TINY), [[5]])


def test_training_step_footprint_needs_a_scalar_loss_and_trainable_params():
    model = random_model(TINY)
    with pytest.raises(ValueError, match="scalar"):
        measure.training_step_footprint(model, lambda m: m.model.embed_tokens.weight.sum(0))
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="requires grad"):
        measure.training_step_footprint(model, lambda m: measure.causal_lm_loss(m, [[1, 2, 3]]))


def test_inference_step_footprint_counts_no_gradients_and_the_cache_apart():
    model = random_model(TINY)
    cache = measure.SequenceKVCache(model, max_len=20)
    fp = measure.inference_step_footprint(
        model, lambda m: cache.forward(list(range(20))), kv_cache=cache.tensors()
    )
    assert fp.gradients == fp.optimizer_states == 0
    assert fp.kv_cache == 2 * TINY.num_hidden_layers * math.ceil(20 / 16) * 16 * 2 * 8 * 4  # blocks of 16
    assert fp.kv_cache == memory.kv_cache_bytes(
        memory.ModelShape("t", 2, 32, 4, 2, 64, 97, True), 32, 1, "fp32"
    )
    assert 0 < fp.activations
    assert fp.total == fp.parameters + fp.activations + fp.kv_cache


def test_toy_training_step_is_reproducible_and_stepped():
    m1, o1 = measure.toy_training_step(11)
    m2, o2 = measure.toy_training_step(11)
    assert [p.shape for p in m1.parameters()] == [p.shape for p in m2.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    states = measure.optimizer_state_tensors(o1)
    assert len(states) == 3 * len(list(m1.parameters()))  # step, exp_avg, exp_avg_sq
    assert all(p.grad is not None for p in m1.parameters())


# ------------------------------------------------------------------------------------ decode helpers
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 12), st.integers(0, 20), st.integers(0, 2**31))
def test_decode_attention_matches_dense_causal_attention(kv_heads, group, half_dim, cached, seed):
    g = torch.Generator().manual_seed(seed)
    H, D, T = kv_heads * group, 2 * half_dim, cached + 1
    q = torch.randn(T, H, D, generator=g)
    k, v = torch.randn(T, kv_heads, D, generator=g), torch.randn(T, kv_heads, D, generator=g)
    out, kc, vc = measure.decode_attention(q[-1], k[-1], v[-1], k[:-1], v[:-1])
    dense = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, enable_gqa=True
    ).transpose(0, 1)
    torch.testing.assert_close(out, dense[-1], rtol=1e-5, atol=1e-5)
    assert torch.equal(kc, k) and torch.equal(vc, v)


def test_sequence_kv_cache_matches_whole_sequence_logits():
    model = random_model(TINY, seed=1)
    ids = [random.Random(1).randrange(97) for _ in range(37)]
    whole = sequence_logits(model, ids)  # (37, vocab)
    cache = measure.SequenceKVCache(model, max_len=40, block_size=8)
    torch.testing.assert_close(cache.forward(ids[:20]), whole[19], rtol=1e-5, atol=1e-6)
    for i in range(20, 37):
        torch.testing.assert_close(cache.forward([ids[i]]), whole[i], rtol=1e-5, atol=1e-6)
    assert cache.num_cached_tokens == 37
    with pytest.raises(ValueError, match="larger max_len"):
        cache.forward([1, 2, 3, 4])
    with pytest.raises(ValueError, match="at least one"):
        cache.forward([])


def test_greedy_decode_with_and_without_cache_agree_and_count():
    model = random_model(TINY, seed=2)
    prompt = [3, 14, 15, 92, 65]
    n = 17
    c = measure.greedy_decode(model, prompt, n, cached=True)
    u = measure.greedy_decode(model, prompt, n, cached=False)
    assert c.token_ids == u.token_ids and len(c.token_ids) == n
    p = len(prompt)
    assert c.token_forwards == p + n - 1
    assert u.token_forwards == sum(p + i for i in range(n))
    assert u.token_forwards == memory.token_forwards(p + n - 1, False) - memory.token_forwards(p - 1, False)
    assert len(c.step_seconds) == n and all(t > 0 for t in c.step_seconds)
    assert c.total_seconds == pytest.approx(sum(c.step_seconds))


def test_greedy_decode_matches_transformers_generate():
    hf = _tiny_hf(tie=True, seed=5)
    model = from_hf_model(hf)
    prompt = [7, 8, 9, 10]
    ours = measure.greedy_decode(model, prompt, 12, cached=True).token_ids
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=12,
            min_new_tokens=12,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    assert ours == out[0, len(prompt) :].tolist()


def test_greedy_decode_rejects_bad_arguments():
    model = random_model(TINY)
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        measure.greedy_decode(model, [], 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        measure.greedy_decode(model, [1], 0)


def test_count_token_forwards_counts_positions_and_detaches():
    model = random_model(TINY)
    with measure.count_token_forwards(model) as counter:
        measure.last_token_logits(model, list(range(9)))
        measure.SequenceKVCache(model, 4).forward([1, 2, 3])
    assert counter["count"] == 12
    measure.last_token_logits(model, [1, 2])
    assert counter["count"] == 12  # the hook is gone


def test_time_decode_and_uncached_steps():
    seen = []
    trace = measure.time_decode(lambda i: (seen.append(i) or 40 + i, 2), 5)
    assert seen == list(range(5)) and trace.token_ids == [40, 41, 42, 43, 44] and trace.token_forwards == 10
    with pytest.raises(ValueError, match="at least 1"):
        measure.time_decode(lambda i: (0, 1), 0)
    model = random_model(TINY)
    probes = measure.time_uncached_steps(model, list(range(30)), [5, 30])
    assert [p[0] for p in probes] == [5, 30] and all(p[1] > 0 for p in probes)
    with pytest.raises(ValueError, match="outside"):
        measure.time_uncached_steps(model, [1, 2], [3])


# ----------------------------------------------------------------------------------- files, hardware
def test_gguf_tensor_bytes_match_the_quantized_formulas():
    from labkit import assets

    table = measure.gguf_tensor_bytes()
    path = assets.path("smollm2-135m-instruct-q4_1")
    assert sum(b for _, b in table.values()) < path.stat().st_size  # plus metadata and the tokenizer
    assert sum(n for n, _ in table.values()) == memory.get_preset("smollm2-135m").num_params
    n4, b4 = table["Q4_1"]
    assert b4 == memory.weight_bytes(n4, "int4", group_size=32, scale_bytes=4)  # fp16 scale + fp16 min per 32
    n8, b8 = table["Q8_0"]
    assert b8 == memory.weight_bytes(n8, "int8", group_size=32, scale_bytes=2)  # fp16 scale per 32


def test_copy_bandwidth_is_a_positive_rate():
    assert measure.copy_bandwidth(num_bytes=2**22, repeats=2) > 1e8  # any machine copies > 100 MB/s
