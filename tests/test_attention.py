"""Paged attention against dense causal attention (torch SDPA with the kv heads repeated).

Every case builds whole sequences (Q, K, V for all L positions), puts the cached prefix of each into
a paged cache through a shuffled block table, hands paged_attention only the new tokens, and checks
the output against rows L - q_len .. L - 1 of dense causal attention over the whole sequence.
"""

import math
import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.attention import AttentionMetadata, get_backend, paged_attention, store_kvcache, torch_ref

TOL = dict(atol=1e-5, rtol=1e-5)


def dense_reference(q, k, v, scale):
    """q (L, H, D), k/v (L, Hkv, D) -> causal attention (L, H, D), GQA by repeating kv heads."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, scale=scale
    )
    return out.transpose(0, 1)


def make_case(specs, block_size, num_heads, num_kv_heads, head_dim, seed, extra_blocks=3):
    """specs: list of (num_cached, q_len). Returns everything a paged_attention call and its check need."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    lens = [c + q for c, q in specs]
    need = [math.ceil(L / block_size) for L in lens]
    num_blocks = sum(need) + extra_blocks
    ids = list(range(num_blocks))
    rng.shuffle(ids)  # non-contiguous, shuffled physical blocks
    tables, pos = [], 0
    for n in need:
        tables.append(ids[pos : pos + n])
        pos += n
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache, v_cache = torch.randn(shape, generator=g), torch.randn(shape, generator=g)  # garbage everywhere
    full = []
    for L in lens:
        q = torch.randn(L, num_heads, head_dim, generator=g)
        k, v = (torch.randn(L, num_kv_heads, head_dim, generator=g) for _ in range(2))
        full.append((q, k, v))
    # the cached prefixes are already in the cache
    for (c, _), table, (_, k, v) in zip(specs, tables, full):
        for p in range(c):
            b, off = table[p // block_size], p % block_size
            k_cache[b, off], v_cache[b, off] = k[p], v[p]
    q_new = torch.cat([q[c:] for (c, _), (q, _, _) in zip(specs, full)])
    k_new = torch.cat([k[c:] for (c, _), (_, k, _) in zip(specs, full)])
    v_new = torch.cat([v[c:] for (c, _), (_, _, v) in zip(specs, full)])
    meta = AttentionMetadata.build(lens, [q for _, q in specs], tables, block_size)
    scale = head_dim**-0.5
    expected = torch.cat([dense_reference(q, k, v, scale)[c:] for (c, _), (q, k, v) in zip(specs, full)])
    return dict(
        q=q_new,
        k=k_new,
        v=v_new,
        k_cache=k_cache,
        v_cache=v_cache,
        meta=meta,
        scale=scale,
        expected=expected,
        full=full,
        tables=tables,
        specs=specs,
    )


def run(case):
    return paged_attention(
        case["q"], case["k"], case["v"], case["k_cache"], case["v_cache"], case["meta"], case["scale"]
    )


# decode, plain prefill, prefill over a cached prefix, chunk of 1 after a long prefix, one-token prompt
MIXED = [(20, 1), (0, 7), (13, 5), (0, 1), (31, 1), (4, 12), (0, 16)]


@pytest.mark.parametrize("block_size", [1, 3, 16])
@pytest.mark.parametrize("group", [1, 3, 4])
def test_mixed_batch_matches_dense(block_size, group):
    case = make_case(
        MIXED, block_size, num_heads=2 * group, num_kv_heads=2, head_dim=16, seed=block_size * 10 + group
    )
    torch.testing.assert_close(run(case), case["expected"], **TOL)


@pytest.mark.parametrize("block_size", [1, 3, 16])
def test_cache_holds_every_token_after_the_step(block_size):
    case = make_case(MIXED, block_size, num_heads=4, num_kv_heads=2, head_dim=8, seed=1)
    run(case)
    for table, (q, k, v) in zip(case["tables"], case["full"]):
        for p in range(q.shape[0]):
            b, off = table[p // block_size], p % block_size
            assert torch.equal(case["k_cache"][b, off], k[p]) and torch.equal(case["v_cache"][b, off], v[p])


def test_prefill_read_back_from_cache_equals_fresh_path():
    """torch_ref reads a plain prefill's fresh k, v; forcing the gather path (k=None) must agree."""
    case = make_case([(0, 9), (0, 20), (6, 3)], 4, num_heads=6, num_kv_heads=2, head_dim=32, seed=3)
    fresh = run(case)
    gathered = torch_ref.attention(case["q"], case["k_cache"], case["v_cache"], case["meta"], case["scale"])
    torch.testing.assert_close(gathered, fresh, **TOL)
    torch.testing.assert_close(gathered, case["expected"], **TOL)


def test_block_tables_padded_with_zero_or_minus_one_agree():
    case = make_case(MIXED, 3, num_heads=4, num_kv_heads=4, head_dim=8, seed=4)
    expected = run(case)
    meta = case["meta"]
    zero_padded = AttentionMetadata(
        slot_mapping=meta.slot_mapping,
        query_start_loc=meta.query_start_loc,
        seq_lens=meta.seq_lens,
        block_tables=meta.block_tables.clamp_min(0),
        max_query_len=meta.max_query_len,
        max_seq_len=meta.max_seq_len,
    )
    got = paged_attention(
        case["q"], case["k"], case["v"], case["k_cache"], case["v_cache"], zero_padded, case["scale"]
    )
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert (meta.block_tables == -1).any(), "the case should exercise padding"


@settings(max_examples=40, deadline=None)
@given(
    specs=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 24)), min_size=1, max_size=6),
    block_size=st.sampled_from([1, 3, 16]),
    group=st.sampled_from([1, 3, 4]),
    num_kv_heads=st.sampled_from([1, 2]),
    head_dim=st.sampled_from([8, 32]),
    seed=st.integers(0, 2**16),
)
def test_random_batches_match_dense(specs, block_size, group, num_kv_heads, head_dim, seed):
    case = make_case(specs, block_size, num_kv_heads * group, num_kv_heads, head_dim, seed)
    torch.testing.assert_close(run(case), case["expected"], **TOL)


def test_store_skips_padding_slots():
    k_cache, v_cache = torch.zeros(2, 4, 1, 2), torch.zeros(2, 4, 1, 2)
    k = torch.arange(1.0, 7.0).reshape(3, 1, 2)
    store_kvcache(k, -k, k_cache, v_cache, torch.tensor([5, -1, 2]))
    flat_k, flat_v = k_cache.view(8, 2), v_cache.view(8, 2)
    assert flat_k[5].tolist() == [1.0, 2.0] and flat_k[2].tolist() == [5.0, 6.0]
    assert flat_v[5].tolist() == [-1.0, -2.0]
    assert flat_k.count_nonzero() == 4, "the -1 row must not be written anywhere"


def test_build_derives_slots_from_block_tables():
    # seq 0: 5 tokens, 2 new (positions 3, 4) in blocks [7, 2] of size 4 -> slots 7*4+3, 2*4+0
    meta = AttentionMetadata.build([5, 1], [2, 1], [[7, 2], [0]], block_size=4)
    assert meta.slot_mapping.tolist() == [31, 8, 0]
    assert meta.query_start_loc.tolist() == [0, 2, 3]
    assert meta.block_tables.tolist() == [[7, 2], [0, -1]]
    assert meta.positions().tolist() == [3, 4, 0]
    assert (meta.max_query_len, meta.max_seq_len, meta.num_tokens) == (2, 5, 3)
    assert meta.slot_mapping.dtype == torch.int64 and meta.block_tables.dtype == torch.int32


def test_build_rejects_impossible_batches():
    with pytest.raises(ValueError, match="query_len 3"):
        AttentionMetadata.build([2], [3], [[0]], block_size=4)
    with pytest.raises(ValueError, match="needs 2 blocks"):
        AttentionMetadata.build([5], [5], [[0]], block_size=4)
    with pytest.raises(ValueError, match="one entry per sequence"):
        AttentionMetadata.build([5, 1], [5], [[0, 1]], block_size=4)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="'cuda-magic'"):
        get_backend("cuda-magic")
    assert get_backend("torch") is torch_ref


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_backend_on_cuda_matches_cpu():
    case = make_case(MIXED, 16, num_heads=8, num_kv_heads=2, head_dim=64, seed=5)
    cuda = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    m = case["meta"]
    cuda["meta"] = AttentionMetadata.build(
        m.seq_lens_list, m.query_lens_list, case["tables"], 16, device="cuda"
    )
    torch.testing.assert_close(run(cuda).cpu(), case["expected"], atol=1e-4, rtol=1e-4)
