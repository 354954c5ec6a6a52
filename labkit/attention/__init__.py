"""Paged attention: the metadata a flat batch carries, and one dispatch to a backend that computes it.

The contract every backend keeps (and kv_cache.py, model.py and engine.py rely on):

KV cache, per layer: `k_cache`, `v_cache`, each a tensor `[num_blocks, block_size, num_kv_heads,
head_dim]` on any device and dtype. A *slot* is `block_id * block_size + offset`; slot -1 means
"no slot" (a padding row: its K/V are not stored anywhere).

A step runs a FLAT batch: the query tokens of all sequences concatenated, no padding. Sequence i
owns rows `query_start_loc[i] : query_start_loc[i + 1]` (its `q_len` rows) and, after this step, has
`L = seq_lens[i]` tokens of context. Its query rows are positions `L - q_len .. L - 1`; each one
attends causally to positions `0 .. its own position`, whose K/V are read from the cache through
`block_tables[i]` (logical block j of the sequence lives in physical block `block_tables[i, j]`).
Decode (`q_len == 1`), prefill (`q_len == L`), chunked prefill and prefill over a cached prefix
(`0 < q_len < L`) are one code path and may be mixed freely in one batch.

`paged_attention(q, k, v, k_cache, v_cache, meta, scale)`:
  1. stores the new k, v (one row per query token) into the caches at `meta.slot_mapping`;
  2. returns the attention output `(num_tokens, num_heads, head_dim)`.
Grouped-query attention: query head h reads kv head `h // (num_heads // num_kv_heads)`.

Backends live in this package, one module each, and are chosen in ONE place, `BACKENDS` below:
  "torch"  -> labkit/attention/torch_ref.py (any device, torch only; the reference)
A backend module provides `store_kvcache(k, v, k_cache, v_cache, slot_mapping)` and
`paged_attention(q, k, v, k_cache, v_cache, meta, scale)` (store, then attend; it may use the fresh
k, v for sequences with no cached prefix). Adding a backend (e.g. "triton" in triton.py) is one line
in `BACKENDS`. A backend may keep index tensors it derives from a step's metadata in
`meta.backend_cache` (a dict, new for every step), so that its layers do not rebuild them.

What this does not handle: sliding windows, ALiBi, soft-capping, cross attention, or sequences with
zero query rows (every sequence in a batch has at least one query token).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

import torch

# backend name -> module that implements it. The single place a backend is registered.
BACKENDS: dict[str, str] = {
    "torch": "labkit.attention.torch_ref",
    # "triton": "labkit.attention.triton",   # CUDA kernels (a later issue)
}
DEFAULT_BACKEND = "torch"


@dataclass
class AttentionMetadata:
    """Where each sequence's queries sit in the flat batch and where its K/V live in the cache.

    block_tables is padded with -1 on the right; entries past ceil(seq_len / block_size) are never
    read, so a caller may pad with 0 instead. The *_list fields are host copies (python lists) that
    the torch backend uses to loop without device syncs; they are filled from the tensors when left
    out. One instance describes ONE step: build a new one for every forward (backends cache index
    tensors derived from it in backend_cache, so mutating it in place would leave those stale).
    """

    slot_mapping: torch.Tensor  # (num_tokens,) int64; where each new token's K/V goes; -1 = skip
    query_start_loc: torch.Tensor  # (num_seqs + 1,) int32; seq i = rows [qsl[i], qsl[i+1])
    seq_lens: torch.Tensor  # (num_seqs,) int32; context length after this step (cached + new)
    block_tables: torch.Tensor  # (num_seqs, max_blocks_per_seq) int32, padded with -1
    max_query_len: int
    max_seq_len: int
    query_start_loc_list: list[int] | None = field(default=None, repr=False)
    seq_lens_list: list[int] | None = field(default=None, repr=False)
    backend_cache: dict = field(default_factory=dict, repr=False, compare=False)  # per-step scratch

    def __post_init__(self) -> None:
        if self.query_start_loc_list is None:
            self.query_start_loc_list = [int(x) for x in self.query_start_loc.tolist()]
        if self.seq_lens_list is None:
            self.seq_lens_list = [int(x) for x in self.seq_lens.tolist()]
        assert len(self.query_start_loc_list) == len(self.seq_lens_list) + 1
        assert self.block_tables.dim() == 2 and self.block_tables.shape[0] == len(self.seq_lens_list)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_list)

    @property
    def num_tokens(self) -> int:
        return self.query_start_loc_list[-1]

    @property
    def query_lens_list(self) -> list[int]:
        qsl = self.query_start_loc_list
        return [qsl[i + 1] - qsl[i] for i in range(self.num_seqs)]

    def positions(self) -> torch.Tensor:
        """(num_tokens,) int64: the position of every query row (seq i's rows are L - q_len .. L - 1)."""
        pos = [p for q, L in zip(self.query_lens_list, self.seq_lens_list) for p in range(L - q, L)]
        return torch.tensor(pos, dtype=torch.int64, device=self.slot_mapping.device)

    @classmethod
    def build(
        cls,
        seq_lens: list[int],
        query_lens: list[int],
        block_tables: list[list[int]],
        block_size: int,
        device: torch.device | str = "cpu",
        slot_mapping: list[int] | None = None,
    ) -> AttentionMetadata:
        """Metadata from python lists: seq i has seq_lens[i] tokens after this step, the last
        query_lens[i] of which are new. The slot mapping is derived from the block tables unless
        given (pass it to mark padding rows with -1)."""
        if not (len(seq_lens) == len(query_lens) == len(block_tables)):
            raise ValueError(
                f"seq_lens, query_lens and block_tables must have one entry per sequence; got "
                f"lengths {len(seq_lens)}, {len(query_lens)}, {len(block_tables)}. "
                f"Fix: pass one of each per sequence."
            )
        for i, (L, q, bt) in enumerate(zip(seq_lens, query_lens, block_tables)):
            if not 1 <= q <= L:
                raise ValueError(
                    f"sequence {i}: query_len {q} must satisfy 1 <= query_len <= seq_len ({L}). "
                    f"Fix: seq_len counts cached + new tokens, so it is at least the number of new tokens."
                )
            if L > len(bt) * block_size:
                raise ValueError(
                    f"sequence {i}: seq_len {L} needs {-(-L // block_size)} blocks of {block_size} tokens, "
                    f"but its block table has {len(bt)}. Fix: allocate blocks before running the step."
                )
        if slot_mapping is None:
            slot_mapping = [
                bt[p // block_size] * block_size + p % block_size
                for L, q, bt in zip(seq_lens, query_lens, block_tables)
                for p in range(L - q, L)
            ]
        qsl = [0]
        for q in query_lens:
            qsl.append(qsl[-1] + q)
        if len(slot_mapping) != qsl[-1]:
            raise ValueError(
                f"slot_mapping has {len(slot_mapping)} entries but the batch has {qsl[-1]} query tokens. "
                f"Fix: give one slot (or -1) per query token."
            )
        width = max([len(bt) for bt in block_tables] + [1])
        padded = [list(bt) + [-1] * (width - len(bt)) for bt in block_tables]
        return cls(
            slot_mapping=torch.tensor(slot_mapping, dtype=torch.int64, device=device),
            query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
            block_tables=torch.tensor(padded, dtype=torch.int32, device=device).reshape(len(padded), width),
            max_query_len=max(query_lens, default=0),
            max_seq_len=max(seq_lens, default=0),
            query_start_loc_list=qsl,
            seq_lens_list=list(seq_lens),
        )


def get_backend(name: str | None = None) -> ModuleType:
    """The module implementing backend `name` (default DEFAULT_BACKEND)."""
    name = name or DEFAULT_BACKEND
    if name not in BACKENDS:
        raise ValueError(
            f"unknown attention backend {name!r}; known: {sorted(BACKENDS)}. Fix: pick one of those."
        )
    return importlib.import_module(BACKENDS[name])


def store_kvcache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    backend: str | None = None,
) -> None:
    """Write k, v (num_tokens, num_kv_heads, head_dim) into the caches at slot_mapping (-1 = skip)."""
    get_backend(backend).store_kvcache(k, v, k_cache, v_cache, slot_mapping)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    backend: str | None = None,
) -> torch.Tensor:
    """Store the new k, v in the paged cache, then attend. q (T, H, D); k, v (T, Hkv, D) -> (T, H, D)."""
    T, H, D = q.shape
    assert k.shape == v.shape and k.shape[0] == T and k.shape[2] == D, (q.shape, k.shape, v.shape)
    assert H % k.shape[1] == 0, f"num_heads {H} is not a multiple of num_kv_heads {k.shape[1]}"
    assert k_cache.shape == v_cache.shape and k_cache.shape[2:] == k.shape[1:], (k_cache.shape, k.shape)
    assert meta.num_tokens == T, f"metadata describes {meta.num_tokens} tokens, the batch has {T}"
    return get_backend(backend).paged_attention(q, k, v, k_cache, v_cache, meta, scale)


__all__ = [
    "AttentionMetadata",
    "BACKENDS",
    "DEFAULT_BACKEND",
    "get_backend",
    "paged_attention",
    "store_kvcache",
]
