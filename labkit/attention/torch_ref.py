"""Reference paged attention in plain torch: runs on any device, reasonably fast on CPU.

Layout and semantics are the package contract (see labkit/attention/__init__.py): caches
`[num_blocks, block_size, num_kv_heads, head_dim]`, slot = block_id * block_size + offset, -1 = skip;
seq i's q_len query rows are positions L - q_len .. L - 1 of its L = seq_lens[i] tokens.

How it is vectorised (three cases, all exact):
- decode rows (q_len == 1) of all sequences go in ONE batched call: each sequence's blocks are
  gathered into a padded (S, Hkv, max_len, D) tensor and a key mask hides positions >= L;
- a prefill with no cached prefix (q_len == L) attends to its fresh k, v directly (its K/V are in the
  cache too, but reading them back would only cost a gather);
- any other sequence (chunked prefill, prefill over a cached prefix) gathers its own blocks and runs
  one masked scaled_dot_product_attention, the mask shifted by the L - q_len cached positions.
Grouped-query heads use SDPA's enable_gqa (query head h reads kv head h // group), never a copy.

Index tensors (which rows decode, their padded block lists and key masks, the rows to store) depend
only on the step's metadata: they are built once per step, cached in `meta.backend_cache`, and
reused by every layer, so a layer costs gathers and SDPA calls, no host-device round trips.

What it does not do: fuse the store with the read, or split long contexts (it gathers whole
sequences, so memory is O(num_seqs * max_seq_len) per layer for the decode batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from labkit.attention import AttentionMetadata


def store_kvcache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """k, v (T, Hkv, D) -> caches (num_blocks, block_size, Hkv, D) at slot_mapping (T,); -1 rows skipped."""
    _store(k, v, k_cache, v_cache, *_stored_rows(slot_mapping))


def _stored_rows(slot_mapping: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(slots of the rows to store, those rows or None for all): rows with slot -1 are padding."""
    slots = slot_mapping.to(torch.int64)
    keep = slots >= 0
    rows = None if bool(keep.all()) else keep.nonzero().squeeze(1)
    return (slots if rows is None else slots[rows]), rows


def _store(k, v, k_cache, v_cache, slots, rows):
    """Write rows `rows` (None = all) of k, v (T, Hkv, D) to the flat slots `slots`."""
    assert k_cache.is_contiguous() and v_cache.is_contiguous(), "caches must be contiguous to address slots"
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    if rows is not None:
        k, v = k.index_select(0, rows), v.index_select(0, rows)
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, k.to(k_cache.dtype))
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, v.to(v_cache.dtype))


@dataclass
class _Plan:
    """Index tensors derived from one step's metadata, built once and shared by every layer."""

    store_slots: torch.Tensor  # (T',) int64 slots of the rows to store
    store_rows: torch.Tensor | None  # (T',) rows of k/v to store; None = all rows (no -1 padding)
    decode_rows: torch.Tensor | None  # (S,) the query row of each decoding sequence
    decode_blocks: torch.Tensor | None  # (S, nb) int64 physical blocks, padding clamped to block 0
    decode_mask: torch.Tensor | None  # (S, 1, 1, nb * B) True where a key position is < seq_len
    others: list  # (start, end, blocks (nb,) int64 or None if fresh prefill, mask (q_len, L) or None)


def _plan(meta: AttentionMetadata, block_size: int, fresh_ok: bool) -> _Plan:
    key = ("torch_ref", block_size, fresh_ok)
    if key in meta.backend_cache:
        return meta.backend_cache[key]
    dev = meta.slot_mapping.device
    qsl, lens = meta.query_start_loc_list, meta.seq_lens_list
    store_slots, store_rows = _stored_rows(meta.slot_mapping)
    decode = [i for i in range(meta.num_seqs) if qsl[i + 1] - qsl[i] == 1]
    d_rows = d_blocks = d_mask = None
    if decode:
        nb = -(-max(lens[i] for i in decode) // block_size)
        d_rows = torch.tensor([qsl[i] for i in decode], device=dev)
        idx = torch.tensor(decode, device=dev)
        d_blocks = meta.block_tables[idx, :nb].to(torch.int64).clamp_min(0)
        seq_lens = torch.tensor([lens[i] for i in decode], device=dev)
        d_mask = (torch.arange(nb * block_size, device=dev)[None, :] < seq_lens[:, None])[:, None, None, :]
    others = []
    for i in range(meta.num_seqs):
        start, end, seq_len = qsl[i], qsl[i + 1], lens[i]
        q_len = end - start
        assert 0 < q_len <= seq_len, f"seq {i}: q_len {q_len}, seq_len {seq_len}"
        if q_len == 1:
            continue
        if q_len == seq_len and fresh_ok:  # plain prefill: causal attention over the fresh k, v
            others.append((start, end, None, None))
            continue
        nb = -(-seq_len // block_size)
        blocks = meta.block_tables[i, :nb].to(torch.int64)
        positions = torch.arange(seq_len - q_len, seq_len, device=dev)  # of each query row
        mask = torch.arange(seq_len, device=dev)[None, :] <= positions[:, None]  # (q_len, L)
        others.append((start, end, blocks, mask))
    plan = _Plan(store_slots, store_rows, d_rows, d_blocks, d_mask, others)
    meta.backend_cache[key] = plan
    return plan


def _gather(cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """cache (N, B, Hkv, D), blocks (..., nb) int64 -> (..., nb * B, Hkv, D): a sequence's tokens in order.

    index_select copies whole blocks; on CPU the same gather written cache[blocks] (advanced indexing)
    is several times slower, and was most of a decode step's attention time (bench/engine_cpu.py)."""
    return cache.index_select(0, blocks.reshape(-1)).view(*blocks.shape[:-1], -1, *cache.shape[2:])


def _sdpa(q, k, v, scale, mask=None, is_causal=False):
    """q (..., H, Tq, D), k/v (..., Hkv, Tk, D) -> (..., H, Tq, D), grouped-query aware."""
    gqa = q.shape[-3] != k.shape[-3]
    return F.scaled_dot_product_attention(
        q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=gqa
    )


def attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
) -> torch.Tensor:
    """q (T, H, D) -> (T, H, D), reading K/V from the caches (already holding this step's tokens).

    k, v (T, Hkv, D), when given, are this step's fresh keys/values: a sequence with no cached prefix
    uses them directly instead of gathering them back from the cache."""
    fresh_ok = k is not None and v is not None
    plan = _plan(meta, k_cache.shape[1], fresh_ok)
    out = torch.empty_like(q)
    if plan.decode_rows is not None:  # all decoding sequences in one padded call
        kd = _gather(k_cache, plan.decode_blocks).transpose(1, 2)  # (S, Hkv, nb * B, D)
        vd = _gather(v_cache, plan.decode_blocks).transpose(1, 2)
        qd = q[plan.decode_rows].unsqueeze(2)  # (S, H, 1, D)
        out[plan.decode_rows] = _sdpa(qd, kd, vd, scale, mask=plan.decode_mask).squeeze(2)
    for start, end, blocks, mask in plan.others:
        qi = q[start:end].transpose(0, 1)  # (H, q_len, D)
        if blocks is None:
            ki, vi = k[start:end].transpose(0, 1), v[start:end].transpose(0, 1)  # (Hkv, L, D)
            oi = _sdpa(qi, ki, vi, scale, is_causal=True)
        else:
            seq_len = mask.shape[1]
            ki = _gather(k_cache, blocks)[:seq_len].transpose(0, 1)  # (Hkv, L, D)
            vi = _gather(v_cache, blocks)[:seq_len].transpose(0, 1)
            oi = _sdpa(qi, ki, vi, scale, mask=mask)
        out[start:end] = oi.transpose(0, 1)
    return out


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Store this step's k, v at meta.slot_mapping, then attend: q (T, H, D) -> (T, H, D)."""
    plan = _plan(meta, k_cache.shape[1], fresh_ok=True)
    _store(k, v, k_cache, v_cache, plan.store_slots, plan.store_rows)
    return attention(q, k_cache, v_cache, meta, scale, k=k, v=v)
