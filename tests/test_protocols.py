"""labkit.protocols is complete and true: classes written from the protocols alone, subclassing nothing
of labkit's (as a student writes them), plug into LLMEngine, and greedy output stays identical.

The oracle is labkit's reference engine (PagedKVCache, Scheduler, Sampler) on the same tiny random
model and prompts. Each minimal part is plugged in alone and all three together. A part that uses only
what its protocol names can only work if the engine, too, asks for nothing else.
"""

from __future__ import annotations

import pytest
import torch

from labkit import protocols
from labkit.engine import EngineConfig, LLMEngine
from labkit.kv_cache import PagedKVCache
from labkit.loader import random_model
from labkit.model import ModelConfig
from labkit.sampler import Sampler, SamplingParams
from labkit.scheduler import FinishReason, RequestStatus, Scheduler

TINY = ModelConfig(
    vocab_size=512,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11] * 17, [1, 2, 3, 4], list(range(20, 45))]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


class ListKVCache:
    """A student's KV cache: a plain free list, one block table per request, no prefix caching."""

    def __init__(self, num_layers, num_kv_heads, head_dim, num_blocks, block_size, dtype, device, *_):
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.kv_caches = [
            (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(num_layers)
        ]
        self.block_size, self.num_blocks = block_size, num_blocks
        self.free_blocks = list(range(num_blocks))
        self.tables: dict[str, list[int]] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def get_computed_blocks(self, token_ids):
        return [], 0

    def allocate_slots(self, request_id, token_ids, num_computed_tokens, num_new_tokens, computed_blocks=()):
        table = self.tables.setdefault(request_id, [])
        need = -(-(num_computed_tokens + num_new_tokens) // self.block_size) - len(table)
        if need > len(self.free_blocks):
            return False
        table += [self.free_blocks.pop() for _ in range(need)]
        return True

    def free(self, request_id):
        self.free_blocks += self.tables.pop(request_id, [])

    def block_table(self, request_id):
        return list(self.tables[request_id])


class Step:
    """A student's ScheduledRequest."""

    def __init__(self, request, num_computed, num_new, block_table):
        self.request_id, self.num_computed_tokens, self.num_new_tokens = request.request_id, num_computed, num_new
        self.token_ids = request.all_token_ids[num_computed : num_computed + num_new]
        self.block_table, self.sample = block_table, num_computed + num_new == request.num_tokens


class Plan:
    """A student's SchedulerOutput."""

    def __init__(self, scheduled):
        self.scheduled, self.preempted_request_ids = scheduled, []


class WholePromptScheduler:
    """A student's scheduler: FCFS, a whole prompt per step, no preemption (admits only what fits)."""

    def __init__(self, config, kv_cache):
        self.config, self.kv_cache = config, kv_cache
        self.waiting, self.running = [], []

    def add_request(self, request):
        if not request.prompt_token_ids:
            raise ValueError("empty prompt")
        self.waiting.append(request)

    def finish_request(self, request_id, reason, stop_reason=None):
        request = next(r for r in self.waiting + self.running if r.request_id == request_id)
        (self.running if request in self.running else self.waiting).remove(request)
        self.kv_cache.free(request_id)
        request.status = RequestStatus.CANCELLED if reason == FinishReason.ABORT else RequestStatus.FINISHED
        request.finish_reason, request.stop_reason = FinishReason(reason), stop_reason
        return request

    def abort_request(self, request_id):
        return self.finish_request(request_id, FinishReason.ABORT)

    def has_unfinished_requests(self):
        return bool(self.waiting or self.running)

    def schedule(self):
        steps = []
        for r in self.running:  # one decode each; the cache is sized so that this always fits
            assert self.kv_cache.allocate_slots(r.request_id, r.all_token_ids, r.num_computed_tokens, 1)
            steps.append(Step(r, r.num_computed_tokens, 1, self.kv_cache.block_table(r.request_id)))
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            r = self.waiting[0]
            if not self.kv_cache.allocate_slots(r.request_id, r.all_token_ids, 0, r.num_tokens):
                break
            self.running.append(self.waiting.pop(0))
            r.status = RequestStatus.RUNNING
            steps.append(Step(r, 0, r.num_tokens, self.kv_cache.block_table(r.request_id)))
        return Plan(steps)

    def update_from_output(self, scheduler_output, sampled_token_ids):
        finished = []
        for s in scheduler_output.scheduled:
            r = next(r for r in self.running if r.request_id == s.request_id)
            r.num_computed_tokens += s.num_new_tokens
            r.append_output_token(sampled_token_ids[s.request_id])
            if r.num_output_tokens >= r.sampling_params.max_tokens:
                finished.append(self.finish_request(r.request_id, FinishReason.LENGTH))
        return finished


class ArgmaxSampler:
    """A student's sampler for greedy requests."""

    def sample(self, logits, params, generators=None):
        assert all(p.temperature == 0 for p in params)
        return logits.argmax(dim=-1)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return random_model(TINY, seed=3)


def run(tiny, **parts) -> list[list[int]]:
    config = EngineConfig(block_size=4, num_gpu_blocks=64, max_model_len=64)
    outs = LLMEngine(tiny, None, config, **parts).generate(PROMPTS, GREEDY, use_tqdm=False)
    return [o.token_ids for o in outs]


def test_minimal_parts_satisfy_their_protocols_without_subclassing():
    kv = ListKVCache(2, 2, 8, 16, 4, torch.float32, "cpu")
    parts = [
        (kv, protocols.KVCache, PagedKVCache),
        (WholePromptScheduler(None, kv), protocols.Scheduler, Scheduler),
        (ArgmaxSampler(), protocols.Sampler, Sampler),
    ]
    for part, protocol, reference in parts:
        assert isinstance(part, protocol) and not isinstance(part, reference)
        assert protocols.missing_members(part, protocol) == []


@pytest.mark.parametrize(
    "parts",
    [
        {"kv_cache": ListKVCache},
        {"scheduler": WholePromptScheduler},
        {"sampler": ArgmaxSampler()},
        {"kv_cache": ListKVCache, "scheduler": WholePromptScheduler, "sampler": ArgmaxSampler()},
    ],
    ids=["kv_cache", "scheduler", "sampler", "all three"],
)
def test_a_students_parts_give_the_reference_greedy_output(tiny, parts):
    reference = run(tiny)
    assert all(len(ids) == GREEDY.max_tokens for ids in reference)
    assert run(tiny, **parts) == reference
