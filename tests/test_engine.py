"""LLMEngine and LLM: parity with Hugging Face `generate`, streaming, stop conditions, seeds, metrics,
replaceable parts, and what bad input does.

Oracles: HF transformers' LlamaForCausalLM loaded from the same GGUF (greedy `generate`, one prompt at
a time, no padding), HF's rendering of the GGUF's own chat template (jinja2, as transformers does), and
for the tiny random models a fresh reference engine or the dense `model.logits`.

Real SmolLM2 weights are loaded once per module; everything that does not need them runs on tiny
random models (one thread: their ops are too small to split).
"""

import dataclasses

import jinja2
import pytest
import torch

from labkit import assets
from labkit.engine import EngineConfig, LLMEngine, check_protocol
from labkit.kv_cache import PagedKVCache
from labkit.llm import LLM, apply_chat_template
from labkit.loader import GGUF_ASSET, random_model
from labkit.model import ModelConfig
from labkit.protocols import Sampler as SamplerProtocol
from labkit.sampler import SamplingParams
from labkit.scheduler import Scheduler, SchedulerConfig

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a CPU does in one sentence.",
    "List three colors.",
    "How many legs does a spider have?",
]
MAX_TOKENS = 32
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)


# ---- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm():
    """The facade, loaded by name: the path `make demo` takes."""
    return LLM("smollm2-135m-instruct", num_gpu_blocks=128)


@pytest.fixture(scope="module")
def smol(llm):
    return llm.llm_engine.model, llm.get_tokenizer()


@pytest.fixture(scope="module")
def prompts(smol):
    _, tok = smol
    return [tok.encode(apply_chat_template(q), allowed_special="all") for q in QUESTIONS]


@pytest.fixture(scope="module")
def hf_model():
    from transformers import LlamaForCausalLM

    path = assets.path(GGUF_ASSET)
    return LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_reference(hf_model, prompts):
    """HF greedy generate, each prompt alone: up to 32 new tokens, stopping after EOS (<|im_end|>)."""
    out = []
    for ids in prompts:
        with torch.inference_mode():
            seq = hf_model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=MAX_TOKENS,
                do_sample=False,
                pad_token_id=2,
            )
        out.append(seq[0, len(ids) :].tolist())
    assert any(len(r) < MAX_TOKENS for r in out) and any(len(r) == MAX_TOKENS for r in out)  # both endings
    return out


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = ModelConfig(
    vocab_size=49152,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


@pytest.fixture(scope="module")
def tiny():
    """Random weights over SmolLM2's vocabulary, so the real tokenizer can encode and decode for it."""
    return random_model(TINY, seed=0)


def tiny_engine(tiny, tok=None, **config) -> LLMEngine:
    config = {"block_size": 4, "num_gpu_blocks": 64, "max_model_len": 64, **config}
    return LLMEngine(tiny, tok, EngineConfig(**config))


def ids_of(outputs) -> list[list[int]]:
    return [o.token_ids for o in outputs]


# ---- parity with HF generate ------------------------------------------------------------------------


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_greedy_parity_alone_and_batched(smol, prompts, hf_reference, prefix_caching):
    model, tok = smol
    engine = LLMEngine(model, tok, EngineConfig(num_gpu_blocks=128, enable_prefix_caching=prefix_caching))
    alone = [engine.generate([p], GREEDY, use_tqdm=False)[0] for p in prompts]
    assert ids_of(alone) == hf_reference
    cached = [o.metrics.num_cached_tokens for o in alone]
    # each prompt opens with the same system message (> 16 tokens): later prompts find its first block
    assert (cached[0] == 0 and min(cached[1:]) >= 16) if prefix_caching else cached == [0] * 5
    together = engine.generate(prompts, GREEDY, use_tqdm=False)
    assert ids_of(together) == hf_reference
    assert max(s.num_seqs for s in engine.timeline) == 5
    for o in together:
        assert o.text == tok.decode(o.token_ids, skip_special=True)
        assert o.finish_reason == ("length" if len(o.token_ids) == MAX_TOKENS else "stop")
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_greedy_parity_with_preemption_and_chunked_prefill(smol, prompts, hf_reference, prefix_caching):
    """8-token blocks, 16 of them: one request may need 9, five prompts need 25 to start. Requests
    are admitted, grow, get preempted and recomputed (from their cached blocks, or from scratch);
    prompts are split into chunks of at most 24 tokens."""
    model, tok = smol
    config = EngineConfig(
        block_size=8, num_gpu_blocks=16, max_num_batched_tokens=24, enable_prefix_caching=prefix_caching
    )
    engine = LLMEngine(model, tok, config)
    outs = engine.generate(prompts, GREEDY, use_tqdm=False)
    assert ids_of(outs) == hf_reference
    assert sum(o.metrics.num_preemptions for o in outs) > 0
    assert any(0 < s.num_prefill_tokens and s.num_decode_tokens > 0 for s in engine.timeline)  # mixed steps


def test_staggered_arrivals_mix_prefill_and_decode_in_one_step(smol, prompts, hf_reference):
    """A request arriving while others decode is prefilled in the SAME step as their decodes."""
    model, tok = smol
    engine = LLMEngine(model, tok, EngineConfig(num_gpu_blocks=128, enable_prefix_caching=False))
    ids, outs = [], {}
    for p in prompts:
        ids.append(engine.add_request(p, GREEDY))
        for _ in range(2):
            outs.update({o.request_id: o for o in engine.step() if o.finished})
    while engine.has_unfinished_requests():
        outs.update({o.request_id: o for o in engine.step() if o.finished})
    assert [outs[i].token_ids for i in ids] == hf_reference
    mixed = [s for s in engine.timeline if s.num_prefill_tokens > 0 and s.num_decode_tokens > 0]
    assert len(mixed) >= 4


def test_llm_from_a_transformers_model_matches_hf(hf_model, smol, prompts, hf_reference):
    _, tok = smol
    llm = LLM(hf_model, tokenizer=tok, num_gpu_blocks=64)
    assert ids_of(llm.generate(prompts, GREEDY, use_tqdm=False)) == hf_reference


def test_chat_gives_a_sensible_answer(llm):
    out = llm.chat("What is the capital of France?", GREEDY, use_tqdm=False)[0]
    assert "Paris" in out.text and out.finish_reason == "stop"


def test_chat_template_matches_the_ggufs_own_template(smol):
    """Rendered as transformers renders it: jinja2 over the template stored in the GGUF."""
    from labkit.loader import load_gguf

    template = load_gguf()[1].chat_template
    render = jinja2.Environment().from_string(template).render
    conversations = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
    ]
    for conv in conversations:
        for gen in (True, False):
            assert apply_chat_template(conv, gen) == render(messages=conv, add_generation_prompt=gen)
    assert apply_chat_template("Hi") == render(messages=conversations[0], add_generation_prompt=True)
    with pytest.raises(ValueError, match="empty"):
        apply_chat_template([])


# ---- streaming and stop conditions ------------------------------------------------------------------


def test_stream_pieces_join_to_the_final_text(llm, smol, prompts, hf_reference):
    _, tok = smol
    engine = llm.llm_engine
    final = tok.decode(hf_reference[1], skip_special=True)
    pieces = list(engine.stream(prompts[1], GREEDY))
    assert len(pieces) > 5 and "".join(pieces) == final
    stop = final.split()[4]  # a word in the middle: the stream must hold back what might be a stop
    params = dataclasses.replace(GREEDY, stop=[stop])
    pieces = list(llm.stream(tok.decode(prompts[1]), params))
    assert "".join(pieces) == final[: final.index(stop)]


def test_stop_strings_cut_the_text_even_across_tokens(tiny, one_thread):
    from labkit.tokenizer import IncrementalDetokenizer, Tokenizer

    tok = Tokenizer.from_gguf(assets.path(GGUF_ASSET))
    engine = tiny_engine(tiny, tok)
    prompt = "Once upon a time"
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    full = engine.generate(prompt, params, use_tqdm=False)[0]
    detok = IncrementalDetokenizer(tok, skip_special=True)
    pieces = [detok.feed(t) for t in full.token_ids]
    assert "".join(pieces) + detok.flush() == full.text
    # a stop string that starts inside one token's text and ends inside the next one's
    i = next(i for i in range(4, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 3)
    c = len("".join(pieces[: i + 1]))  # where token i's text ends
    stop = full.text[c - 1 : c + 2]
    first = full.text.index(stop)
    ends = next(k for k in range(1, len(pieces) + 1) if stop in "".join(pieces[:k]))  # tokens until it shows
    for stops in ([stop], ["never in this text", stop]):
        out = engine.generate(prompt, dataclasses.replace(params, stop=stops), use_tqdm=False)[0]
        assert out.text == full.text[:first]
        assert out.finish_reason == "stop" and out.outputs[0].stop_reason == stop
        assert out.token_ids == full.token_ids[:ends]  # generation ended with the token completing the stop
        streamed = "".join(engine.stream(prompt, dataclasses.replace(params, stop=stops)))
        assert streamed == out.text
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks


def test_stop_token_ids_and_eos(tiny, one_thread):
    engine = tiny_engine(tiny)
    prompt = [1, 2, 3, 4, 5]
    full = engine.generate(
        prompt, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True), use_tqdm=False
    )[0].token_ids
    stop_id = full[5]
    first = full.index(stop_id)
    out = engine.generate(
        prompt, SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[stop_id]), use_tqdm=False
    )[0]
    assert out.token_ids == full[: first + 1] and out.finish_reason == "stop"
    assert out.outputs[0].stop_reason == stop_id
    eos = LLMEngine(
        tiny, None, EngineConfig(block_size=4, num_gpu_blocks=64, max_model_len=64), eos_token_id=stop_id
    )
    out = eos.generate(prompt, SamplingParams(temperature=0, max_tokens=20), use_tqdm=False)[0]
    assert (
        out.token_ids == full[: first + 1]
        and out.finish_reason == "stop"
        and out.outputs[0].stop_reason is None
    )
    out = eos.generate(prompt, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True), use_tqdm=False)[
        0
    ]
    assert out.token_ids == full and out.finish_reason == "length"


def test_closing_a_stream_early_aborts_its_request(tiny, one_thread):
    from labkit.tokenizer import Tokenizer

    engine = tiny_engine(tiny, Tokenizer.from_gguf(assets.path(GGUF_ASSET)))
    stream = engine.stream("Hello there", SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    next(stream)
    assert engine.has_unfinished_requests()
    stream.close()
    assert not engine.has_unfinished_requests()
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks


# ---- seeds ------------------------------------------------------------------------------------------


def test_seeds_are_reproducible_and_independent_of_the_batch(tiny, one_thread):
    prompt = [10, 20, 30, 40, 50, 60]
    params = SamplingParams(temperature=1.0, top_p=0.95, top_k=200, max_tokens=24, seed=1234, ignore_eos=True)
    alone = tiny_engine(tiny).generate(prompt, params, use_tqdm=False)[0].token_ids
    again = tiny_engine(tiny).generate(prompt, params, use_tqdm=False)[0].token_ids
    assert alone == again
    others = [[7, 8, 9], [100, 200, 300, 400, 500, 600, 700, 800, 900], [5] * 12, prompt]
    other_params = [dataclasses.replace(params, seed=s) for s in (1, 2, None, 99)]
    engine = tiny_engine(tiny, max_num_batched_tokens=16)  # chunked: the batch differs at every step
    mixed = engine.generate(
        others[:2] + [prompt] + others[2:], other_params[:2] + [params] + other_params[2:], use_tqdm=False
    )
    assert mixed[2].token_ids == alone
    assert mixed[-1].token_ids != alone  # same prompt, other seed: another sample (24 draws over 49k tokens)


# ---- metrics and the timeline -----------------------------------------------------------------------


def test_metrics_and_timeline_add_up(tiny, one_thread):
    engine = tiny_engine(tiny, max_num_batched_tokens=12, enable_prefix_caching=False)
    prompts = [list(range(1, 1 + n)) for n in (3, 9, 20, 5)]
    outs = engine.generate(
        prompts, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True), use_tqdm=False
    )
    steps = engine.timeline
    assert sum(s.num_sampled for s in steps) == sum(len(o.token_ids) for o in outs) == 24
    assert sum(s.num_prefill_tokens for s in steps) == sum(map(len, prompts))  # no preemption, no cache hits
    assert sum(s.num_decode_tokens for s in steps) == sum(len(o.token_ids) - 1 for o in outs)
    assert all(s.num_prefill_tokens + s.num_decode_tokens <= 12 and s.num_seqs >= 1 for s in steps)
    assert sum(s.num_finished for s in steps) == 4
    assert all(0 < s.num_blocks_used <= s.num_blocks_total for s in steps)
    for o in outs:
        m = o.metrics
        assert 0 <= m.queue_time <= m.time_to_first_token <= m.e2e_latency
        assert (
            m.time_per_output_token > 0
            and m.num_output_tokens == 6
            and m.num_prompt_tokens == len(o.prompt_token_ids)
        )
    cols = engine.timeline_columns()
    assert cols["step"] == list(range(len(steps))) and len(cols["num_blocks_used"]) == len(steps)


def test_the_sampled_token_is_written_by_the_next_forward_pass(tiny, one_thread):
    """The K/V of a sampled token is written when it is fed back in, never right after sampling (a
    common description of decoding has it the other way round)."""
    engine = tiny_engine(tiny, enable_prefix_caching=False)
    rid = engine.add_request([1, 2, 3, 4, 5], SamplingParams(temperature=0, max_tokens=4))
    k_cache = engine.kv_cache.kv_caches[0][0]  # layer 0 K: (num_blocks, block_size, Hkv, D)

    def written(position):
        table = engine.kv_cache.block_table(rid)
        return bool(k_cache[table[position // 4], position % 4].abs().sum() > 0)

    engine.step()  # prefill of positions 0..4, samples token 5
    assert all(written(p) for p in range(5)) and not written(5)
    engine.step()  # feeds token 5 (writes its K/V), samples token 6
    assert written(5) and not written(6)


# ---- replaceable parts ------------------------------------------------------------------------------


class NewestFirstScheduler(Scheduler):
    """A student's variation: admit the newest waiting request first."""

    def _admission_order(self):
        return list(reversed(self.waiting))


class ArgmaxSampler:
    """Not a labkit Sampler at all: any object with .sample(logits, params, generators) will do."""

    def __init__(self):
        self.calls = 0

    def sample(self, logits, params, generators=None):
        self.calls += 1
        return logits.argmax(dim=-1)


class CountingCache(PagedKVCache):
    allocations = 0

    def allocate_slots(self, *args, **kwargs):
        CountingCache.allocations += 1
        return super().allocate_slots(*args, **kwargs)


def test_student_parts_plug_in_and_generation_still_matches(tiny, one_thread):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11] * 17, [1, 2, 3, 4]]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    reference = ids_of(tiny_engine(tiny).generate(prompts, params, use_tqdm=False))
    sampler = ArgmaxSampler()
    cfg = EngineConfig(block_size=4, num_gpu_blocks=12, max_model_len=64)  # small: preemptions too
    engine = LLMEngine(
        tiny, None, cfg, scheduler=NewestFirstScheduler, kv_cache=CountingCache, sampler=sampler
    )
    assert isinstance(engine.scheduler, NewestFirstScheduler) and isinstance(engine.kv_cache, CountingCache)
    assert ids_of(engine.generate(prompts, params, use_tqdm=False)) == reference
    assert sampler.calls > 0 and CountingCache.allocations > 0
    # ready-made objects work too: a scheduler built by hand, with the cache it uses
    kv = PagedKVCache(TINY.num_hidden_layers, TINY.num_key_value_heads, TINY.head_dim, 64, 4)
    sched = Scheduler(SchedulerConfig(max_model_len=64), kv)
    engine = LLMEngine(tiny, None, EngineConfig(block_size=4, max_model_len=64), scheduler=sched, kv_cache=kv)
    assert ids_of(engine.generate(prompts, params, use_tqdm=False)) == reference


def test_a_part_that_breaks_the_protocol_is_named(tiny):
    class NoSample:
        def draw(self, logits):
            return logits.argmax(-1)

    with pytest.raises(TypeError, match=r"NoSample cannot serve as a Sampler: it lacks \['sample'\]"):
        LLMEngine(tiny, None, EngineConfig(num_gpu_blocks=8), sampler=NoSample())
    assert isinstance(ArgmaxSampler(), SamplerProtocol)
    check_protocol(ArgmaxSampler(), SamplerProtocol)


# ---- bad input --------------------------------------------------------------------------------------


def _mutated(**fields):
    params = SamplingParams(temperature=0, max_tokens=8)
    for name, value in fields.items():
        setattr(params, name, value)  # bypasses SamplingParams' own check: the scheduler's still holds
    return params


# Sampling parameters are validated once, when SamplingParams is made (see the test below); the
# admission limits once, by the scheduler; prompts by the engine, where they enter.
BAD_REQUESTS = [
    ([], _mutated(), ValueError, "no tokens"),
    ("", _mutated(), ValueError, "empty"),
    (list(range(1, 70)), _mutated(), ValueError, "max_model_len=64"),
    (list(range(1, 50)), _mutated(max_tokens=20), ValueError, "max_model_len=64"),
    ([5] * 20, _mutated(max_tokens=40), ValueError, "need 15 KV blocks"),
    ([1, 2, 3], _mutated(max_tokens=0), ValueError, "max_tokens=0"),
    ([1, 2, 49152], _mutated(), ValueError, "token id 49152"),
]


@pytest.mark.parametrize("prompt, params, error, message", BAD_REQUESTS)
def test_bad_requests_raise_and_leave_the_engine_usable(
    tiny, one_thread, smol, prompt, params, error, message
):
    _, tok = smol
    good = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    expected = tiny_engine(tiny, tok, num_gpu_blocks=14).generate("Hello", good, use_tqdm=False)[0].token_ids
    engine = tiny_engine(tiny, tok, num_gpu_blocks=14)  # 14 blocks of 4 tokens: 56 token slots
    with pytest.raises(error, match=message):
        engine.add_request(prompt, params)
    assert not engine.has_unfinished_requests()
    with pytest.raises(error, match=message):  # a bad prompt in a batch: the good ones are withdrawn too
        engine.generate(["Hi", prompt], [good, params], use_tqdm=False)
    assert not engine.has_unfinished_requests() and not engine.scheduler.has_unfinished_requests()
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks
    assert engine.generate("Hello", good, use_tqdm=False)[0].token_ids == expected


@pytest.mark.parametrize(
    "field, value",
    [("max_tokens", 0), ("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.01), ("top_k", 0), ("top_k", -2)],
)
def test_bad_sampling_params_are_refused_on_construction(field, value):
    with pytest.raises(ValueError, match=f"{field}={value}"):
        SamplingParams(**{field: value})


def test_abort_of_an_unknown_id_and_of_a_running_request(tiny, one_thread):
    engine = tiny_engine(tiny)
    with pytest.raises(KeyError, match="'nope'"):
        engine.abort_request("nope")
    rid = engine.add_request([1, 2, 3], SamplingParams(temperature=0, max_tokens=30))
    engine.step()
    out = engine.abort_request(rid)
    assert out.finished and out.finish_reason == "abort" and len(out.token_ids) == 1
    with pytest.raises(KeyError, match=repr(rid)):
        engine.abort_request(rid)
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks
    params = SamplingParams(temperature=0, max_tokens=5)
    assert ids_of(engine.generate([[1, 2, 3]], params, use_tqdm=False)) == ids_of(
        tiny_engine(tiny).generate([[1, 2, 3]], params, use_tqdm=False)
    )
    engine.add_request([1], params, request_id="x")
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request([2], params, request_id="x")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"block_size": 0}, "block_size=0"),
        ({"max_num_seqs": 0}, "max_num_seqs=0"),
        ({"max_num_batched_tokens": -1}, "max_num_batched_tokens=-1"),
        ({"gpu_memory_utilization": 0.0}, "gpu_memory_utilization=0.0"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization=1.5"),
        ({"num_gpu_blocks": 8, "kv_cache_memory_bytes": 2**20}, "give only one"),
        ({"dtype": "int8"}, "dtype='int8'"),
        ({"device": "banana"}, "device='banana'"),
        ({"scheduling_policy": "random"}, "policy='random'"),
    ],
)
def test_engine_config_validation(fields, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**fields)


def test_engine_checks_config_against_the_model(tiny):
    with pytest.raises(ValueError, match="model's weights are torch.float32"):
        LLMEngine(tiny, None, EngineConfig(dtype="bfloat16"))
    with pytest.raises(ValueError, match="holds no block"):
        LLMEngine(tiny, None, EngineConfig(kv_cache_memory_bytes=100))
    engine = LLMEngine(tiny, None, EngineConfig(kv_cache_memory_bytes=2**20))
    per_block = 2 * 2 * 16 * 2 * 8 * 4  # K and V, 2 layers, 16 tokens, 2 kv heads, head_dim 8, fp32
    assert engine.kv_cache.num_blocks == 2**20 // per_block
    with pytest.raises(ValueError, match="need a tokenizer"):
        engine.add_request([1, 2], SamplingParams(stop=["x"]))
    with pytest.raises(ValueError, match="no tokenizer"):
        engine.add_request("text", SamplingParams())


def test_llm_facade_arguments(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        LLM("no-such-model")
    with pytest.raises(TypeError, match="bogus"):
        LLM(tiny, bogus=1)


def test_llm_from_a_hugging_face_folder(tmp_path, one_thread):
    """A tiny random HF Llama saved to disk, loaded by path; greedy tokens equal HF generate's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=300,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
        )
    ).eval()
    hf.save_pretrained(tmp_path)
    llm = LLM(str(tmp_path), num_gpu_blocks=32, max_model_len=128)
    prompt = [1, 17, 42, 99, 7]
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), use_tqdm=False)[
        0
    ]
    with torch.inference_mode():
        ref = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            min_new_tokens=0,
        )[0, len(prompt) :].tolist()
    assert out.token_ids[: len(ref)] == ref
