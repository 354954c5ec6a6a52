"""Exact id equality of labkit's tokenizers with real ones.

GPT-2: `Tokenizer.gpt2()` against transformers' GPT2Tokenizer and tiktoken's r50k_base, all three
built offline from the same vocab.json / merges.txt, on the Shakespeare corpus (1.27 MB), the UDHR
samples in nine languages and Python standard-library source (over 1.5 MB in all), and on
Hypothesis strings.

SmolLM2: `Tokenizer.from_gguf` against the tokenizer transformers builds from the same GGUF file,
and against the real SmolLM2 pre-tokenization (Digits(individual_digits=True) then ByteLevel, as in
SmolLM2's tokenizer.json and llama.cpp's "smollm" pre-type). They differ: transformers 5.24's GGUF
converter has no entry for tokenizer.ggml.pre = "smollm" and falls back to plain ByteLevel, which
does not cut digits out first. On text without digits the three agree; with digits labkit follows
the real tokenizer (see test_hf_gguf_conversion_differs_only_on_digits).

Generated text draws from characters assigned by Unicode 14 (Python 3.11's unicodedata): the
`regex` module knows newer Unicode versions than the Rust regex engines inside tiktoken and HF
tokenizers, so a character assigned since (e.g. U+3E3B6, a letter to `regex` and unassigned to
them) is split differently by the engines, through no fault of the BPE.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import assets
from labkit.tokenizer import GPT2_SPLIT_PATTERN, SMOLLM_SPLIT_PATTERN, Tokenizer, read_gguf_metadata
from labkit.tokenizer_zoo import SAMPLE_TEXTS, hf_gpt2_tokenizer, stdlib_sources, tiktoken_gpt2

EOT = "<|endoftext|>"
# Characters with a fixed meaning in every engine's Unicode tables, plus the spots where pre-tokenizers
# tend to disagree: the whitespace family, contractions, digits, symbols.
ASSIGNED = st.characters(codec="utf-8", exclude_categories=("Cn",))
TRICKY = st.sampled_from([" ", "  ", "\n", "\r\n", "\t", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0",
                          "\u2028", "\u3000", "'s", "'t", "'re", "'ll", "'d", "'m", "'ve", "'S", "1", "23",
                          "²", "½", "٣", "!!", "é", "中文", "🤗", "👍🏽", "\u200d", "\ufeff", "a"])
TEXT = st.lists(ASSIGNED | TRICKY, max_size=60).map("".join)


@pytest.fixture(scope="module")
def documents() -> dict[str, str]:
    docs = {name: assets.corpus_text([name]) for name in assets.CORPUS_ASSETS}
    docs.update({f"udhr-{lang}": text for lang, text in SAMPLE_TEXTS.items()})
    docs.update({f"stdlib-{name}": code for name, code in stdlib_sources().items()})
    return docs


@pytest.fixture(scope="module")
def gpt2():
    return Tokenizer.gpt2()


@pytest.fixture(scope="module")
def hf():
    return hf_gpt2_tokenizer()


@pytest.fixture(scope="module")
def tt():
    return tiktoken_gpt2()


# ------------------------------------------------------------------------------------------------
# GPT-2
# ------------------------------------------------------------------------------------------------


def test_parity_texts_are_big_and_varied(documents):
    total = sum(len(t.encode()) for t in documents.values())
    assert total >= 1_500_000, f"only {total} bytes of parity text"
    assert sum(len(t.encode()) for k, t in documents.items() if k.startswith("stdlib-")) >= 200_000
    assert {"udhr-Chinese", "udhr-Japanese", "udhr-Arabic", "udhr-Hindi", "udhr-Russian"} <= set(documents)


def test_capital_of_france_everywhere(gpt2, hf, tt):
    text = "The capital of France is"
    assert gpt2.encode(text) == hf.encode(text) == tt.encode(text) == [464, 3139, 286, 4881, 318]


def test_gpt2_matches_hf_and_tiktoken_on_documents(documents, gpt2, hf, tt):
    for name, text in documents.items():
        ids = gpt2.encode(text)
        assert ids == tt.encode_ordinary(text), f"labkit and tiktoken differ on {name}"
        assert ids == hf.encode(text), f"labkit and HF differ on {name}"
        assert gpt2.decode(ids) == text == tt.decode(ids)


def test_gpt2_decode_matches_hf(documents, gpt2, hf):
    for name in ("udhr-Japanese", "udhr-Hindi", "stdlib-textwrap.py"):
        ids = gpt2.encode(documents[name])
        assert gpt2.decode(ids) == hf.decode(ids, clean_up_tokenization_spaces=False), name


@settings(max_examples=400, deadline=None)
@given(text=TEXT)
def test_gpt2_matches_hf_and_tiktoken_on_generated_text(gpt2, hf, tt, text):
    ids = gpt2.encode(text, allowed_special="none")
    assert ids == tt.encode_ordinary(text)
    assert ids == hf.encode(text)


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(TEXT | st.just(EOT), max_size=6))
def test_gpt2_special_tokens_match(gpt2, hf, tt, parts):
    text = "".join(parts)
    ids = gpt2.encode(text, allowed_special="all")
    assert ids == tt.encode(text, allowed_special="all") == hf.encode(text)
    assert gpt2.decode(ids) == text


# ------------------------------------------------------------------------------------------------
# SmolLM2 from its GGUF file
# ------------------------------------------------------------------------------------------------

GGUF = "smollm2-135m-instruct-q4_1"
SMOL_SPECIALS = ["<|im_start|>", "<|im_end|>", EOT, "<file_sep>", "<|im_start", "\x04", "\xff"]


@pytest.fixture(scope="module")
def smol() -> Tokenizer:
    return Tokenizer.from_gguf(assets.path(GGUF))


@pytest.fixture(scope="module")
def hf_gguf():
    from transformers import AutoTokenizer

    path = assets.path(GGUF)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def smol_real(hf_gguf):
    """The SmolLM2 tokenizer as its tokenizer.json defines it: transformers' conversion of the GGUF
    vocabulary, merges and special tokens, with the real pre-tokenizer put back."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import pre_tokenizers

    real = HFTokenizer.from_str(hf_gguf.backend_tokenizer.to_str())
    real.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    return real


def test_smollm2_metadata(smol, hf_gguf):
    assert smol.vocab_size == len(hf_gguf) == 49152
    assert smol.bos_token_id == hf_gguf.bos_token_id and smol.eos_token_id == hf_gguf.eos_token_id
    assert smol.pad_token_id == hf_gguf.pad_token_id
    assert smol.pattern == SMOLLM_SPLIT_PATTERN
    for name in ("<|im_start|>", "<|im_end|>", EOT):
        assert smol.special_tokens[name] == hf_gguf.convert_tokens_to_ids(name)


def test_smollm2_matches_real_tokenizer_on_documents(documents, smol, smol_real):
    for name, text in documents.items():
        ids = smol.encode(text)
        assert ids == smol_real.encode(text, add_special_tokens=False).ids, f"differ on {name}"
        assert smol.decode(ids) == text


def test_smollm2_chat_turn(smol, smol_real, hf_gguf):
    text = "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    ids = smol.encode(text, allowed_special="all")
    assert ids == smol_real.encode(text, add_special_tokens=False).ids
    assert ids[0] == smol.special_tokens["<|im_start|>"] and ids.count(smol.special_tokens["<|im_end|>"]) == 1
    assert smol.decode(ids) == text
    with pytest.raises(ValueError, match="special token"):
        smol.encode(text)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(TEXT | st.sampled_from(SMOL_SPECIALS), max_size=5))
def test_smollm2_matches_real_tokenizer_on_generated_text(smol, smol_real, parts):
    text = "".join(parts)
    assert smol.encode(text, allowed_special="all") == smol_real.encode(text, add_special_tokens=False).ids


NO_DIGITS = st.characters(codec="utf-8", exclude_categories=("Cn", "Nd", "Nl", "No"))


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.text(alphabet=NO_DIGITS | st.sampled_from(" \n'sé🤗"), max_size=60)
                      | st.sampled_from(SMOL_SPECIALS), max_size=5))
def test_smollm2_matches_hf_gguf_conversion_without_digits(smol, hf_gguf, parts):
    text = "".join(parts)
    assert smol.encode(text, allowed_special="all") == hf_gguf.encode(text, add_special_tokens=False)


def test_smollm2_vs_hf_gguf_conversion_on_the_corpus(smol, hf_gguf):
    """With every digit removed the two agree on the whole corpus; as it is, they first part ways at
    a run of newlines before a speaker's number ("...\n\n1 Clown"), which the real tokenizer keeps whole."""
    corpus = assets.corpus_text()
    no_digits = regex.sub(r"\p{N}", "", corpus)
    assert smol.encode(no_digits) == hf_gguf.encode(no_digits, add_special_tokens=False)
    ours, theirs = smol.encode(corpus), hf_gguf.encode(corpus, add_special_tokens=False)
    first = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    assert regex.fullmatch(r"\s\s+\p{N}", smol.decode(ours[first:first + 2]))


def test_hf_gguf_conversion_differs_only_on_digits(smol, smol_real, hf_gguf):
    """Hand-worked: "a  1" is cut "a" | "  " | "1" when digits are cut out first (real SmolLM2,
    llama.cpp), but "a" | " " | " 1" by the plain GPT-2 regex (transformers' GGUF conversion)."""
    text = "a  1"
    assert regex.findall(SMOLLM_SPLIT_PATTERN, text) == ["a", "  ", "1"]
    assert regex.findall(GPT2_SPLIT_PATTERN, text) == ["a", " ", " 1"]
    ours = smol.encode(text)
    assert ours == smol_real.encode(text, add_special_tokens=False).ids
    assert ours == [smol.token_to_id(b"a"), smol.token_to_id(b"  "), smol.token_to_id(b"1")]
    assert hf_gguf.encode(text, add_special_tokens=False) != ours, (
        "transformers' GGUF conversion now cuts digits like SmolLM2: update this module's docstring")


def test_smollm2_drops_bytes_it_has_no_token_for(smol, smol_real):
    missing = [b for b in range(256) if smol._byte_ids[b] is None]
    assert 0x04 in missing and 0x41 not in missing and len(missing) == 21
    text = "A\x04B"
    assert smol.encode(text) == smol_real.encode(text, add_special_tokens=False).ids
    assert smol.decode(smol.encode(text)) == "AB"


def _two_stage_smollm_split(text: str) -> list[str]:
    """Cut every \\p{N} out on its own, then the GPT-2 regex on each stretch between (llama.cpp's way)."""
    pieces = []
    for i, part in enumerate(regex.split(r"(\p{N})", text)):
        pieces.extend([part] if i % 2 else regex.findall(GPT2_SPLIT_PATTERN, part))
    return pieces


@settings(max_examples=400, deadline=None)
@given(text=st.lists(ASSIGNED | TRICKY | st.sampled_from(["9", " 9", "  9", "9 ", "\n9"]), max_size=40)
       .map("".join))
def test_smollm_single_regex_equals_two_stage_split(text):
    assert regex.findall(SMOLLM_SPLIT_PATTERN, text) == _two_stage_smollm_split(text)


# ------------------------------------------------------------------------------------------------
# from_gguf on small files written here
# ------------------------------------------------------------------------------------------------


def _write_gguf(path: Path, pre: str, model: str = "gpt2") -> None:
    import gguf

    from labkit.tokenizer import bytes_to_unicode

    alphabet = list(bytes_to_unicode().values())
    tokens = ["<|endoftext|>", *alphabet, "ab", "abab"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3] + [1] * (len(tokens) - 1))
    writer.add_token_merges(["a b", "ab ab"])
    writer.add_eos_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_float32("test.f32", 0.5)
    writer.add_array("test.ints", [3, -1, 7])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()


def test_from_gguf_small_file(tmp_path):
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, "gpt2")
    tok = Tokenizer.from_gguf(path)
    assert tok.vocab_size == 259 and tok.eos_token_id == 0 and tok.special_tokens == {EOT: 0}
    ab, abab = tok.token_to_id(b"ab"), tok.token_to_id(b"abab")
    assert tok.encode("ababab cab") == [abab, ab, tok.token_to_id(b" "), tok.token_to_id(b"c"), ab]
    assert tok.encode(f"ab{EOT}", allowed_special="all") == [ab, 0]


def test_read_gguf_metadata_matches_the_gguf_package(tmp_path):
    import gguf

    path = tmp_path / "tiny.gguf"
    _write_gguf(path, "gpt2")
    ours = read_gguf_metadata(path)
    theirs = {key: field.contents() for key, field in gguf.GGUFReader(str(path)).fields.items()}
    theirs = {k: v for k, v in theirs.items() if not k.startswith("GGUF.")}  # the reader's own header fields
    assert ours == theirs
    assert ours["tokenizer.ggml.merges"] == ["a b", "ab ab"] and ours["test.ints"] == [3, -1, 7]
    with pytest.raises(ValueError, match="not a GGUF"):
        read_gguf_metadata(assets.path("gpt2-merges"))


def test_from_gguf_rejects_what_it_cannot_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        Tokenizer.from_gguf(tmp_path / "missing.gguf")
    _write_gguf(tmp_path / "qwen.gguf", "qwen2")
    with pytest.raises(NotImplementedError, match="tokenizer.ggml.pre is 'qwen2'"):
        Tokenizer.from_gguf(tmp_path / "qwen.gguf")
    _write_gguf(tmp_path / "spm.gguf", "default", model="llama")
    with pytest.raises(NotImplementedError, match="tokenizer.ggml.model is 'llama'"):
        Tokenizer.from_gguf(tmp_path / "spm.gguf")
