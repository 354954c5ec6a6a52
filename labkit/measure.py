"""Measure what a model really holds in memory, and how long decode steps really take (chapters 2-3).

The byte calculators in `labkit.memory` are formulas; this module checks them against the tensors
that exist. Every byte count is a sum over real tensors' storages, each storage counted once (a view,
a tied weight or a tensor saved twice for backward does not count twice):

    fp = training_step_footprint(model, loss_fn)      # parameters, .grad, AdamW state, saved activations
    fp = inference_step_footprint(model, forward_fn, kv)   # parameters, KV cache, peak of the pass's tensors
    trace = greedy_decode(model, prompt_ids, 256, cached=True)   # ids, seconds per step, token-forwards

Decoding with and without a KV cache, on any labkit LlamaForCausalLM: `SequenceKVCache` (one
sequence's cache; `forward(new_ids)` runs only the new tokens), `last_token_logits` (the whole sequence
again, nothing kept), `count_token_forwards` (a hook counting positions through the decoder stack),
`time_decode` and `time_uncached_steps` (wall-clock per step). Small references the chapters check
students against: `decode_attention` (one decode step over a contiguous cache, via labkit's paged
attention), `random_mlp` and `toy_training_step` (a random MLP after one AdamW step). Facts about files and hardware:
`gguf_tensor_bytes` (bytes per quantization type, from a GGUF's tensor table), `copy_bandwidth`.

What it measures: parameters, gradients (`.grad` after `backward()`), optimizer state (the tensors in
`optimizer.state` after one `step()`), the activations autograd saves for the backward pass (through
`torch.autograd.graph.saved_tensors_hooks`), and the peak bytes of tensors created during a pass and
alive at the same moment (through a `TorchDispatchMode` that follows every op's outputs until they are
freed). What it does not measure: the allocator's own overhead and caching, memory outside PyTorch
(the Python heap, libraries), tensors created by ops that bypass the dispatcher, or GPU timings
(the timers are wall-clock on the host; on CUDA, synchronize inside `step` before trusting them).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from labkit.attention import AttentionMetadata, paged_attention
from labkit.grading.recipe import rebuildable
from labkit.kv_cache import allocate_kv_caches
from labkit.loader import open_gguf


# ---------------------------------------------------------------------------------------------- bytes
def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors`: a storage shared by several tensors counts once.

    A view (`t[1:]`, `t.T`) and its base share one storage; so do tied weights (SmolLM2's embedding and
    its output head). Counting `numel * element_size` per tensor would count them twice.
    """
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"storage_bytes expects tensors, got {type(t).__name__}; pass a list of tensors")
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if storage.nbytes() == 0 or key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def _storage_keys(tensors: Iterable[torch.Tensor]) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors if t.untyped_storage().nbytes() > 0}


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor the optimizer keeps between steps (AdamW: `exp_avg`, `exp_avg_sq`, `step`)."""
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


# ------------------------------------------------------------------------------------------- tracers
class PeakLiveBytes(TorchDispatchMode):
    """Follows every tensor an op creates inside the `with` block; records the peak of those alive at once.

    A storage is counted from the op that creates it until the last tensor viewing it is freed. Tensors
    that existed before the block (weights, inputs) are not counted unless an op inside writes a new one.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, list[int]] = {}  # storage data_ptr -> [nbytes, tensors alive on it]
        self.current = 0  # bytes
        self.peak = 0  # bytes

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0:
                continue
            if key in self._live:
                self._live[key][1] += 1
            else:
                self._live[key] = [nbytes, 1]
                self.current += nbytes
                self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._release, key)
        return out


@contextmanager
def saved_for_backward():
    """Collects every tensor autograd saves for the backward pass inside the block (yields the list)."""
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved



def saved_activation_bytes(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module], torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward while `loss_fn(model)` runs, the
    model's own parameters left out (a matmul saves its weight, which is held anyway). 0 under
    torch.no_grad(): nothing is recorded for a backward pass that cannot happen."""
    with saved_for_backward() as saved:
        loss_fn(model)
    params = _storage_keys(model.parameters())
    return storage_bytes(t for t in saved if t.untyped_storage().data_ptr() not in params)


# ------------------------------------------------------------------------------------------ footprint
@dataclass
class MeasuredFootprint:
    """Bytes held by one training step or one inference pass, each a sum over real tensors.

    (labkit.memory.Footprint is the formula's counterpart: weights, gradients, master_weights, ...)"""

    num_params: int  # parameters (elements), tied weights once
    parameters: int  # bytes
    gradients: int = 0  # bytes of .grad tensors
    optimizer_states: int = 0  # bytes of optimizer.state tensors
    activations: int = 0  # training: saved for backward; inference: peak bytes made by the pass
    kv_cache: int = 0  # bytes of the KV cache tensors passed in

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_states + self.activations + self.kv_cache

    def per_param(self) -> dict[str, float]:
        """Each component in bytes per parameter (what the formulas in labkit.memory predict)."""
        names = ("parameters", "gradients", "optimizer_states", "activations", "kv_cache")
        return {n: getattr(self, n) / self.num_params for n in names}

    def as_dict(self) -> dict[str, int]:
        return {
            "parameters": self.parameters,
            "gradients": self.gradients,
            "optimizer_states": self.optimizer_states,
            "activations": self.activations,
            "kv_cache": self.kv_cache,
        }


def _unique_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return list(model.parameters())  # nn.Module.parameters() already yields a tied weight once


def training_step_footprint(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module], torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
) -> MeasuredFootprint:
    """Runs one training step (forward, backward, optimizer step) and sums the tensors it leaves.

    `loss_fn(model)` returns a scalar loss. `optimizer` defaults to `torch.optim.AdamW` over all
    parameters (lr 1e-5, so the model barely changes). Activations are the tensors autograd saved for
    backward, minus the parameters themselves (a matmul saves its weight, which is already counted).
    The model's gradients are set to None again before returning; the optimizer state is kept on the
    optimizer, so pass your own optimizer to look at it afterwards.
    """
    params = _unique_parameters(model)
    if not any(p.requires_grad for p in params):
        raise ValueError(
            "training_step_footprint: no parameter requires grad; call model.requires_grad_(True)"
        )
    optimizer = optimizer or torch.optim.AdamW(params, lr=1e-5, foreach=False)
    model.train()
    for p in params:
        p.grad = None
    with saved_for_backward() as saved:
        loss = loss_fn(model)
    if loss.dim() != 0:
        raise ValueError(
            f"loss_fn must return a scalar, got shape {tuple(loss.shape)}; reduce it with .mean()"
        )
    param_keys = _storage_keys(params)
    activations = storage_bytes(t for t in saved if t.untyped_storage().data_ptr() not in param_keys)
    del saved
    loss.backward()
    optimizer.step()
    grads = [p.grad for p in params if p.grad is not None]
    fp = MeasuredFootprint(
        num_params=sum(p.numel() for p in params),
        parameters=storage_bytes(params),
        gradients=storage_bytes(grads),
        optimizer_states=storage_bytes(optimizer_state_tensors(optimizer)),
        activations=activations,
    )
    for p in params:
        p.grad = None
    return fp


def inference_step_footprint(
    model: torch.nn.Module,
    forward_fn: Callable[[torch.nn.Module], object],
    kv_cache: Iterable[torch.Tensor] = (),
) -> MeasuredFootprint:
    """Runs `forward_fn(model)` under `torch.no_grad()` and sums parameters, the peak bytes of tensors
    the pass created (its transient activations) and the KV cache tensors you pass in."""
    params = _unique_parameters(model)
    model.eval()
    with torch.no_grad(), PeakLiveBytes() as tracer:
        out = forward_fn(model)
    del out
    return MeasuredFootprint(
        num_params=sum(p.numel() for p in params),
        parameters=storage_bytes(params),
        activations=tracer.peak,
        kv_cache=storage_bytes(kv_cache),
    )


# --------------------------------------------------------------------------------------------- timing
@dataclass
class DecodeTrace:
    """What one timed decode loop produced: the new token ids and the wall time of each step."""

    token_ids: list[int] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    token_forwards: int = 0  # tokens pushed through the model, prompt included

    @property
    def total_seconds(self) -> float:
        return sum(self.step_seconds)


def time_decode(step: Callable[[int], tuple[int, int]], n_steps: int) -> DecodeTrace:
    """Times `n_steps` calls of `step(i)`, each returning (new token id, tokens it pushed through the model).

    The caller's `step` holds the loop's state (the sequence so far, the cache): this function only
    times and records, so a cached and an uncached loop are measured the same way.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    trace = DecodeTrace()
    for i in range(n_steps):
        t0 = time.perf_counter()
        token, forwards = step(i)
        trace.step_seconds.append(time.perf_counter() - t0)
        trace.token_ids.append(int(token))
        trace.token_forwards += int(forwards)
    return trace


# ------------------------------------------------------------------------------------ labkit's model
@torch.inference_mode()
def sequence_logits(
    model: torch.nn.Module, input_ids: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor, block_size: int = 16
) -> torch.Tensor | list[torch.Tensor]:
    """Logits of a labkit model at every position of one or more whole sequences (a dense oracle).

    input_ids: a list of ids (or 1-D tensor) -> (L, vocab); a list of lists -> a list of (L_i, vocab).
    All sequences run as ONE flat prefill batch through a throwaway paged cache."""
    single = isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1 or (
        len(input_ids) > 0 and not isinstance(input_ids[0], (Sequence, torch.Tensor))
    )
    seqs = [[int(t) for t in s] for s in ([input_ids] if single else list(input_ids))]
    if not seqs:
        raise ValueError("no sequences given; pass a list of token ids or a list of such lists.")
    vocab = model.config.vocab_size
    for i, s in enumerate(seqs):
        if not s:
            raise ValueError(f"sequence {i} is empty; every sequence needs at least one token.")
        bad = [t for t in s if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"sequence {i} has token id {bad[0]} outside [0, {vocab}): encode with this "
                             f"model's tokenizer.")
    hidden, _ = forward_sequences(model, seqs, block_size)
    parts = list(model.compute_logits(hidden).split([len(s) for s in seqs]))  # (L_i, vocab) each
    return parts[0] if single else parts


def forward_sequences(
    model: torch.nn.Module, seqs: Sequence[Sequence[int]], block_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run whole sequences as ONE flat prefill batch through a throwaway paged cache (each sequence
    gets consecutive blocks). Returns (hidden (sum L, hidden_size), input_ids (sum L,)). Not under
    inference_mode, so gradients flow (causal_lm_loss trains through it)."""
    lens = [len(s) for s in seqs]
    starts = [0]
    for n in lens:
        starts.append(starts[-1] + -(-n // block_size))
    tables = [list(range(a, b)) for a, b in zip(starts, starts[1:])]  # consecutive blocks per sequence
    c = model.config
    caches = allocate_kv_caches(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, starts[-1], block_size,
                                model.dtype, model.device)
    meta = AttentionMetadata.build(lens, lens, tables, block_size, device=model.device)
    ids = torch.tensor([int(t) for s in seqs for t in s], dtype=torch.int64, device=model.device)  # (T,)
    return model(ids, meta.positions(), caches, meta), ids


def causal_lm_loss(
    model: torch.nn.Module, sequences: Sequence[Sequence[int]], block_size: int = 16
) -> torch.Tensor:
    """Mean next-token cross-entropy of a labkit LlamaForCausalLM over whole `sequences` (one flat
    batch, a throwaway cache). Differentiable, so a training step can run on labkit's own model."""
    seqs = [[int(t) for t in s] for s in sequences]
    if not seqs or min(len(s) for s in seqs) < 2:
        raise ValueError(
            "causal_lm_loss needs at least one sequence, each of at least 2 tokens (input and target)"
        )
    lens = [len(s) for s in seqs]
    hidden, ids = forward_sequences(model, seqs, block_size)  # (T, hidden), (T,)
    starts = [0]
    for n in lens:
        starts.append(starts[-1] + n)
    rows = torch.tensor([p for a, b in zip(starts, starts[1:]) for p in range(a, b - 1)])  # inputs
    targets = ids[rows + 1]  # each row predicts the next token of its own sequence
    logits = model.compute_logits(hidden[rows])  # (T - num_seqs, vocab) float32
    return torch.nn.functional.cross_entropy(logits, targets)


class SequenceKVCache:
    """The KV cache of ONE sequence, in labkit's paged layout with a contiguous block table.

    Chapter 3 needs only "keep the K/V of the tokens seen so far"; paging is chapter 4's topic, so this
    hides it: blocks 0, 1, 2, ... belong to this sequence, in order. `forward(new_ids)` runs only the new
    tokens through the model, at positions num_cached_tokens, num_cached_tokens + 1, ..., appends their
    K/V to the cache and returns the logits of the LAST new token, shape (vocab,).
    """

    def __init__(self, model: torch.nn.Module, max_len: int, block_size: int = 16) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1 token, got {max_len}")
        self.model, self.max_len, self.block_size = model, int(max_len), int(block_size)
        self.num_blocks = -(-self.max_len // self.block_size)
        c = model.config
        self.kv_caches = allocate_kv_caches(
            c.num_hidden_layers, c.num_key_value_heads, c.head_dim, self.num_blocks, block_size,
            model.dtype, model.device,
        )
        self.num_cached_tokens = 0

    def tensors(self) -> list[torch.Tensor]:
        """Every K and V cache tensor (2 per layer), e.g. for storage_bytes."""
        return [t for pair in self.kv_caches for t in pair]

    @torch.inference_mode()
    def forward(self, new_ids: Sequence[int]) -> torch.Tensor:
        new_ids = [int(t) for t in new_ids]
        if not new_ids:
            raise ValueError("forward needs at least one new token id")
        total = self.num_cached_tokens + len(new_ids)
        if total > self.max_len:
            raise ValueError(
                f"the cache holds {self.max_len} tokens; {self.num_cached_tokens} cached + "
                f"{len(new_ids)} new = {total}. Fix: build SequenceKVCache with a larger max_len"
            )
        table = list(range(self.num_blocks))
        meta = AttentionMetadata.build(
            [total], [len(new_ids)], [table], self.block_size, device=self.model.device
        )
        ids = torch.tensor(new_ids, dtype=torch.int64, device=self.model.device)  # (T_new,)
        hidden = self.model(ids, meta.positions(), self.kv_caches, meta)  # (T_new, hidden)
        self.num_cached_tokens = total
        return self.model.compute_logits(hidden[-1:])[0]  # (vocab,) float32


@torch.inference_mode()
def last_token_logits(model: torch.nn.Module, ids: Sequence[int]) -> torch.Tensor:
    """Logits (vocab,) after the whole sequence `ids`, computed from scratch: every token goes through
    the model again and nothing is kept afterwards (what decoding without a KV cache does each step).
    A model served by another process (labkit/grading/served.py) runs them as a new sequence itself."""
    if hasattr(model, "served_forward"):
        return model.served_forward(None, ids)
    return SequenceKVCache(model, max_len=len(ids)).forward(ids)


@contextmanager
def count_token_forwards(model: torch.nn.Module):
    """Counts the token positions pushed through `model.model` (the decoder stack) inside the block.

    Yields a dict whose "count" grows by T for every forward over T tokens, however it was called."""
    counter = {"count": 0}

    def hook(module, args):
        counter["count"] += int(args[0].numel())

    handle = model.model.register_forward_pre_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()


def greedy_decode(
    model: torch.nn.Module, prompt_ids: Sequence[int], max_new_tokens: int, cached: bool = True
) -> DecodeTrace:
    """Greedy decoding (argmax each step) with or without a KV cache, every step timed and counted.

    cached=True: one prefill over the prompt, then one token per step through a SequenceKVCache.
    cached=False: each step re-runs the whole sequence so far (last_token_logits).
    Both produce the same token ids (up to float rounding in near-ties); step i's time is the time
    to produce new token i. token_forwards counts positions pushed through the decoder stack."""
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise ValueError("prompt_ids is empty; give at least one token (e.g. the BOS id)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    ids = list(prompt)
    cache = SequenceKVCache(model, len(prompt) + max_new_tokens) if cached else None

    def step(i: int) -> tuple[int, int]:
        if cache is None:
            logits = last_token_logits(model, ids)
        else:
            logits = cache.forward(ids if i == 0 else ids[-1:])
        token = int(torch.argmax(logits))
        ids.append(token)
        return token, 0

    with count_token_forwards(model) as counter:
        trace = time_decode(step, max_new_tokens)
    trace.token_forwards = counter["count"]
    return trace


# ------------------------------------------------------------------------ references for chapter 2 and 3
def random_mlp(seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """(model, x): a small random MLP (fp32 or bf16, 1-4 Linear layers with or without bias, ReLU, Tanh
    or GELU between them, weights drawn from N(0, 1)) and an input batch x (1-8 rows) in its dtype.

    Drawn from `seed`, so a check can rebuild the same setup for the student's code and the reference."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    dtype = (torch.float32, torch.bfloat16)[pick(0, 1)]
    widths = [pick(2, 24) for _ in range(pick(2, 5))]
    activations = (torch.nn.ReLU, torch.nn.Tanh, torch.nn.GELU)
    layers: list[torch.nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [torch.nn.Linear(a, b, bias=bool(pick(0, 1))), activations[pick(0, 2)]()]
    model = torch.nn.Sequential(*layers[:-1]).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g).to(dtype))
    return model, torch.randn(pick(1, 8), widths[0], generator=g).to(dtype)


@rebuildable
def toy_training_step(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """`random_mlp(seed)` and its AdamW after ONE step on the mean square of its output."""
    model, x = random_mlp(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    model(x).float().pow(2).mean().backward()
    optimizer.step()
    return model, optimizer


def decode_attention(
    q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode step of one attention layer over a contiguous cache, computed by labkit's paged attention.

    q (H, D): the new token's query heads; k_new, v_new (H_kv, D): its key and value; k_cache, v_cache
    (T, H_kv, D): the T previous tokens. Returns (out (H, D), k_cache (T+1, H_kv, D), v_cache (T+1, H_kv, D)):
    the new token's K/V appended, and softmax(q k^T / sqrt(D)) v over all T+1 tokens, query head h
    reading KV head h // (H // H_kv)."""
    H, D = q.shape
    T, Hkv, _ = k_cache.shape
    assert k_new.shape == v_new.shape == (Hkv, D) and v_cache.shape == k_cache.shape, "shapes disagree"
    L = T + 1
    paged_k = torch.zeros(1, L, Hkv, D, dtype=k_cache.dtype)  # one block holding the whole sequence
    paged_v = torch.zeros(1, L, Hkv, D, dtype=v_cache.dtype)
    paged_k[0, :T], paged_v[0, :T] = k_cache, v_cache
    meta = AttentionMetadata.build([L], [1], [[0]], block_size=L)
    out = paged_attention(q[None], k_new[None], v_new[None], paged_k, paged_v, meta, D**-0.5)  # (1, H, D)
    return out[0], paged_k[0], paged_v[0]


# ----------------------------------------------------------------------------------- files and hardware
def gguf_tensor_bytes(path: str | None = None) -> dict[str, tuple[int, int]]:
    """{GGUF tensor type (e.g. "Q4_1"): (parameters, bytes on disk)} of a GGUF file's tensors.

    Default: the SmolLM2-135M-Instruct asset. The bytes are what the file stores for each tensor (packed
    4-bit or 8-bit values plus their per-block scales), read from the file's own tensor table."""
    reader = open_gguf(path)
    out: dict[str, tuple[int, int]] = {}
    for t in reader.tensors:
        n, b = out.get(t.tensor_type.name, (0, 0))
        out[t.tensor_type.name] = (n + int(t.n_elements), b + int(t.n_bytes))
    return out


def copy_bandwidth(num_bytes: int = 2**28, repeats: int = 5) -> float:
    """Bytes per second this machine moves in a large tensor copy (each byte read once and written once,
    so 2 x num_bytes per copy); the best of `repeats`. A rough stand-in for the memory bandwidth that
    bounds a decode step on this CPU."""
    src = torch.ones(num_bytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best


def time_uncached_steps(
    model: torch.nn.Module, ids: Sequence[int], lengths: Sequence[int]
) -> list[tuple[int, float]]:
    """(length, seconds) of one uncached decode step over the first `length` tokens of `ids`, for each
    length: extends an uncached timing curve to lengths whose full loop would take too long."""
    out = []
    for length in lengths:
        if not 1 <= length <= len(ids):
            raise ValueError(f"length {length} is outside 1..{len(ids)} (the tokens given)")
        t0 = time.perf_counter()
        last_token_logits(model, ids[:length])
        out.append((int(length), time.perf_counter() - t0))
    return out

