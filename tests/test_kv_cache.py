"""BlockAllocator and PagedKVCache: hand-worked block tables, prefix caching, LRU eviction, tensors.

The randomized test writes each token's id into the real K tensor at its slot and reads the context
back through the block table, so a wrong slot, a wrongly shared block or a false prefix hit shows up
as a wrong token, not only as broken bookkeeping.
"""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from kv_invariants import check_allocator, check_cache

from labkit import kv_cache as kvc
from labkit.attention import AttentionMetadata
from labkit.kv_cache import BlockAllocator, PagedKVCache, hash_block_tokens


def slots(cache: PagedKVCache, request_id: str, start: int, end: int) -> list[int]:
    """Slots of positions [start, end) of a request, as the engine's flat batch computes them."""
    meta = AttentionMetadata.build([end], [end - start], [cache.block_table(request_id)], cache.block_size)
    return meta.slot_mapping.tolist()

def make_cache(num_blocks=16, block_size=4, **kw):
    return PagedKVCache(num_layers=2, num_kv_heads=2, head_dim=3, num_blocks=num_blocks,
                        block_size=block_size, **kw)


def admit(cache, rid, tokens, num_new=None):
    """Prefix hits + first allocation for a prompt, the way the scheduler does it."""
    blocks, num_cached = cache.get_computed_blocks(tokens)
    num_new = len(tokens) - num_cached if num_new is None else num_new
    assert cache.allocate_slots(rid, tokens, num_cached, num_new, blocks)
    return num_cached


def state(cache):
    """Everything allocate_slots may change, for all-or-nothing checks."""
    a = cache.allocator
    return (list(a.ref_counts), list(a.free_queue), dict(a.cached_blocks), list(a.block_hashes),
            {r: list(t) for r, t in cache.block_tables.items()}, dict(cache._num_tokens),
            {r: list(h) for r, h in cache._block_hashes.items()})


# ---- BlockAllocator ------------------------------------------------------------------------------


def test_allocator_allocate_touch_free_hand_worked():
    a = BlockAllocator(4)
    assert [a.allocate() for _ in range(3)] == [0, 1, 2]  # the free queue starts in block order
    assert a.num_free_blocks == 1 and a.ref_counts == [1, 1, 1, 0]
    a.touch(0)  # a second holder
    assert a.ref_counts[0] == 2
    a.free(0)
    assert a.ref_counts[0] == 1 and a.num_free_blocks == 1  # still held once: not free
    a.free(1)
    assert a.num_free_blocks == 2 and list(a.free_queue) == [1, 3]  # nothing cached in 1: front
    check_allocator(a)
    assert a.allocate() == 1
    assert a.allocate() == 3
    with pytest.raises(RuntimeError, match="all 4 blocks are in use"):
        a.allocate()
    a.free(3)
    with pytest.raises(AssertionError, match="freed more often"):
        a.free(3)  # a second free of a block held once
    with pytest.raises(ValueError, match="num_blocks=0"):
        BlockAllocator(0)


def test_allocator_cached_free_blocks_go_to_the_back_and_are_evicted_on_reuse():
    a = BlockAllocator(3)
    b0, b1 = a.allocate(), a.allocate()
    key = kvc.block_key(None, [1, 2])
    assert a.register(b0, hash_block_tokens(*key), key)
    a.free(b0)  # cached: back of the queue
    a.free(b1)  # empty: front of the queue
    assert list(a.free_queue) == [b1, 2, b0]
    assert a.lookup(hash_block_tokens(*key), key) == b0
    assert [a.allocate(), a.allocate()] == [b1, 2]
    assert a.lookup(hash_block_tokens(*key), key) == b0  # survives until its memory is needed
    assert a.allocate() == b0
    assert a.lookup(hash_block_tokens(*key), key) is None  # evicted
    check_allocator(a)


# ---- block tables and slots ----------------------------------------------------------------------


def test_block_tables_and_slot_mapping_hand_worked():
    cache = make_cache(num_blocks=16, block_size=4, enable_prefix_caching=False)
    a, b = list(range(100, 110)), list(range(200, 205))  # 10 and 5 tokens
    admit(cache, "A", a)
    admit(cache, "B", b)
    assert cache.block_table("A") == [0, 1, 2]  # ceil(10 / 4) = 3 blocks
    assert cache.block_table("B") == [3, 4]
    assert slots(cache, "A", 0, 10) == list(range(10))
    assert slots(cache, "B", 0, 5) == [12, 13, 14, 15, 16]  # block 4 starts at slot 16
    # A decodes: position 10 and 11 fit its block 2, position 12 needs a new block (5).
    for pos, slot in [(10, 10), (11, 11), (12, 20)]:
        a.append(999)
        assert cache.allocate_slots("A", a, pos, 1)
        assert slots(cache, "A", pos, pos + 1) == [slot]
    assert cache.block_table("A") == [0, 1, 2, 5]
    assert cache.num_free_blocks == 16 - 6
    check_cache(cache)
    cache.free("A")
    cache.free("B")
    cache.free("never-added")  # no-op
    assert cache.num_free_blocks == 16 and cache.block_tables == {}
    check_cache(cache)


def test_allocate_slots_is_all_or_nothing():
    cache = make_cache(num_blocks=4, block_size=4)
    admit(cache, "A", list(range(9)))  # 3 blocks, 1 left
    before = state(cache)
    assert not cache.allocate_slots("B", list(range(50, 59)), 0, 9)  # needs 3
    assert state(cache) == before
    # A cached prefix held by nobody counts as free, but taking it uses up a free block too.
    cache.free("A")
    admit(cache, "C", [7] * 8)  # 2 blocks; C's first block is cached
    blocks, n = cache.get_computed_blocks(list(range(9)))
    assert n == 8 and len(blocks) == 2  # A's two full blocks, both free and cached
    before = state(cache)
    # 2 free blocks, 2 revived hits + 1 new block needed = 3: refuse.
    assert not cache.allocate_slots("D", list(range(9)), 8, 1, blocks)
    assert state(cache) == before
    check_cache(cache)


def test_kv_tensors_layout_and_slots_address_the_same_memory():
    cache = make_cache(num_blocks=8, block_size=4)
    assert len(cache.kv_caches) == 2
    for k, v in cache.kv_caches:
        assert k.shape == v.shape == (8, 4, 2, 3) and k.dtype == torch.float32 and k.device.type == "cpu"
    tokens = list(range(11))
    admit(cache, "A", tokens)
    slot_ids = torch.tensor(slots(cache, "A", 0, 11))
    k_new = torch.randn(11, 2, 3)  # (T, H, D)
    cache.kv_caches[1][0].view(-1, 2, 3)[slot_ids] = k_new  # how attention stores by slot
    table = cache.block_table("A")
    for pos in range(11):  # how attention reads through the block table
        assert torch.equal(cache.kv_caches[1][0][table[pos // 4], pos % 4], k_new[pos])


def test_from_memory_budget_counts_bytes():
    per_block = PagedKVCache.bytes_per_block(num_layers=3, num_kv_heads=2, head_dim=8, block_size=16,
                                             dtype=torch.bfloat16)
    assert per_block == 2 * 3 * 16 * 2 * 8 * 2
    cache = PagedKVCache.from_memory_budget(10 * per_block + per_block - 1, num_layers=3, num_kv_heads=2,
                                            head_dim=8, block_size=16, dtype=torch.bfloat16)
    allocated = sum(t.numel() * t.element_size() for t in [t for pair in cache.kv_caches for t in pair])
    assert cache.num_blocks == 10 and allocated == 10 * per_block
    with pytest.raises(ValueError, match=f"memory_bytes=100 holds no block: one block takes {per_block}"):
        PagedKVCache.from_memory_budget(100, 3, 2, 8, block_size=16, dtype=torch.bfloat16)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_blocks=0), "num_blocks=0"),
    (dict(block_size=0), "block_size=0"),
    (dict(num_layers=0), "num_layers=0"),
])
def test_bad_cache_arguments(kwargs, message):
    args = dict(num_layers=2, num_kv_heads=2, head_dim=4, num_blocks=4, block_size=4) | kwargs
    with pytest.raises(ValueError, match=message):
        PagedKVCache(**args)


# ---- prefix caching ------------------------------------------------------------------------------


def test_prefix_cache_hit_counts():
    cache = make_cache(num_blocks=16, block_size=4)
    prompt = list(range(10))
    assert admit(cache, "A", prompt) == 0  # cold cache
    # Blocks 0 and 1 of A are full and known: cached at allocation. Block 2 (2 tokens) is not.
    assert cache.get_computed_blocks(prompt) == ([0, 1], 8)
    assert cache.get_computed_blocks(prompt[:8] + [77, 78]) == ([0, 1], 8)
    assert cache.get_computed_blocks(prompt[:5] + [77] * 5) == ([0], 4)
    assert cache.get_computed_blocks([77] + prompt[1:]) == ([], 0)  # chained: block 1 alone never hits
    assert cache.get_computed_blocks(prompt[:8]) == ([0], 4)  # never the whole sequence
    assert cache.get_computed_blocks(prompt[:9]) == ([0, 1], 8)
    assert admit(cache, "B", prompt[:8] + [50, 51, 52]) == 8
    assert cache.block_table("B")[:2] == [0, 1] and cache.allocator.ref_counts[:3] == [2, 2, 1]
    check_cache(cache)
    cache.free("A")
    cache.free("B")
    assert cache.num_free_blocks == 16
    assert cache.get_computed_blocks(prompt) == ([0, 1], 8)  # freed, still cached
    assert admit(cache, "C", prompt) == 8  # revived from the free queue
    assert cache.num_free_blocks == 16 - 3
    check_cache(cache)


def test_decode_tokens_fill_blocks_that_are_then_cached():
    cache = make_cache(num_blocks=8, block_size=4)
    tokens = [5, 6, 7]
    admit(cache, "A", tokens)
    for t in [8, 9]:  # position 3 completes block 0; position 4 opens block 1
        tokens.append(t)
        assert cache.allocate_slots("A", tokens, len(tokens) - 1, 1)
    assert cache.get_computed_blocks([5, 6, 7, 8, 1]) == ([cache.block_table("A")[0]], 4)


@pytest.mark.parametrize("touch_p", [False, True])
def test_lru_eviction_order(touch_p):
    cache = make_cache(num_blocks=4, block_size=2)
    p, q = [1, 2, 3], [4, 5, 6]  # each: one full (cached) block + one partial block

    def hits(tokens):
        return cache.get_computed_blocks(tokens)[1]

    admit(cache, "P", p)
    admit(cache, "Q", q)
    cache.free("P")  # P's cached block is freed first: the least recently used ...
    cache.free("Q")
    if touch_p:  # ... unless a prefix hit uses it again, which makes it the most recently used
        assert admit(cache, "P2", p) == 2
        cache.free("P2")
    assert hits(p) == hits(q) == 2
    admit(cache, "S", [5, 5, 5, 5, 5])  # 3 blocks: the 2 empty partial blocks, then one eviction
    assert (hits(p), hits(q)) == ((2, 0) if touch_p else (0, 2))
    check_cache(cache)


def test_within_a_request_deeper_blocks_are_evicted_first():
    cache = make_cache(num_blocks=4, block_size=2)
    prompt = [1, 2, 3, 4, 5, 6, 7]
    admit(cache, "A", prompt)  # 4 blocks; blocks 0, 1, 2 full and cached, block 3 partial
    cache.free("A")
    admit(cache, "B", [9, 9, 0])  # 2 blocks: A's partial block, then A's deepest cached block
    assert cache.block_table("B") == [3, 2]
    assert cache.get_computed_blocks(prompt) == ([0, 1], 4)


def test_hash_collisions_never_give_a_false_hit(monkeypatch):
    monkeypatch.setattr(kvc, "hash_block_tokens", lambda parent, tokens: 42)  # every block collides
    cache = make_cache(num_blocks=16, block_size=4)
    a = list(range(13))
    admit(cache, "A", a)
    assert cache.get_computed_blocks([9, 9, 9, 9, 1]) == ([], 0)  # same hash, different tokens: miss
    # Only A's first block could be registered under 42; the same prompt still finds exactly that.
    assert cache.get_computed_blocks(a) == ([cache.block_table("A")[0]], 4)
    b = [9, 9, 9, 9] + a[4:]
    admit(cache, "B", b)  # its blocks collide with A's: not cached, but B works normally
    cache.free("A")
    assert cache.get_computed_blocks(b) == ([], 0)
    check_cache(cache)


def test_hash_is_stable_across_processes():
    code = "from labkit.kv_cache import hash_block_tokens as h; print(h(h(None, [1, 2, 3]), [4, 5, 6]))"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(out.stdout) == hash_block_tokens(hash_block_tokens(None, [1, 2, 3]), [4, 5, 6])
    assert hash_block_tokens(None, [1, 2, 3]) != hash_block_tokens(0, [1, 2, 3])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cache_on_cuda_bf16():
    cache = PagedKVCache(2, 2, 64, num_blocks=32, block_size=16, dtype=torch.bfloat16, device="cuda")
    assert all(k.is_cuda and k.dtype == torch.bfloat16 for k in [t for pair in cache.kv_caches for t in pair])
    admit(cache, "A", list(range(40)))
    slot_ids = torch.tensor(slots(cache, "A", 0, 40), device="cuda")
    k_new = torch.randn(40, 2, 64, device="cuda", dtype=torch.bfloat16)
    cache.kv_caches[0][0].view(-1, 2, 64).index_copy_(0, slot_ids, k_new)
    table = torch.tensor(cache.block_table("A"), device="cuda")
    assert torch.equal(cache.kv_caches[0][0][table].flatten(0, 1)[:40], k_new)


# ---- randomized: bookkeeping and contents --------------------------------------------------------


class CacheMachine(RuleBasedStateMachine):
    """Requests start (with prefix hits), grow token by token or chunk by chunk, and end.

    Every computed token's id is written into layer 0's K tensor at its slot; after each rule every
    live request's context, read through its block table, must equal its token ids.
    """

    @initialize(num_blocks=st.integers(2, 24), block_size=st.sampled_from([1, 2, 3, 4]),
                prefix=st.booleans())
    def setup(self, num_blocks, block_size, prefix):
        self.cache = PagedKVCache(1, 1, 1, num_blocks, block_size, enable_prefix_caching=prefix)
        self.tokens: dict[str, list[int]] = {}  # request id -> tokens computed (in the cache)
        self.next_id = 0

    def write(self, rid, start):
        slot_ids = torch.tensor(slots(self.cache, rid, start, len(self.tokens[rid])), dtype=torch.long)
        values = torch.tensor(self.tokens[rid][start:], dtype=torch.float32)
        self.cache.kv_caches[0][0].view(-1)[slot_ids] = values

    @rule(prompt=st.lists(st.integers(0, 2), min_size=1, max_size=12))  # tiny alphabet: many hits
    def start(self, prompt):
        rid = f"r{self.next_id}"
        self.next_id += 1
        blocks, num_cached = self.cache.get_computed_blocks(prompt)
        assert num_cached < len(prompt) and num_cached % self.cache.block_size == 0
        if self.cache.allocate_slots(rid, prompt, num_cached, len(prompt) - num_cached, blocks):
            self.tokens[rid] = list(prompt)
            self.write(rid, num_cached)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), extra=st.lists(st.integers(0, 2), min_size=1, max_size=5))
    def grow(self, data, extra):
        rid = data.draw(st.sampled_from(sorted(self.tokens)))
        old = len(self.tokens[rid])
        if self.cache.allocate_slots(rid, self.tokens[rid] + extra, old, len(extra)):
            self.tokens[rid] += extra
            self.write(rid, old)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def end(self, data):
        rid = data.draw(st.sampled_from(sorted(self.tokens)))
        self.cache.free(rid)
        del self.tokens[rid]

    @invariant()
    def consistent(self):
        check_cache(self.cache)
        k = self.cache.kv_caches[0][0][..., 0, 0]  # (num_blocks, block_size)
        for rid, tokens in self.tokens.items():
            context = k[self.cache.block_table(rid)].flatten()[:len(tokens)]
            assert context.tolist() == tokens, f"{rid}: cache holds {context.tolist()}, expected {tokens}"

    def teardown(self):
        for rid in list(self.tokens):
            self.cache.free(rid)
        check_cache(self.cache)
        assert self.cache.num_free_blocks == self.cache.num_blocks  # no block leaked


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])
