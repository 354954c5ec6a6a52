"""A model whose forwards its owner runs and records: what chapter 3's decode-loop checks hand the student.

The checks of t3-7 and t3-8 judge a decode loop by the work it asks of the model: which tokens it
sends through it, at which positions. A hook on the model would count what happens to the model in
the process where the loop runs; under the autograder that is the student's kernel, where whatever
counts can be rewritten. So the model never goes there: the check wraps it in a `ServedModel`, and
the student's code reaches it only through the chapter's building blocks:

    measure.last_token_logits(model, ids)       # a new sequence: every token of `ids`
    lck.forward(model, cache, new_ids)          # the sequence of `cache`: only the new tokens
    lck.for_model(cache_cls, model, max_len)    # reads model.config and model.dtype

Each forward is run by the owner, on its own model, with the tokens the owner holds for that
sequence (it keeps them: positions come from its record, never from the caller), and recorded in
`sequences` (the token ids each sequence ran, in order). The logits returned are the owner's, so a
loop gets the right ones only by asking for them. `lck.forward` then appends each layer's keys and
values of the new tokens to the caller's cache and reads its view, as with a real model, so a
cache too small raises as it would and `len(cache)` counts what was run.

Judged by the autograder (autograder/confine.py), the `ServedModel` stays in the grading process:
the kernel receives a `ModelClient`, whose forwards are requests back to the grading process
during the call (autograder/wire.py's "$M"); `ServedModel.serve` validates each one. Without the
autograder (a student's notebook, pytest) the student's code gets the `ServedModel` itself.

Each forward runs its sequence's tokens from scratch (a tiny model: microseconds per token), so the
logits depend on the tokens alone, never on how a loop split them into calls.
What it does not offer: any other way into the model (its modules, its weights, calling it):
those raise AttributeError or TypeError, naming the building blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from labkit import contiguous_kv_cache as ckv

_USE = ("in this check the model runs in the grader: reach it through measure.last_token_logits(model, ids), "
        "lck.forward(model, cache, new_ids) and lck.for_model(cache_cls, model, max_len) (model.config, "
        "model.dtype and model.device are there too)")


class _Served:
    """What both sides offer the student's code: config, dtype, device and `served_forward`."""

    __slots__ = ("config", "dtype", "device", "_caches")

    def _setup(self, config: Any, dtype: torch.dtype) -> None:
        self.config, self.dtype, self.device = config, dtype, torch.device("cpu")
        self._caches: list[tuple[Any, int]] = []  # (cache, its sequence's key): kept, so no id is reused

    def __getattr__(self, name: str) -> Any:  # only for names the object does not have
        raise AttributeError(f"model.{name}: {_USE}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"the model cannot be called: {_USE}")

    def __repr__(self) -> str:
        return f"<model served by the grader: {type(self.config).__name__}, {self.dtype}>"

    def served_forward(self, cache: Any, new_ids: Sequence[int]) -> torch.Tensor:
        """`new_ids` run after the tokens of `cache`'s sequence (a new sequence when `cache` is None or
        new here); each layer's K/V appended to `cache`; the logits after the last new token (vocab,)."""
        ids = [int(t) for t in new_ids]
        if not ids:
            raise ValueError("forward needs at least one new token id")
        key = None if cache is None else next((k for c, k in self._caches if c is cache), None)
        logits, kv, got = self._run(key, ids)
        if cache is not None:
            if key is None:
                self._caches.append((cache, got))
            for layer, (k, v) in enumerate(kv):
                cache.append(layer, k, v)
                cache.view(layer)
        return logits

    def _run(self, key: int | None, ids: list[int]) -> tuple[torch.Tensor, list, int]:
        raise NotImplementedError


class ServedModel(_Served):
    """The owner: runs every forward on `model` and records it (`sequences`, `token_forwards`)."""

    __slots__ = ("_model", "sequences", "max_tokens", "max_total")
    labkit_served = True  # autograder/wire.py sends it as "$M": the kernel gets a ModelClient

    def __init__(self, model: torch.nn.Module, max_tokens: int = 1024, max_total: int = 16384) -> None:
        self._setup(model.config, model.dtype)
        self._model = model
        self.sequences: list[list[int]] = []  # the token ids each sequence ran, in the order asked
        self.max_tokens, self.max_total = max_tokens, max_total  # per sequence; over all sequences

    @property
    def token_forwards(self) -> int:
        """Token positions run through the model, over every forward."""
        return sum(len(s) for s in self.sequences)

    def served_info(self) -> dict:
        return {"config": self.config, "dtype": str(self.dtype).replace("torch.", "")}

    def _run(self, key: int | None, ids: list[int]) -> tuple[torch.Tensor, list, int]:
        vocab = self.config.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise IndexError(f"token id {bad} is out of range: the model's vocabulary has ids 0 .. {vocab - 1}")
        if key is not None and not (isinstance(key, int) and 0 <= key < len(self.sequences)):
            raise ValueError(f"no sequence {key!r}")
        tokens = [] if key is None else self.sequences[key]
        start, total = len(tokens), len(tokens) + len(ids)
        if total > self.max_tokens:
            raise ValueError(f"a sequence of {total} tokens: this check's model runs at most {self.max_tokens}")
        if self.token_forwards + len(ids) > self.max_total:
            raise ValueError(f"more than {self.max_total} token-forwards: this check's model runs no more")
        c = self.config
        cache = ckv.ContiguousKVCache(c.num_hidden_layers, total, c.num_key_value_heads, c.head_dim, self.dtype)
        logits = ckv.forward(self._model, cache, tokens + ids)
        kv = [(cache.k[i, start:total].clone(), cache.v[i, start:total].clone()) for i in range(c.num_hidden_layers)]
        if key is None:
            key = len(self.sequences)
            self.sequences.append([])
        self.sequences[key].extend(ids)
        return logits, kv, key

    def serve(self, request: Any) -> dict:
        """One forward asked by a `ModelClient` (JSON from the student's kernel: checked, never trusted)."""
        if not isinstance(request, dict) or set(request) != {"seq", "ids"}:
            raise ValueError("a forward request is {'seq': ..., 'ids': [...]}")
        key, ids = request["seq"], request["ids"]
        if key is not None and (type(key) is not int):
            raise ValueError("a sequence is named by an int")
        if type(ids) is not list or not ids or not all(type(t) is int for t in ids):
            raise ValueError("forward needs a non-empty list of int token ids")
        logits, kv, key = self._run(key, ids)
        return {"seq": key, "logits": logits, "kv": [list(pair) for pair in kv]}


class ModelClient(_Served):
    """The kernel's side: each forward is a request to the ServedModel's process (`call`)."""

    __slots__ = ("_call",)

    def __init__(self, info: dict, call: Callable[[dict], dict]) -> None:
        dtype = getattr(torch, str(info["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"not a torch dtype: {info['dtype']!r}")
        self._setup(info["config"], dtype)
        self._call = call

    def _run(self, key: int | None, ids: list[int]) -> tuple[torch.Tensor, list, int]:
        reply = self._call({"seq": key, "ids": ids})
        return reply["logits"], reply["kv"], reply["seq"]
