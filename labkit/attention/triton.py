"""Paged attention as Triton kernels: the CUDA backend. Same contract as torch_ref.py (read that first).

torch_ref.py gathers each sequence's blocks into a padded tensor and calls SDPA; here nothing is copied:
every kernel follows the block table itself, token by token, straight from the paged cache.

Three kernels (plus a small merge):
- `_store_kernel`: one program per new token writes its K and V rows to `slot_mapping[t]` (-1: skipped).
- `_decode_kernel` (q_len == 1): one program per (sequence, kv head, context split). The G query heads
  that share a kv head are loaded together as a (G, D) tile, so every K/V block is read from memory
  once for all of them. The context of long sequences is cut into `num_splits` pieces handled by
  different programs (so a batch of 1 still fills the GPU), each keeping an online softmax; their
  partial outputs and log-sum-exps are merged by `_merge_kernel` (exactly: softmax is associative).
- `_prefill_kernel` (q_len > 1: prefill, chunked prefill, prefill over a cached prefix): one program per
  (tile of BLOCK_M query rows, sequence, query head), flash-attention style over the causal part of the
  context, read from the cache (this step's K/V were stored first). All sequences in one launch (varlen).
A mixed batch runs the decode kernel on its decoding sequences and the prefill kernel on the others.

Block sizes: any (the kernels look up the physical block of every key position, so a tile of keys may
span several blocks); tested 16 to 256. Dtypes: fp16, bf16, and fp32 (exact "ieee" dot products).
Caches: `[num_blocks, block_size, num_kv_heads, head_dim]`, contiguous.

CUDA graphs: the kernels read every length from device tensors, so one captured launch serves any
context lengths; only the grid (number of decoding sequences, `num_splits`) is fixed at capture. A
caller that captures sets `meta.backend_cache["num_splits"]` (see `decode_num_splits`) and gives the
host lists of the metadata so that nothing is read back from the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from labkit.attention import AttentionMetadata

# Launch parameters (measured on an H200 with bench/engine_gpu.py; bf16, head_dim 128).
DECODE_BLOCK_N = 64  # keys per inner step of the decode kernel
DECODE_WARPS, DECODE_STAGES = 4, 3
PREFILL_BLOCK_M, PREFILL_BLOCK_N = 64, 64
PREFILL_WARPS, PREFILL_STAGES = 4, 2
MAX_SPLITS = 32
MIN_TOKENS_PER_SPLIT = 128


# ---- kernels ---------------------------------------------------------------------------------------


@triton.jit
def _store_kernel(
    k_ptr, v_ptr, k_cache, v_cache, slot_mapping,
    stride_kt, stride_kh, stride_vt, stride_vh,
    HKV: tl.constexpr, D: tl.constexpr, HKV_PAD: tl.constexpr, D_PAD: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0)
    slot = tl.load(slot_mapping + t).to(tl.int64)
    if slot >= 0:
        h = tl.arange(0, HKV_PAD)[:, None]
        d = tl.arange(0, D_PAD)[None, :]
        mask = (h < HKV) & (d < D)
        k = tl.load(k_ptr + t * stride_kt + h * stride_kh + d, mask=mask)
        v = tl.load(v_ptr + t * stride_vt + h * stride_vh + d, mask=mask)
        dst = slot * (HKV * D) + h * D + d
        tl.store(k_cache + dst, k.to(k_cache.dtype.element_ty), mask=mask)
        tl.store(v_cache + dst, v.to(v_cache.dtype.element_ty), mask=mask)


@triton.jit
def _keys(block_tables, seq, stride_bt, n, valid, block_size: tl.constexpr):
    """(BLOCK_N,) slots of key positions n of sequence seq, read through its block table."""
    page = tl.load(block_tables + seq * stride_bt + n // block_size, mask=valid, other=0)
    return page.to(tl.int64) * block_size + n % block_size


@triton.jit
def _attend_tile(
    q, m, denom, acc, k_cache, v_cache, block_tables, seq, stride_bt, n, end, visible, kvh, d, scale_log2,
    block_size: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """One online-softmax step: fold keys n (BLOCK_N,) < end of sequence seq into (m, denom, acc) for the
    query rows q (rows, D_PAD); `visible` (rows or 1, BLOCK_N) says which keys each row may see.
    m: running max of the scores (log2 units), denom: sum of exp2(score - m), acc: sum of exp2(...) * v."""
    valid = n < end
    slots = _keys(block_tables, seq, stride_bt, n, valid, block_size)
    kv_off = slots[:, None] * (HKV * D) + kvh * D + d[None, :]
    kv_mask = valid[:, None] & (d < D)[None, :]
    k = tl.load(k_cache + kv_off, mask=kv_mask, other=0.0)
    v = tl.load(v_cache + kv_off, mask=kv_mask, other=0.0)
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = tl.where(valid[None, :] & visible, s * scale_log2, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m - m_new)
    denom = denom * alpha + tl.sum(p, 1)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, denom, acc


@triton.jit(do_not_specialize=["stride_bt"])  # one binary whatever the width of this step's block tables
def _decode_kernel(
    q_ptr, k_cache, v_cache, out_ptr, part_out, part_lse,
    block_tables, seq_lens, query_start_loc, seq_ids,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_bt, scale_log2,
    block_size: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0)  # index into seq_ids
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq = tl.load(seq_ids + i)
    L = tl.load(seq_lens + seq)
    row = tl.load(query_start_loc + seq).to(tl.int64)
    chunk = tl.cdiv(tl.cdiv(L, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(L, start + chunk)

    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D_PAD)
    g_ok = g < G
    d_ok = d < D
    heads = kvh * G + g  # the query heads that read this kv head
    q = tl.load(
        q_ptr + row * stride_qt + heads[:, None] * stride_qh + d[None, :], mask=g_ok[:, None] & d_ok[None, :], other=0.0
    )

    m = tl.full([G_PAD], float("-inf"), tl.float32)
    denom = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D_PAD], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        m, denom, acc = _attend_tile(
            q, m, denom, acc, k_cache, v_cache, block_tables, seq, stride_bt, n, end, n[None, :] >= 0, kvh, d,
            scale_log2, block_size, HKV, D, IEEE,
        )  # fmt: skip

    o_mask = g_ok[:, None] & d_ok[None, :]
    if NUM_SPLITS == 1:
        o = acc / denom[:, None]
        tl.store(
            out_ptr + row * stride_ot + heads[:, None] * stride_oh + d[None, :],
            o.to(out_ptr.dtype.element_ty),
            mask=o_mask,
        )
    else:
        empty = denom == 0.0  # this split got no keys (short sequence)
        o = acc / tl.where(empty, 1.0, denom)[:, None]
        lse = tl.where(empty, float("-inf"), m + tl.log2(tl.where(empty, 1.0, denom)))
        base = (i * HKV * G + heads) * NUM_SPLITS + split  # part_* are (num_seqs, H, NUM_SPLITS[, D])
        tl.store(part_lse + base, lse, mask=g_ok)
        tl.store(part_out + base[:, None] * D_PAD + d[None, :], o, mask=o_mask)


@triton.jit
def _merge_kernel(
    out_ptr, part_out, part_lse, query_start_loc, seq_ids, stride_ot, stride_oh,
    H: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, NUM_SPLITS: tl.constexpr, S_PAD: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0)
    h = tl.program_id(1)
    seq = tl.load(seq_ids + i)
    row = tl.load(query_start_loc + seq).to(tl.int64)
    s = tl.arange(0, S_PAD)
    d = tl.arange(0, D_PAD)
    base = (i * H + h) * NUM_SPLITS
    lse = tl.load(part_lse + base + s, mask=s < NUM_SPLITS, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, 0))  # split 0 always has keys, so the max is finite
    o = tl.load(part_out + (base + s)[:, None] * D_PAD + d[None, :], mask=(s < NUM_SPLITS)[:, None], other=0.0)
    o = tl.sum(w[:, None] * o, 0) / tl.sum(w, 0)
    tl.store(out_ptr + row * stride_ot + h * stride_oh + d, o.to(out_ptr.dtype.element_ty), mask=d < D)


@triton.jit(do_not_specialize=["stride_bt"])
def _prefill_kernel(
    q_ptr, k_cache, v_cache, out_ptr, block_tables, seq_lens, query_start_loc, seq_ids,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_bt, scale_log2,
    block_size: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    seq = tl.load(seq_ids + tl.program_id(1))
    h = tl.program_id(2)
    kvh = h // G
    q_start = tl.load(query_start_loc + seq)
    q_len = tl.load(query_start_loc + seq + 1) - q_start
    m0 = tile * BLOCK_M
    if m0 < q_len:
        L = tl.load(seq_lens + seq)
        r = m0 + tl.arange(0, BLOCK_M)
        r_ok = r < q_len
        pos = L - q_len + r  # position of each query row in its sequence
        d = tl.arange(0, D_PAD)
        d_ok = d < D
        rows = (q_start + r).to(tl.int64)
        q = tl.load(
            q_ptr + rows[:, None] * stride_qt + h * stride_qh + d[None, :],
            mask=r_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        m = tl.full([BLOCK_M], float("-inf"), tl.float32)
        denom = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
        end = tl.minimum(L, L - q_len + m0 + BLOCK_M)  # past the last query row's position
        for n0 in range(0, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            causal = n[None, :] <= pos[:, None]  # key 0 is visible to every row, so each row's max is finite
            m, denom, acc = _attend_tile(
                q, m, denom, acc, k_cache, v_cache, block_tables, seq, stride_bt, n, end, causal, kvh, d,
                scale_log2, block_size, HKV, D, IEEE,
            )  # fmt: skip
        o = acc / denom[:, None]
        tl.store(
            out_ptr + rows[:, None] * stride_ot + h * stride_oh + d[None, :],
            o.to(out_ptr.dtype.element_ty),
            mask=r_ok[:, None] & d_ok[None, :],
        )


# ---- host side -------------------------------------------------------------------------------------

_LOG2E = 1.4426950408889634
_ARANGE: dict[torch.device, torch.Tensor] = {}
_NUM_SMS: dict[torch.device, int] = {}


def _arange(n: int, device: torch.device) -> torch.Tensor:
    """A view of a persistent arange(n) int32 on device (no host-to-device copy once it exists)."""
    buf = _ARANGE.get(device)
    if buf is None or buf.numel() < n:
        buf = torch.arange(max(n, 1024), dtype=torch.int32, device=device)
        _ARANGE[device] = buf
    return buf[:n]


def _num_sms(device: torch.device) -> int:
    if device not in _NUM_SMS:
        _NUM_SMS[device] = (
            torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
        )
    return _NUM_SMS[device]


def decode_num_splits(num_seqs: int, num_kv_heads: int, max_seq_len: int, device: torch.device) -> int:
    """How many pieces to cut each context into: enough programs for about two per multiprocessor,
    never a piece shorter than MIN_TOKENS_PER_SPLIT tokens, at most MAX_SPLITS, rounded down to a power
    of two. The count is a compile-time constant of the kernels, so powers of two keep their variants
    to a handful, all compiled when the CUDA graphs are captured; any count would otherwise compile
    anew (about a second) the first time an eager step of that many decoding sequences comes by."""
    want = -(-2 * _num_sms(device) // max(1, num_seqs * num_kv_heads))
    by_len = -(-max_seq_len // MIN_TOKENS_PER_SPLIT)
    splits = max(1, min(want, by_len, MAX_SPLITS))
    return 1 << (splits.bit_length() - 1)


@dataclass
class _Plan:
    decode_ids: torch.Tensor | None  # (S_dec,) int32: the sequences with q_len == 1
    prefill_ids: torch.Tensor | None  # (S_pre,) int32: the others
    prefill_max_q: int


def _plan(meta: AttentionMetadata) -> _Plan:
    plan = meta.backend_cache.get("triton")
    if plan is not None:
        return plan
    dev = meta.slot_mapping.device
    if meta.max_query_len == 1:  # all decoding: no host work beyond a view
        plan = _Plan(_arange(meta.num_seqs, dev), None, 0)
    else:
        q_lens = meta.query_lens_list
        dec = [i for i, q in enumerate(q_lens) if q == 1]
        pre = [i for i, q in enumerate(q_lens) if q > 1]
        ids = torch.tensor(dec + pre, dtype=torch.int32).to(dev, non_blocking=True)
        plan = _Plan(ids[: len(dec)] if dec else None, ids[len(dec) :], max(q_lens))
    meta.backend_cache["triton"] = plan
    return plan


def store_kvcache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """k, v (T, Hkv, D) -> caches (num_blocks, block_size, Hkv, D) at slot_mapping (T,); -1 rows skipped."""
    T, hkv, d = k.shape
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and k.stride(2) == 1 and v.stride(2) == 1
    if T == 0:
        return
    _store_kernel[(T,)](
        k, v, k_cache, v_cache, slot_mapping, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        HKV=hkv, D=d, HKV_PAD=triton.next_power_of_2(hkv), D_PAD=triton.next_power_of_2(d),
    )  # fmt: skip


def attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """q (T, H, D) -> (T, H, D), reading K/V from the caches (already holding this step's tokens).
    Writes into `out` (T, H, D) when given."""
    T, H, D = q.shape
    block_size, hkv = k_cache.shape[1], k_cache.shape[2]
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and q.stride(2) == 1
    assert k_cache.dtype == q.dtype, f"cache dtype {k_cache.dtype} != query dtype {q.dtype}"
    G, d_pad = H // hkv, triton.next_power_of_2(D)
    ieee = q.dtype == torch.float32
    out = torch.empty_like(q) if out is None else out
    assert out.shape == q.shape and out.stride(2) == 1
    plan = _plan(meta)
    bt = meta.block_tables
    common = (meta.block_tables, meta.seq_lens, meta.query_start_loc)
    if plan.decode_ids is not None:
        S = plan.decode_ids.numel()
        splits = meta.backend_cache.get("num_splits") or decode_num_splits(S, hkv, meta.max_seq_len, q.device)
        if splits > 1:
            part_out = torch.empty(S, H, splits, d_pad, dtype=torch.float32, device=q.device)
            part_lse = torch.empty(S, H, splits, dtype=torch.float32, device=q.device)
        else:
            part_out = part_lse = out  # unused
        _decode_kernel[(S, hkv, splits)](
            q, k_cache, v_cache, out, part_out, part_lse, *common, plan.decode_ids,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1), bt.stride(0), scale * _LOG2E,
            block_size=block_size, HKV=hkv, G=G, G_PAD=max(16, triton.next_power_of_2(G)), D=D, D_PAD=d_pad,
            BLOCK_N=DECODE_BLOCK_N, NUM_SPLITS=splits, IEEE=ieee, num_warps=DECODE_WARPS,
            num_stages=DECODE_STAGES,
        )  # fmt: skip
        if splits > 1:
            _merge_kernel[(S, H)](
                out, part_out, part_lse, meta.query_start_loc, plan.decode_ids, out.stride(0), out.stride(1),
                H=H, D=D, D_PAD=d_pad, NUM_SPLITS=splits, S_PAD=triton.next_power_of_2(splits),
            )  # fmt: skip
    if plan.prefill_ids is not None and plan.prefill_ids.numel():
        grid = (triton.cdiv(plan.prefill_max_q, PREFILL_BLOCK_M), plan.prefill_ids.numel(), H)
        _prefill_kernel[grid](
            q, k_cache, v_cache, out, *common, plan.prefill_ids,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1), bt.stride(0), scale * _LOG2E,
            block_size=block_size, HKV=hkv, G=G, D=D, D_PAD=d_pad, BLOCK_M=PREFILL_BLOCK_M,
            BLOCK_N=PREFILL_BLOCK_N, IEEE=ieee, num_warps=PREFILL_WARPS, num_stages=PREFILL_STAGES,
        )  # fmt: skip
    return out


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Store this step's k, v at meta.slot_mapping, then attend: q (T, H, D) -> (T, H, D)."""
    store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping)
    return attention(q, k_cache, v_cache, meta, scale)
