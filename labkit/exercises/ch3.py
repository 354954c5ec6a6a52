"""Chapter 3 (the KV cache): the graded checks, one call per test cell.

    ch3.check_contiguous_cache(ContiguousKVCache)               # visible checks
    ch3.check_contiguous_cache(ContiguousKVCache, hidden=True)  # the grader's fresh random inputs

The decode-loop checks run on a tiny random Llama-family model (milliseconds per step), served
(labkit/grading/served.py): the loop reaches it only through the chapter's building blocks, and every
forward it asks for is run and recorded by the check (in the grading process, under the autograder),
which compares the new ids and the sequences run with the reference's. The cached loop is checked
with labkit's ContiguousKVCache in place of the student's, so a broken cache costs only its own task.
"""

from __future__ import annotations

import dataclasses
import random

import torch

from labkit import contiguous_kv_cache as ckv
from labkit import fragmentation, measure, memory
from labkit import grading as g
from labkit.attention import paged_attention
from labkit.exercises.common import int_result, random_shape, substituted
from labkit.grading import served
from labkit.grading.compare import short
from labkit.loader import random_model
from labkit.model import ModelConfig

# A tiny random Llama-family model: the checks of the decode loops run on it in milliseconds. Its LM head
# is its own: with the embedding tied, greedy decoding on small random weights repeats the last token
# whatever the seed, and a loop could then return the right ids without the model's logits.
TINY = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)


# ------------------------------------------------------------------------------------ Tasks 1 and 2
def check_token_forwards(fn, hidden: bool = False) -> None:
    hint = "without a cache step i runs i positions; with one, a single position"
    cases = ([g.case(3, False), g.case(3, True)] if not hidden else
             [g.args(g.ints(1, 100_000), g.choice([True, False]))])
    g.check_function(fn, memory.token_forwards, cases, n=40, compare=int_result, hint=hint)


def check_attention_dot_products(fn, hidden: bool = False) -> None:
    hint = "with a cache step i still compares its one query with all i keys; without, it redoes rows 1..i"
    cases = ([g.case(3, True), g.case(3, False)] if not hidden else
             [g.args(g.ints(1, 100_000), g.choice([True, False]))])
    g.check_function(fn, memory.attention_dot_products, cases, n=40, compare=int_result, hint=hint)


# ------------------------------------------------------------------------------------ Task 3
def decode_inputs(rng: random.Random, max_cached: int = 24) -> g.Call:
    """q (H, D), k_new and v_new (H_kv, D), caches (T, H_kv, D): random sizes, GQA groups, T >= 0."""
    kv_heads, group, d, t = rng.randint(1, 4), rng.randint(1, 4), 2 * rng.randint(1, 16), rng.randint(0, max_cached)
    r = lambda *shape: g.tensors(shape, low=-2.0, high=2.0)(rng)  # noqa: E731
    return g.Call((r(kv_heads * group, d), r(kv_heads, d), r(kv_heads, d), r(t, kv_heads, d), r(t, kv_heads, d)))


def _gqa(rng: random.Random) -> g.Call:  # 6 query heads sharing 2 KV heads, 5 cached tokens
    return g.Call(tuple(g.tensors(s)(rng) for s in [(6, 8), (2, 8), (2, 8), (5, 2, 8), (5, 2, 8)]))


def check_attend_one_step(fn, hidden: bool = False) -> None:
    hint = "append first (the token attends to itself); query head h uses KV head h // (H // H_kv); scale by sqrt(D)"
    check = dict(compare=g.close(rtol=1e-4, atol=1e-5), hint=hint, forbid=[paged_attention])
    if not hidden:
        return g.check_function(fn, measure.decode_attention, [_gqa, lambda rng: decode_inputs(rng, max_cached=0)],
                                n=3, **check)
    g.check_function(fn, measure.decode_attention, [decode_inputs], n=40, **check)


# ------------------------------------------------------------------------------------ Task 4
KV_DTYPES = ("fp32", "fp16", "bf16", "fp8", "int8")


def _kv_bytes(fn):
    def run(shape, kv_dtype, seq_lens):
        return fn(shape.num_hidden_layers, shape.num_key_value_heads, shape.head_dim,
                  int(memory.dtype_bytes(kv_dtype)), seq_lens)
    return run


def reference_kv_cache_bytes(shape, kv_dtype, seq_lens) -> int:
    return memory.kv_bytes_for_batch(memory.kv_cache_bytes_per_token(shape, kv_dtype), seq_lens)


def check_kv_cache_bytes(fn, hidden: bool = False) -> None:
    hint = "one key AND one value per layer per KV head: 2 x layers x kv_heads x head_dim x bytes, per token"
    check = dict(compare=int_result, hint=hint, name="kv_cache_bytes")
    lens = g.lists(g.ints(0, 131072), 0, 300)
    if not hidden:
        llama3 = memory.get_preset("llama-3-8b")
        return g.check_function(_kv_bytes(fn), reference_kv_cache_bytes,
                                [g.case(llama3, "fp16", [1]), g.case(llama3, "fp16", [2048] * 64),
                                 g.case(llama3, "fp8", [5, 0, 17]), g.case(llama3, "bf16", [])], **check)
    g.check_function(_kv_bytes(fn), reference_kv_cache_bytes, [g.args(random_shape, g.choice(KV_DTYPES), lens)],
                     n=40, **check)


# ------------------------------------------------------------------------------------ Task 5
def check_max_sequences(fn, hidden: bool = False) -> None:
    hint = ("budget = int(utilization x GPU memory) - weights; raise ValueError when it is <= 0 (a budget of 0 "
            "holds nothing); whole sequences, an int")
    check = dict(compare=int_result, hint=hint, forbid=[memory.max_num_seqs, memory.kv_cache_budget])
    if not hidden:
        h100, per_token = memory.get_gpu("H100-SXM"), memory.kv_cache_bytes_per_token("llama-3-8b")
        fixed = [g.case(h100.memory_bytes, memory.weight_bytes("llama-3-8b", "bf16"), per_token, 2048),
                 g.case(memory.get_gpu("RTX-4090").memory_bytes, memory.weight_bytes("llama-2-13b", "fp16"),
                        per_token, 2048),
                 g.case(1001, 0, 1, 1, 0.9),  # int(900.9) = 900 usable bytes
                 g.case(1000, 900, 1, 1, 0.9)]  # a budget of exactly 0: nothing fits
        return g.check_function(fn, memory.max_sequences, fixed, **check)
    g.check_function(fn, memory.max_sequences,
                     [g.args(g.ints(2**30, 2**38), g.ints(10**8, 2 * 10**11), g.ints(1, 2**21), g.ints(1, 131072),
                             g.choice([0.5, 0.8, 0.9, 0.95, 1.0])),
                      g.args(g.ints(10, 10**4), g.ints(0, 10**4), g.ints(1, 9), g.ints(1, 9), g.choice([0.9, 1.0]))],
                     n=60, **check)


# ------------------------------------------------------------------------------------ Task 6
def _cache_init(rng: random.Random) -> g.Call:
    return g.case(rng.randint(1, 3), rng.randint(1, 12), rng.randint(1, 3), 2 * rng.randint(1, 4))


def _append(rng: random.Random, cache: ckv.ContiguousKVCache):
    """The next append in a forward pass's order: layer 0 takes 1-3 new tokens, the others catch up."""
    layer = cache.lengths.index(min(cache.lengths))
    new = rng.randint(1, 3) if layer == 0 else cache.lengths[0] - cache.lengths[layer]
    _, _, heads, dim = cache.k.shape
    r = g.tensors((new, heads, dim), low=-2.0, high=2.0)
    return g.case(layer, r(rng), r(rng))


def _view(rng: random.Random, cache: ckv.ContiguousKVCache):
    return g.case(rng.randrange(len(cache.lengths)))


def _len(rng: random.Random, cache: ckv.ContiguousKVCache):  # asked between forward passes only
    return g.case() if len(set(cache.lengths)) == 1 else None


def _buffer_kept(cls):
    def run(num_layers, max_len, heads, dim, appends):  # how many storages each layer's views used
        cache = cls(num_layers, max_len, heads, dim)
        pointers: list[set] = [set() for _ in range(num_layers)]
        for tokens in appends:
            for layer in range(num_layers):
                cache.append(layer, torch.ones(tokens, heads, dim), torch.ones(tokens, heads, dim))
                pointers[layer].add(tuple(t.untyped_storage().data_ptr() for t in cache.view(layer)))
        return len(cache), [len(p) for p in pointers]
    return run


def check_contiguous_cache(cls, hidden: bool = False) -> None:
    hint = ("preallocate K and V (num_layers, max_len, H_kv, D) once; append writes at rows len .. len + T - 1 "
            "of its layer (no torch.cat); view returns the first len rows; raise ValueError past max_len")
    g.check_class(cls, ckv.ContiguousKVCache, {"append": (_append, 3.0), "view": _view, "__len__": _len},
                  init=_cache_init, n=12 if hidden else 4, steps=16, hint=hint, name="ContiguousKVCache")
    # Preallocated: a layer's views always lie in the same storage, however many appends.
    g.check_function(_buffer_kept(cls), _buffer_kept(ckv.ContiguousKVCache),
                     [g.case(2, 8, 2, 4, [3, 1, 1]), g.case(1, 5, 1, 2, [1, 1, 1, 1, 1])],
                     name="ContiguousKVCache (preallocated)", hint=hint)


# ------------------------------------------------------------------------------------ Tasks 7 and 8
@dataclasses.dataclass(frozen=True)
class LoopRun:
    """What a decode loop returned, and what it ran through the model (labkit/grading/served.py)."""

    new_ids: list[int]
    sequences: list[list[int]]  # the token ids of each sequence run: one per cache, or per last_token_logits call

    @property
    def token_forwards(self) -> int:
        return sum(len(s) for s in self.sequences)

    def __repr__(self) -> str:
        return (f"new ids {self.new_ids}; {self.token_forwards} token-forwards: {len(self.sequences)} sequence(s) "
                f"of {[len(s) for s in self.sequences]} tokens")


def run_served(generate, seed: int, prompt_ids, max_new_tokens: int) -> LoopRun:
    """generate(model, prompt_ids, max_new_tokens) on the tiny model `seed`, served: the loop reaches it only
    through measure.last_token_logits, lck.forward and lck.for_model, and every forward is run and
    recorded here (in the grading process when the autograder judges the check)."""
    model = served.ServedModel(random_model(TINY, seed=seed))
    new_ids = generate(model, list(prompt_ids), max_new_tokens)
    return LoopRun([int(t) for t in new_ids], [list(s) for s in model.sequences])


def same_loop(expected: LoopRun, received: LoopRun) -> str | None:
    """The same new ids from the same forwards: each sequence the loop ran, with its tokens."""
    if not isinstance(received, LoopRun):
        return f"expected a LoopRun, received {type(received).__name__}"
    diff = g.same(expected.new_ids, received.new_ids)
    if diff is not None:
        return f"new ids: {diff}"
    if received.token_forwards != expected.token_forwards or len(received.sequences) != len(expected.sequences):
        return (f"your loop ran {received.token_forwards} token positions through the model in "
                f"{len(received.sequences)} sequence(s), the reference {expected.token_forwards} in "
                f"{len(expected.sequences)}")
    for i, (e, r) in enumerate(zip(expected.sequences, received.sequences)):
        if e != r:
            return f"sequence {i + 1} your loop ran: expected the tokens {short(e, 80)}, it ran {short(r, 80)}"
    return None


def reference_generate_uncached(model, prompt_ids, max_new_tokens) -> list[int]:
    """Greedy decoding that runs the whole sequence so far at every step (a new sequence each time)."""
    ids = list(prompt_ids)
    for _ in range(max_new_tokens):
        ids.append(int(torch.argmax(measure.last_token_logits(model, ids))))
    return ids[len(prompt_ids):]


def reference_generate_cached(model, prompt_ids, max_new_tokens) -> list[int]:
    """Greedy decoding over labkit's ContiguousKVCache: the prompt once, then one token per step."""
    cache = ckv.for_model(ckv.ContiguousKVCache, model, len(prompt_ids) + max_new_tokens)
    logits, new_ids = ckv.forward(model, cache, prompt_ids), []
    for step in range(max_new_tokens):
        new_ids.append(int(torch.argmax(logits)))
        if step + 1 < max_new_tokens:
            logits = ckv.forward(model, cache, new_ids[-1:])
    return new_ids


_LOOP_CASES = [g.args(g.ints(0, 10**6), g.token_ids(TINY.vocab_size, 1, 12), g.ints(1, 12))]


def check_generate_uncached(fn, hidden: bool = False) -> None:
    hint = ("the case is (model seed, prompt ids, max_new_tokens); the result is the new ids and the sequences your "
            "loop ran through the model: step i runs the whole sequence so far (prompt + i new ids) from scratch")
    g.check_function(lambda *a: run_served(fn, *a), lambda *a: run_served(reference_generate_uncached, *a),
                     _LOOP_CASES, n=8 if hidden else 4, compare=same_loop, hint=hint, name="generate_uncached",
                     forbid=[measure.greedy_decode, reference_generate_uncached], time_limit=60)


def check_generate_cached(fn, hidden: bool = False) -> None:
    """generate_cached with labkit's ContiguousKVCache in place of the student's (Task 6)."""
    hint = ("the case is (model seed, prompt ids, max_new_tokens); the result is the new ids and the sequences your "
            "loop ran through the model: one sequence, the prompt once, then one position per new token except the "
            "last")
    with substituted(fn, ContiguousKVCache=ckv.ContiguousKVCache):
        g.check_function(lambda *a: run_served(fn, *a), lambda *a: run_served(reference_generate_cached, *a),
                         _LOOP_CASES, n=8 if hidden else 4, compare=same_loop, hint=hint, name="generate_cached",
                         forbid=[measure.greedy_decode, measure.last_token_logits, measure.SequenceKVCache,
                                 reference_generate_cached],
                         time_limit=60)


# ------------------------------------------------------------------------------------ Task 9
def _requests(rng: random.Random) -> g.Call:
    """(prompt_lens, output_lens, policy, max_model_len), every request within max_model_len."""
    max_len, n = rng.choice([64, 100, 512, 2048]), rng.randint(1, 12)
    prompts = [rng.randint(1, max_len - 1) for _ in range(n)]
    outputs = [rng.randint(1, max_len - p) for p in prompts]
    return g.Call((prompts, outputs, rng.choice(["reserve_max", "reserve_pow2", "reserve_exact"]), max_len))


def check_reservation_slots(fn, hidden: bool = False) -> None:
    hint = ("live = prompt tokens; reserved = future tokens; internal = region - final length; reserve_pow2's "
            "region is the smallest power of two >= the final length (64 for 64), capped at max_model_len")
    check = dict(compare=int_result, hint=hint, forbid=[fragmentation.simulate])
    if not hidden:
        cases = [g.case([5, 9], [20, 3], policy, 64) for policy in ("reserve_max", "reserve_pow2", "reserve_exact")]
        cases += [g.case([40], [50], "reserve_pow2", 100),  # 128 > 100: capped
                  g.case([30, 1], [34, 1], "reserve_pow2", 128)]  # final lengths 64 and 2: exact powers of two
        return g.check_function(fn, fragmentation.contiguous_snapshot, cases, **check)
    g.check_function(fn, fragmentation.contiguous_snapshot, [_requests], n=40, **check)
