"""labkit.tokenizer: BPE primitives, training (against the slow reference), encode/decode, specials,
bad input, save/load, the word cache and the incremental detokenizer.

Parity with HF and tiktoken lives in test_tokenizer_parity.py.
"""

from __future__ import annotations

import string

import pytest
import regex
from bpe_reference import encode_reference, train_bpe_reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit import assets
from labkit.tokenizer import (
    GPT2_SPLIT_PATTERN,
    IncrementalDetokenizer,
    Tokenizer,
    bytes_to_unicode,
    get_pair_counts,
    merge,
    train_bpe,
)

EOT = "<|endoftext|>"
A, B, C, D = (ord(c) for c in "abcd")


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return Tokenizer.gpt2()


@pytest.fixture(scope="module")
def corpus() -> str:
    return assets.corpus_text()


@pytest.fixture(scope="module")
def small(corpus) -> Tokenizer:
    """A tokenizer trained on one play, with two special tokens."""
    return Tokenizer.train(assets.corpus_text(["corpus-macbeth"]), 600, special_tokens=[EOT, "<|pad|>"])


# ------------------------------------------------------------------------------------------------
# Primitives, hand-worked
# ------------------------------------------------------------------------------------------------


def test_pair_counts_overlap_on_aaabdaaabac():
    ids = list(b"aaabdaaabac")
    counts = get_pair_counts(ids)
    # a a a b d a a a b a c: "aa" at 0-1, 1-2, 5-6, 6-7
    assert counts[(A, A)] == 4
    assert counts[(A, B)] == 2
    assert counts[(B, D)] == counts[(D, A)] == counts[(B, A)] == counts[(A, C)] == 1
    assert sum(counts.values()) == len(ids) - 1


def test_pair_counts_accumulate_into_given_dict():
    counts = get_pair_counts([1, 2, 3])
    assert get_pair_counts([1, 2], counts) is counts
    assert counts == {(1, 2): 2, (2, 3): 1}


def test_merge_replaces_every_non_overlapping_occurrence():
    z = 256
    merged = merge(list(b"aaabdaaabac"), (A, A), z)
    assert merged == [z, A, B, D, z, A, B, A, C]  # "Z a b d Z a b a c": two replacements
    assert merge([A, A, A, A], (A, A), z) == [z, z]
    assert merge([A, B, A, B], (A, B), z) == [z, z]
    assert merge([A], (A, A), z) == [A]
    assert merge([], (A, A), z) == []


def test_bytes_to_unicode_is_gpt2s_alphabet():
    mapping = bytes_to_unicode()
    assert sorted(mapping) == list(range(256))
    assert len(set(mapping.values())) == 256
    assert mapping[ord(" ")] == "Ġ" and mapping[ord("\n")] == "Ċ" and mapping[ord("A")] == "A"
    # GPT-2's ids 0..255 list the printable bytes first: '!' is id 0 in vocab.json.
    assert next(iter(mapping.values())) == "!"


# ------------------------------------------------------------------------------------------------
# Training: hand-worked cases, then the reference
# ------------------------------------------------------------------------------------------------


def test_train_aaabdaaabac_by_hand():
    # One pre-token. Round 1: aa(4) -> 256. Round 2: "Z a b d Z a b a c": (Z,a)=2 and (a,b)=2 tie;
    # left bytes b"a" < b"aa", so (a,b) -> 257. Round 3: (256,257)=2 -> 258 "aaab". Then every pair
    # counts 1 in "X d X a c": smallest left bytes is b"a" -> (a,c) 259; then (X,259) beats (X,d)
    # since b"ac" < b"d"; then (X,d) 261; then the rest.
    vocab, merges = train_bpe("aaabdaaabac", 263)
    assert merges == [(A, A), (A, B), (256, 257), (A, C), (258, 259), (258, D), (261, 260)]
    assert vocab[262] == b"aaabdaaabac" and len(vocab) == 263


def test_train_tiny_corpus_by_hand_ties_by_bytes_not_ids():
    # Pre-tokens: "ab" x1, " ab" x2, " ac" x1. Counts: (a,b)=3, (" ",a)=3, (a,c)=1. Tie: b" " < b"a",
    # so " a" (256) first. Then (256,b)=2 -> " ab" (257). Then (a,b)=1 ties with (256,c)=1: by ids
    # (97,98) would win, by bytes b" a" < b"a" so (256,c) -> " ac" (258). Then (a,b) -> 259. Then no
    # pair is left, so training stops early at 260 ids.
    vocab, merges = train_bpe("ab ab ab ac", 300)
    assert merges == [(32, A), (256, B), (256, C), (A, B)]
    assert [vocab[i] for i in range(256, 260)] == [b" a", b" ab", b" ac", b"ab"]
    assert len(vocab) == 260


def test_train_cuts_at_special_tokens_and_ties_on_right_bytes():
    # Cut at <|endoftext|>: "ab ab" + "ab ac" -> "ab" x2, " ab", " ac". (a,b)=3 first. Then
    # (" ",256), (" ",a), (a,c) all 1: left b" " twice, right b"a" < b"ab" -> (" ",a). Then
    # (" ",256) before (257,c) since b" " < b" a". Specials follow the 4 merges (vocab_size allowed 5).
    vocab, merges = train_bpe(f"ab ab{EOT}ab ac", 262, special_tokens=[EOT])
    assert merges == [(A, B), (32, A), (32, 256), (257, C)]
    assert vocab[260] == EOT.encode() and len(vocab) == 261
    assert all(EOT.encode() not in vocab[i] for i in range(256, 260))


def test_train_matches_reference_on_one_play_to_1000_tokens():
    text = assets.corpus_text(["corpus-macbeth"])
    assert train_bpe(text, 1000) == train_bpe_reference(text, 1000)


def test_train_matches_reference_on_whole_corpus(corpus):
    """The whole 1.27 MB corpus, cut into documents at <|endoftext|> (bench/tokenizer.py goes to 2,000)."""
    assert train_bpe(corpus, 320, [EOT]) == train_bpe_reference(corpus, 320, [EOT])


UTF8 = st.characters(codec="utf-8")  # any code point but lone surrogates (see test_lone_surrogates_raise)
corpora = st.lists(st.text(alphabet=st.sampled_from("aab bc\n'é中😀1") | UTF8, max_size=40), max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=corpora, extra=st.integers(0, 60), with_special=st.booleans())
def test_train_matches_reference_on_random_corpora(texts, extra, with_special):
    specials = [EOT] if with_special else []
    if with_special and texts:
        texts = [EOT.join(texts)]
    vocab_size = 256 + len(specials) + extra
    assert train_bpe(texts, vocab_size, specials) == train_bpe_reference(texts, vocab_size, specials)


def test_train_vocab_invariants(small):
    vocab, merges = small.vocab, small.merges
    assert len(vocab) == 600 and len(merges) == 600 - 256 - 2
    for i, (a, b) in enumerate(merges):
        assert a < 256 + i and b < 256 + i  # a merge only uses tokens made before it
        assert vocab[256 + i] == vocab[a] + vocab[b]
    assert small.special_tokens == {EOT: 598, "<|pad|>": 599}


def test_train_accepts_str_or_iterable_and_generators():
    texts = ["the cat", "the hat", "that"]
    assert train_bpe(iter(texts), 270) == train_bpe(texts, 270) == train_bpe_reference(texts, 270)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (("abc", 255), ValueError, "vocab_size=255 is below 256"),
        (("abc", 256, [EOT]), ValueError, "choose vocab_size >= 257"),
        (("abc", 300.0), TypeError, "vocab_size must be an int"),
        ((b"abc", 300), TypeError, "decode it first"),
        ((["ok", 3], 300), TypeError, r"texts\[1\] is int"),
        ((42, 300), TypeError, "iterable of str"),
        (("abc", 300, EOT), TypeError, "list of strings"),
        (("abc", 300, [EOT, EOT]), ValueError, "duplicates"),
    ],
)
def test_train_rejects_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        train_bpe(*args)


# ------------------------------------------------------------------------------------------------
# Encode / decode
# ------------------------------------------------------------------------------------------------


def test_capital_of_france(gpt2):
    """GPT-2 ids of "The capital of France is", no leading space added (the often quoted
    [464, 2506, 286, 3260, 318] are not them)."""
    text = "The capital of France is"
    ids = gpt2.encode(text)
    assert ids == [464, 3139, 286, 4881, 318]
    assert [gpt2.decode([i]) for i in ids] == ["The", " capital", " of", " France", " is"]
    assert gpt2.decode(ids) == text
    assert gpt2.decode([464, 2506, 286, 3260, 318]) == "The everyone ofAfter is"


ROUND_TRIP_CASES = [
    "",
    "hello world",
    "人人生而自由，在尊严和权利上一律平等。",
    "すべての人間は、生まれながらにして自由であり",
    "👩‍👩‍👧‍👦 🇫🇷 👍🏽 ❤️ 🤗",
    "".join(map(chr, range(32))) + "\x7f\x85\u200b\u2028\u2029\ufeff",
    " " * 5000 + "x" + "\n" * 3000 + "\t \r\n" * 500,
    "e\u0301 A\u030a ﬁ Å",  # combining marks and compatibility characters stay as they are
    "I'm they'll DON'T 's 're",
    "x" * 20000,
    "".join(chr(c) for c in range(0x4E00, 0x4E00 + 3000)),  # one pre-token of 9000 bytes
]


@pytest.mark.parametrize("text", ROUND_TRIP_CASES, ids=range(len(ROUND_TRIP_CASES)))
def test_round_trip_cases(gpt2, small, text):
    for tok in (gpt2, small):
        assert tok.decode(tok.encode(text)) == text


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=UTF8, max_size=200))
def test_round_trip_any_string(gpt2, small, text):
    for tok in (gpt2, small):
        ids = tok.encode(text, allowed_special="none")
        assert tok.decode(ids, errors="strict") == text


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=UTF8 | st.sampled_from(" \n\tab'"), max_size=120))
def test_encode_matches_plain_rank_loop(gpt2, small, text):
    """The heap-based merge loop gives what 'merge the lowest-rank pair everywhere, repeat' gives."""
    for tok in (gpt2, small):
        assert tok.encode(text, allowed_special="none") == encode_reference(tok, text)


def test_long_pretokens_match_plain_rank_loop(gpt2, small):
    text = "".join(regex.findall(r"\p{L}", "".join(ROUND_TRIP_CASES)))[:4000] + "ab" * 300 + " " * 300
    for tok in (gpt2, small):
        assert tok.encode(text) == encode_reference(tok, text)


def test_pretokens_follow_gpt2_pattern(gpt2):
    text = "Hello,  world!! It's 2024\n\n  ok"
    pieces = regex.findall(GPT2_SPLIT_PATTERN, text)
    assert pieces == ["Hello", ",", " ", " world", "!!", " It", "'s", " 2024", "\n\n ", " ok"]
    assert gpt2.encode(text) == [i for p in pieces for i in gpt2.encode(p)]


def test_decode_partial_utf8_gives_replacement_not_error(gpt2):
    euro = "€".encode()  # 3 bytes, each its own token in GPT-2
    byte_ids = [gpt2.token_to_id(bytes([b])) for b in euro]
    assert gpt2.decode(byte_ids) == "€"
    assert gpt2.decode(byte_ids[:2]) == "\ufffd"
    assert gpt2.decode(byte_ids[1:]) == "\ufffd\ufffd"
    with pytest.raises(UnicodeDecodeError):
        gpt2.decode(byte_ids[:2], errors="strict")
    assert gpt2.decode_bytes(byte_ids[:2]) == euro[:2]


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.integers(0, 50256), max_size=60))
def test_decode_any_id_list_never_raises(gpt2, ids):
    text = gpt2.decode(ids)
    assert text == gpt2.decode_bytes(ids).decode("utf-8", errors="replace")


def test_decode_unknown_ids(gpt2):
    with pytest.raises(ValueError, match="unknown token id 50257.*unknown='skip'"):
        gpt2.decode([464, 50257])
    with pytest.raises(ValueError, match="unknown token id -1"):
        gpt2.decode([-1])
    assert gpt2.decode([464, 50257, -3, 3139], unknown="skip") == "The capital"
    with pytest.raises(ValueError, match="unknown must be"):
        gpt2.decode([464], unknown="ignore")


def test_decode_rejects_non_integer_ids(gpt2):
    with pytest.raises(TypeError, match="token ids must be integers"):
        gpt2.decode([464, "x"])
    with pytest.raises(TypeError, match="list of ints"):
        gpt2.decode("464")
    with pytest.raises(TypeError, match="list of ints"):
        gpt2.decode(464)
    np = pytest.importorskip("numpy")
    assert gpt2.decode(np.array([464, 3139])) == "The capital"


@pytest.mark.parametrize("bad", [b"abc", None, 3, ["a", "b"]])
def test_encode_rejects_non_str(gpt2, bad):
    with pytest.raises(TypeError, match="text must be str"):
        gpt2.encode(bad)


def test_lone_surrogates_raise(gpt2):
    """A lone surrogate has no UTF-8 form, so there are no bytes to tokenize: a clear ValueError."""
    with pytest.raises(ValueError, match="lone surrogate '\\\\ud800'"):
        gpt2.encode("ok \ud800 no")
    with pytest.raises(ValueError, match="lone surrogate"):
        train_bpe(["fine", "x\udfff"], 300)
    paired = "ok \ud83d\ude00".encode("utf-16", "surrogatepass").decode("utf-16")  # a valid pair is fine
    assert gpt2.decode(gpt2.encode(paired)) == "ok 😀"


def test_encode_batch(gpt2):
    texts = ["The capital of France is", "", "héllo 世界"]
    assert gpt2.encode_batch(texts) == [gpt2.encode(t) for t in texts]
    with pytest.raises(TypeError, match="list of strings"):
        gpt2.encode_batch("one string")


# ------------------------------------------------------------------------------------------------
# Special tokens
# ------------------------------------------------------------------------------------------------


def test_special_token_semantics(gpt2):
    text = f"a{EOT}b"
    eot = gpt2.special_tokens[EOT]
    with pytest.raises(ValueError, match="contains the special token"):
        gpt2.encode(text)  # default "none_raise"
    as_text = gpt2.encode(text, allowed_special="none")
    assert eot not in as_text and gpt2.decode(as_text) == text
    assert gpt2.encode(text, allowed_special="all") == gpt2.encode("a") + [eot] + gpt2.encode("b")
    assert gpt2.encode(text, allowed_special={EOT}) == gpt2.encode(text, allowed_special="all")
    assert gpt2.decode(gpt2.encode(text, allowed_special="all")) == text
    assert gpt2.decode(gpt2.encode(text, allowed_special="all"), skip_special=True) == "ab"
    with pytest.raises(ValueError, match="not special tokens"):
        gpt2.encode(text, allowed_special={"<|im_start|>"})
    with pytest.raises(ValueError, match="allowed_special must be"):
        gpt2.encode(text, allowed_special="some")


def test_set_of_allowed_specials_leaves_others_as_text(small):
    text = f"x{EOT}y<|pad|>z"
    ids = small.encode(text, allowed_special={"<|pad|>"})
    assert small.special_tokens["<|pad|>"] in ids and small.special_tokens[EOT] not in ids
    assert small.decode(ids) == text


def test_specials_never_merge_with_text(small):
    ids = small.encode(f"the{EOT}{EOT}the", allowed_special="all")
    eot = small.special_tokens[EOT]
    assert ids.count(eot) == 2 and ids == small.encode("the") + [eot, eot] + small.encode("the")


def test_constructor_checks_special_ids():
    vocab, merges = train_bpe("ab ab", 258, [EOT])
    with pytest.raises(ValueError, match="special token"):
        Tokenizer(vocab, merges, {EOT: 256})


# ------------------------------------------------------------------------------------------------
# Lookups, cache, save / load
# ------------------------------------------------------------------------------------------------


def test_lookups(gpt2):
    assert gpt2.vocab_size == 50257 and len(gpt2.merges) == 50000
    assert gpt2.id_to_token(3139) == b" capital"
    assert gpt2.token_to_id(b" capital") == 3139 == gpt2.token_to_id(" capital")
    assert gpt2.token_to_id(EOT) == 50256
    with pytest.raises(KeyError, match="unknown token id"):
        gpt2.id_to_token(60000)
    with pytest.raises(KeyError, match="not a token"):
        gpt2.token_to_id(b"not one token at all")


def test_gpt2_is_built_once(gpt2):
    assert Tokenizer.gpt2() is gpt2


def test_word_cache_is_bounded_and_transparent(gpt2):
    tok = Tokenizer(gpt2.vocab, gpt2.merges, gpt2.special_tokens, cache_size=50)
    words = " ".join(f"w{i}x" for i in range(500))
    assert tok.encode(words) == gpt2.encode(words) == tok.encode(words)
    assert 0 < len(tok._cache) <= 50


def test_save_load_round_trip(tmp_path, small, gpt2):
    for tok in (small, gpt2):
        path = tmp_path / "tok.json"
        tok.save(path)
        loaded = Tokenizer.load(path)
        assert loaded.vocab == tok.vocab and loaded.merges == tok.merges
        assert loaded.special_tokens == tok.special_tokens and loaded.pattern == tok.pattern
        text = f"Is this a dagger which I see before me?{EOT} 人人生而自由 🤗"
        assert loaded.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a labkit tokenizer file"):
        Tokenizer.load(tmp_path / "bad.json")


def test_trained_tokenizer_compresses_its_corpus(small):
    text = assets.corpus_text(["corpus-macbeth"])
    ids = small.encode(text)
    assert small.decode(ids) == text
    assert len(ids) < 0.5 * len(text.encode())  # 342 merges learned on this text halve it at least


def test_missing_byte_policy():
    vocab = {i: bytes([i]) for i in range(256)}
    del vocab[0x04]
    vocab[0x04] = b"\x05\x05"  # id 4 now means something else; byte 0x04 has no token
    strict = Tokenizer(vocab, [])
    with pytest.raises(ValueError, match="no token for byte"):
        strict.encode("a\x04b")
    dropping = Tokenizer(vocab, [], on_missing_byte="drop")
    assert dropping.decode(dropping.encode("a\x04b")) == "ab"


# ------------------------------------------------------------------------------------------------
# Incremental detokenizer
# ------------------------------------------------------------------------------------------------


def stream(tok, ids, **kw):
    detok = IncrementalDetokenizer(tok, **kw)
    pieces = [detok.feed(i) for i in ids]
    return pieces, detok.flush()


def test_incremental_detokenizer_holds_partial_characters(gpt2):
    text = "a😀b€"
    ids = [gpt2.token_to_id(bytes([b])) for b in text.encode()]  # one token per byte
    pieces, tail = stream(gpt2, ids)
    assert pieces == ["a", "", "", "", "😀", "b", "", "", "€"] and tail == ""


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=UTF8, max_size=80))
def test_incremental_detokenizer_equals_decode_on_real_streams(gpt2, text):
    ids = gpt2.encode(text, allowed_special="none")
    pieces, tail = stream(gpt2, ids)
    assert "".join(pieces) + tail == text
    assert all("\ufffd" not in p for p in pieces) or "\ufffd" in text


@settings(max_examples=150, deadline=None)
@given(ids=st.lists(st.integers(0, 50256), max_size=40))
def test_incremental_detokenizer_equals_decode_on_any_ids(gpt2, ids):
    pieces, tail = stream(gpt2, ids)
    assert "".join(pieces) + tail == gpt2.decode(ids)


def test_incremental_detokenizer_flush_and_specials(gpt2):
    partial = [gpt2.token_to_id(bytes([b])) for b in "€".encode()[:2]]
    pieces, tail = stream(gpt2, partial)
    assert pieces == ["", ""] and tail == "\ufffd"
    eot = gpt2.special_tokens[EOT]
    assert "".join(stream(gpt2, [464, eot, 3139], skip_special=True)[0]) == "The capital"
    assert "".join(stream(gpt2, [464, eot], skip_special=False)[0]) == "The" + EOT
    with pytest.raises(ValueError, match="unknown token id"):
        stream(gpt2, [70000])
    assert stream(gpt2, [70000, 464], unknown="skip")[0] == ["", "The"]


def test_ascii_text_streams_token_by_token(gpt2):
    text = string.ascii_letters + " " + string.punctuation
    ids = gpt2.encode(text)
    pieces, _ = stream(gpt2, ids)
    assert pieces == [gpt2.decode([i]) for i in ids]
