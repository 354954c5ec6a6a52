"""Paged KV cache: a block allocator with reference counts and prefix caching, and the K/V tensors.

What it does
- `BlockAllocator` hands out fixed-size blocks from a free queue and counts references to each block
  (a block can be shared by several requests). It also remembers FULL blocks by a hash of their
  tokens chained over everything before them, so a request whose prompt starts like an earlier one
  reuses those blocks instead of recomputing them (automatic prefix caching, as in vLLM v1).
- `PagedKVCache` owns the real K and V tensors, per layer `[num_blocks, block_size, num_kv_heads,
  head_dim]` on any device and dtype, and one block table per request: logical block i of the
  request (token positions i*block_size ... (i+1)*block_size - 1) lives in physical block
  `block_table[i]`. Token position p is stored at slot `block_table[p // block_size] * block_size +
  p % block_size`, which indexes `k_cache.view(-1, num_kv_heads, head_dim)`; -1 means "no slot".

What it does not do
- It never reads or writes K/V values: the attention layer writes the new tokens' K/V at the slots
  that `AttentionMetadata.build` derives from the block tables, and reads the context through them.
- It does not decide who runs or who is preempted: the Scheduler does, through
  `get_computed_blocks`, `allocate_slots` and `free`. It knows requests only by their id.
- No swapping to CPU memory, no sliding windows, no copy-on-write: a block held by two requests is
  always full, so no one ever writes into a shared block (tests/kv_invariants.py asserts it).

Prefix caching
- The hash of block i is `hash_block_tokens(hash of block i-1, token ids of block i)`, so equal hashes
  mean equal prefixes, not just equal blocks. sha256 is used (stable across runs and processes).
- Collisions: the cache stores each block's key `(parent_hash, token_ids)` next to its hash and a
  lookup compares keys, so two different prefixes that happen to share a 64-bit hash are never
  mixed up: the second one is simply not cached.
- A block is registered when it is allocated for the step that fills it (all its token ids are then
  known). The engine must therefore run every step it schedules, and its attention must write a
  layer's new K/V for the whole batch before reading the cache in that layer (the usual order),
  because a request admitted in the same step may already read a block another request is filling.
- Only full blocks are shared, and never the whole sequence: at least its last token is computed
  again, so there are logits to sample the next token from.
- Freed cached blocks keep their contents and stay findable until their memory is needed: the free
  queue is in least-recently-used order, blocks with nothing reusable (never filled, or partial) are
  handed out first, then cached blocks, oldest first. Within a request the deepest blocks are freed
  first so that they are evicted before the shared beginnings of prompts.
"""

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import torch

# (parent block hash or None for the first block, the block's token ids): what a hash stands for
BlockKey = tuple[int | None, tuple[int, ...]]


def block_key(parent_hash: int | None, token_ids: Sequence[int]) -> BlockKey:
    """The identity of one full block: its tokens and (through the parent's hash) everything before."""
    return parent_hash, tuple(map(int, token_ids))


def hash_block_tokens(parent_hash: int | None, token_ids: Sequence[int]) -> int:
    """A stable 64-bit hash of one full block chained over its prefix: (int | None, [int]) -> int.

    sha256 of the key's text rather than Python's `hash`, so a value is the same in every process.
    """
    data = repr(block_key(parent_hash, token_ids)).encode()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")


def allocate_kv_caches(num_layers: int, num_kv_heads: int, head_dim: int, num_blocks: int, block_size: int,
                       dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer a zeroed (k_cache, v_cache), each (num_blocks, block_size, num_kv_heads, head_dim).

    The one place K/V tensors are allocated. Zeros, not empty: a kernel that reads a padded lane and
    multiplies it by 0 never meets NaN."""
    if num_blocks < 1 or block_size < 1:
        raise ValueError(f"num_blocks={num_blocks} and block_size={block_size} must both be >= 1")
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    return [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(num_layers)]


class BlockAllocator:
    """Free queue, reference counts and the prefix-cache table of `num_blocks` physical blocks.

    A block is either in use (`ref_counts[b] >= 1`, held by that many block tables) or free
    (`ref_counts[b] == 0`, in `free_queue`). A free block may still be cached (it has a hash and can
    be revived by `touch` on a prefix hit) until `allocate` hands it out and evicts it.
    """

    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"num_blocks={num_blocks} must be >= 1: give the cache at least one block")
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self.block_hashes: list[int | None] = [None] * num_blocks  # hash of a cached block, else None
        self.block_keys: list[BlockKey | None] = [None] * num_blocks  # what that hash stands for
        self.cached_blocks: dict[int, int] = {}  # block hash -> block id
        # Free blocks in eviction order: allocate() takes from the front. (An OrderedDict used as a set
        # so that a block can also leave from the middle, on a prefix hit, in O(1).)
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        """Blocks that `allocate` can hand out, cached-but-unused ones included."""
        return len(self.free_queue)

    def allocate(self) -> int:
        """Take the block at the front of the free queue (evicting its cached contents); ref count 1."""
        if not self.free_queue:
            raise RuntimeError(f"all {self.num_blocks} blocks are in use: free a request first")
        block_id, _ = self.free_queue.popitem(last=False)
        assert self.ref_counts[block_id] == 0, f"block {block_id} was in the free queue while in use"
        self._evict(block_id)
        self.ref_counts[block_id] = 1
        return block_id

    def touch(self, block_id: int) -> None:
        """One more holder for a block: share an in-use block, or revive a cached free one (prefix hit)."""
        if self.ref_counts[block_id] == 0:
            assert self.block_hashes[block_id] is not None, f"block {block_id} is free and holds nothing"
            del self.free_queue[block_id]
        self.ref_counts[block_id] += 1

    def free(self, block_id: int) -> None:
        """One holder fewer; at zero the block joins the free queue (cached ones at the back, as MRU)."""
        assert self.ref_counts[block_id] > 0, f"block {block_id} freed more often than it was taken"
        self.ref_counts[block_id] -= 1
        if self.ref_counts[block_id] == 0:
            self.free_queue[block_id] = None  # back of the queue: the most recently used
            if self.block_hashes[block_id] is None:  # nothing worth keeping: hand it out first
                self.free_queue.move_to_end(block_id, last=False)

    def lookup(self, block_hash: int, key: BlockKey) -> int | None:
        """The cached block for this hash, or None on a miss or a hash collision (different key)."""
        block_id = self.cached_blocks.get(block_hash)
        if block_id is None or self.block_keys[block_id] != key:
            return None
        return block_id

    def register(self, block_id: int, block_hash: int, key: BlockKey) -> bool:
        """Cache a full in-use block under its hash. False (and nothing changes) if the hash is taken:
        the same prefix is already cached in another block, or a different prefix collides with it."""
        assert self.ref_counts[block_id] > 0 and self.block_hashes[block_id] is None
        if block_hash in self.cached_blocks:
            return False
        self.cached_blocks[block_hash] = block_id
        self.block_hashes[block_id] = block_hash
        self.block_keys[block_id] = key
        return True

    def _evict(self, block_id: int) -> None:
        block_hash = self.block_hashes[block_id]
        if block_hash is not None:
            del self.cached_blocks[block_hash]
            self.block_hashes[block_id] = None
            self.block_keys[block_id] = None



class PagedKVCache:
    """K and V tensors for every layer, plus the block table of every request that holds blocks.

    The per-request bookkeeping is keyed by request id (a string), so this class does not depend on
    the scheduler. For each request it remembers its block table, how many token positions the
    table covers (`num_tokens`, computed or being computed this step) and the chained hashes of its
    full blocks so far.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        num_blocks: int,
        block_size: int = 16,  # tokens per block; vLLM's default on GPUs
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        enable_prefix_caching: bool = True,
    ):
        for name, value in [("num_layers", num_layers), ("num_kv_heads", num_kv_heads),
                            ("head_dim", head_dim), ("block_size", block_size)]:
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.allocator = BlockAllocator(num_blocks)
        self.kv_caches = allocate_kv_caches(num_layers, num_kv_heads, head_dim, num_blocks, block_size,
                                            dtype, device)
        self.block_tables: dict[str, list[int]] = {}  # request id -> physical block ids
        self._num_tokens: dict[str, int] = {}  # request id -> token positions its table covers
        self._block_hashes: dict[str, list[int]] = {}  # request id -> hashes of its full blocks so far

    # ---- sizes -------------------------------------------------------------------------------------

    @staticmethod
    def bytes_per_block(num_layers: int, num_kv_heads: int, head_dim: int, block_size: int,
                        dtype: torch.dtype) -> int:
        """Bytes one block takes over all layers, K and V: 2 * L * B * H * D * itemsize."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * block_size * num_kv_heads * head_dim * itemsize

    @classmethod
    def blocks_in_budget(cls, memory_bytes: int, num_layers: int, num_kv_heads: int, head_dim: int,
                         block_size: int = 16, dtype: torch.dtype = torch.float32) -> int:
        """How many blocks fit in `memory_bytes` (K and V of all layers together): the one KV sizing rule."""
        per_block = cls.bytes_per_block(num_layers, num_kv_heads, head_dim, block_size, dtype)
        if memory_bytes < per_block:
            raise ValueError(f"memory_bytes={memory_bytes} holds no block: one block takes {per_block} "
                             f"bytes; give more memory, set num_gpu_blocks, or use a smaller block_size "
                             f"or dtype")
        return memory_bytes // per_block

    @classmethod
    def from_memory_budget(cls, memory_bytes: int, num_layers: int, num_kv_heads: int, head_dim: int,
                           block_size: int = 16, dtype: torch.dtype = torch.float32,
                           device: str | torch.device = "cpu",
                           enable_prefix_caching: bool = True) -> "PagedKVCache":
        """As many blocks as fit in `memory_bytes` (K and V of all layers together)."""
        num_blocks = cls.blocks_in_budget(memory_bytes, num_layers, num_kv_heads, head_dim, block_size, dtype)
        return cls(num_layers, num_kv_heads, head_dim, num_blocks, block_size, dtype, device,
                   enable_prefix_caching)

    @property
    def num_blocks(self) -> int:
        return self.allocator.num_blocks

    @property
    def num_free_blocks(self) -> int:
        """Blocks available to new allocations (cached blocks nobody holds count as free)."""
        return self.allocator.num_free_blocks

    def num_blocks_needed(self, num_tokens: int) -> int:
        """Blocks that hold `num_tokens` token positions: ceil(num_tokens / block_size)."""
        return -(-num_tokens // self.block_size)

    # ---- per request ------------------------------------------------------------------------------

    def get_computed_blocks(self, token_ids: Sequence[int]) -> tuple[list[int], int]:
        """Prefix-cache hits for a request about to start: (cached block ids, number of tokens they hold).

        Only full blocks, walked from the first until the first miss, and at most len(token_ids) - 1
        tokens: the last token is always computed so that there are logits to sample from.
        Nothing changes here; pass the blocks to `allocate_slots` to take them.
        """
        if not self.enable_prefix_caching:
            return [], 0
        blocks: list[int] = []
        parent_hash = None
        for i in range((len(token_ids) - 1) // self.block_size):
            key = block_key(parent_hash, token_ids[i * self.block_size:(i + 1) * self.block_size])
            block_hash = hash_block_tokens(*key)
            block_id = self.allocator.lookup(block_hash, key)
            if block_id is None:
                break
            blocks.append(block_id)
            parent_hash = block_hash
        return blocks, len(blocks) * self.block_size

    def allocate_slots(self, request_id: str, token_ids: Sequence[int], num_computed_tokens: int,
                       num_new_tokens: int, computed_blocks: Sequence[int] = ()) -> bool:
        """Grow the request's block table to cover positions [0, num_computed_tokens + num_new_tokens).

        `token_ids` are all the request's known tokens (prompt + outputs so far). `computed_blocks`
        (from `get_computed_blocks`, only for a request that holds no blocks yet) are taken first, by
        reference. Blocks that become full with this step's tokens are registered in the prefix
        cache. All or nothing: returns False and changes nothing when too few blocks are free
        (cached blocks nobody holds count as free).
        """
        table = self.block_tables.get(request_id, [])
        num_tokens = num_computed_tokens + num_new_tokens
        if computed_blocks:  # prefix hits come only with a request's first allocation
            assert not table and num_computed_tokens == len(computed_blocks) * self.block_size
        assert num_tokens <= len(token_ids), f"{num_tokens} positions but only {len(token_ids)} tokens known"
        assert num_tokens >= self._num_tokens.get(request_id, 0), "a block table never shrinks"
        num_new_blocks = self.num_blocks_needed(num_tokens) - len(table) - len(computed_blocks)
        num_revived = sum(self.allocator.ref_counts[b] == 0 for b in computed_blocks)  # leave the free queue
        if num_new_blocks + num_revived > self.num_free_blocks:
            return False
        if request_id not in self.block_tables:
            self.block_tables[request_id] = table
            self._block_hashes[request_id] = [self.allocator.block_hashes[b] for b in computed_blocks]
        for block_id in computed_blocks:  # take the hits before allocating, so they cannot be evicted
            self.allocator.touch(block_id)
            table.append(block_id)
        if num_new_blocks > 0:  # (most decode steps need none)
            table.extend(self.allocator.allocate() for _ in range(num_new_blocks))
        self._num_tokens[request_id] = num_tokens
        if self.enable_prefix_caching and num_tokens // self.block_size > len(self._block_hashes[request_id]):
            self._cache_full_blocks(request_id, token_ids, num_tokens)
        return True

    def _cache_full_blocks(self, request_id: str, token_ids: Sequence[int], num_tokens: int) -> None:
        """Register the request's blocks that are full once its first `num_tokens` are computed."""
        table, hashes = self.block_tables[request_id], self._block_hashes[request_id]
        for i in range(len(hashes), num_tokens // self.block_size):
            key = block_key(hashes[-1] if hashes else None,
                            token_ids[i * self.block_size:(i + 1) * self.block_size])
            hashes.append(hash_block_tokens(*key))
            self.allocator.register(table[i], hashes[-1], key)  # False: cached elsewhere; keep ours private

    def free(self, request_id: str) -> None:
        """Release all the request's blocks (deepest first, so those are evicted first). Unknown id: no-op."""
        for block_id in reversed(self.block_tables.pop(request_id, [])):
            self.allocator.free(block_id)
        self._num_tokens.pop(request_id, None)
        self._block_hashes.pop(request_id, None)

    def block_table(self, request_id: str) -> list[int]:
        """A copy of the request's block table: logical block i -> physical block id."""
        return list(self.block_tables[request_id])
