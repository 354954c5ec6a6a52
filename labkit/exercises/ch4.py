"""Chapter 4 (paged KV cache): references, case generators and one-call checks for its tasks.

Each `check_*` takes the student's function or class and raises `grading.CheckFailed` with a message
the student can act on; the references are labkit's (`BlockAllocator`, `paged_attention`,
`fragmentation`) behind the small contracts the tasks state.
"""

from __future__ import annotations

import math
import random

import torch

from labkit import fragmentation
from labkit import grading as g
from labkit.attention import AttentionMetadata, paged_attention
from labkit.exercises.sequences import Program, check_program
from labkit.kv_cache import BlockAllocator

# ---- Task 1 and 6: blocks and internal waste -----------------------------------------------------------


def check_blocks_needed(blocks_needed, hidden: bool = False) -> None:
    cases = [g.case(50, 16), g.case(16, 16), g.case(17, 16), g.case(1, 1), g.case(1, 256)]
    if hidden:  # lengths where float division rounds wrongly
        cases += [g.case(2**53 + 1, 1), g.case(10**17 + 1, 10**17)]
    g.check_function(blocks_needed, fragmentation.blocks_needed, cases + [g.args(g.ints(1, 10**6), g.ints(1, 512))],
                     n=200 if hidden else 30,
                     hint="ceil(num_tokens / block_size) in integer arithmetic: a partial block counts")


def check_internal_waste(internal_waste, hidden: bool = False) -> None:
    cases = [g.case(50, 16), g.case(48, 16), g.case(49, 16), g.case(1, 16)]
    if hidden:
        cases += [g.case(n * b, b) for n, b in [(3, 7), (1000, 1), (1, 256)]]
        cases += [g.args(g.ints(1, 10**6), g.ints(1, 512))]
    g.check_function(internal_waste, fragmentation.slots_wasted, cases, n=60,
                     hint="slots of the blocks held minus the tokens; an exact multiple wastes nothing")


# ---- Task 2: the block allocator -------------------------------------------------------------------------


class ReferenceAllocator:
    """labkit's BlockAllocator (no prefix caching) with the task's contract for misuse: freeing or sharing
    a block nobody holds, or an id outside [0, num_blocks), raises ValueError."""

    def __init__(self, num_blocks: int):
        self._allocator = BlockAllocator(num_blocks)

    @property
    def num_free_blocks(self) -> int:
        return self._allocator.num_free_blocks

    @property
    def ref_counts(self) -> list[int]:
        return list(self._allocator.ref_counts)

    def allocate(self) -> int:
        return self._allocator.allocate()  # RuntimeError when no block is free

    def _check_held(self, block_id: int) -> None:
        if not (0 <= block_id < self._allocator.num_blocks and self._allocator.ref_counts[block_id] > 0):
            raise ValueError(f"block {block_id} is not held by anyone")

    def fork(self, block_id: int) -> None:
        self._check_held(block_id)
        self._allocator.touch(block_id)

    def free(self, block_id: int) -> None:
        self._check_held(block_id)
        self._allocator.free(block_id)


def allocator_programs(rng: random.Random, count: int, max_blocks: int, steps: int,
                       nasty: bool) -> list[Program]:
    """Random call sequences, drawn while a shadow reference runs them so that most calls are valid.
    nasty: also double frees, frees and forks of never-held ids, and ids outside the pool."""
    programs = []
    for _ in range(count):
        num_blocks = rng.randint(1, max_blocks)
        shadow, calls = ReferenceAllocator(num_blocks), []
        for _ in range(rng.randint(1, steps)):
            held = [b for b, r in enumerate(shadow.ref_counts) if r > 0]
            kind = rng.choices(["allocate", "free", "fork", "bad"], [5, 4, 2, 1 if nasty else 0])[0]
            if kind == "allocate" or not held:
                call = ("allocate", ())
            elif kind == "bad":
                bad_id = rng.choice([b for b in range(num_blocks) if b not in held] or [num_blocks])
                call = (rng.choice(["free", "fork"]), (rng.choice([bad_id, -1, num_blocks]),))
            else:
                call = (kind, (rng.choice(held),))
            calls.append(call)
            try:
                getattr(shadow, call[0])(*call[1])
            except (RuntimeError, ValueError):
                pass
        programs.append(Program("BlockAllocator", (num_blocks,), calls))
    return programs


def _allocator_state(allocator) -> tuple:
    return allocator.num_free_blocks, list(allocator.ref_counts)


def check_block_allocator(student_cls, hidden: bool = False) -> None:
    """Random allocate/free/fork sequences; results and (num_free_blocks, ref_counts) after each call."""
    def programs(rng):
        fixed = [Program("BlockAllocator", (2,), [("allocate", ()), ("allocate", ()), ("allocate", ()),
                                                  ("free", (1,)), ("allocate", ())]),
                 Program("BlockAllocator", (3,), [("allocate", ()), ("fork", (0,)), ("free", (0,)),
                                                  ("allocate", ()), ("free", (0,)), ("allocate", ())])]
        if hidden:
            fixed.append(Program("BlockAllocator", (2,), [("allocate", ()), ("free", (0,)), ("free", (0,))]))
            return fixed + allocator_programs(rng, 60, 24, 60, nasty=True)
        return fixed + allocator_programs(rng, 20, 6, 16, nasty=False)

    check_program(student_cls, ReferenceAllocator, programs, observe=_allocator_state, name="BlockAllocator",
                  forbid=[BlockAllocator],
                  hint="allocate takes the FRONT of the free queue; a block whose count drops to 0 goes back "
                       "to the FRONT; free/fork of a block nobody holds raises ValueError; allocate from an "
                       "empty pool raises RuntimeError")


# ---- Task 3: slots -------------------------------------------------------------------------------------------


def reference_slot_mapping(block_table: list[int], start: int, end: int, block_size: int) -> list[int]:
    table = torch.tensor(block_table, dtype=torch.int64)
    pos = torch.arange(start, end)
    return (table[pos // block_size] * block_size + pos % block_size).tolist()


def _slot_case(rng: random.Random) -> g.Call:
    block_size = rng.choice([1, 2, 3, 4, 8, 16, 32])
    num_blocks = rng.randint(1, 12)
    table = rng.sample(range(64), num_blocks)
    end = rng.randint(0, num_blocks * block_size)
    return g.case(table, rng.randint(0, end), end, block_size)


def check_slot_mapping(slot_mapping, hidden: bool = False) -> None:
    fixed = [g.case([7, 19, 4], 0, 48, 16), g.case([7, 19, 4], 15, 18, 16), g.case([3, 1], 2, 2, 4)]
    g.check_function(slot_mapping, reference_slot_mapping, fixed + [_slot_case], n=200 if hidden else 30,
                     hint="position p lives in block block_table[p // block_size] at offset p % block_size")


# ---- Task 4: growing a block table -----------------------------------------------------------------------


def reference_allocate_slots(allocator, block_table: list[int], num_tokens: int, block_size: int) -> bool:
    missing = -(-num_tokens // block_size) - len(block_table)
    if missing > allocator.num_free_blocks:
        return False
    block_table.extend(allocator.allocate() for _ in range(max(missing, 0)))
    return True


class SlotManager:
    """Block tables of several requests over one ReferenceAllocator, grown by an allocate_slots function."""

    def __init__(self, allocate_slots, num_blocks: int, block_size: int):
        self._allocate_slots, self.block_size = allocate_slots, block_size
        self.allocator = ReferenceAllocator(num_blocks)
        self.tables: dict[str, list[int]] = {}

    def grow(self, request_id: str, num_tokens: int) -> bool:
        table = self.tables.setdefault(request_id, [])
        return self._allocate_slots(self.allocator, table, num_tokens, self.block_size)

    def free(self, request_id: str) -> None:
        for block_id in self.tables.pop(request_id, []):
            self.allocator.free(block_id)


def slot_programs(rng: random.Random, count: int, steps: int) -> list[Program]:
    programs = []
    for _ in range(count):
        num_blocks, block_size = rng.randint(1, 12), rng.choice([1, 2, 4, 16])
        lengths: dict[str, int] = {}
        calls = []
        for _ in range(rng.randint(1, steps)):
            rid = rng.choice("ABCD")
            if rid in lengths and rng.random() < 0.2:
                calls.append(("free", (rid,)))
                del lengths[rid]
            else:
                lengths[rid] = lengths.get(rid, 0) + rng.choice([1, 1, 1, rng.randint(1, 3 * block_size)])
                calls.append(("grow", (rid, lengths[rid])))
        programs.append(Program("SlotManager", (num_blocks, block_size), calls))
    return programs


def _slot_state(manager: SlotManager) -> tuple:
    return manager.allocator.num_free_blocks, {r: len(t) for r, t in sorted(manager.tables.items())}


def check_allocate_slots(allocate_slots, hidden: bool = False) -> None:
    """Requests that grow token by token (and sometimes by a chunk) and finish, over a small pool."""
    def programs(rng):
        fixed = [Program("SlotManager", (3, 4), [("grow", ("A", 5)), ("grow", ("B", 9)), ("grow", ("A", 8)),
                                                 ("grow", ("A", 9))]),
                 Program("SlotManager", (2, 16), [("grow", ("A", 16)), ("grow", ("A", 17)), ("grow", ("A", 17))])]
        return fixed + slot_programs(rng, 60 if hidden else 15, 40 if hidden else 12)

    def student(num_blocks, block_size):
        return SlotManager(allocate_slots, num_blocks, block_size)

    def reference(num_blocks, block_size):
        return SlotManager(reference_allocate_slots, num_blocks, block_size)

    check_program(student, reference, programs, observe=_slot_state, name="allocate_slots",
                  hint="allocate only the blocks the new length needs beyond the table's; if too few are "
                       "free, return False and change nothing")


# ---- Task 5: decode attention through a block table ------------------------------------------------------


def reference_paged_decode(q, k_cache, v_cache, block_table, seq_len):
    """labkit's paged attention for one decode row whose K/V (position seq_len - 1) is already cached."""
    _, block_size, num_kv_heads, head_dim = k_cache.shape
    last = seq_len - 1
    slot = block_table[last // block_size] * block_size + last % block_size
    k_new = k_cache.reshape(-1, num_kv_heads, head_dim)[slot][None]  # (1, Hkv, D): stored again, unchanged
    v_new = v_cache.reshape(-1, num_kv_heads, head_dim)[slot][None]
    meta = AttentionMetadata.build([seq_len], [1], [list(block_table)], block_size)
    out = paged_attention(q[None], k_new, v_new, k_cache.clone(), v_cache.clone(), meta, head_dim**-0.5)
    return out[0]


def _attention_case(rng: random.Random) -> g.Call:
    block_size = rng.choice([1, 2, 3, 4, 8, 16])
    num_kv_heads, group, head_dim = rng.randint(1, 4), rng.randint(1, 4), 2 * rng.randint(1, 16)
    num_blocks = rng.randint(1, 10)
    seq_len = rng.randint(1, num_blocks * block_size)
    table = rng.sample(range(num_blocks), math.ceil(seq_len / block_size))
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    return g.case(torch.randn(num_kv_heads * group, head_dim, generator=gen), torch.randn(shape, generator=gen),
                  torch.randn(shape, generator=gen), table, seq_len)


def check_paged_decode_attention(paged_decode_attention, hidden: bool = False) -> None:
    g.check_function(paged_decode_attention, reference_paged_decode, [_attention_case], n=60 if hidden else 12,
                     compare=g.close(rtol=1e-4, atol=1e-5), forbid=[paged_attention],
                     hint="gather the blocks of block_table in order, keep the first seq_len positions, then "
                          "attend: query head h reads KV head h // (H // H_kv), scale 1/sqrt(D)")


# ---- the student's parts as the engine's KV cache ---------------------------------------------------------


class StudentKVCache:
    """A labkit.protocols.KVCache built from the student's allocator class, allocate_slots and
    slot_mapping (no prefix caching). Takes PagedKVCache's constructor arguments, so it can be passed
    to LLMEngine(kv_cache=functools.partial(StudentKVCache, allocator_cls, allocate_slots, slot_mapping))."""

    def __init__(self, allocator_cls, allocate_slots, slot_mapping, num_layers: int, num_kv_heads: int,
                 head_dim: int, num_blocks: int, block_size: int = 16, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", enable_prefix_caching: bool = False):
        from labkit.kv_cache import allocate_kv_caches

        self.block_size, self._num_blocks = block_size, num_blocks
        self.allocator = allocator_cls(num_blocks)
        self._allocate_slots, self._slot_mapping = allocate_slots, slot_mapping
        self._kv_caches = allocate_kv_caches(num_layers, num_kv_heads, head_dim, num_blocks, block_size, dtype, device)
        self.block_tables: dict[str, list[int]] = {}

    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.allocator.num_free_blocks

    @property
    def kv_caches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self._kv_caches

    def num_blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def get_computed_blocks(self, token_ids) -> tuple[list[int], int]:
        return [], 0

    def allocate_slots(self, request_id: str, token_ids, num_computed_tokens: int, num_new_tokens: int,
                       computed_blocks=()) -> bool:
        table = self.block_tables.setdefault(request_id, [])
        return self._allocate_slots(self.allocator, table, num_computed_tokens + num_new_tokens, self.block_size)

    def free(self, request_id: str) -> None:
        for block_id in reversed(self.block_tables.pop(request_id, [])):
            self.allocator.free(block_id)

    def block_table(self, request_id: str) -> list[int]:
        return list(self.block_tables[request_id])

    def slot_mapping(self, request_id: str, start: int, end: int) -> list[int]:
        return list(self._slot_mapping(self.block_tables[request_id], start, end, self.block_size))


__all__ = [
    "ReferenceAllocator",
    "StudentKVCache",
    "SlotManager",
    "check_allocate_slots",
    "check_block_allocator",
    "check_blocks_needed",
    "check_internal_waste",
    "check_paged_decode_attention",
    "check_slot_mapping",
    "reference_allocate_slots",
    "reference_paged_decode",
    "reference_slot_mapping",
]
