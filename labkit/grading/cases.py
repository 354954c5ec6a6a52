"""Cases: the arguments of one call (`Call`, `case`, `args`) and random generators (rng -> value)."""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any

from labkit.grading.compare import short

# --------------------------------------------------------------------------------------------------
# Cases: the arguments of one call
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Call:
    """The arguments of one call: positional `args` and keyword `kwargs`."""

    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)

    def apply(self, fn: Callable) -> Any:
        return fn(*self.args, **self.kwargs)

    def render(self, name: str, params: Sequence[str] = (), limit: int = 240) -> str:
        """`name(a=1, b='x')`, naming positional arguments after `params` when known."""
        parts = []
        for i, a in enumerate(self.args):
            label = f"{params[i]}=" if i < len(params) else ""
            parts.append(label + short(a, limit // 2))
        parts += [f"{k}={short(v, limit // 2)}" for k, v in self.kwargs.items()]
        return f"{name}({', '.join(parts)})"


def case(*args: Any, **kwargs: Any) -> Call:
    """One fixed case: `case([1, 2, 3], pair=(1, 2))` is the call f([1, 2, 3], pair=(1, 2))."""
    return Call(args, kwargs)


def copy_call(call: Call) -> Call:
    # Each side gets its own copy of the inputs; objects that cannot be copied are shared.
    try:
        return copy.deepcopy(call)
    except Exception:
        return Call(tuple(call.args), dict(call.kwargs))


def _as_call(x: Any) -> Call:
    # A Call stays; a tuple is the positional arguments; anything else is the single argument.
    if isinstance(x, Call):
        return x
    if isinstance(x, tuple):
        return Call(x, {})
    return Call((x,), {})


# --------------------------------------------------------------------------------------------------
# Random case generators: each is a callable rng -> value (rng is a random.Random)
# --------------------------------------------------------------------------------------------------

Gen = Callable[[random.Random], Any]


def ints(lo: int, hi: int) -> Gen:
    """An int in [lo, hi] (both included)."""
    if lo > hi:
        raise ValueError(f"ints({lo}, {hi}): lo must be <= hi")
    return lambda rng: rng.randint(lo, hi)


def floats(lo: float, hi: float) -> Gen:
    """A float uniform in [lo, hi)."""
    return lambda rng: rng.uniform(lo, hi)


def choice(values: Sequence[Any]) -> Gen:
    """One of `values` (copied, so a check cannot alter the pool)."""
    pool = list(values)
    if not pool:
        raise ValueError("choice([]): give at least one value")
    return lambda rng: copy.deepcopy(rng.choice(pool))


def lists(elem: Gen, min_len: int = 0, max_len: int = 10) -> Gen:
    """A list of min_len..max_len values drawn from `elem`."""
    return lambda rng: [elem(rng) for _ in range(rng.randint(min_len, max_len))]


def shapes(ndim: int | tuple[int, int] = (1, 3), max_dim: int = 8, min_dim: int = 1) -> Gen:
    """A shape tuple of `ndim` dimensions (or a count in the (lo, hi) range), each in [min_dim, max_dim]."""
    lo, hi = (ndim, ndim) if isinstance(ndim, int) else ndim
    return lambda rng: tuple(rng.randint(min_dim, max_dim) for _ in range(rng.randint(lo, hi)))


def token_ids(vocab_size: int, min_len: int = 0, max_len: int = 32) -> Gen:
    """A list of token ids in [0, vocab_size)."""
    if vocab_size < 1:
        raise ValueError(f"token_ids: vocab_size must be >= 1, got {vocab_size}")
    return lambda rng: [rng.randrange(vocab_size) for _ in range(rng.randint(min_len, max_len))]


def pairs(vocab_size: int) -> Gen:
    """A pair of token ids (a, b), each in [0, vocab_size)."""
    return lambda rng: (rng.randrange(vocab_size), rng.randrange(vocab_size))


_WORDS = (
    "the token tokens tokenizer text tensor hello world byte pair merge model cache attention "
    "don't it's we'll I'm The Hello A an of to and in 0 1 42 2024 3.14 x y z"
).split()
_UNICODE_WORDS = [
    "naïve",
    "café",
    "Straße",
    "façade",
    "niño",
    "smörgåsbord",
    "ελληνικά",
    "привет",
    "日本語",
    "中文",
    "한국어",
    "עברית",
    "العربية",
    "हिन्दी",
    "😀",
    "🚀🚀",
    "👩‍💻",
    "🇫🇷",
    "e\u0301",
    "Å",
    "\u00a0",
    "ﬁ",
    "Ω",
    "𝔘𝔫𝔦",
    "\u200b",
]
_PUNCT = list(".,;:!?'\"()[]{}-_/\\@#$%&*+=<>|~^`")
_SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", " \n ", "\r\n", "\t\t", "    "]


def texts(kind: str = "mixed", min_len: int = 0, max_len: int = 60) -> Gen:
    """A string of about min_len..max_len characters that looks like text.

    kind: "ascii" (words, digits, punctuation, single spaces), "unicode" (adds accented, Greek,
    Cyrillic, CJK, emoji, ZWJ sequences, combining marks), "whitespace" (adds runs of spaces, tabs,
    newlines, CRLF, leading and trailing blanks), "mixed" (one of the three at random per text).
    """
    kinds = ("ascii", "unicode", "whitespace")
    if kind not in kinds + ("mixed",):
        raise ValueError(f"texts(kind={kind!r}): kind must be one of {kinds + ('mixed',)}")

    def gen(rng: random.Random) -> str:
        k = rng.choice(kinds) if kind == "mixed" else kind
        target = rng.randint(min_len, max_len)
        out: list[str] = []
        size = 0
        while size < target:
            r = rng.random()
            if k == "unicode" and r < 0.35:
                piece = rng.choice(_UNICODE_WORDS)
            elif r < 0.75:
                piece = rng.choice(_WORDS)
            elif r < 0.88:
                piece = rng.choice(_PUNCT)
            else:
                piece = "".join(chr(rng.randint(33, 126)) for _ in range(rng.randint(1, 4)))
            sep = rng.choice(_SPACES) if k == "whitespace" else " "
            out.append(piece + sep)
            size += len(piece) + len(sep)
        s = "".join(out)[:target]
        if k == "whitespace" and s and rng.random() < 0.3:
            s = rng.choice(_SPACES) + s
        return s

    return gen


def tensors(shape: tuple[int, ...] | Gen, dtype: Any = "float32", low: float = -1.0, high: float = 1.0) -> Gen:
    """A CPU torch tensor of `shape` (a tuple or a shape generator): floats uniform in [low, high),
    ints uniform in [low, high). Imports torch only when called."""

    def gen(rng: random.Random):
        import torch

        dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        shp = shape(rng) if callable(shape) else tuple(shape)
        g = torch.Generator().manual_seed(rng.getrandbits(63))
        if dt.is_floating_point:
            return torch.rand(shp, generator=g, dtype=torch.float64).mul(high - low).add(low).to(dt)
        return torch.randint(int(low), int(high), shp, generator=g, dtype=dt)

    return gen


def args(*gens: Gen, **kwgens: Gen) -> Gen:
    """A generator of whole calls: args(texts(), ints(1, 9)) draws f(text, int)."""
    return lambda rng: Call(tuple(g(rng) for g in gens), {k: g(rng) for k, g in kwgens.items()})
