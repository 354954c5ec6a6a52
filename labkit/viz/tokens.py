"""Figures and explorers for chapter 1 (text to tokens): coloured tokens, merge traces, context plots.

Every view here has a static form that needs no widget frontend:

    tokens_html(text, tokenizer) -> str          # coloured tokens with their ids, plain HTML
    show_tokens(text, tokenizer)                 # the same, wrapped for display in a notebook
    token_explorer({"GPT-2": tok, ...})          # ipywidgets: type text, pick a tokenizer, see tokens
    merge_steps_html(steps), show_merge_steps    # a BPE trace: one row of tokens per merge
    plot_context_fit(rows, ...)                  # how many words / characters fit in a context
    plot_compression(points)                     # bytes per token as merges are learned
    embedding_lookup_figure(ids, weight)         # E = W[X] drawn as a gather of rows

The explorer is an ipywidgets box whose display bundle also carries the static HTML rendering, so a
frontend without a widget manager (nbconvert, GitHub, a plain console) shows the tokens instead of
"VBox(...)". Without ipywidgets installed it returns the static view directly.

Tokenizers understood (duck-typed): labkit's `Tokenizer` (`encode`, `vocab: dict[int, bytes]`),
Hugging Face tokenizers (`convert_ids_to_tokens`; byte-level ones such as GPT-2 are mapped back to
bytes), and tiktoken encodings (`decode_single_token_bytes`). What this module does not do: train or
encode anything itself (labkit.tokenizer does), or measure (labkit.tokenizer_zoo does).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Bar colours for plots (one per tokenizer), readable by colour-blind readers (Okabe-Ito).
BAR_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")
# Pastel backgrounds, distinguishable next to each other; tokens cycle through them.
PALETTE = ("#ffd6a5", "#caffbf", "#9bf6ff", "#bdb2ff", "#ffc6ff", "#fdffb6", "#a0c4ff", "#ffadad")
SPECIAL_BG = "#d0d0d0"


@dataclass(frozen=True)
class TokenPiece:
    id: int  # token id
    text: str  # what the token stands for, printable (partial UTF-8 shown as \x.. escapes)
    special: bool = False  # a special token ([CLS], <|endoftext|>, ...) rather than text
    partial: bool = False  # the token's bytes are not whole UTF-8 characters


# ---------------------------------------------------------------------------------------------------
# From a tokenizer to (id, printable piece) pairs


def _bytes_piece(tid: int, raw: bytes, special: bool = False) -> TokenPiece:
    try:
        return TokenPiece(tid, raw.decode("utf-8"), special)
    except UnicodeDecodeError:
        # A multi-byte character split across tokens: show the bytes this token holds.
        return TokenPiece(tid, raw.decode("utf-8", errors="backslashreplace"), special, partial=True)


def _hf_byte_decoder(tokenizer: Any) -> dict[str, int] | None:
    """The unicode->byte map of a byte-level HF tokenizer (GPT-2 family), or None for WordPiece etc."""
    dec = getattr(tokenizer, "byte_decoder", None)
    if dec:
        return dec
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and "ByteLevel" in type(backend.pre_tokenizer).__name__ + repr(backend.pre_tokenizer):
        from labkit.tokenizer import bytes_to_unicode

        return {u: b for b, u in bytes_to_unicode().items()}
    return None


def token_pieces(text: str, tokenizer: Any, add_special_tokens: bool = True) -> list[TokenPiece]:
    """Encode `text` and return one TokenPiece per token, in order.

    `add_special_tokens` matters for Hugging Face tokenizers only (BERT adds [CLS] ... [SEP]).
    """
    if hasattr(tokenizer, "decode_single_token_bytes"):  # tiktoken
        ids = tokenizer.encode(text, allowed_special="all")
        return [_bytes_piece(i, tokenizer.decode_single_token_bytes(i)) for i in ids]
    if hasattr(tokenizer, "convert_ids_to_tokens"):  # Hugging Face
        ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        toks = tokenizer.convert_ids_to_tokens(ids)
        specials = set(getattr(tokenizer, "all_special_ids", ()))
        dec = _hf_byte_decoder(tokenizer)
        out = []
        for i, t in zip(ids, toks):
            if i in specials:
                out.append(TokenPiece(i, t, special=True))
            elif dec is not None:
                out.append(_bytes_piece(i, bytes(dec[c] for c in t)))
            else:
                out.append(TokenPiece(i, t))
        return out
    vocab = getattr(tokenizer, "vocab", None)
    if isinstance(vocab, Mapping):  # labkit.tokenizer.Tokenizer
        ids = tokenizer.encode(text, allowed_special="all")
        special_ids = set(getattr(tokenizer, "special_tokens", {}).values())
        return [_bytes_piece(i, vocab[i], special=i in special_ids) for i in ids]
    raise TypeError(
        f"token_pieces: cannot read tokens from a {type(tokenizer).__name__}; pass a labkit Tokenizer, "
        "a Hugging Face tokenizer or a tiktoken Encoding"
    )


def pieces_from_ids(ids: Sequence[int], vocab: Mapping[int, bytes]) -> list[TokenPiece]:
    """TokenPieces for ids you already have, read from a `vocab` (id -> bytes) such as train_bpe's."""
    return [_bytes_piece(int(i), vocab[int(i)]) for i in ids]


# ---------------------------------------------------------------------------------------------------
# Static HTML


def _visible(s: str) -> str:
    """HTML-escape and make whitespace visible: a space is a faint dot, a newline an arrow."""
    s = html.escape(s)
    s = s.replace(" ", '<span style="color:#888">\u00b7</span>')
    s = s.replace("\n", '<span style="color:#888">\u21b5</span>').replace("\t", "\u21e5")
    return s


def pieces_html(pieces: Sequence[TokenPiece], show_ids: bool = True) -> str:
    """One inline box per token: its text on a coloured background, its id underneath."""
    boxes = []
    for k, p in enumerate(pieces):
        bg = SPECIAL_BG if p.special else PALETTE[k % len(PALETTE)]
        label = _visible(p.text) if p.text else "&#8203;"
        style = f"background:{bg};padding:1px 2px;border-radius:3px;font-family:monospace;white-space:pre"
        if p.partial:
            style += ";font-style:italic;border:1px dashed #666"
        tip = f"id {p.id}" + (" (part of a character)" if p.partial else "")
        idline = (
            f'<span style="display:block;font-size:70%;color:#555;font-family:monospace">{p.id}</span>'
            if show_ids
            else ""
        )
        boxes.append(
            f'<span title="{tip}" style="display:inline-block;text-align:center;margin:1px;vertical-align:top">'
            f'<span style="display:block;{style}">{label}</span>{idline}</span>'
        )
    return '<div style="line-height:1.1">' + "".join(boxes) + "</div>"


def tokens_html(text: str, tokenizer: Any, show_ids: bool = True, add_special_tokens: bool = True) -> str:
    """Coloured tokens of `text` under `tokenizer`, with a one-line summary, as an HTML string."""
    pieces = token_pieces(text, tokenizer, add_special_tokens=add_special_tokens)
    n_chars, n_bytes = len(text), len(text.encode("utf-8"))
    ratio = f"{n_chars / len(pieces):.2f}" if pieces else "n/a"
    summary = (
        f'<div style="font-size:85%;color:#333;margin-bottom:3px">{len(pieces)} tokens, {n_chars} characters, '
        f"{n_bytes} UTF-8 bytes ({ratio} characters per token)</div>"
    )
    return summary + pieces_html(pieces, show_ids)


def show_tokens(text: str, tokenizer: Any, show_ids: bool = True, add_special_tokens: bool = True):
    """`tokens_html` wrapped as an IPython HTML object (the static explorer)."""
    from IPython.display import HTML

    return HTML(tokens_html(text, tokenizer, show_ids, add_special_tokens))


def merge_steps_html(steps: Sequence[tuple[str, Sequence[TokenPiece]]], show_ids: bool = True) -> str:
    """A table with one row per stage of a BPE trace: (caption, pieces) pairs, e.g. before/after a merge."""
    rows = "".join(
        f'<tr><td style="text-align:left;padding-right:8px;vertical-align:top">{html.escape(caption)}</td>'
        f'<td style="text-align:left">{pieces_html(pieces, show_ids)}</td></tr>'
        for caption, pieces in steps
    )
    return f"<table>{rows}</table>"


def show_merge_steps(steps: Sequence[tuple[str, Sequence[TokenPiece]]], show_ids: bool = True):
    """`merge_steps_html` wrapped as an IPython HTML object."""
    from IPython.display import HTML

    return HTML(merge_steps_html(steps, show_ids))


# ---------------------------------------------------------------------------------------------------
# The widget


def token_explorer(tokenizers: Mapping[str, Any], text: str = "The capital of France is Paris.", rows: int = 3):
    """An interactive explorer: a text box and a tokenizer picker over the live coloured tokens.

    Returns an ipywidgets VBox whose display bundle also holds the static HTML of the initial text,
    so it degrades to a picture of the tokens where widgets cannot render. Without ipywidgets it
    returns that static view (one block per tokenizer).
    """
    if not tokenizers:
        raise ValueError("token_explorer: pass at least one tokenizer, e.g. {'GPT-2': Tokenizer.gpt2()}")

    def static(t: str) -> str:
        return "".join(
            f"<h4 style='margin:6px 0 2px'>{html.escape(name)}</h4>{tokens_html(t, tok)}"
            for name, tok in tokenizers.items()
        )

    try:
        import ipywidgets as w
    except ImportError:
        from IPython.display import HTML

        return HTML(static(text))

    class _Explorer(w.VBox):
        def _repr_mimebundle_(self, **kwargs):
            data = super()._repr_mimebundle_(**kwargs) or {}
            data["text/html"] = static(box_text.value)
            return data

    box_text = w.Textarea(value=text, rows=rows, layout=w.Layout(width="100%"))
    pick = w.ToggleButtons(options=list(tokenizers), value=next(iter(tokenizers)))
    ids_box = w.Checkbox(value=True, description="show ids", indent=False)
    out = w.HTML()

    def refresh(_=None) -> None:
        out.value = tokens_html(box_text.value, tokenizers[pick.value], show_ids=ids_box.value)

    for widget in (box_text, pick, ids_box):
        widget.observe(refresh, names="value")
    refresh()
    return _Explorer([box_text, w.HBox([pick, ids_box]), out])


# ---------------------------------------------------------------------------------------------------
# matplotlib figures


def plot_context_fit(rows: Sequence[Mapping[str, Any]], value: str, ylabel: str, title: str = "", ax=None,
                     fmt: str = "{:,.0f}"):
    """Grouped bars: one group per language, one bar per tokenizer, height `row[value]`. Returns the Figure
    (drawn on `ax` when given).

    rows: dicts with at least "language", "tokenizer" and the `value` key (e.g. words that fit).
    fmt: how each bar's label is written ("{:,.1f}" for fractional values).
    """
    import matplotlib
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    langs = list(dict.fromkeys(r["language"] for r in rows))
    toks = list(dict.fromkeys(r["tokenizer"] for r in rows))
    table = {(r["language"], r["tokenizer"]): r[value] for r in rows}
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 * len(langs) + 2, 3.2))
    width = 0.8 / len(toks)
    x = np.arange(len(langs))
    for k, tok in enumerate(toks):
        heights = [table.get((lang, tok), np.nan) for lang in langs]
        bars = ax.bar(
            x + (k - (len(toks) - 1) / 2) * width, heights, width, label=tok, color=BAR_COLORS[k % len(BAR_COLORS)]
        )
        ax.bar_label(bars, fmt=fmt, fontsize=7, padding=1)
    ax.set_xticks(x, langs)
    ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return ax.figure


def plot_compression(points: Sequence[tuple[int, float]], title: str = "", ax=None):
    """Line plot of (number of merges, bytes per token) pairs: how BPE shortens text. Returns the Figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    xs, ys = zip(*points)
    ax.plot(xs, ys, marker="o", markersize=3)
    ax.set_xlabel("merges learned (vocabulary = 256 + merges)")
    ax.set_ylabel("UTF-8 bytes per token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return ax.figure


def embedding_lookup_figure(ids: Sequence[int], weight, max_rows: int = 16):
    """E = W[X] drawn as a gather: the table W (V x D) with the looked-up rows marked, and E (S x D).

    weight: a (V, D) tensor or array, small enough to draw (V <= max_rows is shown in full).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    w = np.asarray(weight.detach().cpu() if hasattr(weight, "detach") else weight, dtype=float)  # (V, D)
    ids = [int(i) for i in ids]
    if w.ndim != 2 or w.shape[0] > max_rows:
        raise ValueError(
            f"embedding_lookup_figure: weight must be (V, D) with V <= {max_rows}, got {w.shape}; "
            "draw a small table (e.g. nn.Embedding(10, 6))"
        )
    e = w[ids]  # (S, D)
    lim = np.abs(w).max()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(8, 3.2), gridspec_kw={"width_ratios": [1, 1]})
    a0.imshow(w, cmap="coolwarm", vmin=-lim, vmax=lim, aspect="auto")
    a0.set_title(f"W: vocabulary x dim = {w.shape[0]} x {w.shape[1]}")
    a0.set_ylabel("token id")
    a0.set_yticks(range(w.shape[0]))
    for i in set(ids):
        a0.add_patch(plt.Rectangle((-0.5, i - 0.5), w.shape[1], 1, fill=False, lw=2, ec="black"))
    a1.imshow(e, cmap="coolwarm", vmin=-lim, vmax=lim, aspect="auto")
    a1.set_title(f"E = W[X]: seq_len x dim = {e.shape[0]} x {e.shape[1]}")
    a1.set_yticks(range(len(ids)), [f"pos {p}: id {i}" for p, i in enumerate(ids)])
    for a in (a0, a1):
        a.set_xlabel("embedding dimension")
    fig.tight_layout()
    return fig
