"""labkit on a CUDA GPU, everything side by side in one run: ceilings, decode attention, the engine.

    python bench/engine_gpu.py                 # everything; writes bench/results/engine_gpu.{json,md}
    python bench/engine_gpu.py --only micro    # ceilings + decode-attention micro-benchmark
    python bench/engine_gpu.py --quick         # small sizes, writes nothing (a smoke run)
    python bench/engine_gpu.py --out DIR       # write the results to DIR instead

Sections (all in the same process, so every ratio compares numbers measured minutes apart):
1. ceilings: device-to-device copy bandwidth (bytes read + bytes written per second, 2 GiB tensor)
   and the bf16 matrix rate (8192^3 product on random data); both are medians of timed repeats.
2. micro: decode attention over a paged cache (block size 16, shuffled blocks) for batch 1, 16, 64, 256
   x context 512, 2,048, 8,192, in the attention shape of Qwen3-0.6B (16 query heads, 8 kv heads,
   head dim 128, bf16). GB/s counts the K/V bytes the step must read (every cached token once) plus q
   and the output. Next to it: SDPA on the same K/V laid out contiguous (no paging: what a dense kernel
   reaches), and the torch reference backend (gather into a padded tensor, then SDPA). Each kernel's
   output is checked against SDPA's. The Triton kernel and SDPA are timed as CUDA-graph replays (as
   the engine runs decode steps: no launch overhead), the torch reference eagerly. Small cases fit in
   the 60 MB L2: read the headline at batch 64 x 2,048 (537 MB of K/V).
3. roofline: the fastest the workload could run on this device, from section 1's two ceilings:
   every decode step reads the weights once and each running request's K/V once (at copy bandwidth)
   or does its FLOPs (at the matrix rate), whichever is slower; prefill is FLOPs at the matrix rate.
4. engine: labkit and HF `generate` on the workload (see --help), output tokens/s and the ratio.

The model is Qwen3-0.6B's shape with random bf16 weights (28 layers, hidden 1024, 16 heads, 8 kv
heads, head dim 128, intermediate 3072, vocab 151,936, tied embeddings, qk-norm): nothing is
downloaded, and throughput does not depend on the weights' values when EOS is ignored.
The workload is nano-vllm's: 256 requests, prompt and output lengths each uniform in [100, 1024]
(numpy seed 0), random prompt ids, EOS ignored.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from labkit.attention import AttentionMetadata, torch_ref  # noqa: E402

QWEN3_06B = dict(
    num_hidden_layers=28,
    hidden_size=1024,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=3072,
    vocab_size=151936,
    tie_word_embeddings=True,
)


def cuda_time_ms(fn, warmup: int = 5, iters: int = 50) -> float:
    """Median time of fn() in ms, timed with CUDA events around each call (after warm-up)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return float(np.median(times))


def graphed(fn):
    """fn captured in a CUDA graph (after a warm-up call): returns the replay."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


# ---- 1. ceilings -------------------------------------------------------------------------------------


def measure_ceilings(quick: bool) -> dict:
    n = (256 if quick else 2048) * 2**20 // 2  # bf16 elements: 2 GiB (256 MiB quick)
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), iters=20)
    copy_gbs = 2 * src.numel() * 2 / (ms * 1e-3) / 1e9
    m = 4096 if quick else 8192
    a = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    ms = cuda_time_ms(lambda: a @ b, iters=10 if quick else 20)
    tflops = 2 * m**3 / (ms * 1e-3) / 1e12
    return {"copy_GBps": copy_gbs, "bf16_matmul_TFLOPs": tflops}


# ---- 2. decode attention -----------------------------------------------------------------------------


def paged_decode_case(batch: int, ctx: int, block_size: int = 16, seed: int = 0):
    """A decode step of `batch` sequences of `ctx` tokens each over shuffled blocks, bf16."""
    H, Hkv, D = QWEN3_06B["num_attention_heads"], QWEN3_06B["num_key_value_heads"], QWEN3_06B["head_dim"]
    g = torch.Generator(device="cuda").manual_seed(seed)
    per_seq = -(-ctx // block_size)
    num_blocks = batch * per_seq
    perm = torch.randperm(num_blocks, generator=g, device="cuda").to(torch.int32)
    tables = perm.view(batch, per_seq)
    shape = (num_blocks, block_size, Hkv, D)
    k_cache = torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(batch, H, D, generator=g, device="cuda", dtype=torch.bfloat16)
    seq_lens = [ctx] * batch
    qsl = list(range(batch + 1))
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(batch, dtype=torch.int64, device="cuda"),  # unused: no store here
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device="cuda"),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device="cuda"),
        block_tables=tables,
        max_query_len=1,
        max_seq_len=ctx,
        query_start_loc_list=qsl,
        seq_lens_list=seq_lens,
    )
    # the same K/V laid out contiguous, (batch, Hkv, ctx, D), as a dense kernel wants them
    k_dense = k_cache[tables.long()].flatten(1, 2)[:, :ctx].transpose(1, 2).contiguous()
    v_dense = v_cache[tables.long()].flatten(1, 2)[:, :ctx].transpose(1, 2).contiguous()
    return q, k_cache, v_cache, meta, k_dense, v_dense


def decode_attention_row(batch: int, ctx: int, copy_gbs: float, iters: int) -> dict:
    """Time the Triton decode kernel, SDPA on contiguous K/V and the torch reference on one case."""
    from labkit.attention import triton as tk

    q, k_cache, v_cache, meta, k_dense, v_dense = paged_decode_case(batch, ctx)
    scale = q.shape[2] ** -0.5
    bytes_moved = 2 * k_dense.numel() * 2 + 2 * q.numel() * 2  # K + V read, q read + out written
    out = torch.full_like(q, float("nan"))
    qd = q.unsqueeze(2)  # (batch, H, 1, D)

    def sdpa():
        return F.scaled_dot_product_attention(qd, k_dense, v_dense, scale=scale, enable_gqa=True)

    def kernel():
        tk.attention(q, k_cache, v_cache, meta, scale, out=out)

    def reference():
        meta.backend_cache.clear()  # index tensors are rebuilt every step in the engine too
        return torch_ref.attention(q, k_cache, v_cache, meta, scale)

    expected = sdpa().squeeze(2).float()
    kernel()
    err = ((out.float() - expected).norm() / expected.norm()).item()
    assert err < 2e-2, f"triton decode differs from SDPA at batch {batch}, ctx {ctx}: relative error {err:.2e}"
    row = {"batch": batch, "context": ctx, "kv_MB": bytes_moved / 1e6, "rel_err_vs_sdpa": err}
    # the engine replays decode steps as CUDA graphs: time the kernels the same way (no launch overhead)
    for name, fn in (("triton", graphed(kernel)), ("sdpa_contiguous", graphed(sdpa)), ("torch_ref_gather", reference)):
        if name == "torch_ref_gather" and batch * ctx > 64 * 8192:
            continue  # its padded copy at 256 x 8192 is 4.3 GB per tensor: skipped
        ms = cuda_time_ms(fn, iters=iters)
        row[f"{name}_us"] = ms * 1e3
        row[f"{name}_GBps"] = bytes_moved / (ms * 1e-3) / 1e9
    row["triton_share_of_copy"] = row["triton_GBps"] / copy_gbs
    row["triton_vs_sdpa"] = row["triton_us"] / row["sdpa_contiguous_us"]
    return row


def bench_decode_attention(copy_gbs: float, quick: bool) -> list[dict]:
    rows = []
    batches, ctxs = ([1, 16, 64], [512, 2048]) if quick else ([1, 16, 64, 256], [512, 2048, 8192])
    for batch in batches:
        for ctx in ctxs:
            row = decode_attention_row(batch, ctx, copy_gbs, iters=20 if quick else 50)
            rows.append(row)
            torch.cuda.empty_cache()
            print(
                f"  decode attn  batch {batch:4d} ctx {ctx:5d}: triton {row['triton_GBps']:7.0f} GB/s "
                f"({100 * row['triton_share_of_copy']:4.0f}% of copy)  sdpa {row['sdpa_contiguous_GBps']:7.0f}  "
                f"gather {row.get('torch_ref_gather_GBps', float('nan')):7.0f}  err {row['rel_err_vs_sdpa']:.1e}",
                flush=True,
            )
    return rows


def tune_decode(copy_gbs: float) -> list[dict]:
    """Sweep the decode kernel's launch parameters on a few cases (the module constants are restored)."""
    from labkit.attention import triton as tk

    saved = (tk.DECODE_BLOCK_N, tk.DECODE_WARPS, tk.DECODE_STAGES, tk.MIN_TOKENS_PER_SPLIT)
    cases = {f"{b}x{c}": paged_decode_case(b, c) for b, c in ((64, 2048), (1, 8192), (256, 2048), (16, 512))}
    rows = []
    for block_n in (32, 64, 128):
        for warps in (4, 8):
            for stages in (2, 3):
                for min_split in (128, 512):
                    tk.DECODE_BLOCK_N, tk.DECODE_WARPS, tk.DECODE_STAGES = block_n, warps, stages
                    tk.MIN_TOKENS_PER_SPLIT = min_split
                    r = {"block_n": block_n, "warps": warps, "stages": stages, "min_split": min_split}
                    for name, (q, k_cache, v_cache, meta, k_dense, _) in cases.items():
                        nbytes = 2 * k_dense.numel() * 2 + 2 * q.numel() * 2
                        try:
                            fn = lambda q=q, kc=k_cache, vc=v_cache, m=meta: tk.attention(q, kc, vc, m, 0.088)  # noqa: E731
                            ms = cuda_time_ms(fn, iters=20)
                            r[name] = round(nbytes / (ms * 1e-3) / 1e9)
                        except Exception as e:  # a configuration that does not compile (shared memory)
                            r[name] = repr(e)[:60]
                    rows.append(r)
                    print("  tune", r, flush=True)
    tk.DECODE_BLOCK_N, tk.DECODE_WARPS, tk.DECODE_STAGES, tk.MIN_TOKENS_PER_SPLIT = saved
    return rows


# ---- 3. roofline ------------------------------------------------------------------------------------


def workload(num_requests: int = 256, lo: int = 100, hi: int = 1024, seed: int = 0):
    """nano-vllm's benchmark: prompt and output lengths each uniform in [lo, hi], random prompt ids."""
    rng = np.random.default_rng(seed)
    prompt_lens = rng.integers(lo, hi + 1, size=num_requests)
    output_lens = rng.integers(lo, hi + 1, size=num_requests)
    prompts = [rng.integers(0, 10000, size=int(n)).tolist() for n in prompt_lens]
    return prompts, [int(n) for n in output_lens]


def model_numbers(cfg: dict, dtype_bytes: int = 2) -> dict:
    """Parameter count, weight bytes read per step, FLOPs per token, KV bytes per cached token."""
    h, L, i = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    qd = cfg["num_attention_heads"] * cfg["head_dim"]
    kvd = cfg["num_key_value_heads"] * cfg["head_dim"]
    per_layer = h * qd + 2 * h * kvd + qd * h + 3 * h * i  # q, k, v, o, gate, up, down (norms: tiny)
    embed = cfg["vocab_size"] * h
    return {
        "layer_params": L * per_layer,
        "embed_params": embed,
        "weight_bytes_per_step": (L * per_layer + embed) * dtype_bytes,  # lm_head = embedding (tied)
        "matmul_flops_per_token": 2 * L * per_layer,  # + the lm_head for tokens whose logits are needed
        "lm_head_flops": 2 * embed,
        "attn_flops_per_key": 4 * L * qd,  # q.k and p.v per (query, key) pair over all layers
        "kv_bytes_per_token": 2 * L * kvd * dtype_bytes,
    }


def roofline(prompt_lens, output_lens, cfg: dict, copy_gbs: float, tflops: float, max_num_seqs: int = 256) -> dict:
    """Seconds the workload needs at the ceilings, with all requests admitted in waves of max_num_seqs.

    Prefill: matmul FLOPs of every prompt token, causal attention FLOPs, the lm_head for the last
    token. Decode step of n running requests: max(bytes / copy bandwidth, FLOPs / matrix rate), bytes
    = weights once + every running request's K/V, FLOPs = n tokens through the layers and lm_head.
    """
    mn = model_numbers(cfg)
    bw, rate = copy_gbs * 1e9, tflops * 1e12
    prefill_flops = sum(
        mn["matmul_flops_per_token"] * p + mn["attn_flops_per_key"] * p * (p + 1) / 2 + mn["lm_head_flops"]
        for p in prompt_lens
    )
    t_decode, steps = 0.0, 0
    reqs = list(zip(prompt_lens, output_lens))
    for w in range(0, len(reqs), max_num_seqs):
        wave = reqs[w : w + max_num_seqs]
        p = np.array([r[0] for r in wave], dtype=np.float64)
        o = np.array([r[1] for r in wave], dtype=np.float64)
        for t in range(1, int(o.max())):  # the first output token comes with the prefill
            run = o > t
            n = int(run.sum())
            ctx = float((p[run] + t).sum())
            bytes_ = mn["weight_bytes_per_step"] + ctx * mn["kv_bytes_per_token"]
            flops = n * (mn["matmul_flops_per_token"] + mn["lm_head_flops"]) + mn["attn_flops_per_key"] * ctx
            t_decode += max(bytes_ / bw, flops / rate)
            steps += 1
    t_prefill = prefill_flops / rate
    total = t_decode + t_prefill
    out_tokens = int(sum(output_lens))
    return {
        "seconds": total,
        "decode_seconds": t_decode,
        "prefill_seconds": t_prefill,
        "decode_steps": steps,
        "output_tokens": out_tokens,
        "tokens_per_s": out_tokens / total,
    }


# ---- 4. engine --------------------------------------------------------------------------------------


def build_models():
    """transformers' Qwen3ForCausalLM with random bf16 weights on the GPU, and labkit's copy of it."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from labkit.loader import from_hf_model

    cfg = Qwen3Config(**QWEN3_06B, max_position_embeddings=40960, rms_norm_eps=1e-6)
    torch.manual_seed(0)
    with torch.device("cuda"):
        hf = Qwen3ForCausalLM(cfg).to(torch.bfloat16).eval()
    hf.generation_config.eos_token_id = None  # ignore EOS (random weights: it would end at random)
    return hf, from_hf_model(hf)


class TimedSampler:
    """Wraps the engine's sampler and measures, per step, how long the host waits for the GPU (the one
    synchronisation of a step is reading the sampled tokens; doing it here moves it, nothing more)."""

    def __init__(self, engine):
        self.inner, self.engine, self.waits = engine.sampler, engine, {}

    def sample(self, logits, params, generators=None):
        tokens = self.inner.sample(logits, params, generators)
        t0 = time.perf_counter()
        torch.cuda.synchronize()
        self.waits[len(self.engine.timeline)] = time.perf_counter() - t0  # keyed by the step's index
        return tokens


TRITON_COMPILES = {"count": 0, "seconds": 0.0}


def count_triton_compiles() -> None:
    """Count Triton's just-in-time compilations and their seconds in TRITON_COMPILES (its runtime hooks)."""
    from triton import knobs

    started = []

    def before(**_):
        started.append(time.perf_counter())
        return None  # (a true value would skip the compilation)

    def after(**_):
        TRITON_COMPILES["count"] += 1
        TRITON_COMPILES["seconds"] += time.perf_counter() - started.pop()

    knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook = before, after


def run_labkit(model, prompts, output_lens, temperature: float, **config) -> dict:
    from labkit.llm import LLM
    from labkit.sampler import SamplingParams

    t0 = time.perf_counter()
    llm = LLM(model, **config)
    engine = llm.llm_engine
    setup_s = time.perf_counter() - t0
    params = [SamplingParams(temperature=temperature, max_tokens=n, ignore_eos=True) for n in output_lens]
    llm.generate(
        prompts[:4], [SamplingParams(temperature=temperature, max_tokens=4, ignore_eos=True)] * 4, use_tqdm=False
    )
    engine.reset_timeline()
    timer = TimedSampler(engine)
    engine.sampler = timer
    torch.cuda.synchronize()
    compiles_before = dict(TRITON_COMPILES)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    compiles = {k: TRITON_COMPILES[k] - compiles_before[k] for k in TRITON_COMPILES}
    tokens = sum(len(o.token_ids) for o in outs)
    assert [len(o.token_ids) for o in outs] == list(output_lens), "every request must run to max_tokens"
    steps = engine.timeline
    decode = [s for s in steps if s.num_prefill_tokens == 0]
    other = [s for s in steps if s.num_prefill_tokens]  # prefill and mixed steps: eager, op by op
    wall = sum(s.duration_s for s in decode)
    wait = sum(timer.waits.get(s.step, 0.0) for s in decode)
    sc = engine.scheduler_config
    res = {
        "config": {
            "max_num_seqs": sc.max_num_seqs,
            "max_num_batched_tokens": sc.max_num_batched_tokens,
            "num_gpu_blocks": engine.kv_cache.num_blocks,
            "block_size": engine.kv_cache.block_size,
            "runner": type(engine.runner).__name__,
        },
        "setup_s": setup_s,
        "seconds": seconds,
        "output_tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "steps": len(steps),
        "decode_steps": len(decode),
        "decode_step_ms": 1e3 * wall / max(1, len(decode)),
        "decode_host_ms": 1e3 * (wall - wait) / max(1, len(decode)),
        "decode_host_share": (wall - wait) / wall if wall else None,
        "graph_steps": getattr(engine.runner, "num_graph_steps", 0),
        "prefill_steps": len(other),
        "prefill_steps_s": sum(s.duration_s for s in other),
        "slowest_step_ms": 1e3 * max(s.duration_s for s in steps),
        "triton_compiles_in_run": compiles["count"],
        "triton_compile_s_in_run": compiles["seconds"],
    }
    del llm, engine, timer, outs
    gc.collect()
    torch.cuda.empty_cache()
    return res


def run_hf(hf, prompts, output_lens, temperature: float, batch_size: int) -> dict:
    """HF generate as a user runs it: batches of batch_size prompts, left-padded, sampling at the same
    temperature (top-k and top-p off), every row until the batch's longest requested output."""
    t0 = time.perf_counter()
    tokens = 0
    for i in range(0, len(prompts), batch_size):
        ps, outs = prompts[i : i + batch_size], output_lens[i : i + batch_size]
        width = max(len(p) for p in ps)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in ps], device="cuda")
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps], device="cuda")
        with torch.no_grad():
            out = hf.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max(outs),
                min_new_tokens=max(outs),
                do_sample=True,
                temperature=temperature,
                top_k=None,
                top_p=None,
                pad_token_id=0,
            )
        assert out.shape[1] == width + max(outs)
        tokens += sum(outs)  # the tokens the requests asked for (HF makes more: padding rows run on)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "output_tokens": tokens, "tokens_per_s": tokens / seconds, "batch_size": batch_size}


def bench_engine(res: dict, quick: bool, eager: bool) -> None:
    count_triton_compiles()
    hf, model = build_models()
    temp = 0.6  # nano-vllm's benchmark samples at 0.6
    n_full = 32 if quick else 256
    prompts, output_lens = workload(n_full)
    small = workload(16 if quick else 64, 100, 512)
    eng = res["engine"] = {
        "workload": f"{n_full} requests, prompt and output lengths U[100, 1024], seed 0",
        "hf_workload": f"{len(small[0])} requests, lengths U[100, 512], seed 0",
    }
    runs = [
        ("labkit_tuned", prompts, output_lens, dict(max_num_seqs=256, max_num_batched_tokens=16384)),
        ("labkit_default", prompts, output_lens, {}),
        ("labkit_default_small", *small, {}),
        ("labkit_default_unfused", prompts, output_lens, {}),  # LABKIT_FUSED=0: labkit/fused.py's worth
    ]
    if eager:
        runs.append(("labkit_eager_small", *small, dict(enforce_eager=True)))  # no CUDA graphs
    for name, ps, outs, config in runs:
        os.environ["LABKIT_FUSED"] = "0" if name.endswith("unfused") else "1"  # read at graph capture
        eng[name] = r = run_labkit(model, ps, outs, temp, **config)
        print(
            f"  {name:22s} {r['tokens_per_s']:8.0f} tok/s  ({r['output_tokens']} tokens in {r['seconds']:.2f} s; "
            f"decode step {r['decode_step_ms']:.2f} ms, host {r['decode_host_ms']:.2f} ms "
            f"= {100 * (r['decode_host_share'] or 0):.0f}%; {r['prefill_steps']} prefill/mixed steps "
            f"{r['prefill_steps_s']:.2f} s, slowest step {r['slowest_step_ms']:.0f} ms, {r['triton_compiles_in_run']} "
            f"Triton compiles ({r['triton_compile_s_in_run']:.2f} s); {r['config']})",
            flush=True,
        )
    os.environ.pop("LABKIT_FUSED")
    eng["hf_small"] = r = run_hf(hf, *small, temp, batch_size=len(small[0]))
    print(
        f"  hf_generate_small      {r['tokens_per_s']:8.0f} tok/s  ({r['output_tokens']} tokens, {r['seconds']:.2f} s)"
    )
    roof = res["roofline"]["tokens_per_s"]
    eng["roofline_share_tuned"] = eng["labkit_tuned"]["tokens_per_s"] / roof
    eng["roofline_share_default"] = eng["labkit_default"]["tokens_per_s"] / roof
    eng["ratio_vs_hf_small"] = eng["labkit_default_small"]["tokens_per_s"] / eng["hf_small"]["tokens_per_s"]
    eng["fused_vs_unfused"] = eng["labkit_default"]["tokens_per_s"] / eng["labkit_default_unfused"]["tokens_per_s"]
    print(
        f"  roofline share: tuned {100 * eng['roofline_share_tuned']:.1f}%, default "
        f"{100 * eng['roofline_share_default']:.1f}%; labkit / HF on the small workload: "
        f"{eng['ratio_vs_hf_small']:.1f}x; fused kernels {eng['fused_vs_unfused']:.3f}x the unfused run",
        flush=True,
    )


def engine_markdown(res: dict) -> list[str]:
    eng = res["engine"]
    lines = [
        "## Engine (Qwen3-0.6B shape, random bf16 weights, temperature 0.6, EOS ignored)",
        "",
        f"Workload: {eng['workload']}; HF comparison on {eng['hf_workload']} (HF on the full one takes minutes).",
        "",
        "| run | workload | config | output tok/s | decode step ms | host ms (share) | prefill/mixed steps: "
        "count, s | slowest step ms | Triton compiles in the run (s) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = ("labkit_tuned", "labkit_default", "labkit_default_unfused", "labkit_default_small", "labkit_eager_small")
    for name in names:
        if name not in eng:
            continue
        r = eng[name]
        c = r["config"]
        cfg = f"{c['max_num_seqs']} seqs, {c['max_num_batched_tokens']} tokens, {c['runner']}"
        wl = "small" if name.endswith("small") else "full"
        lines.append(
            f"| {name} | {wl} | {cfg} | {r['tokens_per_s']:.0f} | {r['decode_step_ms']:.2f} | "
            f"{r['decode_host_ms']:.2f} ({100 * (r['decode_host_share'] or 0):.0f}%) | {r['prefill_steps']}, "
            f"{r['prefill_steps_s']:.2f} | {r['slowest_step_ms']:.0f} | {r['triton_compiles_in_run']} "
            f"({r['triton_compile_s_in_run']:.2f}) |"
        )
    r = eng["hf_small"]
    lines += [
        f"| HF generate (batch {r['batch_size']}, left-padded) | small | - | {r['tokens_per_s']:.0f} |"
        + " - |" * 5,
        "",
        f"labkit at {100 * eng['roofline_share_tuned']:.1f}% of the roofline tuned, "
        f"{100 * eng['roofline_share_default']:.1f}% with the default configuration; "
        f"{eng['ratio_vs_hf_small']:.1f}x HF generate on the small workload (default configuration). "
        f"labkit/fused.py's kernels (q/k norm + RoPE, SiLU-mul, residual add + RMSNorm, RMSNorm): "
        f"{eng['fused_vs_unfused']:.3f}x the tok/s of the same run with LABKIT_FUSED=0.",
        "",
    ]
    return lines


def bars_markdown(res: dict) -> list[str]:
    """Issue 12's bars, each with the number of this run it is judged by."""
    eng, rows = res["engine"], []
    if "micro" in res:
        r = next(r for r in res["micro"] if (r["batch"], r["context"]) == (64, 2048))
        rows.append(("decode attention, batch 64 x 2,048: >= 70% of copy", f"{100 * r['triton_share_of_copy']:.0f}%",
                     r["triton_share_of_copy"] >= 0.7))
        rows.append(("... and not slower than SDPA on contiguous K/V by more than 1.5x",
                     f"{r['triton_vs_sdpa']:.2f}x SDPA's time", r["triton_vs_sdpa"] <= 1.5))
    share = eng["roofline_share_default"]
    rows.append(("labkit >= 40% of the workload's roofline (default configuration)", f"{100 * share:.1f}%",
                 share >= 0.4))
    ratio = eng["ratio_vs_hf_small"]
    rows.append((f"labkit >= 15x HF generate (on the {eng['hf_workload']} workload)", f"{ratio:.1f}x", ratio >= 15))
    rows.append(("the default configuration beats HF generate (same workload)", f"{ratio:.1f}x", ratio > 1))
    lines = ["## Issue 12's bars in this run", "", "| bar | measured | met |", "|---|---:|---|"]
    lines += [f"| {bar} | {value} | {'yes' if ok else 'NO'} |" for bar, value, ok in rows]
    return lines + [""]


# ---- main -------------------------------------------------------------------------------------------


def device_name() -> str:
    p = torch.cuda.get_device_properties(0)
    return f"{p.name} ({p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"


def write_results(res: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "engine_gpu.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        "# labkit on GPU (bench/engine_gpu.py)",
        "",
        f"Date: {res['date']}. Device: {res['device']}.",
        "",
        f"Ceilings measured in the same run: copy {res['ceilings']['copy_GBps']:.0f} GB/s (read + write), "
        f"bf16 matmul {res['ceilings']['bf16_matmul_TFLOPs']:.0f} TFLOP/s.",
        "",
    ]
    if "micro" in res:
        lines += [
            "## Decode attention (Qwen3-0.6B heads: 16 q / 8 kv, head dim 128, bf16, block size 16)",
            "",
            "| batch | context | K/V MB | triton GB/s | % of copy | SDPA contiguous GB/s | triton time / SDPA | "
            "torch gather+SDPA GB/s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in res["micro"]:
            g = r.get("torch_ref_gather_GBps")
            lines.append(
                f"| {r['batch']} | {r['context']} | {r['kv_MB']:.0f} | {r['triton_GBps']:.0f} | "
                f"{100 * r['triton_share_of_copy']:.0f}% | {r['sdpa_contiguous_GBps']:.0f} | "
                f"{r['triton_vs_sdpa']:.2f}x | {'-' if g is None else f'{g:.0f}'} |"
            )
        lines.append("")
    if "roofline" in res:
        rf = res["roofline"]
        lines += [
            "## Workload roofline",
            "",
            f"{rf['output_tokens']} output tokens: at best {rf['seconds']:.2f} s ({rf['decode_seconds']:.2f} s "
            f"decode over {rf['decode_steps']} steps, {rf['prefill_seconds']:.2f} s prefill), "
            f"i.e. {rf['tokens_per_s']:.0f} tok/s.",
            "",
        ]
    for extra in res.get("markdown", []):
        lines += extra
    (out_dir / "engine_gpu.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["micro", "engine"], default=None)
    ap.add_argument("--tune", action="store_true", help="also sweep the decode kernel's launch parameters")
    ap.add_argument("--eager", action="store_true", help="also run the small workload without CUDA graphs")
    ap.add_argument("--quick", action="store_true", help="small sizes; writes nothing unless --out")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench/engine_gpu.py: skipped, no CUDA device here (it measures labkit on a GPU)")
        return
    torch.manual_seed(0)
    res = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name(),
        "args": vars(args) | {"out": str(args.out)},
    }
    t0 = time.perf_counter()
    res["ceilings"] = measure_ceilings(args.quick)
    c = res["ceilings"]
    print(f"ceilings: copy {c['copy_GBps']:.0f} GB/s, bf16 matmul {c['bf16_matmul_TFLOPs']:.0f} TFLOP/s", flush=True)
    prompts, output_lens = workload()
    res["roofline"] = roofline(
        [len(p) for p in prompts], output_lens, QWEN3_06B, c["copy_GBps"], c["bf16_matmul_TFLOPs"]
    )
    print(f"roofline: {res['roofline']['tokens_per_s']:.0f} tok/s ({res['roofline']['seconds']:.2f} s)", flush=True)
    if args.only in (None, "micro"):
        res["micro"] = bench_decode_attention(c["copy_GBps"], args.quick)
    if args.tune:
        res["tune"] = tune_decode(c["copy_GBps"])
    if args.only in (None, "engine"):
        bench_engine(res, args.quick, args.eager)
        res["markdown"] = [engine_markdown(res), bars_markdown(res)]
    res["wall_s"] = time.perf_counter() - t0
    out_dir = args.out or (None if args.quick else ROOT / "bench" / "results")
    if out_dir is not None:
        write_results(res, Path(out_dir))
        print(f"wrote {out_dir}/engine_gpu.json and .md")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
