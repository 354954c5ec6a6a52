"""`make demo`: SmolLM2-135M-Instruct on CPU, 8 prompts at once through labkit, next to HF `generate`.

    python -m labkit.demo [--max-tokens 64] [--no-hf]

Prints each prompt's answer (labkit's continuous batching, greedy), then a table: output tokens per
second for labkit (all 8 prompts in one engine), for Hugging Face transformers `generate` with the
8 prompts batched (left padding), and with one prompt at a time, plus whether HF's greedy tokens
match labkit's.

The HF model is `transformers.LlamaForCausalLM.from_pretrained(<asset folder>, gguf_file=<name>)`:
transformers reads the same GGUF file and dequantizes it to float32 itself, so the two engines share
the file but not the loading code. Nothing is fetched from a model hub.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
import warnings

import torch

from labkit.llm import LLM, apply_chat_template
from labkit.sampler import SamplingParams

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for learning to code.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish and French.",
    "Name the planets of the solar system in order.",
    "What does a CPU do?",
]


def load_hf_model():
    """HF's Llama over the same GGUF asset, float32, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from labkit import assets
    from labkit.loader import GGUF_ASSET

    hf_logging.set_verbosity_error()
    path = assets.path(GGUF_ASSET)
    with contextlib.redirect_stderr(io.StringIO()):  # transformers' GGUF progress bars
        return LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


@torch.inference_mode()
def hf_generate(
    model,
    prompts: list[list[int]],
    max_tokens: int,
    eos_token_id: int | None,
    pad_token_id: int,
    batched: bool,
) -> tuple[list[list[int]], float]:
    """Greedy HF generate: (new tokens of each prompt, cut after EOS; seconds). eos_token_id=None only
    ignores EOS if model.generation_config.eos_token_id is None too (HF falls back to it)."""
    groups = [prompts] if batched else [[p] for p in prompts]
    outputs, t0 = [], time.perf_counter()
    for group in groups:
        width = max(map(len, group))
        ids = torch.tensor([[pad_token_id] * (width - len(p)) + p for p in group])  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group])
        seqs = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )
        for row in seqs[:, width:].tolist():
            outputs.append(row[: row.index(eos_token_id) + 1] if eos_token_id in row else row)
    return outputs, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per prompt at most")
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face comparison")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; loading SmolLM2-135M-Instruct ...")
    llm = LLM("smollm2-135m-instruct")
    tok = llm.get_tokenizer()
    prompts = [tok.encode(apply_chat_template(q), allowed_special="all") for q in QUESTIONS]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    llm.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)  # warm-up

    t0 = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    labkit_s = time.perf_counter() - t0
    for q, out in zip(QUESTIONS, outputs):
        print(f"\n>>> {q}\n{out.text.strip()}")
    num_tokens = sum(len(o.token_ids) for o in outputs)
    rows = [("labkit (continuous batching, 8 at once)", num_tokens, labkit_s, "-")]

    if not args.no_hf:
        hf = load_hf_model()
        eos = llm.llm_engine.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        hf_generate(hf, prompts[:1], 2, eos, pad, batched=False)  # warm-up
        labkit_ids = [o.token_ids for o in outputs]
        for name, batched in (
            ("HF generate, 8 batched (padded)", True),
            ("HF generate, one at a time", False),
        ):
            ids, secs = hf_generate(hf, prompts, args.max_tokens, eos, pad, batched)
            same = sum(a == b for a, b in zip(ids, labkit_ids))
            rows.append((name, sum(map(len, ids)), secs, f"{same}/{len(prompts)}"))

    base = rows[0][1] / rows[0][2]
    header = ("engine", "tokens", "seconds", "tok/s", "labkit is", "same tokens")
    print("\n{:<42} {:>7} {:>8} {:>8} {:>10} {:>12}".format(*header))
    for i, (name, n, secs, same) in enumerate(rows):
        rate = n / secs
        speed = f"{base / rate:.2f}x" if i else "-"
        print(f"{name:<42} {n:>7} {secs:>8.2f} {rate:>8.1f} {speed:>10} {same:>12}")
    print(
        "\n'labkit is': labkit's tokens/s over that engine's. 'same tokens': prompts whose greedy"
        " tokens equal labkit's (batched HF pads, which can shift floating-point sums and flip a near-tie)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
