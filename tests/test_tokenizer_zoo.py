"""labkit.tokenizer_zoo: the offline HF / tiktoken tokenizers, the sample texts, and the counters.

Also pins two facts often misstated: BERT-uncased and GPT-2 both give 5 tokens for "The capital of
France is" (7 for BERT with [CLS]/[SEP]); GPT-2 has no padding token, so padding raises unless one
is set.
"""

from __future__ import annotations

import json
import tempfile

import pytest
import regex

from labkit import assets
from labkit import tokenizer_zoo as zoo
from labkit.tokenizer import Tokenizer
from labkit.tokenizer_zoo import (
    SAMPLE_TEXTS,
    UDHR_FILE,
    batch_capacity,
    compare_tokenizers,
    hf_bert_tokenizer,
    hf_gpt2_tokenizer,
    real_tokenizers,
    tiktoken_gpt2,
    token_stats,
    units_that_fit,
)

CAPITAL = "The capital of France is"


@pytest.fixture(scope="module")
def bert():
    return hf_bert_tokenizer()


@pytest.fixture(scope="module")
def gpt2():
    return Tokenizer.gpt2()


def test_hf_gpt2_is_the_real_vocabulary(gpt2):
    hf = hf_gpt2_tokenizer()
    assert len(hf) == 50257 and hf.eos_token == "<|endoftext|>" and hf.eos_token_id == 50256
    for text in SAMPLE_TEXTS.values():
        assert hf.encode(text) == gpt2.encode(text)


def test_gpt2_padding_needs_a_pad_token():
    """GPT-2's tokenizer has no pad token, so padding=... raises unless one is set."""
    with pytest.raises(ValueError, match="padding"):
        hf_gpt2_tokenizer()(["a b", "c"], padding=True)
    padded = hf_gpt2_tokenizer(pad_with_eos=True)(["a b", "c"], padding=True)
    assert padded["input_ids"][1][-1] == 50256 and padded["attention_mask"] == [[1, 1], [1, 0]]


def test_hf_bert_matches_the_shipped_tokenizer_json(bert):
    """Built from vocab.txt; the same package's tokenizer.json is an independent copy to check against."""
    from transformers import PreTrainedTokenizerFast

    reference = PreTrainedTokenizerFast(tokenizer_file=str(assets.path("bert-tokenizer-json")))
    assert len(bert) == len(reference) == 30522
    for text in [*SAMPLE_TEXTS.values(), "ÜBER naïve Café 東京 [MASK] don't"]:
        assert bert.encode(text) == reference.encode(text)
    assert bert.tokenize("Unbelievable") == ["unbelievable"]
    assert bert.convert_ids_to_tokens(bert.encode("hi"))[0] == "[CLS]"


def test_capital_of_france_bert_vs_gpt2(bert, gpt2):
    """It is often said that BERT produces more tokens; for this sentence both give 5."""
    assert len(gpt2.encode(CAPITAL)) == 5
    assert bert.tokenize(CAPITAL) == ["the", "capital", "of", "france", "is"]
    assert len(bert.encode(CAPITAL)) == 7  # with [CLS] and [SEP]
    assert token_stats(CAPITAL, bert)["tokens"] == token_stats(CAPITAL, gpt2)["tokens"] == 5


def test_tiktoken_gpt2_is_r50k(gpt2, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # tiktoken would cache its files here
    enc = tiktoken_gpt2()
    assert enc.name == "r50k_base" and enc.n_vocab == 50257 and enc.eot_token == 50256
    assert enc.encode(CAPITAL) == gpt2.encode(CAPITAL)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="disallowed special token"):
        enc.encode("<|endoftext|>")


def test_sample_texts_cover_the_languages_and_scripts():
    scripts = {"Russian": r"\p{Cyrillic}", "Chinese": r"\p{Han}", "Japanese": r"\p{Hiragana}",
               "Arabic": r"\p{Arabic}", "Hindi": r"\p{Devanagari}",
               "German": "[äöüß]", "French": "[éèàçê]", "Spanish": "[ñáéíóú]"}
    assert {"English", *scripts, "Python code"} <= set(SAMPLE_TEXTS)
    for lang, pattern in scripts.items():
        assert len(regex.findall(pattern, SAMPLE_TEXTS[lang])) >= 5, lang
    compile(SAMPLE_TEXTS["Python code"], "<sample>", "exec")  # real, valid Python
    assert "dedent" in SAMPLE_TEXTS["Python code"]


def test_udhr_file_names_its_source():
    doc = json.loads(UDHR_FILE.read_text(encoding="utf-8"))
    assert "217 A (III)" in doc["source"] and "OHCHR" in doc["source"] and doc["license"]
    for entry in doc["languages"].values():
        assert len(entry["articles"]) == 3 and all(a.strip() == a and a for a in entry["articles"])
    assert SAMPLE_TEXTS["English"].startswith("All human beings are born free and equal in dignity")


def test_token_stats_hand_worked(gpt2):
    stats = token_stats("hello world", gpt2)  # "hello" + " world": 2 tokens, 2 words, 11 chars
    assert stats == {"tokens": 2, "words": 2, "chars": 11, "bytes": 11, "tokens_per_word": 1.0,
                     "chars_per_token": 5.5, "bytes_per_token": 5.5}
    cjk = token_stats("東京", gpt2)
    assert cjk["chars"] == 2 and cjk["bytes"] == 6 and cjk["tokens"] == len(gpt2.encode("東京"))
    empty = token_stats("", gpt2)
    assert empty["tokens"] == empty["words"] == 0 and empty["chars_per_token"] == 0.0


def test_token_stats_accepts_every_kind_of_tokenizer(gpt2):
    text = SAMPLE_TEXTS["German"]
    counts = {token_stats(text, t)["tokens"]
              for t in (gpt2, hf_gpt2_tokenizer(), tiktoken_gpt2(), lambda s: gpt2.encode(s))}
    assert counts == {len(gpt2.encode(text))}
    # specials in the text are counted as text, not as one special id
    eot = "<|endoftext|>"
    assert token_stats(eot, gpt2)["tokens"] == len(gpt2.encode(eot, allowed_special="none")) > 1
    with pytest.raises(TypeError, match="cannot tokenize"):
        token_stats(text, object())
    with pytest.raises(TypeError, match="text must be str"):
        token_stats(b"bytes", gpt2)


def test_compare_tokenizers_rows(gpt2, bert):
    texts = {k: SAMPLE_TEXTS[k] for k in ("English", "Chinese", "Python code")}
    rows = compare_tokenizers(texts, {"gpt2": gpt2, "bert": bert})
    assert [(r["language"], r["tokenizer"]) for r in rows] == [
        (lang, name) for lang in texts for name in ("gpt2", "bert")
    ]
    for row in rows:
        tok = gpt2 if row["tokenizer"] == "gpt2" else bert
        assert row == {"language": row["language"], "tokenizer": row["tokenizer"],
                       **token_stats(texts[row["language"]], tok)}
    with pytest.raises(TypeError, match="two dicts"):
        compare_tokenizers(list(texts.values()), {"gpt2": gpt2})


def test_real_tokenizers_count_the_samples():
    found = real_tokenizers()
    assert len(found) == 3
    rows = compare_tokenizers(SAMPLE_TEXTS, found)
    by = {(r["language"], r["tokenizer"]): r for r in rows}
    gpt2_name, _, smol_name = found
    # English is GPT-2's home ground: far more characters per token there than in Hindi or Chinese.
    assert by[("English", gpt2_name)]["chars_per_token"] > 3 * by[("Hindi", gpt2_name)]["chars_per_token"]
    assert by[("English", gpt2_name)]["chars_per_token"] > 3 * by[("Chinese", gpt2_name)]["chars_per_token"]
    # SmolLM2's vocabulary, trained with code, packs Python tighter than GPT-2's.
    assert by[("Python code", smol_name)]["tokens"] < by[("Python code", gpt2_name)]["tokens"]


def test_units_that_fit_and_batch_capacity_hand_worked():
    assert units_that_fit(4096, 13, 10) == 3150  # 1.3 tokens per word: 40,960 / 13 = 3150.8
    assert units_that_fit(4096, 5, 2) == 1638  # 2.5 tokens per character
    assert units_that_fit(4096, 4096, 1) == 1 and units_that_fit(4095, 4096, 1) == 0
    assert batch_capacity(32, 100, 180) == 17  # 3,200-token budget / 180
    assert batch_capacity(32, 100, 100) == 32 and batch_capacity(1, 1, 2) == 0
    # integer arithmetic: no float rounding at large sizes
    assert units_that_fit(10**18 + 1, 3, 3) == 10**18 + 1


@pytest.mark.parametrize(
    ("fn", "args", "error"),
    [
        (units_that_fit, (4096, 0, 10), ValueError),
        (units_that_fit, (4096, -1, 10), ValueError),
        (units_that_fit, (4096.0, 13, 10), TypeError),
        (batch_capacity, (32, 100, 0), ValueError),
        (batch_capacity, (32, True, 100), TypeError),
    ],
)
def test_units_that_fit_and_batch_capacity_reject_bad_input(fn, args, error):
    with pytest.raises(error):
        fn(*args)


def test_translations_are_the_parallel_texts_only():
    """The per-language comparisons use translations of one passage; the Python source is not one."""
    assert "Python code" in zoo.SAMPLE_TEXTS and "Python code" not in zoo.TRANSLATIONS
    assert set(zoo.TRANSLATIONS) == set(zoo.udhr_texts())
