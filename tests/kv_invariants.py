"""The paged KV cache's bookkeeping invariants, asserted from the outside (tests call these after steps)."""

from collections import Counter

from labkit.kv_cache import BlockAllocator, PagedKVCache


def check_allocator(a: BlockAllocator) -> None:
    """Ref counts, free queue and prefix-cache table agree."""
    assert len(a.ref_counts) == a.num_blocks
    assert all(r >= 0 for r in a.ref_counts), "negative reference count"
    free = set(a.free_queue)
    assert len(free) == len(a.free_queue), "free queue holds a block twice"
    assert free == {b for b, r in enumerate(a.ref_counts) if r == 0}, "free queue != blocks with ref 0"
    for block_hash, block_id in a.cached_blocks.items():
        assert a.block_hashes[block_id] == block_hash and a.block_keys[block_id] is not None
    assert sum(h is not None for h in a.block_hashes) == len(a.cached_blocks)


def check_cache(cache: PagedKVCache) -> None:
    """Tables and allocator agree: every block free or held; ref count == number of tables holding it;
    a block in two tables is full in each (only full prefix blocks are shared)."""
    check_allocator(cache.allocator)
    holders = Counter(b for table in cache.block_tables.values() for b in table)
    for block_id in range(cache.num_blocks):
        assert cache.allocator.ref_counts[block_id] == holders[block_id], f"block {block_id} ref count"
    for request_id, table in cache.block_tables.items():
        num_tokens = cache._num_tokens[request_id]
        assert len(table) == cache.num_blocks_needed(num_tokens), f"{request_id!r}: table size"
        assert len(set(table)) == len(table), f"{request_id!r} holds a block twice"
        for block_id in table[num_tokens // cache.block_size :]:  # the partial last block, if any
            assert holders[block_id] == 1, f"partial block {block_id} is shared"
            assert cache.allocator.block_hashes[block_id] is None, f"partial block {block_id} cached"
