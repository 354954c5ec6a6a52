"""Chapter 1 (text to tokens): the graded checks, one call per test cell.

    ch1.check_train_bpe(train_bpe)               # the visible checks
    ch1.check_train_bpe(train_bpe, hidden=True)  # the grader's hidden ones: fresh random inputs

Each check compares the student's function with labkit's reference (labkit.tokenizer, memory,
tokenizer_zoo, tiktoken) on fixed cases that sit on every rule the task states, then on random ones.
A task that builds on an earlier one is checked with labkit's version of the earlier one in its place.
"""

from __future__ import annotations

import codecs
import functools
import random
from collections.abc import Sequence

import torch
from torch import nn

from labkit import assets, memory
from labkit import grading as g
from labkit import tokenizer as lt
from labkit import tokenizer_zoo as zoo
from labkit.exercises.common import int_result, substituted
from labkit.grading.recipe import rebuildable

ENDOFTEXT = "<|endoftext|>"


@functools.cache
def gpt2() -> lt.Tokenizer:
    return lt.Tokenizer.gpt2()


# ------------------------------------------------------------------------------------ Task 1
def check_units_that_fit(fn, hidden: bool = False) -> None:
    hint = "round down, and multiply before dividing (//) so that everything stays an exact integer"
    if not hidden:
        # 10**18 / 3 as a float is 333333333333333312, not ...333: only integer arithmetic is exact.
        cases = [g.case(4096, 13, 10), g.case(4096, 5, 2), g.case(32 * 100, 180, 1), g.case(10**18, 3, 1)]
        return g.check_function(fn, zoo.units_that_fit, cases, compare=int_result, hint=hint)
    return g.check_function(
        fn, zoo.units_that_fit,
        [g.args(g.ints(1, 200_000), g.ints(1, 50_000), g.ints(1, 50_000)),
         g.args(g.ints(1, 10), g.ints(1, 10), g.ints(1, 10)),
         g.args(g.ints(10**16, 10**19), g.ints(3, 999), g.ints(1, 2))], n=60, compare=int_result, hint=hint)


# ------------------------------------------------------------------------------------ Task 2
def _accumulating(fn):  # (is the dict passed in the one returned?, its contents afterwards)
    def run(ids, start):
        counts = dict(start)
        return fn(ids, counts) is counts, counts
    return run


def check_get_pair_counts(fn, hidden: bool = False) -> None:
    if not hidden:
        return g.check_function(
            fn, lt.get_pair_counts,
            [g.case(list(b"aaabdaaabac")), g.case([]), g.case([5]), g.case([1, 2, 1, 2])],
            hint="count every position i: the pair (ids[i], ids[i + 1])")
    g.check_function(fn, lt.get_pair_counts,
                     [g.args(g.token_ids(4, 0, 40)), g.args(g.token_ids(300, 0, 60))], n=60,
                     hint="count overlapping neighbours: every position i from 0 to len(ids) - 2")
    g.check_function(_accumulating(fn), _accumulating(lt.get_pair_counts),
                     [g.args(g.token_ids(5, 0, 20), g.choice([{}, {(0, 0): 3}, {(1, 2): 1, (9, 9): 2}]))],
                     n=30, name="get_pair_counts(ids, counts)", forbid=[lt.get_pair_counts],
                     hint="when `counts` is given, add to that same dict and return it")


# ------------------------------------------------------------------------------------ Task 3
def check_merge(fn, hidden: bool = False) -> None:
    if not hidden:
        return g.check_function(
            fn, lt.merge,
            [g.case(list(b"aaabdaaabac"), (97, 97), 256), g.case([7, 7, 7], (7, 7), 99),
             g.case([], (1, 2), 3), g.case([1, 2], (2, 1), 3)],
            hint="replace every occurrence; after a replacement, continue after both ids")
    g.check_function(fn, lt.merge,
                     [g.args(g.token_ids(3, 0, 40), g.pairs(3), g.ints(256, 400)),
                      g.args(g.token_ids(20, 0, 60), g.pairs(20), g.ints(256, 400))], n=80,
                     hint="replace every occurrence, left to right; after a replacement skip both ids")


# ------------------------------------------------------------------------------------ Task 4
def check_train_bpe(fn, hidden: bool = False) -> None:
    """train_bpe with labkit's get_pair_counts and merge in place of the student's (Tasks 2 and 3)."""
    with substituted(fn, get_pair_counts=lt.get_pair_counts, merge=lt.merge):
        if not hidden:
            g.check_function(fn, lt.train_bpe,
                             [g.case(["aaabdaaabac"], 259), g.case(["low lower lowest", "new newer"], 270),
                              g.case(["ab"], 300)], forbid=[lt.Tokenizer.train],
                             hint="apply each merge to every pre-token before counting again")
            # Every pair of "dcba ab" occurs once: only the tie rule decides (b" a" sorts before b"d").
            return g.check_function(fn, lt.train_bpe, [g.case(["dcba ab"], 258)], forbid=[lt.Tokenizer.train],
                                    name="train_bpe (a tie: every pair counted once)",
                                    hint="ties: among the most frequent pairs take the smallest key "
                                         "(vocab[a], vocab[b], a, b), not the first one counted")
        g.check_function(fn, lt.train_bpe,
                         [g.args(g.lists(g.texts("mixed", 0, 80), 1, 6), g.ints(256, 320)),
                          g.args(g.lists(g.texts("ascii", 20, 120), 3, 10), g.ints(280, 380)),
                          g.args(g.lists(g.texts("ascii", 1, 8), 1, 3), g.ints(257, 262))],
                         n=12, time_limit=60, forbid=[lt.Tokenizer.train],
                         hint="apply each merge to the corpus before counting again; ties: smallest "
                              "(vocab[a], vocab[b], a, b)")


# ------------------------------------------------------------------------------------ Task 5
def _vocab_of(merges: Sequence[tuple[int, int]]) -> dict[int, bytes]:
    vocab = {i: bytes([i]) for i in range(256)}
    for k, (a, b) in enumerate(merges):
        vocab[256 + k] = vocab[a] + vocab[b]
    return vocab


@functools.lru_cache(maxsize=4)
def _tokenizer_of(merges: tuple[tuple[int, int], ...]) -> lt.Tokenizer:
    return lt.Tokenizer(_vocab_of(merges), list(merges))


def reference_encode(text: str, merges: Sequence[tuple[int, int]]) -> list[int]:
    """encode(text, merges) by labkit's Tokenizer built from the same merges (merges[k] makes 256 + k)."""
    return _tokenizer_of(tuple(tuple(p) for p in merges)).encode_ordinary(text)


@functools.cache
def shakespeare_merges() -> list[tuple[int, int]]:
    return lt.train_bpe(assets.corpus_text()[:20_000], 256 + 200)[1]


def _text_and_merges(rng: random.Random) -> g.Call:
    corpus = g.lists(g.texts("mixed", 0, 60), 1, 8)(rng)
    merges = lt.train_bpe(corpus, rng.randint(256, 330))[1]
    return g.case(rng.choice(corpus + [g.texts("mixed", 0, 60)(rng)]), merges)


def check_encode(fn, hidden: bool = False) -> None:
    """encode with labkit's merge and get_pair_counts in place of the student's."""
    merges = shakespeare_merges()
    with substituted(fn, merge=lt.merge, get_pair_counts=lt.get_pair_counts):
        if not hidden:
            return g.check_function(
                fn, reference_encode,
                [g.case("The capital of France is", merges), g.case("aaabdaaabac", lt.train_bpe("aaabdaaabac", 260)[1]),
                 g.case("", merges)], forbid=[lt.Tokenizer], name="encode",
                hint="within each pre-token, always merge the present pair with the lowest rank next")
        g.check_function(fn, reference_encode,
                         [_text_and_merges, g.args(g.texts("mixed", 0, 200), g.choice([merges]))],
                         n=40, time_limit=30, forbid=[lt.Tokenizer], name="encode",
                         hint="within each pre-token, always merge the present pair with the lowest rank next")


# ------------------------------------------------------------------------------------ Task 6
def _pipeline_runner(cls, emb: nn.Embedding):
    def run(prompts, max_length=None):  # a fresh Hugging Face tokenizer (no pad token) each time
        return cls(zoo.hf_gpt2_tokenizer(), emb)(prompts, max_length)
    return run


def _pipeline_expected(emb: nn.Embedding):
    def expected(prompts, max_length=None):  # labkit's GPT-2 ids, right-padded with <|endoftext|>
        rows = [gpt2().encode(p)[:max_length] for p in prompts]
        width = max_length or max(len(r) for r in rows)
        ids = torch.tensor([r + [gpt2().eos_token_id] * (width - len(r)) for r in rows])  # (B, S)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])  # (B, S)
        return emb(ids), mask
    return expected


@rebuildable
def pipeline_embedding() -> nn.Embedding:
    """The pipeline check's embedding table: GPT-2's vocabulary, 8 numbers a token, drawn from seed 1."""
    torch.manual_seed(1)
    return nn.Embedding(gpt2().vocab_size, 8)


def check_pipeline(cls, hidden: bool = False) -> None:
    emb = pipeline_embedding()
    run, expected = _pipeline_runner(cls, emb), _pipeline_expected(emb)
    with torch.no_grad():
        if not hidden:
            return g.check_function(run, expected, [g.case(["The capital of France is", "Hello"]),
                                    g.case(["The capital of France is", "Hello"], 3)], name="TextToTensorPipeline")
        g.check_function(run, expected,
                         [g.args(g.lists(g.texts("mixed", 1, 50), 1, 5)),
                          g.args(g.lists(g.texts("mixed", 1, 50), 1, 5), g.ints(1, 24))],
                         n=6, time_limit=30, name="TextToTensorPipeline",
                         hint="GPT-2 has no pad token: set tokenizer.pad_token = tokenizer.eos_token in __init__")


# ------------------------------------------------------------------------------------ Task 7
def check_embedding_bytes(fn, hidden: bool = False) -> None:
    hint = "bits per number: fp32 32, fp16/bf16 16, fp8/int8 8, int4 4; round up to whole bytes; an int"
    if not hidden:
        return g.check_function(fn, memory.embedding_bytes,
                                [g.case(50_000, 4096, "fp16"), g.case(3, 3, "int4"), g.case(10, 10, "fp64")],
                                compare=int_result, hint=hint)
    g.check_function(fn, memory.embedding_bytes,
                     [g.args(g.ints(1, 300_000), g.ints(1, 16_384), g.choice(sorted(memory.DTYPE_BITS))),
                      g.args(g.ints(1, 99), g.ints(1, 99), g.choice(["int4"])),
                      g.args(g.ints(1, 1000), g.ints(1, 1000), g.choice(["fp64", "int2", "float128"]))], n=40,
                     compare=int_result, hint=hint)


# ------------------------------------------------------------------------------------ Task 8
class ReferenceDetokenizer:
    """labkit's IncrementalDetokenizer over a plain id -> bytes vocabulary: push(id) -> str, flush() -> str."""

    def __init__(self, vocab: dict[int, bytes]) -> None:
        self._detok = lt.IncrementalDetokenizer(lt.Tokenizer(dict(vocab), []))

    def push(self, token_id: int) -> str:
        return self._detok.feed(token_id)

    def flush(self) -> str:
        return self._detok.flush()


def _streamed(cls):
    def run(ids):  # what the student's class emits after each id, then at flush
        detok = cls(gpt2().vocab)
        return [detok.push(i) for i in ids] + [detok.flush()]
    return run


def _ids_of_text(kind: str, max_len: int, cut: bool = False):
    def gen(rng: random.Random) -> g.Call:
        ids = gpt2().encode(g.texts(kind, 1, max_len)(rng))
        return g.case(ids[: rng.randint(0, len(ids))] if cut else ids)
    return gen


def check_detokenizer(cls, hidden: bool = False) -> None:
    hint = ("hold back the bytes of a character that is not complete yet (a lead byte 110xxxxx needs 1 more, "
            "1110xxxx 2 more, 11110xxx 3 more); flush() decodes what is left with errors='replace'")
    forbid = [codecs.getincrementaldecoder, lt.IncrementalDetokenizer, lt.Tokenizer.decode_bytes]
    run, ref = _streamed(cls), _streamed(ReferenceDetokenizer)
    if not hidden:
        japanese, emoji = gpt2().encode("日本語"), gpt2().encode("I 💙 tokens")
        return g.check_function(run, ref, [g.case(gpt2().encode("The capital of France is")), g.case(japanese),
                                           g.case(emoji), g.case(japanese[:1]), g.case([])],
                                name="Detokenizer", forbid=forbid, hint=hint)
    g.check_function(run, ref, [_ids_of_text("unicode", 60), _ids_of_text("unicode", 60, cut=True),
                                _ids_of_text("mixed", 80)], n=6, name="Detokenizer", forbid=forbid, hint=hint)


# ------------------------------------------------------------------------------------ Task 9
@functools.cache
def _r50k():
    return zoo.tiktoken_gpt2()


def r50k_encode(text: str) -> list[int]:
    """tiktoken's r50k_base (GPT-2) encoding of `text`, <|endoftext|> allowed as the special token."""
    return _r50k().encode(text, allowed_special={ENDOFTEXT})


def _with_specials(rng: random.Random) -> g.Call:
    return g.case(ENDOFTEXT.join(g.texts("mixed", 0, 60)(rng) for _ in range(rng.randint(1, 3))))


def check_gpt2_encode(fn, hidden: bool = False) -> None:
    """gpt2_encode with labkit's encode (Task 5) in place of the student's, against tiktoken r50k.

    The case is the text; GPT-2's files (zoo.gpt2_files()) are passed as encoder and bpe_pairs."""
    encoder, pairs = zoo.gpt2_files()
    forbid = [zoo.tiktoken_gpt2, lt.Tokenizer.gpt2, zoo.hf_gpt2_tokenizer, zoo.real_tokenizers]
    hint = ("turn GPT-2's string pairs into your id pairs (a byte's string is bytes_to_unicode()[b]; "
            "pair k makes id 256 + k), encode the text between <|endoftext|> markers with your encode, "
            "then map each id to GPT-2's through the token's string in `encoder`")
    run = functools.wraps(fn)(lambda text: fn(text, encoder, pairs))
    with substituted(fn, encode=reference_encode, merge=lt.merge):
        if not hidden:
            samples = [zoo.TRANSLATIONS[lang][:300] for lang in ("English", "Japanese", "Hindi")]
            cases = [g.case(s) for s in ["The capital of France is", *samples, f"Hello{ENDOFTEXT} world{ENDOFTEXT}"]]
            return g.check_function(run, r50k_encode, cases, forbid=forbid, hint=hint, name="gpt2_encode",
                                    time_limit=60)
        g.check_function(run, r50k_encode, [_with_specials], n=6, forbid=forbid, hint=hint, name="gpt2_encode",
                         time_limit=60)
