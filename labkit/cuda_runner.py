"""The model runner at full speed on a CUDA GPU: persistent buffers, CUDA graphs for decode steps.

labkit/runner.py builds every step's flat batch from Python lists and launches the forward pass op by
op: a decode step of Qwen3-0.6B is about 2,000 kernel launches, so on a GPU the host, not the GPU,
sets the pace. `CUDAGraphRunner` is the same runner with two changes for the steps where that hurts:

- decode-only steps (every request adds one token; the bulk of generation) replay a CUDA graph: the
  whole forward pass and the logits, captured once per batch size in `capture_sizes` (a step of n
  requests runs the smallest captured size >= n; the extra rows are padding: slot -1, so nothing is
  stored, and length 1). One replay is one launch;
- its inputs live in persistent device buffers that the graphs read. The host fills one pinned
  buffer (token ids, positions, slots, lengths, block tables) and copies it with ONE asynchronous
  host-to-device copy; the only synchronisation in a step is the engine reading the sampled tokens.

Steps with a prefill run eagerly through `ModelRunner` (their cost is the GPU's, not the host's).
The graphs need the attention backend to read every length from device tensors and never sync,
which the Triton backend does (labkit/attention/triton.py); torch_ref does not, so the engine uses
this runner only when attention runs on Triton.

It also sizes the KV cache the way vLLM does: `kv_cache_budget` runs one forward pass of the largest
step the scheduler may plan, measures the peak memory it needs, and leaves the rest of the
gpu_memory_utilization share to the cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from labkit.attention import AttentionMetadata
from labkit.protocols import ScheduledRequest
from labkit.runner import ModelRunner

# vLLM-like limits for a GPU (what `LLM(...)` uses on CUDA unless told otherwise)
CUDA_MAX_NUM_SEQS = 256
CUDA_MAX_NUM_BATCHED_TOKENS = 8192


def graphs_supported(model: torch.nn.Module, device: torch.device) -> bool:
    """True when every attention layer of the model runs the Triton backend on this device."""
    from labkit.attention import resolve_backend

    names = [resolve_backend(m.attn_backend, device) for m in model.modules() if hasattr(m, "attn_backend")]
    return device.type == "cuda" and bool(names) and all(n == "triton" for n in names)


def default_capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16 up to max_num_seqs (and max_num_seqs itself)."""
    sizes = [s for s in (1, 2, 4, 8) if s < max_num_seqs] + list(range(16, max_num_seqs, 16))
    return sorted(set(sizes + [max_num_seqs]))


class CUDAGraphRunner(ModelRunner):
    """ModelRunner whose decode-only steps replay CUDA graphs over persistent input buffers."""

    def __init__(
        self,
        model: torch.nn.Module,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        block_size: int,
        device: torch.device | str | None,
        max_num_seqs: int,
        max_model_len: int,
        capture_sizes: Sequence[int] | None = None,
    ):
        super().__init__(model, kv_caches, block_size, device)
        assert self.device.type == "cuda", "CUDA graphs need a CUDA device"
        self._init_buffers(capture_sizes or default_capture_sizes(max_num_seqs), max_model_len)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, AttentionMetadata]] = {}
        self._pool = None
        self._capture()

    def _init_buffers(self, capture_sizes: Sequence[int], max_model_len: int) -> None:
        """The persistent input buffers (no graphs yet: tests fill them on the CPU)."""
        self.capture_sizes = sorted(capture_sizes)
        n, self.max_blocks = self.capture_sizes[-1], -(-max_model_len // self.block_size)
        self.max_model_len = max_model_len
        # one flat int64 buffer, on the host (pinned) and on the device: ids | positions | slots | lengths | tables
        size = 4 * n + n * self.max_blocks
        self._host = torch.zeros(size, dtype=torch.int64, pin_memory=self.device.type == "cuda")
        self._host_np = self._host.numpy()
        self._dev = torch.zeros(size, dtype=torch.int64, device=self.device)
        self._n = n
        self._query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=self.device)
        self.num_graph_steps = self.num_eager_steps = 0  # steps run each way (for tests and benchmarks)
        self._rows = [(None, 0)] * n  # (request id, blocks written) of each row of the host block tables
        self._num_filled = n  # rows that may hold a request's inputs (the rest is padding already)
        self._reset_padding(n)

    # views into the flat buffers
    def _parts(self, buf):
        n = self._n
        return buf[:n], buf[n : 2 * n], buf[2 * n : 3 * n], buf[3 * n : 4 * n], buf[4 * n :].reshape(n, self.max_blocks)

    def _reset_padding(self, start: int) -> None:
        """Rows start.. are padding: token 0 at position 0, no slot (-1), length 1, block 0."""
        ids, pos, slots, lens, tables = self._parts(self._host_np)
        ids[start:], pos[start:], slots[start:], lens[start:], tables[start:] = 0, 0, -1, 1, 0
        self._rows[start:] = [(None, 0)] * (self._n - start)

    def _metadata(self, bs: int) -> AttentionMetadata:
        from labkit.attention import triton as tk

        _, _, slots, lens, tables = self._parts(self._dev)
        meta = AttentionMetadata(
            slot_mapping=slots[:bs],
            query_start_loc=self._query_start_loc[: bs + 1],
            seq_lens=lens[:bs],
            block_tables=tables[:bs],
            max_query_len=1,
            max_seq_len=self.max_model_len,
            query_start_loc_list=list(range(bs + 1)),
            seq_lens_list=[1] * bs,  # host copy not used by the Triton backend (it reads seq_lens)
        )
        num_kv_heads = self.kv_caches[0][0].shape[2]
        meta.backend_cache["num_splits"] = tk.decode_num_splits(bs, num_kv_heads, self.max_model_len, self.device)
        return meta

    def _forward(self, bs: int, meta: AttentionMetadata) -> torch.Tensor:
        ids, pos, _, _, _ = self._parts(self._dev)
        hidden = self.model(ids[:bs], pos[:bs], self.kv_caches, meta)
        return self.model.compute_logits(hidden)  # (bs, vocab) float32

    @torch.inference_mode()
    def _capture(self) -> None:
        self._dev.copy_(self._host)  # padding everywhere: the warm-up and capture runs store nothing
        for bs in reversed(self.capture_sizes):  # largest first, so the smaller ones reuse its memory
            meta = self._metadata(bs)
            self._forward(bs, meta)  # warm-up: compiles the Triton kernels, creates cuBLAS handles
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                logits = self._forward(bs, meta)
            if self._pool is None:
                self._pool = graph.pool()
            self._graphs[bs] = (graph, logits, meta)  # meta keeps the index tensors the graph reads alive
        torch.cuda.synchronize(self.device)

    def graph_size(self, scheduled: Sequence[ScheduledRequest]) -> int | None:
        """The captured batch size this step replays, or None when it must run eagerly."""
        n = len(scheduled)
        if n > self._n or not all(s.num_new_tokens == 1 and s.sample for s in scheduled):
            return None
        if any(s.num_computed_tokens >= self.max_model_len or len(s.block_table) > self.max_blocks for s in scheduled):
            return None
        return next(bs for bs in self.capture_sizes if bs >= n)

    def _fill_host(self, scheduled: Sequence[ScheduledRequest]) -> int:
        """Write a decode step's inputs into the pinned host buffer; rows n.. become padding. -> n.

        Per request a few list reads: the new token, its position, the block it lands in, and the
        block-table entries its row of the host table does not hold yet (a row keeps its request's
        table between steps; it only grows, by one block every block_size steps)."""
        n, B = len(scheduled), self.block_size
        ids, pos, slots, lens, tables = self._parts(self._host_np)
        pos[:n] = np.fromiter((s.num_computed_tokens for s in scheduled), dtype=np.int64, count=n)
        ids[:n] = np.fromiter((s.token_ids[0] for s in scheduled), dtype=np.int64, count=n)
        num_blocks = np.fromiter(map(len, (s.block_table for s in scheduled)), dtype=np.int64, count=n)
        rows = self._rows
        for i, s in enumerate(scheduled):
            bt, (rid, done) = s.block_table, rows[i]
            if done == len(bt) and rid == s.request_id and tables[i, done - 1] == bt[-1]:
                continue  # the row already holds this table (a decode inside its last block)
            if rid != s.request_id or done > len(bt) or (done and tables[i, done - 1] != bt[done - 1]):
                done = 0  # another request in this row, or its table changed: write it whole
            tables[i, done : len(bt)] = bt[done:]
            rows[i] = (s.request_id, len(bt))
        np.add(pos[:n], 1, out=lens[:n])
        last = tables[np.arange(n), pos[:n] // B]  # (n,) the block of each new token
        slots[:n] = last * B + pos[:n] % B
        assert (num_blocks > pos[:n] // B).all(), "a block table does not cover its new token"
        if self._num_filled > n:
            self._reset_padding(n)
        self._num_filled = n
        return n

    @torch.inference_mode()
    def execute_model(self, scheduled: Sequence[ScheduledRequest]) -> tuple[torch.Tensor, list[str]]:
        bs = self.graph_size(scheduled)
        if bs is None:
            self.num_eager_steps += 1
            self._rows = [(None, 0)] * self._n  # a preempted request may come back with other blocks
            return super().execute_model(scheduled)
        self.num_graph_steps += 1
        n = self._fill_host(scheduled)
        return self._replay(bs, n), [s.request_id for s in scheduled]

    def _replay(self, bs: int, n: int) -> torch.Tensor:
        """One host-to-device copy of the inputs, one graph launch: -> logits (n, vocab) (a view)."""
        self._dev.copy_(self._host, non_blocking=True)
        graph, logits, _ = self._graphs[bs]
        graph.replay()
        return logits[:n]


def make_runner(model: torch.nn.Module, kv_cache, device: torch.device, config, max_num_seqs: int) -> ModelRunner:
    """The engine's runner: CUDAGraphRunner on CUDA with Triton attention (unless config.enforce_eager),
    else the plain ModelRunner. kv_cache: a PagedKVCache-like object; config: an EngineConfig."""
    if config.enforce_eager or not graphs_supported(model, device):
        return ModelRunner(model, kv_cache.kv_caches, kv_cache.block_size, device)
    return CUDAGraphRunner(model, kv_cache.kv_caches, kv_cache.block_size, device, max_num_seqs, config.max_model_len)


@torch.inference_mode()
def kv_cache_budget(
    model: torch.nn.Module,
    block_size: int,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    max_model_len: int,
    gpu_memory_utilization: float,
) -> int:
    """Bytes left for the KV cache on this GPU after a warm-up forward of the largest step.

    The warm-up runs max_num_batched_tokens tokens (prefills of up to max_model_len tokens each) over a
    scratch cache just big enough for them, and the logits of up to max_num_seqs rows; its peak memory
    above what was in use before is what every later step may need on top of the weights and the cache.
    """
    device = next(model.parameters()).device
    cfg = model.config
    T = max_num_batched_tokens
    lens = [min(max_model_len, T - i) for i in range(0, T, max_model_len)]
    blocks = [-(-L // block_size) for L in lens]
    shape = (sum(blocks), block_size, cfg.num_key_value_heads, cfg.head_dim)
    dtype = next(model.parameters()).dtype
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    scratch = [(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
               for _ in range(cfg.num_hidden_layers)]  # fmt: skip
    scratch_bytes = torch.cuda.memory_allocated(device) - before
    at, tables = 0, []
    for b in blocks:
        tables.append(list(range(at, at + b)))
        at += b
    meta = AttentionMetadata.build(lens, lens, tables, block_size, device)
    ids = torch.randint(0, cfg.vocab_size, (T,), device=device)
    hidden = model(ids, meta.positions(), scratch, meta)
    logits = model.compute_logits(hidden[: min(max_num_seqs, T)])
    logits.softmax(-1).sort(-1)  # the sampler's worst case (top-p over the whole vocabulary)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before - scratch_bytes
    del scratch, hidden, logits, meta
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    budget = free - int(total * (1 - gpu_memory_utilization)) - peak
    if budget <= 0:
        raise ValueError(
            f"no GPU memory left for the KV cache: {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB, a step "
            f"needs {peak / 2**30:.1f} GiB of activations and gpu_memory_utilization={gpu_memory_utilization} keeps "
            f"{(1 - gpu_memory_utilization) * total / 2**30:.1f} GiB back. Fix: raise gpu_memory_utilization, "
            f"lower max_num_batched_tokens, or set num_gpu_blocks."
        )
    return budget


__all__ = [
    "CUDAGraphRunner", "CUDA_MAX_NUM_BATCHED_TOKENS", "CUDA_MAX_NUM_SEQS", "graphs_supported", "kv_cache_budget",
    "make_runner",
]
