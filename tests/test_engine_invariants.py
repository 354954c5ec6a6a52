"""The real engine (scheduler, paged KV cache, model, sampler) under random traffic, on a tiny random model.

Hypothesis draws an engine configuration and a sequence of add / step / abort operations. After every
operation the block bookkeeping must hold:
- reference counts are never negative, and each equals the number of block tables holding the block;
- a block in two tables is a shared prefix: full, at the same logical index in both, and the two
  requests agree on every token up to the end of that block;
- a free block is held by nobody; a waiting request holds no blocks.
When the traffic is drained: no block is held (no leaks), every request ended FINISHED or CANCELLED,
and every greedy request that finished produced, token by token, an argmax of the dense model's logits
over its own context (the oracle: `LlamaForCausalLM.logits`, one plain prefill, no paging).

Plus the load test: 200 requests through a cache that holds about 10 of them at a time.
"""

from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kv_invariants import check_cache

from labkit.engine import EngineConfig, LLMEngine
from labkit.loader import random_model
from labkit.measure import sequence_logits
from labkit.model import ModelConfig
from labkit.sampler import SamplingParams
from labkit.scheduler import RequestStatus

TINY = ModelConfig(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    eos_token_id=3,
)
TOL = 1e-4  # a sampled greedy token may lose to the dense argmax only by float noise


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A tiny model's ops are far too small to split across threads; with two threads on a busy 2-core
    machine each op can wait milliseconds for the other thread. One thread is faster and steadier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    return random_model(TINY, seed=1)


def check_blocks(engine: LLMEngine) -> None:
    """The bookkeeping invariants, checked from the outside (not with the cache's own check)."""
    kv = engine.kv_cache
    refs = kv.allocator.ref_counts
    assert all(r >= 0 for r in refs), f"negative reference count: {refs}"
    holders = Counter(b for table in kv.block_tables.values() for b in table)
    assert all(refs[b] == holders[b] for b in range(kv.num_blocks)), "ref count != number of holders"
    assert kv.num_free_blocks == sum(r == 0 for r in refs), "free blocks != blocks held by nobody"
    requests = {rid: s.request for rid, s in engine._states.items()}
    where: dict[int, list[tuple[str, int]]] = {}
    for rid, table in kv.block_tables.items():
        assert rid in requests, f"finished request {rid!r} still holds blocks {table}"
        assert len(set(table)) == len(table), f"{rid!r} holds a block twice"
        for i, b in enumerate(table):
            where.setdefault(b, []).append((rid, i))
    bs = kv.block_size
    for b, users in where.items():
        if len(users) < 2:
            continue
        (rid0, i0) = users[0]
        end = (i0 + 1) * bs
        for rid, i in users:
            assert i == i0, f"block {b} is logical block {i0} of {rid0!r} but {i} of {rid!r}"
            r = requests[rid]
            assert r.num_tokens >= end, f"shared block {b} is not full"
            assert r.all_token_ids[:end] == requests[rid0].all_token_ids[:end], (
                f"block {b} shared by different prefixes"
            )
    for rid, r in requests.items():
        if r.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED):
            assert rid not in kv.block_tables, f"waiting request {rid!r} holds blocks"


def check_greedy(model, prompt: list[int], output: list[int]) -> None:
    """Each output token is (up to float noise) the dense argmax over the context before it."""
    if not output:
        return
    seq = prompt + output
    logits = sequence_logits(model, seq[:-1])[len(prompt) - 1 :]  # (len(output), vocab): the row that chose each token
    chosen = logits.gather(1, torch.tensor(output)[:, None]).squeeze(1)
    gap = logits.max(dim=1).values - chosen
    assert bool((gap <= TOL).all()), (
        f"token {int(gap.argmax())} is not the argmax (gap {float(gap.max()):.3g})"
    )


# A prompt: one of two bases (so requests share prefixes), cut at some length, plus a random tail.
BASES = [[5 + (7 * i + j) % 100 for i in range(40)] for j in range(2)]
prompts = st.builds(
    lambda b, k, tail: BASES[b][:k] + tail,
    st.integers(0, 1),
    st.integers(0, 40),
    st.lists(st.integers(4, 127), min_size=0, max_size=6),
).filter(bool)
add_op = st.tuples(
    st.just("add"), prompts, st.integers(1, 16), st.sampled_from([0.0, 0.0, 0.8]), st.booleans()
)
step_op = st.tuples(st.just("step"), st.integers(1, 6))
abort_op = st.tuples(st.just("abort"), st.integers(0, 50))
ops = st.lists(st.one_of(add_op, add_op, step_op, step_op, abort_op), min_size=8, max_size=40)
configs = st.fixed_dictionaries(
    {
        "block_size": st.sampled_from([2, 4, 8]),
        "capacity": st.integers(40, 120),  # tokens the cache holds; a request needs up to 61
        "max_num_seqs": st.integers(1, 6),
        "max_num_batched_tokens": st.integers(4, 48),
        "enable_prefix_caching": st.booleans(),
        "enable_chunked_prefill": st.booleans(),
    }
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs, ops=ops)
def test_random_traffic_keeps_the_cache_consistent(tiny, config, ops):
    config = dict(config)
    config["num_gpu_blocks"] = config.pop("capacity") // config["block_size"]
    if not config["enable_chunked_prefill"]:
        config["max_num_batched_tokens"] = 64  # a whole prompt must fit one step
    engine = LLMEngine(tiny, None, EngineConfig(max_model_len=64, **config))
    requests, added, rejected = {}, [], 0
    for op in ops:
        if op[0] == "add":
            _, prompt, max_tokens, temperature, seeded = op
            params = SamplingParams(
                temperature=temperature, max_tokens=max_tokens, seed=7 if seeded else None
            )
            try:
                rid = engine.add_request(prompt, params)
            except ValueError:  # more blocks than the whole cache: refused, nothing changes
                rejected += 1
                continue
            requests[rid] = engine._states[rid].request
            added.append(rid)
        elif op[0] == "step":
            for _ in range(op[1]):
                engine.step()
                check_blocks(engine)
        elif added:
            rid = added[op[1] % len(added)]
            if rid in engine._states:
                engine.abort_request(rid)
            else:
                with pytest.raises(KeyError, match=repr(rid)):
                    engine.abort_request(rid)
        check_blocks(engine)
    for _ in range(5000):
        if not engine.has_unfinished_requests():
            break
        engine.step()
        check_blocks(engine)
    assert not engine.has_unfinished_requests() and not engine.scheduler.has_unfinished_requests()
    kv = engine.kv_cache
    assert kv.num_free_blocks == kv.num_blocks and not kv.block_tables, "blocks leaked"
    assert all(r == 0 for r in kv.allocator.ref_counts)
    check_cache(kv)
    for rid, r in requests.items():
        assert r.status in (RequestStatus.FINISHED, RequestStatus.CANCELLED), (rid, r.status)
        if r.status == RequestStatus.FINISHED:
            assert 1 <= r.num_output_tokens <= r.sampling_params.max_tokens
            if r.sampling_params.temperature == 0:
                check_greedy(tiny, r.prompt_token_ids, r.output_token_ids)
    steps = engine.timeline
    assert all(s.num_blocks_used <= s.num_blocks_total for s in steps)
    assert all(s.num_prefill_tokens + s.num_decode_tokens <= config["max_num_batched_tokens"] for s in steps)


def test_200_requests_through_a_cache_that_holds_10_at_a_time(tiny):
    """Each request needs at most 9 blocks of 4 tokens (<= 20 prompt + 16 output tokens); the cache has
    90. Admission reserves only the prompt's blocks, so more than 10 start, grow, and get preempted."""
    g = torch.Generator().manual_seed(0)
    cfg = EngineConfig(
        block_size=4, num_gpu_blocks=90, max_num_seqs=32, max_num_batched_tokens=128, max_model_len=64
    )
    engine = LLMEngine(tiny, None, cfg)
    prompts = [
        torch.randint(4, 128, (int(n),), generator=g).tolist()
        for n in torch.randint(8, 21, (200,), generator=g)
    ]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    outs = engine.generate(prompts, params, use_tqdm=False)
    assert len(outs) == 200 and all(o.finished and len(o.token_ids) == 16 for o in outs)
    preemptions = sum(o.metrics.num_preemptions for o in outs)
    assert preemptions > 0 and preemptions == sum(s.num_preempted for s in engine.timeline)
    assert max(s.num_blocks_used for s in engine.timeline) <= 90
    assert engine.kv_cache.num_free_blocks == 90
    for o in outs[::20]:  # spot-check correctness after all that preempting
        check_greedy(tiny, o.prompt_token_ids, o.token_ids)
