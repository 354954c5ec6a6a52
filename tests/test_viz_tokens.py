"""labkit.viz.tokens: the token views agree with the tokenizers they show, and the figures draw."""

import re

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from labkit import tokenizer_zoo as zoo  # noqa: E402
from labkit.tokenizer import Tokenizer  # noqa: E402
from labkit.viz import tokens as vt  # noqa: E402

TEXTS = ["The capital of France is Paris.", "naïve café — 東京タワー 🙂", "  two\n\nlines\twith tabs  "]


@pytest.fixture(scope="module")
def gpt2s():
    return {"labkit": Tokenizer.gpt2(), "hf": zoo.hf_gpt2_tokenizer(), "tiktoken": zoo.tiktoken_gpt2()}


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_are_the_tokenizers_own_tokens(gpt2s, text):
    ref = gpt2s["labkit"].encode(text)
    for name, tok in gpt2s.items():
        pieces = vt.token_pieces(text, tok)
        assert [p.id for p in pieces] == ref, name
        whole = [p for p in pieces if not p.partial]
        if len(whole) == len(pieces):  # no multi-byte character split across tokens
            assert "".join(p.text for p in pieces) == text, name


def test_split_characters_are_marked_partial(gpt2s):
    pieces = vt.token_pieces("🙂", gpt2s["labkit"])
    raw = b"".join(gpt2s["labkit"].vocab[p.id] for p in pieces)
    assert raw == "🙂".encode()
    assert any(p.partial for p in pieces) == (len(pieces) > 1)


def test_bert_marks_its_special_tokens():
    pieces = vt.token_pieces("The capital of France is", zoo.hf_bert_tokenizer())
    assert pieces[0].special and pieces[0].text == "[CLS]" and pieces[-1].text == "[SEP]"
    assert not any(p.special for p in pieces[1:-1])


def test_html_shows_every_id_and_escapes_text(gpt2s):
    text = "<b>bold</b> & x"
    page = vt.tokens_html(text, gpt2s["labkit"])
    ids = [int(i) for i in re.findall(r"\b\d+\b", re.sub(r"<[^>]+>", " ", page))]
    for tid in gpt2s["labkit"].encode(text):
        assert tid in ids
    assert "<b>" not in page and "</b>" not in page and "&lt;" in page and "&amp;" in page


def test_explorer_updates_when_the_text_changes(gpt2s):
    box = vt.token_explorer({"GPT-2": gpt2s["labkit"]}, text="hello")
    textarea, out = box.children[0], box.children[-1]
    before = out.value
    textarea.value = "a completely different sentence"
    assert out.value != before and str(gpt2s["labkit"].encode(" completely")[0]) in out.value
    assert "text/html" in box._repr_mimebundle_()
    with pytest.raises(ValueError, match="at least one tokenizer"):
        vt.token_explorer({})


def test_figures_draw():
    rows = [{"language": lang, "tokenizer": t, "fit": n} for lang, n in (("en", 3000), ("de", 2500))
            for t in ("GPT-2", "BERT")]
    for fig in (vt.plot_context_fit(rows, "fit", "words that fit"),
                vt.plot_compression([(0, 1.0), (100, 2.1), (1000, 3.4)]),
                vt.embedding_lookup_figure([1, 3, 3], np.random.default_rng(0).normal(size=(8, 4)))):
        assert isinstance(fig, Figure)
        fig.canvas.draw()
