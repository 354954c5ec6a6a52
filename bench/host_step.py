"""The host's share of a decode step, measured on the CPU: what Python does per step at batch 256.

    python bench/host_step.py              # host ms per decode step and where it goes
    python bench/host_step.py --profile    # plus cProfile's top functions
    python bench/host_step.py --quick      # 20 steps: a smoke run (make bench BENCH_ARGS=--quick)

On a GPU a decode step replays one CUDA graph; everything else in the step is host work during which the
GPU waits: scheduling, filling the graph's input buffer, launching the sampler, bookkeeping after it.
This runs exactly that host work with the GPU taken out: labkit's engine, scheduler, paged-cache
bookkeeping, CUDAGraphRunner's buffer filling and the sampler, with the graph replay replaced by a
fixed (batch, vocab) logits tensor. The sampler's arithmetic then runs on the CPU (on a small
vocabulary, 1,024, so it stays small); on a GPU it is launches instead. 256 requests of prompts
U[100, 1024] decode together, temperature 0.6, EOS ignored (the GPU benchmark's workload).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from labkit.cuda_runner import CUDAGraphRunner, default_capture_sizes  # noqa: E402
from labkit.engine import EngineConfig, LLMEngine  # noqa: E402
from labkit.loader import random_model  # noqa: E402
from labkit.model import ModelConfig  # noqa: E402
from labkit.runner import ModelRunner  # noqa: E402
from labkit.sampler import SamplingParams  # noqa: E402

CFG = ModelConfig(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
MAX_NUM_SEQS, MAX_MODEL_LEN = 256, 2048


class HostOnlyRunner(CUDAGraphRunner):
    """CUDAGraphRunner without the GPU: the same decisions and input buffers; a 'replay' returns fixed
    logits, and a prefill step skips the model (only its inputs are prepared)."""

    def __init__(self, model, kv_cache, device):
        ModelRunner.__init__(self, model, kv_cache.kv_caches, kv_cache.block_size, device)
        self._init_buffers(default_capture_sizes(MAX_NUM_SEQS), MAX_MODEL_LEN)
        self.logits = torch.randn(MAX_NUM_SEQS, CFG.vocab_size)

    def _replay(self, bs, n):
        return self.logits[:n]

    def execute_model(self, scheduled):
        if self.graph_size(scheduled) is not None:
            return super().execute_model(scheduled)
        inp = self.prepare_inputs(scheduled)
        return self.logits[: len(inp.sample_request_ids)], inp.sample_request_ids


def build_engine() -> LLMEngine:
    engine = LLMEngine(random_model(CFG, seed=0), None, EngineConfig(
        num_gpu_blocks=40000, block_size=16, max_model_len=MAX_MODEL_LEN, max_num_seqs=MAX_NUM_SEQS,
        max_num_batched_tokens=8192), runner=HostOnlyRunner)
    rng = np.random.default_rng(0)
    for _ in range(MAX_NUM_SEQS):
        prompt = rng.integers(0, 1000, size=int(rng.integers(100, 1025))).tolist()
        engine.add_request(prompt, SamplingParams(temperature=0.6, max_tokens=1000, ignore_eos=True), _collect=True)
    while not engine.timeline or engine.timeline[-1].num_prefill_tokens:  # through the prefills
        engine.step()
    return engine


def timed_phases(engine: LLMEngine) -> dict[str, float]:
    """Wrap the step's parts with timers; returns the dict they add seconds to."""
    totals: dict[str, float] = collections.defaultdict(float)

    def wrap(obj, name, key):
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            totals[key] += time.perf_counter() - t0
            return result

        setattr(obj, name, timed)

    wrap(engine.scheduler, "schedule", "schedule")
    wrap(engine.runner, "execute_model", "runner (buffers)")
    wrap(engine.sampler, "sample", "sampler")
    wrap(engine.scheduler, "update_from_output", "update_from_output")
    return totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--quick", action="store_true", help="20 steps instead of --steps")
    args = ap.parse_args()
    if args.quick:
        args.steps = 20
    torch.set_num_threads(1)
    engine = build_engine()
    for _ in range(5):
        engine.step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    plain = (time.perf_counter() - t0) / args.steps
    totals = timed_phases(engine)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    wall = time.perf_counter() - t0
    batch = engine.timeline[-1].num_seqs
    assert batch == MAX_NUM_SEQS and engine.runner.num_graph_steps >= 2 * args.steps, "not a graph decode step"
    parts = ", ".join(f"{k} {1e3 * v / args.steps:.2f}" for k, v in totals.items())
    rest = wall - sum(totals.values())
    print(f"host ms per decode step at batch {batch}: {1e3 * plain:.2f}  ({parts}, engine rest "
          f"{1e3 * rest / args.steps:.2f}; timers on)")
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(lambda: [engine.step() for _ in range(args.steps)])
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
