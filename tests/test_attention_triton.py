"""The Triton paged-attention kernels against the torch reference (labkit/attention/torch_ref.py).

Every case draws fresh random queries, keys, values and a cache full of random garbage, scatters each
sequence's cached prefix over shuffled physical blocks, poisons the output with NaN, runs the kernel
and compares it with torch_ref run in float32 on the same inputs. The store is checked too: every new
token's K/V sits at its slot afterwards and no other slot changed.

Marked `gpu` (skipped without CUDA). They also run on CPU under Triton's interpreter
(TRITON_INTERPRET=1, slow: a small subset is enough there).
"""

import math
import os
import random

import pytest
import torch

pytest.importorskip("triton", reason="the Triton backend needs the triton package (installed with CUDA torch)")

from labkit.attention import AttentionMetadata, get_backend, torch_ref  # noqa: E402
from labkit.attention import triton as tk  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [pytest.mark.gpu] if not INTERPRET else []
# relative error ‖out - ref‖ / ‖ref‖ allowed per dtype (fp32 runs exact "ieee" dot products)
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def make_case(specs, block_size, num_heads, num_kv_heads, head_dim, dtype, seed):
    """specs: (num_cached, q_len) per sequence; the cache is random garbage (the prefix's K/V are whatever
    its slots hold, which is all attention reads)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    rng = random.Random(seed)
    lens = [c + q for c, q in specs]
    need = [math.ceil(L / block_size) for L in lens]
    num_blocks = sum(need) + 3
    ids = list(range(num_blocks))
    rng.shuffle(ids)
    tables, at = [], 0
    for n in need:
        tables.append(ids[at : at + n])
        at += n
    shape = (num_blocks, block_size, num_kv_heads, head_dim)

    if INTERPRET and dtype == torch.bfloat16:
        dtype = torch.float16  # the interpreter computes bf16 through numpy, wrongly: use fp16 there

    def rand(*s):
        return torch.randn(*s, generator=g).to(dtype=dtype, device=DEVICE)

    k_cache, v_cache = rand(*shape), rand(*shape)
    T = sum(q for _, q in specs)
    q, k, v = rand(T, num_heads, head_dim), rand(T, num_kv_heads, head_dim), rand(T, num_kv_heads, head_dim)
    meta = AttentionMetadata.build(lens, [q for _, q in specs], tables, block_size, device=DEVICE)
    return dict(q=q, k=k, v=v, k_cache=k_cache, v_cache=v_cache, meta=meta, scale=head_dim**-0.5)


def reference(case):
    """torch_ref in float32 on copies: (output, k_cache, v_cache) after the step."""
    f = {n: case[n].float().clone() for n in ("q", "k", "v", "k_cache", "v_cache")}
    m = case["meta"]
    meta = AttentionMetadata(
        m.slot_mapping, m.query_start_loc, m.seq_lens, m.block_tables, m.max_query_len, m.max_seq_len
    )
    out = torch_ref.paged_attention(f["q"], f["k"], f["v"], f["k_cache"], f["v_cache"], meta, case["scale"])
    return out, f["k_cache"], f["v_cache"]


def run_triton(case, num_splits=None):
    if num_splits is not None:
        case["meta"].backend_cache["num_splits"] = num_splits
    out = torch.full_like(case["q"], float("nan"))
    tk.store_kvcache(case["k"], case["v"], case["k_cache"], case["v_cache"], case["meta"].slot_mapping)
    tk.attention(case["q"], case["k_cache"], case["v_cache"], case["meta"], case["scale"], out=out)
    return out


def check(case, num_splits=None):
    expected, k_ref, v_ref = reference(case)
    got = run_triton(case, num_splits)
    assert not got.isnan().any(), "some output rows were never written"
    rel = ((got.float() - expected).norm() / expected.norm()).item()
    assert rel < REL_TOL[case["q"].dtype], f"relative error {rel:.2e}"
    # the store is a copy: exact, and nothing else in the caches moved
    assert torch.equal(case["k_cache"].float(), k_ref) and torch.equal(case["v_cache"].float(), v_ref)


DECODE = [(0, 1), (16, 1), (37, 1), (200, 1), (1023, 1), (3000, 1)]
PREFILL = [(0, 1), (0, 7), (0, 64), (0, 129), (0, 300)]
MIXED = [(20, 1), (0, 7), (13, 5), (0, 1), (31, 1), (4, 12), (0, 16), (100, 70), (255, 1), (64, 200)]
BATCHES = {"decode": DECODE, "prefill": PREFILL, "mixed": MIXED}
# (num_heads, num_kv_heads): MHA, GQA 2/4/7/8 (7: a group that is not a power of two), MQA
HEADS = [(4, 4), (16, 8), (8, 2), (14, 2), (32, 4), (8, 1)]


@pytest.mark.parametrize("batch", list(BATCHES))
@pytest.mark.parametrize("block_size", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_kernels_match_reference_across_block_sizes(batch, block_size, dtype):
    if INTERPRET and (dtype == torch.bfloat16 or block_size not in (16, 128)):
        pytest.skip("interpreter: one dtype and two block sizes are enough")
    case = make_case(BATCHES[batch], block_size, 16, 8, 128, dtype, seed=block_size + len(batch))
    check(case)


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("head_dim", [64, 128, 96])
def test_kernels_match_reference_across_heads(heads, head_dim):
    if INTERPRET and heads not in [(14, 2), (8, 1)]:
        pytest.skip("interpreter: two head layouts are enough")
    case = make_case(MIXED, 16, heads[0], heads[1], head_dim, torch.bfloat16, seed=heads[0] * head_dim)
    check(case)


@pytest.mark.parametrize("num_splits", [1, 2, 3, 7, 32])
def test_decode_context_split_merges_exactly(num_splits):
    """Any number of context pieces gives the same answer, also when some pieces are empty."""
    case = make_case(DECODE, 16, 16, 8, 128, torch.float32, seed=num_splits)
    check(case, num_splits)


@pytest.mark.parametrize("seed", range(4 if INTERPRET else 30))
def test_random_batches(seed):
    rng = random.Random(seed)
    specs = [
        (rng.choice([0, rng.randint(0, 600)]), rng.choice([1, 1, rng.randint(1, 300)]))
        for _ in range(rng.randint(1, 12))
    ]
    kvh = rng.choice([1, 2, 4, 8])
    case = make_case(
        specs, rng.choice([16, 32, 64, 128, 256]), kvh * rng.choice([1, 2, 3, 4, 8]), kvh,
        rng.choice([64, 128]), rng.choice([torch.bfloat16, torch.float16]), seed=1000 + seed,
    )  # fmt: skip
    check(case)


def test_store_skips_padding_slots():
    case = make_case([(0, 1), (5, 1), (9, 1)], 16, 4, 2, 64, torch.bfloat16, seed=7)
    m = case["meta"]
    slots = m.slot_mapping.clone()
    slots[1] = -1  # a padding row (the engine pads a CUDA-graph batch this way)
    before_k = case["k_cache"].clone()
    tk.store_kvcache(case["k"], case["v"], case["k_cache"], case["v_cache"], slots)
    flat = case["k_cache"].view(-1, 2, 64)
    assert torch.equal(flat[slots[0]], case["k"][0]) and torch.equal(flat[slots[2]], case["k"][2])
    changed = (case["k_cache"] != before_k).flatten(1).any(1).nonzero().flatten().tolist()
    written = sorted({int(s) // 16 for s in (slots[0], slots[2])})
    assert changed == written, "only the blocks of the two stored rows may change"


def test_backend_is_registered():
    assert get_backend("triton") is tk
