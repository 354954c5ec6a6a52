"""Where KV-cache memory goes under a stream of requests: contiguous reservation against paging.

An event-driven simulator of one GPU's KV cache, counted in token slots. Requests arrive (Poisson
arrivals, prompt and output lengths from named distributions), wait in a first-come-first-served
queue, are admitted when the allocation policy finds them memory, grow by one token per decode
step, and free their memory when they finish. Policies (the systems the vLLM paper, Kwon et al.
SOSP 2023, compares in its Fig. 2):

  reserve_max    a contiguous slab of max_model_len slots per request (Orca "Max", FasterTransformer)
  reserve_pow2   a contiguous slab of the next power of two >= the final length (Orca "Pow2")
  reserve_exact  a contiguous slab of exactly the final length, known in advance (Orca "Oracle")
  paged          blocks of block_size slots, one more whenever the last one fills (vLLM)

Contiguous slabs are placed first-fit in one address space, so holes appear between them
(external fragmentation). Every slot is, at every event, exactly one of:

  live       holds a token's K/V
  reserved   inside a request's allocation, will hold one of its future tokens
  internal   inside a request's allocation, will never be used (over-reservation, a block's tail)
  external   free, but in a hole too small for the request at the head of the queue (paged: the
             capacity left over after whole blocks)
  free       free and usable
  so live + reserved + internal + external + free == capacity_tokens.

Scheduling: arrivals join a FCFS queue; the head is admitted if it fits and nothing behind it
may jump ahead (no starvation, unlike the lab's §5.3 scheduler). A paged request that needs a
block when none is free preempts the most recently admitted request (its blocks are freed and it
re-queues at the front to be recomputed, as vLLM does); admission keeps `watermark` of the blocks
free while others run, as vLLM does, so that growth rarely has to preempt. A request's K/V holds
prompt_len tokens after its prefill step and one more per decode step; it finishes at
prompt_len + output_len.

Not modelled: time per step (every step is one decode iteration, whatever the batch), prefix
sharing, swapping to CPU, chunked prefill, or the watermark vLLM keeps free.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields

import numpy as np

__all__ = [
    "CHAT_OUTPUT_LEN", "CHAT_PROMPT_LEN", "POLICIES", "LengthDist", "SimConfig", "SimRequest",
    "SimResult", "SimSummary", "Snapshot", "WorkloadConfig", "blocks_needed", "compare_policies",
    "make_workload", "simulate", "slots_wasted", "summary_rows", "waste_vs_block_size",
]

POLICIES = ("reserve_max", "reserve_pow2", "reserve_exact", "paged")


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def blocks_needed(num_tokens: int, block_size: int) -> int:
    """Blocks that hold num_tokens: ceil(num_tokens / block_size). 50 tokens in blocks of 16: 4."""
    return -(-_check_int("num_tokens", num_tokens) // _check_int("block_size", block_size))


def slots_wasted(num_tokens: int, block_size: int) -> int:
    """Empty slots in the last block: 50 tokens in blocks of 16 leave 64 - 50 = 14. Always below
    block_size; over lengths spread evenly it averages (block_size - 1) / 2."""
    return blocks_needed(num_tokens, block_size) * block_size - num_tokens


# ----------------------------------------------------------------------------------------------
# Workloads


@dataclass(frozen=True)
class LengthDist:
    """A named distribution of token counts, clipped to [low, high].

    kind="uniform": integers uniform in [low, high].
    kind="lognormal": exp(N(log(median), sigma)) rounded, clipped to [low, high]: long-tailed, most
    requests short and a few very long, as in chat traffic. Its mean before clipping is
    median * exp(sigma**2 / 2).
    """

    kind: str
    low: int
    high: int
    median: float = 0.0  # lognormal only
    sigma: float = 0.0  # lognormal only

    def __post_init__(self) -> None:
        _check_int("low", self.low)
        _check_int("high", self.high)
        if self.high < self.low:
            raise ValueError(f"high={self.high} must be >= low={self.low}")
        if self.kind == "lognormal":
            if not (self.median > 0 and self.sigma > 0):
                raise ValueError(f"lognormal needs median > 0 and sigma > 0, got {self.median}, {self.sigma}")
        elif self.kind != "uniform":
            raise ValueError(f"kind must be 'uniform' or 'lognormal', got {self.kind!r}")

    @classmethod
    def uniform(cls, low: int, high: int) -> LengthDist:
        return cls("uniform", low, high)

    @classmethod
    def lognormal(cls, median: float, sigma: float, low: int = 1, high: int = 2048) -> LengthDist:
        return cls("lognormal", low, high, float(median), float(sigma))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n integer lengths, shape (n,)."""
        if self.kind == "uniform":
            return rng.integers(self.low, self.high + 1, size=n)
        x = np.rint(rng.lognormal(math.log(self.median), self.sigma, size=n))
        return np.clip(x, self.low, self.high).astype(np.int64)


# "Chat-like": lognormal with sigma 1, medians chosen so the unclipped means (median * e^0.5) are
# 165 and 338 tokens, close to the ShareGPT means the vLLM paper reports (161 in, 338 out, Fig. 11).
CHAT_PROMPT_LEN = LengthDist.lognormal(median=100, sigma=1.0, low=1, high=2048)
CHAT_OUTPUT_LEN = LengthDist.lognormal(median=205, sigma=1.0, low=1, high=2048)


@dataclass(frozen=True)
class SimRequest:
    request_id: int
    arrival_step: int
    prompt_len: int
    output_len: int

    @property
    def final_len(self) -> int:
        """Tokens whose K/V the request holds when it finishes."""
        return self.prompt_len + self.output_len


@dataclass(frozen=True)
class WorkloadConfig:
    num_requests: int = 500
    arrival_rate: float = 4.0  # mean arrivals per decode step (Poisson); math.inf: all at step 0
    prompt_len: LengthDist = CHAT_PROMPT_LEN
    output_len: LengthDist = CHAT_OUTPUT_LEN
    max_model_len: int = 2048  # prompt + output is clipped to this (the output is shortened)
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("num_requests", self.num_requests)
        _check_int("max_model_len", self.max_model_len, minimum=2)
        if not self.arrival_rate > 0:
            raise ValueError(f"arrival_rate must be > 0 requests per step, got {self.arrival_rate}")


def make_workload(config: WorkloadConfig = WorkloadConfig()) -> list[SimRequest]:
    """Requests with Poisson arrivals and lengths drawn from the config's distributions."""
    rng = np.random.default_rng(config.seed)
    n = config.num_requests
    if math.isinf(config.arrival_rate):
        arrivals = np.zeros(n, dtype=np.int64)
    else:
        arrivals = np.floor(np.cumsum(rng.exponential(1.0 / config.arrival_rate, size=n))).astype(np.int64)
    prompts = np.minimum(config.prompt_len.sample(rng, n), config.max_model_len - 1)
    outputs = np.clip(config.output_len.sample(rng, n), 1, config.max_model_len - prompts)
    rows = zip(arrivals, prompts, outputs)
    return [SimRequest(i, int(a), int(p), int(o)) for i, (a, p, o) in enumerate(rows)]


# ----------------------------------------------------------------------------------------------
# Configuration and results


@dataclass(frozen=True)
class SimConfig:
    policy: str  # one of POLICIES
    capacity_tokens: int  # KV cache size in token slots (kv_cache_budget // bytes per token)
    block_size: int = 16  # paged only; vLLM's default on GPUs
    max_model_len: int = 2048  # longest request; reserve_max reserves this much per request
    max_num_seqs: int | None = None  # cap on running requests (None: memory is the only limit)
    watermark: float = 0.01  # paged: admit only if this share of blocks stays free (vLLM's default)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        _check_int("capacity_tokens", self.capacity_tokens)
        _check_int("block_size", self.block_size)
        _check_int("max_model_len", self.max_model_len)
        if self.max_num_seqs is not None:
            _check_int("max_num_seqs", self.max_num_seqs)
        if not 0.0 <= self.watermark < 1.0:
            raise ValueError(f"watermark must be a fraction in [0, 1), got {self.watermark!r}")
        usable = self.capacity_tokens
        if self.policy == "paged":
            usable -= self.capacity_tokens % self.block_size
            need = math.ceil(self.max_model_len / self.block_size) * self.block_size
        else:
            need = self.max_model_len
        if need > usable:
            raise ValueError(
                f"capacity_tokens={self.capacity_tokens} cannot hold one request of max_model_len="
                f"{self.max_model_len} under {self.policy!r} (needs {need} slots): raise capacity_tokens "
                "or lower max_model_len")


@dataclass(frozen=True)
class Snapshot:
    """Slot counts at one instant; live + reserved + internal + external + free == capacity."""

    step: int
    event: str  # "step" (end of a step), or with record="event": arrive/admit/grow/finish/preempt
    live: int
    reserved: int
    internal: int
    external: int
    free: int
    num_running: int
    num_waiting: int
    num_finished: int
    num_preemptions: int
    max_request_waste: int  # max over running requests of allocated - live slots

    @property
    def total(self) -> int:
        return self.live + self.reserved + self.internal + self.external + self.free


@dataclass(frozen=True)
class SimSummary:
    """Time averages over the steps in `window` (fractions of capacity_tokens)."""

    policy: str
    capacity_tokens: int
    block_size: int | None  # None for contiguous policies
    window: str  # "pressured": steps where a request was waiting (memory-bound); "all": every step
    num_window_steps: int
    num_steps: int
    num_finished: int
    num_preemptions: int
    live_fraction: float
    reserved_fraction: float
    internal_fraction: float
    external_fraction: float
    free_fraction: float
    mean_running: float
    mean_waiting: float
    tokens_per_step: float  # generated tokens / steps over the whole run (a throughput proxy)

    @property
    def waste_fraction(self) -> float:
        """Allocated or fragmented but not holding tokens: reserved + internal + external."""
        return self.reserved_fraction + self.internal_fraction + self.external_fraction


@dataclass
class SimResult:
    config: SimConfig
    timeline: list[Snapshot]
    num_finished: int
    num_preemptions: int
    tokens_generated: int  # decode tokens appended; equals the sum of output_len over requests

    def as_arrays(self, event: str | None = "step") -> dict[str, np.ndarray]:
        """The timeline as numpy arrays, shape (num_snapshots,) each; event=None keeps all."""
        snaps = [s for s in self.timeline if event is None or s.event == event]
        names = [f.name for f in fields(Snapshot) if f.name != "event"]
        return {n: np.array([getattr(s, n) for s in snaps]) for n in names}

    def summary(self, window: str = "pressured") -> SimSummary:
        """Averages over end-of-step snapshots: window="pressured" keeps steps with a waiting
        request (memory is what limits the system), "all" keeps every step with work."""
        if window not in ("pressured", "all"):
            raise ValueError(f"window must be 'pressured' or 'all', got {window!r}")
        a = self.as_arrays("step")
        busy = (a["num_running"] + a["num_waiting"]) > 0
        keep = busy & (a["num_waiting"] > 0) if window == "pressured" else busy
        cap = self.config.capacity_tokens

        def mean(key: str, scale: float = 1.0) -> float:
            return float(a[key][keep].mean() / scale) if keep.any() else float("nan")

        return SimSummary(
            policy=self.config.policy, capacity_tokens=cap,
            block_size=self.config.block_size if self.config.policy == "paged" else None,
            window=window, num_window_steps=int(keep.sum()), num_steps=int(busy.sum()),
            num_finished=self.num_finished, num_preemptions=self.num_preemptions,
            live_fraction=mean("live", cap), reserved_fraction=mean("reserved", cap),
            internal_fraction=mean("internal", cap), external_fraction=mean("external", cap),
            free_fraction=mean("free", cap), mean_running=mean("num_running"),
            mean_waiting=mean("num_waiting"),
            tokens_per_step=self.tokens_generated / max(int(busy.sum()), 1))


# ----------------------------------------------------------------------------------------------
# Allocators


@dataclass(eq=False)
class _Seq:
    """A request's run-time state."""

    req: SimRequest
    kv_len: int = 0  # tokens whose K/V is in memory
    start: int = -1  # contiguous: first slot of the slab
    size: int = 0  # contiguous: slab length
    block_table: list[int] = field(default_factory=list)  # paged: physical block ids, in order
    admitted_step: int = -1
    is_running: bool = False

    @property
    def final_len(self) -> int:
        return self.req.final_len


class _Contiguous:
    """First-fit slabs in [0, capacity). Free holes: sorted starts with their sizes, coalesced."""

    def __init__(self, config: SimConfig):
        self.config = config
        self.hole_starts: list[int] = [0]
        self.hole_sizes: dict[int, int] = {0: config.capacity_tokens}

    def need(self, seq: _Seq) -> int:
        """Slab length this policy reserves for `seq`."""
        policy, final = self.config.policy, seq.final_len
        if policy == "reserve_max":
            return self.config.max_model_len
        if policy == "reserve_pow2":
            return min(1 << (final - 1).bit_length(), self.config.max_model_len)
        return final  # reserve_exact

    def admit(self, seq: _Seq, num_tokens: int, busy: bool) -> bool:
        size = self.need(seq)
        assert num_tokens <= size
        for start in self.hole_starts:  # first fit: lowest address that is big enough
            hole = self.hole_sizes[start]
            if hole >= size:
                self._take(start, hole, size)
                seq.start, seq.size = start, size
                return True
        return False

    def can_grow(self, seq: _Seq) -> bool:
        return True  # the slab already covers the final length

    def grow(self, seq: _Seq) -> None:
        assert seq.kv_len < seq.size

    def release(self, seq: _Seq) -> None:
        self._give(seq.start, seq.size)
        seq.start, seq.size = -1, 0

    def allocated(self, seq: _Seq) -> int:
        return seq.size

    def external(self, head: _Seq | None) -> int:
        if head is None:
            return 0
        need = self.need(head)
        return sum(s for s in self.hole_sizes.values() if s < need)

    def free_slots(self) -> int:
        return sum(self.hole_sizes.values())

    def check(self, running: list[_Seq]) -> None:
        """Slabs and holes tile [0, capacity) exactly: nothing overlaps, nothing is lost."""
        pieces = sorted([(s.start, s.size) for s in running] + list(self.hole_sizes.items()))
        pos = 0
        for start, size in pieces:
            assert start == pos and size > 0, f"gap or overlap at slot {pos}: {pieces}"
            pos += size
        assert pos == self.config.capacity_tokens

    def _take(self, start: int, hole: int, size: int) -> None:
        i = bisect.bisect_left(self.hole_starts, start)
        del self.hole_starts[i]
        del self.hole_sizes[start]
        if hole > size:
            self.hole_starts.insert(i, start + size)
            self.hole_sizes[start + size] = hole - size

    def _give(self, start: int, size: int) -> None:
        i = bisect.bisect_left(self.hole_starts, start)
        if i < len(self.hole_starts):  # merge with the hole just after
            nxt = self.hole_starts[i]
            assert start + size <= nxt, "freed slab overlaps a free hole"
            if start + size == nxt:
                size += self.hole_sizes.pop(nxt)
                del self.hole_starts[i]
        if i > 0:  # merge with the hole just before
            prev = self.hole_starts[i - 1]
            assert prev + self.hole_sizes[prev] <= start, "freed slab overlaps a free hole"
            if prev + self.hole_sizes[prev] == start:
                self.hole_sizes[prev] += size
                return
        self.hole_starts.insert(i, start)
        self.hole_sizes[start] = size


class _Paged:
    """A free list of fixed-size blocks; a request's block table grows one block at a time."""

    def __init__(self, config: SimConfig):
        self.block_size = config.block_size
        self.num_blocks = config.capacity_tokens // config.block_size
        self.leftover = config.capacity_tokens - self.num_blocks * self.block_size
        self.free_blocks: deque[int] = deque(range(self.num_blocks))
        self.watermark_blocks = int(config.watermark * self.num_blocks)

    def admit(self, seq: _Seq, num_tokens: int, busy: bool) -> bool:
        """Take the blocks for num_tokens, keeping the watermark free while others run (so the
        running requests can grow a while before anyone is preempted)."""
        n = math.ceil(num_tokens / self.block_size)
        if n + (self.watermark_blocks if busy else 0) > len(self.free_blocks):
            return False
        seq.block_table = [self.free_blocks.popleft() for _ in range(n)]
        return True

    def can_grow(self, seq: _Seq) -> bool:
        return seq.kv_len < self.allocated(seq) or len(self.free_blocks) > 0

    def grow(self, seq: _Seq) -> None:
        if seq.kv_len == self.allocated(seq):  # last block full: take a new one
            seq.block_table.append(self.free_blocks.popleft())

    def release(self, seq: _Seq) -> None:
        self.free_blocks.extend(seq.block_table)
        seq.block_table = []

    def allocated(self, seq: _Seq) -> int:
        return len(seq.block_table) * self.block_size

    def external(self, head: _Seq | None) -> int:
        return self.leftover  # paging leaves no holes; only the capacity past the last block

    def free_slots(self) -> int:
        return len(self.free_blocks) * self.block_size

    def check(self, running: list[_Seq]) -> None:
        """Every block is either free or in exactly one block table."""
        ids = list(self.free_blocks) + [b for s in running for b in s.block_table]
        assert sorted(ids) == list(range(self.num_blocks)), "a block is lost or used twice"
        for s in running:
            assert 0 <= self.allocated(s) - s.kv_len < self.block_size, "a request holds a spare block"


# ----------------------------------------------------------------------------------------------
# The simulator


class _Simulator:
    def __init__(self, workload: Iterable[SimRequest], config: SimConfig, record: str):
        if record not in ("step", "event"):
            raise ValueError(f"record must be 'step' or 'event', got {record!r}")
        self.config, self.record = config, record
        reqs = sorted(workload, key=lambda r: (r.arrival_step, r.request_id))
        for r in reqs:
            _check_request(r, config)
        self.pending: deque[_Seq] = deque(_Seq(r) for r in reqs)  # not yet arrived
        self.waiting: deque[_Seq] = deque()  # FCFS queue
        self.running: list[_Seq] = []  # in admission order
        self.alloc = _Paged(config) if config.policy == "paged" else _Contiguous(config)
        self.step = 0
        self.num_finished = self.num_preemptions = self.tokens_generated = 0
        self.timeline: list[Snapshot] = []

    def run(self) -> SimResult:
        while self.pending or self.waiting or self.running:
            if not self.running and not self.waiting:  # idle: jump to the next arrival
                self.step = max(self.step, self.pending[0].req.arrival_step)
            self._decode()
            self._finish()
            self._arrive()
            self._admit()
            self._snapshot("step")
            self.step += 1
        return SimResult(self.config, self.timeline, self.num_finished, self.num_preemptions,
                         self.tokens_generated)

    # -- events ------------------------------------------------------------------------------------
    def _decode(self) -> None:
        """Every request admitted before this step appends one token; paged may preempt for it."""
        for seq in list(self.running):  # oldest first; preemption takes from the newest
            if not seq.is_running or seq.admitted_step == self.step or seq.kv_len == seq.final_len:
                continue
            while not self.alloc.can_grow(seq):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.is_running:
                self.alloc.grow(seq)
                seq.kv_len += 1
                self.tokens_generated += 1
                self._event("grow")

    def _finish(self) -> None:
        done = [s for s in self.running if s.kv_len == s.final_len]
        for seq in done:
            self.running.remove(seq)
            seq.is_running = False
            self.alloc.release(seq)
            self.num_finished += 1
            self._event("finish")

    def _arrive(self) -> None:
        while self.pending and self.pending[0].req.arrival_step <= self.step:
            self.waiting.append(self.pending.popleft())
            self._event("arrive")

    def _admit(self) -> None:
        """FCFS without skipping: stop at the first request that does not fit."""
        cap = self.config.max_num_seqs
        while self.waiting and (cap is None or len(self.running) < cap):
            seq = self.waiting[0]
            num_tokens = max(seq.kv_len, seq.req.prompt_len)  # a preempted request recomputes all it had
            if not self.alloc.admit(seq, num_tokens, busy=bool(self.running)):
                break
            self.waiting.popleft()
            seq.kv_len, seq.admitted_step, seq.is_running = num_tokens, self.step, True
            self.running.append(seq)
            self._event("admit")

    def _preempt(self, seq: _Seq) -> None:
        """Free all of `seq`'s memory and put it at the head of the queue; its tokens are kept
        (to be recomputed as a longer prompt), its K/V is dropped."""
        self.running.remove(seq)
        seq.is_running = False
        self.alloc.release(seq)
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
        self._event("preempt")

    # -- accounting --------------------------------------------------------------------------------
    def _event(self, name: str) -> None:
        if self.record == "event":
            self.alloc.check(self.running)
            self._snapshot(name)

    def _snapshot(self, event: str) -> None:
        live = reserved = internal = worst = 0
        for seq in self.running:
            alloc = self.alloc.allocated(seq)
            future = min(alloc, seq.final_len) - seq.kv_len  # slots its own later tokens will fill
            live += seq.kv_len
            reserved += future
            internal += alloc - seq.kv_len - future
            worst = max(worst, alloc - seq.kv_len)
        head = self.waiting[0] if self.waiting else None
        external = self.alloc.external(head)
        free = self.alloc.free_slots() - (0 if self.config.policy == "paged" else external)
        snap = Snapshot(self.step, event, live, reserved, internal, external, free, len(self.running),
                        len(self.waiting), self.num_finished, self.num_preemptions, worst)
        assert snap.total == self.config.capacity_tokens, f"slots lost or double-counted: {snap}"
        self.timeline.append(snap)


def _check_request(r: SimRequest, config: SimConfig) -> None:
    _check_int("prompt_len", r.prompt_len)
    _check_int("output_len", r.output_len)
    _check_int("arrival_step", r.arrival_step, minimum=0)
    if r.final_len > config.max_model_len:
        raise ValueError(
            f"request {r.request_id}: prompt_len + output_len = {r.final_len} exceeds max_model_len="
            f"{config.max_model_len}: clip the workload (make_workload does) or raise max_model_len")


def simulate(workload: Iterable[SimRequest], config: SimConfig, *, record: str = "step") -> SimResult:
    """Run `workload` under `config` until every request has finished.

    record="step" keeps one snapshot at the end of each step; record="event" also keeps one after
    every arrival, admission, token appended, completion and preemption (for invariant checks).
    """
    return _Simulator(workload, config, record).run()


def compare_policies(workload: list[SimRequest], capacity_tokens: int, *, policies: Iterable[str] = POLICIES,
                     block_size: int = 16, max_model_len: int = 2048) -> dict[str, SimResult]:
    """The same workload under each policy: {policy: SimResult}."""
    return {p: simulate(workload, SimConfig(p, capacity_tokens, block_size, max_model_len)) for p in policies}


def waste_vs_block_size(workload: list[SimRequest], capacity_tokens: int, block_sizes: Iterable[int] = (
        1, 2, 4, 8, 16, 32, 64, 128, 256), *, max_model_len: int = 2048,
        window: str = "pressured") -> list[SimSummary]:
    """Paged summaries of `workload` for each block size (waste grows with the block size)."""
    return [simulate(workload, SimConfig("paged", capacity_tokens, b, max_model_len)).summary(window)
            for b in block_sizes]


def summary_rows(summaries: Iterable[SimSummary]) -> list[dict]:
    """Summaries as plain dicts (for a table in a notebook), with waste_fraction added."""
    return [{**asdict(s), "waste_fraction": s.waste_fraction} for s in summaries]
