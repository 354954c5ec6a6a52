"""labkit.model against Hugging Face transformers, the oracle, in float32.

- SmolLM2-135M-Instruct: HF loads the same GGUF (its own dequantizer and q/k un-permutation); our
  load_gguf must give the same logits as one prefill, as prefill + step-by-step paged decode, and as
  a mixed flat batch (decodes, prefills and chunked prefills of several sequences in one step).
- Tiny random Llama / Qwen2 / Qwen3 models built by HF and copied with from_hf_model / from_hf_dir.

The error measure is max|ours - HF| / max|HF| over all compared logits; the bound is 1e-4.
"""

import dataclasses
import random
import time

import pytest
import torch
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from labkit import assets
from labkit import loader as lm
from labkit.attention import AttentionMetadata
from labkit.kv_cache import allocate_kv_caches
from labkit.loader import config_from_hf, from_hf_dir, from_hf_model, load_gguf, random_model
from labkit.measure import sequence_logits
from labkit.model import ModelConfig

REL_TOL = 1e-4


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def hf_logits(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float()


def paged_run(model, seqs, schedule, block_size=4, seed=0):
    """A miniature model runner. seqs: token lists; schedule: steps, each {seq index: new tokens this step}.

    Blocks are handed out shuffled (non-contiguous). Every step is ONE flat forward; returns, per
    sequence, the logits of all its positions in order, each row from the step that fed that token."""
    rng = random.Random(seed)
    need = [-(-len(s) // block_size) for s in seqs]
    ids = list(range(sum(need) + 2))
    rng.shuffle(ids)
    tables = [ids[sum(need[:i]) : sum(need[: i + 1])] for i in range(len(seqs))]
    c = model.config
    caches = allocate_kv_caches(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, len(ids), block_size,
                                model.dtype, model.device)
    done, out = [0] * len(seqs), [[] for _ in seqs]
    for step in schedule:
        order = list(step)
        lens = [done[i] + step[i] for i in order]
        meta = AttentionMetadata.build(lens, [step[i] for i in order], [tables[i] for i in order], block_size)
        tokens = torch.tensor([t for i in order for t in seqs[i][done[i] : done[i] + step[i]]])
        with torch.inference_mode():
            logits = model.compute_logits(model(tokens, meta.positions(), caches, meta))
        for i, part in zip(order, logits.split([step[i] for i in order])):
            out[i].append(part)
            done[i] += step[i]
    assert done == [len(s) for s in seqs], "the schedule must feed every token exactly once"
    return [torch.cat(o) for o in out]


def prefill_then_decode(n_prompt, n_total):
    return [{0: n_prompt}] + [{0: 1} for _ in range(n_total - n_prompt)]


# ---------------------------------------------------------------------------------------------------
# SmolLM2 from the GGUF


@pytest.fixture(scope="module")
def smol():
    gguf = assets.path("smollm2-135m-instruct-q4_1")
    t0 = time.perf_counter()
    ours, info = load_gguf()
    load_s = time.perf_counter() - t0
    hf = LlamaForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    prompts = [
        "The capital of France is",
        "def fibonacci(n):",
        tok.apply_chat_template(
            [{"role": "user", "content": "Hi!"}], tokenize=False, add_generation_prompt=True
        ),
    ]
    seqs = []
    for p in prompts:  # each prompt extended by HF's own greedy continuation (5 tokens)
        ids = tok(p).input_ids
        with torch.no_grad():
            full = hf.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False)[0].tolist()
        seqs.append((len(ids), full))
    refs = [hf_logits(hf, full) for _, full in seqs]
    return dict(ours=ours, info=info, hf=hf, seqs=seqs, refs=refs, load_s=load_s)


def test_gguf_config_and_metadata(smol):
    c, info = smol["ours"].config, smol["info"]
    hf = smol["hf"].config
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers) == (
        hf.vocab_size,
        hf.hidden_size,
        hf.num_hidden_layers,
    )
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (
        hf.num_attention_heads,
        hf.num_key_value_heads,
        hf.head_dim,
    )
    assert (
        c.rope_theta == hf.rope_parameters["rope_theta"] and c.tie_word_embeddings == hf.tie_word_embeddings
    )
    assert (c.bos_token_id, c.eos_token_id) == (hf.bos_token_id, hf.eos_token_id) == (1, 2)
    assert "<|im_start|>" in info.chat_template and "add_generation_prompt" in info.chat_template
    assert info.sha256 == assets.ASSETS["smollm2-135m-instruct-q4_1"].sha256


def test_gguf_weights_equal_hf_dequantized(smol):
    ours, hf = smol["ours"].state_dict(), smol["hf"].state_dict()
    for name, w in ours.items():
        assert torch.equal(w, hf[name]), name
    assert torch.equal(smol["hf"].lm_head.weight, smol["ours"].model.embed_tokens.weight)


def test_smollm2_prefill_matches_hf(smol):
    errs = []
    for (_, full), ref in zip(smol["seqs"], smol["refs"]):
        got = sequence_logits(smol["ours"], full)
        errs.append(rel_err(got, ref))
    print(f"SmolLM2 single prefill: max rel err {max(errs):.2e}")
    assert max(errs) < REL_TOL


def test_smollm2_prefill_then_paged_decode_matches_hf(smol):
    errs = []
    for (n_prompt, full), ref in zip(smol["seqs"], smol["refs"]):
        (got,) = paged_run(smol["ours"], [full], prefill_then_decode(n_prompt, len(full)), block_size=4)
        errs.append(rel_err(got, ref))
        # greedy decoding with our logits reproduces HF's generated continuation
        assert got[n_prompt - 1 : -1].argmax(-1).tolist() == full[n_prompt:]
    print(f"SmolLM2 prefill + decode: max rel err {max(errs):.2e}")
    assert max(errs) < REL_TOL


def test_smollm2_mixed_flat_batch_matches_hf(smol):
    seqs = [full for _, full in smol["seqs"]]
    a, b, c = (len(s) for s in seqs)
    # step 1: seq 0 prefill; step 2: seq 0 decodes while seq 1 prefills all and seq 2 its first chunk;
    # later: seq 2 continues over its cached prefix in chunks while the others decode
    schedule = [
        {0: a - 4},
        {0: 1, 1: b - 3, 2: 5},
        {2: c - 9, 0: 1, 1: 1},
        {1: 1, 2: 2, 0: 1},
        {0: 1, 1: 1, 2: 1},
        {2: 1},
    ]
    got = paged_run(smol["ours"], seqs, schedule, block_size=3)
    err = max(rel_err(g, r) for g, r in zip(got, smol["refs"]))
    print(f"SmolLM2 mixed flat batch: max rel err {err:.2e}")
    assert err < REL_TOL


def test_logits_of_several_sequences_in_one_batch(smol):
    seqs = [full for _, full in smol["seqs"]]
    got = sequence_logits(smol["ours"], seqs)
    assert [g.shape for g in got] == [(len(s), 49152) for s in seqs]
    err = max(rel_err(g, r) for g, r in zip(got, smol["refs"]))
    print(f"SmolLM2 several sequences, one batch: max rel err {err:.2e}")
    assert err < REL_TOL


@pytest.mark.slow
def test_gguf_conversion_rebuilds_a_corrupt_cache_then_reuses_it(smol, tmp_path, monkeypatch):
    target = tmp_path / "converted.safetensors"
    target.write_bytes(b"not a safetensors file")
    monkeypatch.setattr(lm, "converted_path", lambda sha: target)
    t0 = time.perf_counter()
    fresh, _ = load_gguf()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again, info = load_gguf()
    second = time.perf_counter() - t0
    print(f"GGUF load: convert {first:.1f} s, cached {second:.1f} s")
    ref = smol["ours"].state_dict()
    for model in (fresh, again):
        assert all(torch.equal(w, ref[n]) for n, w in model.state_dict().items())
    size = target.stat().st_size
    target.unlink()  # 540 MB: do not leave it in pytest's kept temp folders
    assert size > 100_000_000 and info.config == smol["ours"].config
    assert second < first


def test_unpermute_undoes_llama_cpp_permutation():
    heads, head_dim, cols = 3, 8, 5
    w = torch.arange(heads * head_dim * cols, dtype=torch.float32).reshape(heads * head_dim, cols)
    # llama.cpp: per head, rows [first half | second half] -> interleaved [h0, s0, h1, s1, ...]
    permuted = w.reshape(heads, 2, head_dim // 2, cols).transpose(1, 2).reshape(w.shape)
    assert permuted[:4, 0].tolist() == [w[0, 0], w[4, 0], w[1, 0], w[5, 0]]
    assert torch.equal(lm.unpermute_gguf_qk(permuted, heads), w)
    bias = torch.arange(heads * head_dim, dtype=torch.float32)
    assert torch.equal(
        lm.unpermute_gguf_qk(bias.reshape(heads, 2, 4).transpose(1, 2).reshape(-1), heads), bias
    )


# ---------------------------------------------------------------------------------------------------
# tiny random HF models


def randomize_(hf_model, seed):
    """Larger-than-init random weights (std 0.1), norm weights around 1: every parameter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.2 * noise if "norm" in name else 0.1 * noise)
    return hf_model.eval()


# A small labkit-only config (no HF twin needed): vocab 50, 2 layers, GQA 4:2.
SMALL = ModelConfig(
    vocab_size=50,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def tiny(cls, config_cls, seed, **kw):
    base = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
    )
    base.update(kw)
    torch.manual_seed(seed)
    return randomize_(cls(config_cls(**base)), seed)


def check_against_hf(hf, seed=0, block_size=3):
    rng = random.Random(seed)
    V = hf.config.vocab_size
    seqs = [[rng.randrange(V) for _ in range(n)] for n in (11, 4, 17)]
    refs = [hf_logits(hf, s) for s in seqs]
    ours = from_hf_model(hf)
    errs = [rel_err(g, r) for g, r in zip(sequence_logits(ours, seqs), refs)]
    schedule = [{0: 6, 1: 4}, {0: 2, 1: 0, 2: 9}, {0: 1, 2: 1}, {0: 1, 2: 7}, {0: 1}]
    schedule = [{i: n for i, n in step.items() if n} for step in schedule]
    errs += [rel_err(g, r) for g, r in zip(paged_run(ours, seqs, schedule, block_size, seed), refs)]
    return max(errs)


@pytest.mark.parametrize("head_dim", [32, 64])
@pytest.mark.parametrize("group", [1, 3, 4])
@pytest.mark.parametrize("tied", [True, False])
def test_random_llama_matches_hf(head_dim, group, tied):
    hf = tiny(
        LlamaForCausalLM,
        LlamaConfig,
        seed=head_dim + group,
        hidden_size=96,
        num_attention_heads=12,
        num_key_value_heads=12 // group,
        head_dim=head_dim,
        tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    err = check_against_hf(hf, seed=group)
    print(f"llama head_dim={head_dim} group={group} tied={tied}: rel err {err:.2e}")
    assert err < REL_TOL


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 4.0, "rope_theta": 500.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
            "rope_theta": 500.0,
        },
    ],
)
def test_rope_scaling_matches_hf(rope):
    hf = tiny(LlamaForCausalLM, LlamaConfig, seed=7, rope_parameters=dict(rope))
    assert config_from_hf(hf.config).rope_scaling["rope_type"] == rope["rope_type"]
    err = check_against_hf(hf, seed=7)
    print(f"rope {rope['rope_type']}: rel err {err:.2e}")
    assert err < REL_TOL


def test_qwen2_attention_bias_matches_hf():
    hf = tiny(Qwen2ForCausalLM, Qwen2Config, seed=11, tie_word_embeddings=False)
    assert config_from_hf(hf.config).attention_bias
    err = check_against_hf(hf, seed=11)
    print(f"qwen2: rel err {err:.2e}")
    assert err < REL_TOL


def test_qwen3_qk_norm_and_wide_heads_match_hf():
    hf = tiny(Qwen3ForCausalLM, Qwen3Config, seed=13, head_dim=32, tie_word_embeddings=True)  # 4 x 32 != 64
    c = config_from_hf(hf.config)
    assert c.qk_norm and c.head_dim * c.num_attention_heads != c.hidden_size
    err = check_against_hf(hf, seed=13)
    print(f"qwen3: rel err {err:.2e}")
    assert err < REL_TOL


def test_from_hf_dir_matches_hf(tmp_path):
    hf = tiny(LlamaForCausalLM, LlamaConfig, seed=17, tie_word_embeddings=False)
    hf.save_pretrained(tmp_path)
    ours = from_hf_dir(tmp_path)
    ids = list(range(0, 97, 7))
    assert rel_err(sequence_logits(ours, ids), hf_logits(hf, ids)) < REL_TOL


def test_bfloat16_model_stays_close_to_float32():
    config = SMALL
    ids = list(range(3, 40))
    ref = sequence_logits(random_model(config, seed=2), ids)
    low = sequence_logits(random_model(config, seed=2, dtype=torch.bfloat16), ids)
    assert low.dtype == torch.float32 and rel_err(low, ref) < 5e-2


# ---------------------------------------------------------------------------------------------------
# config, random_model, errors


def test_random_model_is_deterministic_per_seed():
    config = SMALL
    a, b, c = random_model(config, 1), random_model(config, 1), random_model(config, 2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert a.lm_head is None  # tied by default: the head is the embedding matrix


def test_default_config_is_smollm2_135m(smol):
    loaded = smol["ours"].config
    assert loaded.rms_norm_eps == pytest.approx(1e-5)  # the GGUF stores it as float32
    assert ModelConfig(bos_token_id=1, eos_token_id=2, rms_norm_eps=loaded.rms_norm_eps) == loaded
    ours = sum(p.numel() for p in smol["ours"].parameters())
    assert ours == sum(p.numel() for p in smol["hf"].parameters())  # HF counts the tied head once too
    print(f"SmolLM2 parameters: {ours:,}")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_attention_heads=9, num_key_value_heads=4), "num_key_value_heads"),
        (dict(hidden_size=100, num_attention_heads=3), "head_dim"),
        (dict(head_dim=7), "even"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "yarn"),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "low_freq_factor"),
        (dict(eos_token_id=60000), "60000"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


def test_from_hf_refuses_unsupported_features():
    with pytest.raises(ValueError, match="mlp_bias"):
        config_from_hf(LlamaConfig(mlp_bias=True))
    with pytest.raises(ValueError, match="gpt2"):
        from transformers import GPT2Config

        config_from_hf(GPT2Config())


def test_logits_rejects_bad_ids():
    m = random_model(dataclasses.replace(SMALL, num_hidden_layers=1), 0)
    with pytest.raises(ValueError, match="token id 50"):
        sequence_logits(m, [1, 50])
    with pytest.raises(ValueError, match="empty"):
        sequence_logits(m, [[1, 2], []])


def test_load_state_dict_names_missing_weights():
    hf = tiny(LlamaForCausalLM, LlamaConfig, seed=1, tie_word_embeddings=False)
    sd = hf.state_dict()
    del sd["model.layers.1.mlp.up_proj.weight"]
    ours = random_model(config_from_hf(hf.config), 0)
    with pytest.raises(ValueError, match="up_proj"):
        lm.load_state_dict(ours, sd)
