"""Engine throughput on CPU: labkit's continuous batching against Hugging Face `generate`, SmolLM2-135M.

    .venv/bin/python bench/engine_cpu.py --threads 2  # full run (minutes); writes bench/results/engine_cpu.*
    .venv/bin/python bench/engine_cpu.py --quick      # smoke run (4 prompts, 8 tokens); writes nothing

The same 16 chat prompts (ChatML, SmolLM2-Instruct's format), greedy, float32, on the same CPU threads:
- labkit: `LLM("smollm2-135m-instruct").generate(prompts)`: all 16 in one engine (continuous batching,
  paged KV cache, finished requests leave the batch). Every timed run gets a fresh engine over the
  loaded model, so its prefix cache starts empty as in a first run (the prompts still share the
  blocks of their common system prompt within a run, as in any vLLM-style engine);
- HF batched: transformers `LlamaForCausalLM.generate` on the 16 prompts at once, left-padded
  (the baseline): every row runs until the longest answer is done;
- HF one at a time: `generate` per prompt, no padding;
- labkit, sgemm: labkit with LABKIT_ONEDNN=0, its linear layers and LM head on torch's default
  F.linear (MKL sgemm) instead of oneDNN (labkit/onednn.py): what that choice is worth, same run.
The HF model is loaded by transformers itself from the same GGUF file (dequantized to float32).

Two workloads:
- "chat" (the headline): up to --max-tokens new tokens, each answer stops at EOS (<|im_end|>), as
  a user would run it. Answers differ in length, which is where continuous batching gains.
- "fixed": EOS ignored (HF: generation_config.eos_token_id = None), every answer exactly --fixed-tokens
  long. No length variance, so labkit gains only what padding and per-step overhead cost HF.

tokens/s counts generated tokens (EOS included) per wall-clock second, prefill included. Each figure
is the best of --repeat runs (noise on a shared machine only ever adds time; the JSON keeps every
run, its load average and the median), the engines interleaved so that noise hits them alike, after
a short warm-up of each. The judged figure is labkit's speedup over HF batched (best against best);
the ratio of each run (labkit's run i against HF batched's run i) is printed and kept too.
Greedy tokens are compared with HF one-at-a-time (the parity oracle).
A last instrumented labkit run splits its step time into scheduler, input preparation, attention,
the rest of the model, logits, sampling and bookkeeping.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import labkit.model as lm  # noqa: E402
from labkit.demo import hf_generate, load_hf_model  # noqa: E402
from labkit.llm import LLM, apply_chat_template  # noqa: E402
from labkit.sampler import SamplingParams  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a CPU does in one sentence.",
    "List three colors.",
    "How many legs does a spider have?",
    "Give me a short tip for staying focused.",
    "What is photosynthesis?",
    "Write one sentence about the moon.",
    "What is 15 plus 27?",
    "Name two famous painters.",
    "Why do we need sleep?",
    "Describe a cat in three words.",
    "What language is spoken in Brazil?",
    "Suggest a name for a pet goldfish.",
    "What is the boiling point of water?",
    "Tell me a fun fact about octopuses.",
]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return (
            next(line for line in out.splitlines() if line.startswith("Model name")).split(":", 1)[1].strip()
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def fresh_engine(llm: LLM) -> LLM:
    """A new engine over the same loaded model, so with an empty prefix cache: every timed run repeats the
    same prompts, and the cache of an earlier run would let labkit skip almost all of their prefill."""
    return LLM(llm.llm_engine.model, llm.get_tokenizer(), max_num_seqs=llm.llm_engine.scheduler_config.max_num_seqs)


def run_labkit(llm: LLM, prompts, max_tokens: int, ignore_eos: bool) -> tuple[list[list[int]], float]:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=ignore_eos)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    return [o.token_ids for o in outs], time.perf_counter() - t0


def run_hf(hf, prompts, max_tokens: int, ignore_eos: bool, batched: bool, eos: int, pad: int):
    hf.generation_config.eos_token_id = None if ignore_eos else eos
    return hf_generate(hf, prompts, max_tokens, None if ignore_eos else eos, pad, batched)


def run_labkit_sgemm(llm: LLM, prompts, max_tokens: int, ignore_eos: bool):
    """labkit with its linear layers on torch's F.linear (LABKIT_ONEDNN=0, read at every call)."""
    os.environ["LABKIT_ONEDNN"] = "0"
    try:
        return run_labkit(llm, prompts, max_tokens, ignore_eos)
    finally:
        del os.environ["LABKIT_ONEDNN"]


def rate(token_ids: list[list[int]], seconds: float) -> float:
    """Generated tokens per second."""
    return sum(map(len, token_ids)) / seconds


ENGINES = ("labkit", "hf_batched", "hf_one_at_a_time", "labkit_sgemm")


def measure(llm, hf, prompts, max_tokens, ignore_eos, repeat, eos, pad, label) -> dict:
    engines = {
        "labkit": lambda ps, n: run_labkit(fresh_engine(llm), ps, n, ignore_eos),
        "hf_batched": lambda ps, n: run_hf(hf, ps, n, ignore_eos, True, eos, pad),
        "hf_one_at_a_time": lambda ps, n: run_hf(hf, ps, n, ignore_eos, False, eos, pad),
        "labkit_sgemm": lambda ps, n: run_labkit_sgemm(fresh_engine(llm), ps, n, ignore_eos),
    }
    assert tuple(engines) == ENGINES
    for fn in engines.values():  # warm-up: first calls allocate and pick kernels
        fn(prompts[:2], 4)
    times = {name: [] for name in engines}
    tokens, loads = {}, []
    for rep in range(repeat):  # interleaved, so that a noisy moment hits every engine alike
        for name, fn in engines.items():
            tokens[name], secs = fn(prompts, max_tokens)
            times[name].append(secs)
            n = sum(map(len, tokens[name]))
            print(f"  {label} run {rep + 1}: {name:<17} {n:>5} tokens in {secs:6.2f} s", flush=True)
        loads.append(round(os.getloadavg()[0], 2))
        ratio = rate(tokens["labkit"], times["labkit"][-1]) / rate(tokens["hf_batched"], times["hf_batched"][-1])
        print(f"  {label} run {rep + 1}: labkit / HF batched {ratio:.2f}x (load {loads[-1]})", flush=True)
    result = {}
    for name in engines:
        n = sum(map(len, tokens[name]))
        best = min(times[name])  # noise only ever adds time
        result[name] = {
            "tokens": n,
            "seconds": best,
            "seconds_median": statistics.median(times[name]),
            "seconds_all": times[name],
            "tokens_per_s": n / best,
        }
    ref = tokens["hf_one_at_a_time"]
    result["parity"] = {
        name: sum(a == b for a, b in zip(tokens[name], ref)) for name in engines if name != "hf_one_at_a_time"
    }
    result["num_prompts"] = len(prompts)
    lab = result["labkit"]["tokens_per_s"]
    result["labkit_speedup"] = {b: lab / result[b]["tokens_per_s"] for b in engines if b != "labkit"}
    result["labkit_speedup_per_run"] = {
        b: [round(rate(tokens["labkit"], tl) / rate(tokens[b], tb), 3) for tl, tb in zip(times["labkit"], times[b])]
        for b in engines
        if b != "labkit"
    }
    result["load_per_run"] = loads
    return result


def breakdown(llm: LLM, prompts, max_tokens: int) -> dict:
    """Milliseconds per engine step spent in each part, from one instrumented run (chat workload)."""
    llm = fresh_engine(llm)
    engine = llm.llm_engine
    acc: dict[str, float] = {}
    patched = []

    def wrap(owner, name, key):
        fn = getattr(owner, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                acc[key] = acc.get(key, 0.0) + time.perf_counter() - t

        setattr(owner, name, timed)
        patched.append((owner, name, fn))

    wrap(engine.scheduler, "schedule", "schedule")
    wrap(engine.runner, "prepare_inputs", "prepare_inputs")
    wrap(engine.runner, "execute_model", "execute_model")
    wrap(lm, "paged_attention", "attention")
    wrap(engine.model, "compute_logits", "logits")
    wrap(engine.sampler, "sample", "sample")
    wrap(engine.scheduler, "update_from_output", "update_from_output")
    first = len(engine.timeline)
    t0 = time.perf_counter()
    try:
        run_labkit(llm, prompts, max_tokens, ignore_eos=False)
    finally:
        for owner, name, fn in reversed(patched):
            setattr(owner, name, fn)
    total = time.perf_counter() - t0
    steps = len(engine.timeline) - first
    ms = {k: 1000 * v / steps for k, v in acc.items()}
    parts = {
        "schedule": ms["schedule"],
        "prepare_inputs": ms["prepare_inputs"],
        "attention (store + paged read)": ms["attention"],
        "rest of the model (matmuls, norms, RoPE)": ms["execute_model"]
        - ms["prepare_inputs"]
        - ms["attention"]
        - ms["logits"],
        "logits (sampling rows only)": ms["logits"],
        "sample": ms["sample"],
        "update_from_output": ms["update_from_output"],
    }
    parts["engine bookkeeping (detokenize, metrics, outputs)"] = 1000 * total / steps - sum(parts.values())
    decode_steps = [s for s in engine.timeline[first:] if s.num_prefill_tokens == 0]
    return {
        "steps": steps,
        "ms_per_step": 1000 * total / steps,
        "parts_ms_per_step": parts,
        "mean_batch": sum(s.num_seqs for s in engine.timeline[first:]) / steps,
        "decode_step_ms_median": 1000 * statistics.median(s.duration_s for s in decode_steps),
    }


def best_us(fn, calls: int = 20, rounds: int = 5) -> float:
    """Microseconds per call of fn(), the best of `rounds` rounds of `calls` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return 1e6 * best


@torch.inference_mode()
def kernels(llm: LLM, num_seqs: int) -> dict:
    """The two CPU choices in labkit's decode step, each next to the alternative on the same data:
    the LM head (num_seqs rows x the tied embedding) on oneDNN vs F.linear (MKL sgemm), and one layer's
    decode gather of num_seqs sequences of 96 tokens from shuffled blocks, index_select vs cache[blocks]."""
    from labkit import onednn

    g = torch.Generator().manual_seed(0)
    model = llm.llm_engine.model
    weight = model.model.embed_tokens.weight
    hidden = torch.randn(num_seqs, weight.shape[1], generator=g)
    k_cache = llm.llm_engine.runner.kv_caches[0][0]
    block_size, seq_len = k_cache.shape[1], 96
    nb = -(-seq_len // block_size)
    blocks = torch.randperm(k_cache.shape[0], generator=g)[: num_seqs * nb].view(num_seqs, nb)
    out = {
        "lm_head_onednn_us": best_us(lambda: onednn.linear(hidden, weight)),
        "lm_head_f_linear_us": best_us(lambda: torch.nn.functional.linear(hidden, weight)),
        "gather_index_select_us": best_us(lambda: k_cache.index_select(0, blocks.view(-1)), calls=200),
        "gather_advanced_indexing_us": best_us(lambda: k_cache[blocks], calls=200),
    }
    assert torch.equal(k_cache.index_select(0, blocks.view(-1)).view(k_cache[blocks].shape), k_cache[blocks])
    return {"num_seqs": num_seqs, "seq_len": seq_len, **out}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# Engine throughput on CPU: labkit vs HF transformers `generate` (SmolLM2-135M-Instruct, float32)",
        "",
        f"Date {res['date']}; CPU {m['cpu']} ({m['logical_cpus']} logical CPUs), torch {m['torch']} "
        f"({m['threads']} threads), transformers {m['transformers']}, Python {m['python']}. "
        f"Load average before / after: {m['load_before']} / {m['load_after']}.",
        f"Produced by `{res['command']}`; {res['config']['num_prompts']} chat prompts, greedy; "
        f"the best of {res['config']['repeat']} interleaved runs after a warm-up (every run and the medians in "
        f"the JSON). labkit_sgemm is labkit with LABKIT_ONEDNN=0 (linear layers on MKL sgemm, not oneDNN).",
        "",
        "| workload | engine | tokens | seconds | tokens/s | labkit speedup | greedy = HF one-at-a-time |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for wl, desc in (
        ("chat", f"chat (<= {res['config']['max_tokens']} tokens, stop at EOS)"),
        ("fixed", f"fixed ({res['config']['fixed_tokens']} tokens, EOS ignored)"),
    ):
        r = res[wl]
        for name in ENGINES:
            e = r[name]
            speed = "-" if name == "labkit" else f"{r['labkit_speedup'][name]:.2f}x"
            same = r["parity"].get(name, "(oracle)")
            same = f"{same}/{r['num_prompts']}" if isinstance(same, int) else same
            lines.append(
                f"| {desc} | {name} | {e['tokens']} | {e['seconds']:.2f} | {e['tokens_per_s']:.1f} | "
                f"{speed} | {same} |"
            )
    lines.append("")
    for wl in ("chat", "fixed"):
        r = res[wl]
        runs = ", ".join(f"{x:.2f}x" for x in r["labkit_speedup_per_run"]["hf_batched"])
        lines.append(f"- {wl}: labkit / HF batched per run {runs} (1-minute load after each run {r['load_per_run']}).")
    b = res["breakdown"]
    lines += [
        "",
        f"labkit step time, chat workload ({b['steps']} steps, mean batch {b['mean_batch']:.1f}, "
        f"{b['ms_per_step']:.1f} ms per step, decode-only steps {b['decode_step_ms_median']:.1f} ms median):",
        "",
        "| part | ms per step | share |",
        "| --- | ---: | ---: |",
    ]
    for part, ms in b["parts_ms_per_step"].items():
        lines.append(f"| {part} | {ms:.2f} | {100 * ms / b['ms_per_step']:.0f}% |")
    k = res["kernels"]
    lines += [
        "",
        f"labkit's two CPU choices, each against the alternative on the same data ({k['num_seqs']} sequences):",
        "",
        "| operation | labkit's choice | us | alternative | us | speedup |",
        "| --- | --- | ---: | --- | ---: | ---: |",
        f"| LM head, {k['num_seqs']} rows x the tied embedding | oneDNN (labkit/onednn.py) | "
        f"{k['lm_head_onednn_us']:.0f} | F.linear (MKL sgemm) | {k['lm_head_f_linear_us']:.0f} | "
        f"{k['lm_head_f_linear_us'] / k['lm_head_onednn_us']:.2f}x |",
        f"| one layer's K decode gather, {k['seq_len']} tokens per sequence | index_select | "
        f"{k['gather_index_select_us']:.0f} | cache[blocks] | {k['gather_advanced_indexing_us']:.0f} | "
        f"{k['gather_advanced_indexing_us'] / k['gather_index_select_us']:.2f}x |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="labkit vs HF generate on CPU")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--fixed-tokens", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="4 prompts, 8 tokens, 1 repeat; writes nothing")
    parser.add_argument("--out", type=Path, default=None, help="folder for engine_cpu.{json,md}")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    questions = QUESTIONS[:4] if args.quick else QUESTIONS
    if args.quick:
        args.max_tokens, args.fixed_tokens, args.repeat = 8, 8, 1
    out_dir = args.out or (None if args.quick else ROOT / "bench" / "results")
    load_before = os.getloadavg()

    llm = LLM("smollm2-135m-instruct", max_num_seqs=len(questions))
    tok = llm.get_tokenizer()
    prompts = [tok.encode(apply_chat_template(q), allowed_special="all") for q in questions]
    hf = load_hf_model()
    eos = llm.llm_engine.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    res = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "config": {
            "num_prompts": len(prompts),
            "max_tokens": args.max_tokens,
            "fixed_tokens": args.fixed_tokens,
            "repeat": args.repeat,
            "dtype": "float32",
            "greedy": True,
            "prompt_tokens": [len(p) for p in prompts],
        },
    }
    res["command"] = " ".join(["bench/engine_cpu.py", *(sys.argv[1:] if argv is None else argv)])
    res["chat"] = measure(llm, hf, prompts, args.max_tokens, False, args.repeat, eos, pad, "chat")
    res["fixed"] = measure(llm, hf, prompts, args.fixed_tokens, True, args.repeat, eos, pad, "fixed")
    res["breakdown"] = breakdown(llm, prompts, args.max_tokens)
    res["kernels"] = kernels(llm, len(prompts))
    res["machine"] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "python": platform.python_version(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    text = markdown(res)
    print(text)
    for wl in ("chat", "fixed"):
        r = res[wl]
        lab, hfb = r["labkit"]["tokens_per_s"], r["hf_batched"]["tokens_per_s"]
        print(f"{wl}: labkit {lab:.1f} tok/s, HF batched {hfb:.1f} tok/s: {r['labkit_speedup']['hf_batched']:.2f}x "
              f"(per run: {r['labkit_speedup_per_run']['hf_batched']}); greedy = HF one-at-a-time: labkit "
              f"{r['parity']['labkit']}/{r['num_prompts']}, HF batched {r['parity']['hf_batched']}/{r['num_prompts']}")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "engine_cpu.json").write_text(json.dumps(res, indent=2) + "\n")
        (out_dir / "engine_cpu.md").write_text(text)
        print(f"wrote {out_dir / 'engine_cpu.json'} and {out_dir / 'engine_cpu.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
