"""Chapter 4 (the paged KV cache): memory maps, a request stream driven by any allocator, and a
block-table explorer widget.

    plot_memory_maps([(0, 40, 90), (1, 12, 30)], capacity_tokens=256, max_model_len=96, block_size=16)
    stream = drive_stream(MyAllocator, my_allocate_slots, workload, num_blocks=64, block_size=16)
    plot_stream(stream, contiguous=fragmentation.simulate(workload, SimConfig("reserve_max", ...)))
    block_table_explorer(MyAllocator)   # ipywidgets: step through allocations, forks and frees

Every block id drawn is one an allocator handed out (labkit's PagedKVCache, or the allocator passed in);
this module only runs them and arranges the picture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from labkit.fragmentation import SimRequest, SimResult
from labkit.kv_cache import PagedKVCache

__all__ = ["BlockTables", "DEFAULT_SCRIPT", "block_table_explorer", "draw_block_tables", "drive_stream",
           "plot_block_size_tradeoff", "plot_memory_maps", "plot_stream", "replay"]

_COLORS = {"live": "#2b8a3e", "reserved": "#f08c00", "internal": "#e03131", "external": "#862e9c",
           "free": "#dee2e6"}
_REQUEST_COLORS = ["#1c7ed6", "#e8590c", "#2f9e44", "#ae3ec9", "#f59f00", "#0c8599", "#c2255c"]


# ------------------------------------------------------------------------------------------ memory maps
def _contiguous_map(requests: Sequence[tuple[int, int, int]], capacity: int, max_model_len: int) -> list[str]:
    """Slot kinds of a first-fit contiguous allocator reserving max_model_len per request.
    requests: (request id, tokens stored now, final length); a request of 0 tokens stored has finished
    (its slab was freed, leaving a hole)."""
    kinds = ["free"] * capacity
    pos = 0
    for _, now, final in requests:
        if pos + max_model_len > capacity:
            break
        if now > 0:
            kinds[pos:pos + now] = ["live"] * now
            kinds[pos + now:pos + final] = ["reserved"] * (final - now)
            kinds[pos + final:pos + max_model_len] = ["internal"] * (max_model_len - final)
        pos += max_model_len
    runs, i = [], 0  # free runs shorter than a slab are external fragmentation
    while i < capacity:
        if kinds[i] != "free":
            i += 1
            continue
        j = i
        while j < capacity and kinds[j] == "free":
            j += 1
        runs.append((i, j))
        i = j
    for a, b in runs:
        if b - a < max_model_len:
            kinds[a:b] = ["external"] * (b - a)
    return kinds


def _paged_map(requests: Sequence[tuple[int, int, int]], capacity: int, block_size: int) -> list[str]:
    kinds = ["free"] * capacity
    cache = PagedKVCache(1, 1, 1, num_blocks=capacity // block_size, block_size=block_size,
                         enable_prefix_caching=False)
    for rid, now, _ in requests:
        if now > 0:
            cache.allocate_slots(str(rid), [0] * now, 0, now)
    for rid, now, _ in requests:
        if now > 0:
            table = cache.block_table(str(rid))
            for p in range(now):
                kinds[table[p // block_size] * block_size + p % block_size] = "live"
            last = table[-1]
            for slot in range(last * block_size, (last + 1) * block_size):
                if kinds[slot] == "free":
                    kinds[slot] = "internal"
    return kinds


def plot_memory_maps(requests: Sequence[tuple[int, int, int]], capacity_tokens: int, max_model_len: int,
                     block_size: int) -> Figure:
    """One strip per allocator: every KV slot coloured live / reserved / internal / external / free."""
    maps = {f"contiguous, {max_model_len} slots reserved per request": _contiguous_map(requests, capacity_tokens,
                                                                                      max_model_len),
            f"paged, blocks of {block_size}": _paged_map(requests, capacity_tokens, block_size)}
    fig = Figure(figsize=(10, 2.6), layout="constrained")
    axes = fig.subplots(2, 1)
    for ax, (title, kinds) in zip(axes, maps.items()):
        colors = [_COLORS[k] for k in kinds]
        ax.bar(np.arange(len(kinds)), 1, width=1.0, color=colors, align="edge")
        counts = {k: kinds.count(k) for k in _COLORS}
        ax.set(xlim=(0, len(kinds)), yticks=[], title=f"{title}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if "paged" in title:
            for x in range(0, len(kinds) + 1, block_size):
                ax.axvline(x, color="white", lw=0.6)
    axes[1].set_xlabel("KV slot")
    handles = [Patch(color=c, label=k) for k, c in _COLORS.items()]
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    return fig


def plot_block_size_tradeoff(block_sizes: Sequence[int], mean_waste: Sequence[float],
                             mean_entries: Sequence[float]) -> Figure:
    """Mean internal waste (slots per request) and mean block-table entries per request against block size."""
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(block_sizes, mean_waste, marker="o", color="#e03131", label="internal waste (slots / request)")
    ax.plot(block_sizes, [(b - 1) / 2 for b in block_sizes], ls=":", color="#e03131", label="(block_size - 1) / 2")
    ax.set(xscale="log", yscale="log", xlabel="block size (tokens)", ylabel="slots wasted per request")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(block_sizes), [str(b) for b in block_sizes])
    twin = ax.twinx()
    twin.plot(block_sizes, mean_entries, marker="s", color="#1c7ed6", label="block-table entries / request")
    twin.set(yscale="log", ylabel="block-table entries per request")
    fig.legend(loc="outside lower center", ncol=3, fontsize=8)
    return fig


# -------------------------------------------------------------------------------- a stream of requests
@dataclass
class StreamResult:
    steps: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)  # requests holding blocks after each step
    waiting: list[int] = field(default_factory=list)  # requests queued after each step
    live_tokens: list[int] = field(default_factory=list)  # tokens stored
    used_blocks: list[int] = field(default_factory=list)
    num_blocks: int = 0
    block_size: int = 0
    finished: int = 0
    preemptions: int = 0

    def live_share_under_pressure(self) -> float:
        """Mean share of the KV slots holding a token over the steps that ended with a request waiting."""
        cap = self.num_blocks * self.block_size
        shares = [live / cap for live, w in zip(self.live_tokens, self.waiting) if w]
        return sum(shares) / len(shares) if shares else float("nan")


def drive_stream(allocator_cls: Callable[[int], Any], allocate_slots: Callable, workload: Sequence[SimRequest],
                 num_blocks: int, block_size: int, max_steps: int = 100_000) -> StreamResult:
    """Run a request stream on YOUR allocator: FCFS admission when the prompt's blocks are free, one token
    per running request per step (a new block whenever the last one fills), blocks freed at the end.
    A running request that needs a block when none is free preempts the newest running request (its
    blocks are freed; it re-queues at the front and starts again from its prompt), as vLLM does.
    allocate_slots(allocator, block_table, num_tokens, block_size) -> bool grows a table."""
    allocator = allocator_cls(num_blocks)
    pending = sorted(workload, key=lambda r: (r.arrival_step, r.request_id))
    waiting: list[SimRequest] = []
    running: dict[int, tuple[SimRequest, list[int], int]] = {}  # admission order: id -> (request, table, tokens)
    out = StreamResult(num_blocks=num_blocks, block_size=block_size)

    def release(rid: int) -> SimRequest:
        request, table, _ = running.pop(rid)
        for b in table:
            allocator.free(b)
        return request

    step = 0
    while (pending or waiting or running) and step < max_steps:
        while pending and pending[0].arrival_step <= step:
            waiting.append(pending.pop(0))
        for rid in list(running):  # decode: one more token each, oldest first
            if rid not in running:
                continue  # preempted by an older request in this step
            r, table, n = running[rid]
            if n >= r.final_len:
                release(rid)
                out.finished += 1
                continue
            while not allocate_slots(allocator, table, n + 1, block_size):
                victim = next(reversed(running))
                waiting.insert(0, release(victim))
                out.preemptions += 1
                if victim == rid:
                    break
            else:
                running[rid] = (r, table, n + 1)
        while waiting:  # prefill: FCFS, the head blocks the queue
            r, table = waiting[0], []
            if not allocate_slots(allocator, table, r.prompt_len, block_size):
                break
            running[r.request_id] = (waiting.pop(0), table, r.prompt_len)
        out.steps.append(step)
        out.running.append(len(running))
        out.waiting.append(len(waiting))
        out.live_tokens.append(sum(n for _, _, n in running.values()))
        out.used_blocks.append(num_blocks - allocator.num_free_blocks)
        step += 1
    return out


def plot_stream(paged: StreamResult, contiguous: SimResult | None = None) -> Figure:
    """Requests running per step, and the share of KV slots holding a token, for the paged stream
    (and a contiguous simulation of the same workload, if given)."""
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    cap = paged.num_blocks * paged.block_size
    ax1.plot(paged.steps, paged.running, label=f"paged (your allocator), {paged.finished} finished")
    ax2.plot(paged.steps, np.array(paged.live_tokens) / cap, label="paged: live share")
    if contiguous is not None:
        a = contiguous.as_arrays("step")
        ax1.plot(a["step"], a["num_running"], label=f"contiguous {contiguous.config.policy}")
        ax2.plot(a["step"], a["live"] / contiguous.config.capacity_tokens, label="contiguous: live share")
    ax1.set(ylabel="requests running")
    ax2.set(ylabel="share of KV slots live", xlabel="step", ylim=(0, 1.05))
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    return fig


# ------------------------------------------------------------------------------- block-table explorer
class BlockTables:
    """Block tables of a few requests over one allocator with Task 2's interface (allocate, fork, free,
    ref_counts, num_free_blocks): what the explorer steps through."""

    def __init__(self, allocator_cls: Callable[[int], Any], num_blocks: int, block_size: int):
        self.allocator, self.num_blocks, self.block_size = allocator_cls(num_blocks), num_blocks, block_size
        self.tables: dict[str, list[int]] = {}
        self.num_tokens: dict[str, int] = {}

    def grow(self, request_id: str, n: int) -> bool:
        """n more tokens; new blocks only when the last one is full; False (no change) if too few are free."""
        table, total = self.tables.setdefault(request_id, []), self.num_tokens.get(request_id, 0) + n
        missing = -(-total // self.block_size) - len(table)
        if missing > self.allocator.num_free_blocks:
            return False
        table.extend(self.allocator.allocate() for _ in range(missing))
        self.num_tokens[request_id] = total
        return True

    def fork(self, parent: str, child: str) -> bool:
        """The child shares the parent's full blocks (one more reference each) and gets a fresh block for
        a partial last block (its contents would be copied: both will write into it)."""
        table, n = self.tables[parent], self.num_tokens[parent]
        full = n // self.block_size
        if len(table) > full and self.allocator.num_free_blocks == 0:
            return False
        for b in table[:full]:
            self.allocator.fork(b)
        self.tables[child] = table[:full] + ([self.allocator.allocate()] if len(table) > full else [])
        self.num_tokens[child] = n
        return True

    def free(self, request_id: str) -> None:
        for b in reversed(self.tables.pop(request_id, [])):
            self.allocator.free(b)
        self.num_tokens.pop(request_id, None)


def draw_block_tables(state: BlockTables, ax: Any, title: str = "") -> None:
    """Physical blocks as a row of cells (reference count inside, coloured by their first holder); above,
    each request's logical blocks, labelled with the physical block each maps to and filled as far as
    they hold tokens."""
    n, B = state.num_blocks, state.block_size
    refs = list(state.allocator.ref_counts)
    ax.clear()
    rids = sorted(state.tables)
    owner: dict[int, int] = {}
    for i, rid in enumerate(rids):
        for b in state.tables[rid]:
            owner.setdefault(b, i)
    for b in range(n):
        color = _REQUEST_COLORS[owner[b] % len(_REQUEST_COLORS)] if b in owner else _COLORS["free"]
        ax.add_patch(Rectangle((b, 0), 0.95, 0.9, color=color))
        ax.text(b + 0.47, 0.45, f"{b}\nref {refs[b]}", ha="center", va="center", fontsize=7)
    for row, rid in enumerate(rids, start=1):
        table, tokens = state.tables[rid], state.num_tokens.get(rid, 0)
        color, y = _REQUEST_COLORS[(row - 1) % len(_REQUEST_COLORS)], 0.4 + 1.2 * row
        for j, b in enumerate(table):
            filled = min(max(tokens - j * B, 0), B)
            ax.add_patch(Rectangle((j, y), 0.95 * filled / B, 0.8, color=color, alpha=0.9))
            ax.add_patch(Rectangle((j, y), 0.95, 0.8, fill=False, ec=color))
            ax.text(j + 0.47, y + 0.4, f"L{j}→P{b}", ha="center", va="center", fontsize=7)
        ax.text(-0.3, y + 0.4, f"{rid} ({tokens} tok)", ha="right", va="center", fontsize=8)
    ax.text(-0.3, 0.45, "physical", ha="right", va="center", fontsize=8)
    ax.set(xlim=(-3, max(n, 8)), ylim=(0, 1.6 + 1.2 * max(len(rids), 1)), title=title)
    ax.axis("off")


# (description, operation) pairs: the explorer's default script on 12 blocks of 4 tokens
DEFAULT_SCRIPT: list[tuple[str, Callable[[BlockTables], Any]]] = [
    ("A: prefill 10 tokens (3 blocks)", lambda t: t.grow("A", 10)),
    ("B: prefill 5 tokens (2 blocks)", lambda t: t.grow("B", 5)),
    ("A: decode 2 tokens (fills its 3rd block)", lambda t: t.grow("A", 2)),
    ("C = fork of A (a parallel sample): full blocks shared, ref 2", lambda t: t.fork("A", "C")),
    ("C: decode 1 token (a new block of its own)", lambda t: t.grow("C", 1)),
    ("B: decode 4 tokens (a 3rd block)", lambda t: t.grow("B", 4)),
    ("A finishes: its blocks lose one holder; shared ones stay in use", lambda t: t.free("A")),
    ("D: prefill 9 tokens, reusing freed blocks", lambda t: t.grow("D", 9)),
    ("B finishes", lambda t: t.free("B")),
    ("C finishes: only D's blocks are in use", lambda t: t.free("C")),
]


def replay(allocator_cls: Callable[[int], Any], upto: int, script=DEFAULT_SCRIPT, num_blocks: int = 12,
           block_size: int = 4) -> BlockTables:
    """The block tables after the first `upto` operations of the script."""
    state = BlockTables(allocator_cls, num_blocks, block_size)
    for _, op in script[:upto]:
        op(state)
    return state


def block_table_explorer(allocator_cls: Callable[[int], Any] | None = None, script=DEFAULT_SCRIPT):
    """ipywidgets: a slider over the script's operations, run on `allocator_cls` (YOUR allocator, or
    labkit's by default); each position redraws the block tables and the reference counts."""
    import ipywidgets as w
    from IPython.display import display

    if allocator_cls is None:
        from labkit.exercises.ch4 import ReferenceAllocator as allocator_cls
    slider = w.IntSlider(0, min=0, max=len(script), description="operations", continuous_update=False)
    out, label = w.Output(), w.HTML()

    def show(*_):
        state = replay(allocator_cls, slider.value, script)
        done = script[slider.value - 1][0] if slider.value else "empty cache"
        label.value = f"<b>after step {slider.value}:</b> {done}; free blocks: {state.allocator.num_free_blocks}"
        fig = Figure(figsize=(9, 3.2), layout="constrained")
        draw_block_tables(state, fig.add_subplot())
        with out:
            out.clear_output(wait=True)
            display(fig)

    slider.observe(show, "value")
    show()
    box = w.VBox([slider, label, out])
    box.slider = slider
    return box
