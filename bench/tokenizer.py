"""Tokenizer benchmark, one CPU thread: encode throughput, and BPE training time.

    .venv/bin/python bench/tokenizer.py           # full run (a few minutes); writes bench/results/tokenizer.*
    .venv/bin/python bench/tokenizer.py --quick   # a smoke run on less text; writes nothing unless --out

Encode: one text of about 1.8 MB (the Shakespeare corpus, the UDHR samples in nine languages, Python
standard-library source), encoded whole by labkit's Tokenizer.gpt2(), by HF tokenizers (the Rust
tokenizer inside transformers' GPT2Tokenizer, RAYON_NUM_THREADS=1) and by tiktoken's r50k_base
(encode_ordinary, which runs in the calling thread). MB/s counts 10^6 bytes of UTF-8 per second; the
baseline is HF tokenizers. "cold" is the first call on a fresh tokenizer (labkit's word cache empty),
"warm" the best of the next calls. The three must give the same ids, or the script stops.

Training: time to a vocabulary of 1,000 / 2,000 / 5,000 ids on the 1.27 MB corpus (ten plays as ten
texts) for labkit's train_bpe, the naive reference (tests/bpe_reference.py: recount every pair every
round), as far as it gets within --naive-budget seconds, and HF tokenizers' BpeTrainer (ByteLevel
pre-tokenizer, the 256-byte alphabet). The baseline is the naive trainer; labkit's merges must equal
the naive ones wherever both ran. The table also gives how much of HF's vocabulary labkit's shares
(the two break ties and cut text slightly differently).
"""

from __future__ import annotations

import os

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers is imported anywhere
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bpe_reference import train_bpe_reference  # noqa: E402

from labkit import assets  # noqa: E402
from labkit.tokenizer import Tokenizer, bytes_to_unicode, train_bpe  # noqa: E402
from labkit.tokenizer_zoo import SAMPLE_TEXTS, hf_gpt2_tokenizer, stdlib_sources, tiktoken_gpt2  # noqa: E402


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        line = next(line for line in out.splitlines() if line.startswith("Model name"))
        return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def timed(fn, repeat: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


# ------------------------------------------------------------------------------------------------
# Encode
# ------------------------------------------------------------------------------------------------


def bench_encode(text: str, repeat: int) -> dict:
    nbytes = len(text.encode("utf-8"))
    gpt2 = Tokenizer.gpt2()
    hf = hf_gpt2_tokenizer().backend_tokenizer
    tt = tiktoken_gpt2()

    def fresh_labkit():
        return Tokenizer(gpt2.vocab, gpt2.merges, gpt2.special_tokens)  # empty word cache

    cold = []
    for _ in range(3):
        tok = fresh_labkit()
        times, ids_labkit = timed(lambda tok=tok: tok.encode(text), 1)
        cold.append(times[0])
    warm, _ = timed(lambda: tok.encode(text), repeat)
    hf_times, ids_hf = timed(lambda: hf.encode(text, add_special_tokens=False).ids, repeat + 1)
    tt_times, ids_tt = timed(lambda: tt.encode_ordinary(text), repeat + 1)
    if not ids_labkit == ids_hf == ids_tt:
        raise SystemExit("labkit, HF tokenizers and tiktoken gave different ids: fix that before timing")

    rows = {
        "labkit (cold cache)": {"times_s": cold, "best_s": min(cold)},
        "labkit (warm cache)": {"times_s": warm, "best_s": min(warm)},
        "HF tokenizers (cold)": {"times_s": hf_times[:1], "best_s": hf_times[0]},
        "HF tokenizers (warm)": {"times_s": hf_times[1:], "best_s": min(hf_times[1:])},
        "tiktoken (cold)": {"times_s": tt_times[:1], "best_s": tt_times[0]},
        "tiktoken (warm)": {"times_s": tt_times[1:], "best_s": min(tt_times[1:])},
    }
    baseline = rows["HF tokenizers (warm)"]["best_s"]
    for row in rows.values():
        row["median_s"] = statistics.median(row["times_s"])
        row["mb_per_s"] = nbytes / row["best_s"] / 1e6
        row["vs_hf_warm"] = baseline / row["best_s"]
    return {"text_bytes": nbytes, "tokens": len(ids_labkit), "baseline": "HF tokenizers (warm)", "rows": rows}


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


class _OutOfTime(Exception):
    pass


def naive_times(docs: list[str], sizes: list[int], budget_s: float) -> tuple[dict[int, float], list]:
    """One naive run up to max(sizes), noting the time each size is reached; stops at the budget."""
    targets = {size - 256: size for size in sizes}
    reached: dict[int, float] = {}
    made: list = []  # the reference's own list of merges, as far as it got
    start = time.perf_counter()

    def on_merge(merges: list) -> None:
        elapsed = time.perf_counter() - start
        if not made:
            made.append(merges)
        if len(merges) in targets:
            reached[targets[len(merges)]] = elapsed
            print(f"naive trainer reached {targets[len(merges)]} ids after {elapsed:.1f} s", flush=True)
        if elapsed > budget_s:
            raise _OutOfTime

    try:
        train_bpe_reference(docs, max(sizes), on_merge=on_merge)
    except _OutOfTime:
        print(f"naive trainer stopped at the {budget_s:.0f} s budget", flush=True)
    return reached, made[0] if made else []


def hf_train(docs: list[str], vocab_size: int):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(docs, trainer)
    return tok


def bench_train(docs: list[str], sizes: list[int], naive_budget_s: float, repeat: int) -> dict:
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    reached, naive_merges = naive_times(docs, sizes, naive_budget_s)
    rows = []
    for size in sizes:
        times, (vocab, merges) = timed(lambda size=size: train_bpe(docs, size), repeat)
        hf_times, hf_tok = timed(lambda size=size: hf_train(docs, size), repeat)
        hf_vocab = {bytes(byte_of[c] for c in tok) for tok in hf_tok.get_vocab()}
        assert len(hf_vocab) == size, f"HF trained {len(hf_vocab)} tokens, asked for {size}"
        row = {"vocab_size": size, "labkit_s": min(times), "hf_bpe_trainer_s": min(hf_times),
               "naive_s": reached.get(size), "shared_with_hf": len(hf_vocab & set(vocab.values())) / size}
        checked = min(len(merges), len(naive_merges))
        assert merges[:checked] == naive_merges[:checked], f"labkit and naive merges differ below {size}"
        row["merges_checked_against_naive"] = checked
        if row["naive_s"] is not None:
            row["labkit_speedup_vs_naive"] = row["naive_s"] / row["labkit_s"]
        row["hf_vs_labkit"] = row["labkit_s"] / row["hf_bpe_trainer_s"]
        rows.append(row)
    corpus_bytes = sum(len(d.encode()) for d in docs)
    return {"corpus_bytes": corpus_bytes, "naive_budget_s": naive_budget_s, "rows": rows}


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    enc, train, m = result["encode"], result["train"], result["machine"]
    lines = [
        "# Tokenizer benchmark (bench/tokenizer.py)",
        "",
        f"- date: {result['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores, load average {m['load_avg_at_start']:.2f} at start "
        f"(other work shares this machine); every tokenizer runs in one thread",
        f"- versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}",
        "",
        f"## Encode: {enc['text_bytes'] / 1e6:.2f} MB of text, {enc['tokens']:,} GPT-2 tokens, "
        f"the same ids from all three",
        "",
        "| tokenizer | best (s) | median (s) | MB/s | vs HF tokenizers (warm) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in enc["rows"].items():
        lines.append(f"| {name} | {row['best_s']:.3f} | {row['median_s']:.3f} | {row['mb_per_s']:.2f} | "
                     f"{row['vs_hf_warm']:.2f}x |")
    lines += [
        "",
        f"## Training on the corpus ({train['corpus_bytes'] / 1e6:.2f} MB); the naive trainer may run "
        f"{train['naive_budget_s']:.0f} s",
        "",
        "| vocab size | labkit (s) | naive (s) | labkit speed-up vs naive | HF BpeTrainer (s) | "
        "labkit time / HF time | vocab shared with HF |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in train["rows"]:
        naive = f"{row['naive_s']:.1f}" if row["naive_s"] is not None else "did not finish"
        speedup = f"{row['labkit_speedup_vs_naive']:.0f}x" if row["naive_s"] is not None else "-"
        lines.append(f"| {row['vocab_size']:,} | {row['labkit_s']:.2f} | {naive} | {speedup} | "
                     f"{row['hf_bpe_trainer_s']:.2f} | {row['hf_vs_labkit']:.2f} | "
                     f"{row['shared_with_hf']:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one play, 1,000 tokens: a smoke run")
    ap.add_argument("--naive-budget", type=float, default=420.0, help="seconds the naive trainer may run")
    ap.add_argument("--repeat", type=int, default=5, help="timed repetitions of each encode")
    ap.add_argument("--out", type=Path, default=None,
                    help="results folder (default bench/results; --quick writes only when given)")
    args = ap.parse_args(argv)

    if args.quick:
        docs = [assets.corpus_text(["corpus-macbeth"])]
        text, sizes, out = docs[0] + "\n".join(SAMPLE_TEXTS.values()), [1000], args.out
        budget = min(args.naive_budget, 60.0)
    else:
        docs = [assets.corpus_text([name]) for name in assets.CORPUS_ASSETS]
        code = "\n\n".join(stdlib_sources().values())
        text = "\n\n".join([*docs, *SAMPLE_TEXTS.values(), code])
        sizes, budget, out = [1000, 2000, 5000], args.naive_budget, args.out or ROOT / "bench" / "results"

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_avg_at_start": os.getloadavg()[0],
                    "python": platform.python_version()},
        "versions": {p: version(p) for p in ("regex", "tokenizers", "tiktoken", "transformers")},
        "threads": {"RAYON_NUM_THREADS": os.environ["RAYON_NUM_THREADS"]},
    }
    result["encode"] = bench_encode(text, args.repeat)
    print(f"encode done: labkit warm {result['encode']['rows']['labkit (warm cache)']['mb_per_s']:.2f} MB/s, "
          f"HF warm {result['encode']['rows']['HF tokenizers (warm)']['mb_per_s']:.2f} MB/s", flush=True)
    result["train"] = bench_train(docs, sizes, budget, repeat=1 if args.quick else 2)
    report = markdown(result)
    print(report)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "tokenizer.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        (out / "tokenizer.md").write_text(report, encoding="utf-8")
        print(f"wrote {out / 'tokenizer.json'} and {out / 'tokenizer.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
