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

What it does not do: fuse the store with the read, or split long contexts (it gathers whole
sequences, so memory is O(num_seqs * max_seq_len) per layer for the decode batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from labkit.attention import AttentionMetadata


def store_kvcache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """k, v (T, Hkv, D) -> caches (num_blocks, block_size, Hkv, D) at slot_mapping (T,); -1 rows skipped."""
    assert k_cache.is_contiguous() and v_cache.is_contiguous(), "caches must be contiguous to address slots"
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    flat_k = k_cache.view(-1, num_kv_heads, head_dim)  # (num_slots, Hkv, D)
    flat_v = v_cache.view(-1, num_kv_heads, head_dim)
    slots = slot_mapping.to(torch.int64)
    keep = slots >= 0
    if not bool(keep.all()):
        slots, k, v = slots[keep], k[keep], v[keep]
    flat_k.index_copy_(0, slots, k.to(k_cache.dtype))
    flat_v.index_copy_(0, slots, v.to(v_cache.dtype))


def _gather(cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """cache (N, B, Hkv, D), block_ids (..., nb) -> (..., nb * B, Hkv, D): a sequence's tokens in order."""
    blocks = cache[block_ids.to(torch.int64).clamp_min(0)]  # (..., nb, B, Hkv, D); -1 padding -> block 0
    return blocks.flatten(-4, -3)


def _sdpa(q, k, v, scale, mask=None, is_causal=False):
    """q (..., H, Tq, D), k/v (..., Hkv, Tk, D) -> (..., H, Tq, D), grouped-query aware."""
    gqa = q.shape[-3] != k.shape[-3]
    return F.scaled_dot_product_attention(
        q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=gqa
    )


def _decode_batch(q, k_cache, v_cache, meta, seqs, scale):
    """One query row per sequence in `seqs`: q (S, H, D) -> (S, H, D)."""
    block_size = k_cache.shape[1]
    lens = [meta.seq_lens_list[i] for i in seqs]
    num_blocks = -(-max(lens) // block_size)
    idx = torch.tensor(seqs, device=q.device)
    table = meta.block_tables[idx, :num_blocks]  # (S, nb)
    k = _gather(k_cache, table).transpose(1, 2)  # (S, Hkv, nb * B, D)
    v = _gather(v_cache, table).transpose(1, 2)
    seq_lens = torch.tensor(lens, device=q.device)
    mask = torch.arange(k.shape[2], device=q.device)[None, :] < seq_lens[:, None]  # (S, Lk)
    out = _sdpa(q.unsqueeze(2), k, v, scale, mask=mask[:, None, None, :])  # (S, H, 1, D)
    return out.squeeze(2)


def _one_sequence(q, k_cache, v_cache, block_table, seq_len, scale):
    """q (q_len, H, D) = the last q_len positions of a seq_len-token sequence -> (q_len, H, D)."""
    block_size = k_cache.shape[1]
    q_len = q.shape[0]
    num_blocks = -(-seq_len // block_size)
    k = _gather(k_cache, block_table[:num_blocks])[:seq_len].transpose(0, 1)  # (Hkv, L, D)
    v = _gather(v_cache, block_table[:num_blocks])[:seq_len].transpose(0, 1)
    rows = torch.arange(seq_len - q_len, seq_len, device=q.device)  # position of each query row
    mask = torch.arange(seq_len, device=q.device)[None, :] <= rows[:, None]  # (q_len, L)
    return _sdpa(q.transpose(0, 1), k, v, scale, mask=mask).transpose(0, 1)


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
    out = torch.empty_like(q)
    qsl, seq_lens = meta.query_start_loc_list, meta.seq_lens_list
    decode = [i for i in range(meta.num_seqs) if qsl[i + 1] - qsl[i] == 1]
    if decode:
        rows = torch.tensor([qsl[i] for i in decode], device=q.device)
        out[rows] = _decode_batch(q[rows], k_cache, v_cache, meta, decode, scale)
    for i in range(meta.num_seqs):
        start, end, seq_len = qsl[i], qsl[i + 1], seq_lens[i]
        q_len = end - start
        if q_len == 1:
            continue
        assert 0 < q_len <= seq_len, f"seq {i}: q_len {q_len}, seq_len {seq_len}"
        if q_len == seq_len and k is not None and v is not None:  # plain prefill: causal over new k, v
            qi, ki, vi = (t[start:end].transpose(0, 1) for t in (q, k, v))
            out[start:end] = _sdpa(qi, ki, vi, scale, is_causal=True).transpose(0, 1)
        else:
            out[start:end] = _one_sequence(q[start:end], k_cache, v_cache, meta.block_tables[i], seq_len, scale)
    return out
