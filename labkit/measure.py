"""Measure what a model really holds in memory, and how long decode steps really take.

The byte calculators in `labkit.memory` are formulas; this module checks them against the tensors
that exist. Every figure is a sum over real tensors' storages, each storage counted once (a view, a
tied weight or a tensor saved twice for backward does not count twice):

    footprint = training_step_footprint(model, loss_fn)   # parameters, .grad, AdamW state, saved activations
    footprint = inference_footprint(model, forward_fn)    # parameters, peak of tensors made by one pass
    trace = time_decode(step_fn, first_token, n_steps)    # seconds per decode step, token ids

What it measures: parameters, gradients (`.grad` after `backward()`), optimizer state (the tensors in
`optimizer.state` after one `step()`), the activations autograd saves for the backward pass (through
`torch.autograd.graph.saved_tensors_hooks`), and the peak bytes of tensors created during a pass and
alive at the same moment (through a `TorchDispatchMode` that follows every op's outputs until they are
freed). What it does not measure: the allocator's own overhead and caching, memory outside PyTorch
(the Python heap, libraries), or tensors created by ops that bypass the dispatcher.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


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


# ------------------------------------------------------------------------------------------ footprint
@dataclass
class Footprint:
    """Bytes held by one training step or one inference pass, each a sum over real tensors."""

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
) -> Footprint:
    """Runs one training step (forward, backward, optimizer step) and sums the tensors it leaves.

    `loss_fn(model)` returns a scalar loss. `optimizer` defaults to `torch.optim.AdamW` over all
    parameters (lr 1e-5, so the model barely changes). Activations are the tensors autograd saved for
    backward, minus the parameters themselves (a matmul saves its weight, which is already counted).
    The model's gradients are set to None again before returning; the optimizer state is kept on the
    optimizer, so pass your own optimizer to look at it afterwards.
    """
    params = _unique_parameters(model)
    if not any(p.requires_grad for p in params):
        raise ValueError("training_step_footprint: no parameter requires grad; call model.requires_grad_(True)")
    optimizer = optimizer or torch.optim.AdamW(params, lr=1e-5, foreach=False)
    model.train()
    for p in params:
        p.grad = None
    with saved_for_backward() as saved:
        loss = loss_fn(model)
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}; reduce it with .mean()")
    param_keys = _storage_keys(params)
    activations = storage_bytes(t for t in saved if t.untyped_storage().data_ptr() not in param_keys)
    del saved
    loss.backward()
    optimizer.step()
    grads = [p.grad for p in params if p.grad is not None]
    fp = Footprint(
        num_params=sum(p.numel() for p in params),
        parameters=storage_bytes(params),
        gradients=storage_bytes(grads),
        optimizer_states=storage_bytes(optimizer_state_tensors(optimizer)),
        activations=activations,
    )
    for p in params:
        p.grad = None
    return fp


def inference_footprint(
    model: torch.nn.Module,
    forward_fn: Callable[[torch.nn.Module], object],
    kv_cache: Iterable[torch.Tensor] = (),
) -> Footprint:
    """Runs `forward_fn(model)` under `torch.no_grad()` and sums parameters, the peak bytes of tensors
    the pass created (its transient activations) and the KV cache tensors you pass in."""
    params = _unique_parameters(model)
    model.eval()
    with torch.no_grad(), PeakLiveBytes() as tracer:
        out = forward_fn(model)
    del out
    return Footprint(
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
