"""Checkers that the workbook's test cells call: compare a student's code with labkit's reference.

A check draws inputs at random, runs the student's code and the reference on each, and stops at the
first disagreement with an `AssertionError` (`CheckFailed`) whose message a student can act on: the
input (shortened), the expected and the received value, where they differ, a hint, and the seed.

    from labkit import grading as g
    g.check_function(merge, ref_merge, [g.case([1, 2, 1, 2], (1, 2), 256),
                                        g.args(g.token_ids(8), g.pairs(8), g.ints(8, 300))],
                     n=50, hint="after a merge, skip both ids of the pair")
    g.check_value(peak_gib, 12.5, "peak_gib", rtol=1e-3)
    g.check_class(MyAllocator, BlockAllocator, {"allocate": gen_alloc, "free": gen_free},
                  init=g.args(g.ints(1, 16)), observe=["num_free_blocks"])

What a check guarantees:
- Fresh inputs each run: the seed comes from os.urandom (so a hidden test never sees the inputs of
  the visible one); it is printed in every failure. `seed=...` or LABKIT_GRADING_SEED replays it.
- A time limit per check (`time_limit`, seconds of the student's code in total, times
  LABKIT_GRADING_TIME_SCALE for a slow grading machine). In the main thread
  of a POSIX process (a Jupyter kernel, pytest) it is a SIGALRM timer (signal.setitimer) whose
  handler raises a BaseException inside the student's code, re-armed every 50 ms; from the second
  alarm on, a line tracer on the student's frames raises it at every line as well, so neither
  `except Exception:` nor a bare `except:` in a loop keeps it from escaping. The previous handler,
  timer and trace function (a debugger's, coverage's) are restored.
  Elsewhere (a worker thread, Windows) the student's code runs in a daemon thread that gets an
  asynchronous exception when the time is up. Neither interrupts a single C call that never
  returns (a `while True` in Python is interrupted; a C loop is stopped when it next runs Python).
- No delegation: while the student's code runs, every Python function of the reference (a function,
  the methods of a class, wrapped functions) has its `__code__` swapped for a tripwire, so reaching
  it by any name (`from labkit.tokenizer import merge as m`, a default argument, a closure, super(),
  another labkit function that uses it) fails the check. Not caught: references written in C, and
  a function deliberately rebuilt from the reference's code object (types.FunctionType(ref.__code__)).
  A task whose student class must subclass the reference passes guard=False and forbids the
  methods the student must write (`forbid=[Ref.allocate]`).
- Student exceptions become a failed check naming the exception, its message and the student's
  line, not a traceback wall; a `NotImplementedError` says the task is not written yet.
- Nothing reaches stderr (nbgrader zeroes a test cell that writes to it): warnings are recorded,
  sys.stdout/sys.stderr are captured and file descriptor 2 is pointed at a temporary file during
  the check. What the student's code printed is quoted in a failure message.
- Checks return None (an `execute_result` in a test cell would be read by nbgrader as partial
  credit) and print one line on success.

What it does not do: sandbox the student's code (it runs in the same process and can do anything
the kernel can), or compare floating-point results bit for bit (tolerances follow torch.testing).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import functools
import inspect
import io
import math
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "CheckFailed",
    "Call",
    "case",
    "args",
    "check_function",
    "check_value",
    "check_class",
    "same",
    "close",
    "explain_difference",
    "short",
    "ints",
    "floats",
    "choice",
    "lists",
    "shapes",
    "texts",
    "token_ids",
    "pairs",
    "tensors",
]

SEED_ENV = "LABKIT_GRADING_SEED"
TIME_SCALE_ENV = "LABKIT_GRADING_TIME_SCALE"


class CheckFailed(AssertionError):
    """A check found a difference from the reference; the message says what and how to replay it."""


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


def tensors(
    shape: tuple[int, ...] | Gen, dtype: Any = "float32", low: float = -1.0, high: float = 1.0
) -> Gen:
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


# --------------------------------------------------------------------------------------------------
# Short reprs for messages
# --------------------------------------------------------------------------------------------------


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _is_ndarray(x: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.ndarray)


def short(x: Any, limit: int = 160) -> str:
    """repr(x) cut to about `limit` characters, saying how long strings and containers really are."""
    if isinstance(x, (str, bytes)):
        r = repr(x)
        if len(r) <= limit:
            return r
        keep = max(limit - 30, 10)
        head = repr(x[:keep])
        unit = "chars" if isinstance(x, str) else "bytes"
        return f"{head[:-1]}...{head[-1]} ({len(x)} {unit})"
    if _is_tensor(x) or _is_ndarray(x):
        kind = "tensor" if _is_tensor(x) else "array"
        flat = x.reshape(-1)
        more = ", ..." if len(flat) > 8 else ""
        vals = ", ".join(short(v, 12) for v in flat[:8].tolist())
        return f"{kind}(shape={tuple(x.shape)}, dtype={x.dtype}, [{vals}{more}])"
    if isinstance(x, (list, tuple, set, frozenset)):
        items = list(x) if not isinstance(x, (set, frozenset)) else sorted(x, key=repr)
        brackets = {list: "[]", tuple: "()"}.get(type(x), "{}")
        if isinstance(x, (set, frozenset)) and not items:
            return f"{type(x).__name__}()"
        parts, used = [], 2
        for item in items:
            s = short(item, max(limit // 3, 20))
            if used + len(s) + 2 > limit and parts:
                parts.append(f"... ({len(items)} items)")
                break
            parts.append(s)
            used += len(s) + 2
        trail = "," if isinstance(x, tuple) and len(items) == 1 else ""
        return brackets[0] + ", ".join(parts) + trail + brackets[1]
    if isinstance(x, Mapping):
        parts, used = [], 2
        for k, v in x.items():
            s = f"{short(k, 40)}: {short(v, max(limit // 3, 20))}"
            if used + len(s) + 2 > limit and parts:
                parts.append(f"... ({len(x)} items)")
                break
            parts.append(s)
            used += len(s) + 2
        return "{" + ", ".join(parts) + "}"
    try:
        r = repr(x)
    except Exception as e:  # a broken __repr__ in student code must not hide the real message
        r = f"<{type(x).__name__} object; repr failed: {type(e).__name__}>"
    return r if len(r) <= limit else r[: limit - 20] + f"... ({len(r)} chars)"


# --------------------------------------------------------------------------------------------------
# Comparison: None when equal, else a sentence saying where the first difference is
# --------------------------------------------------------------------------------------------------

# Default float tolerances per dtype, as torch.testing.assert_close uses: (rtol, atol).
_TOL = {
    "float64": (1e-7, 1e-7),
    "float32": (1.3e-6, 1e-5),
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "python": (1e-9, 1e-12),
}


def _tol(dtype: Any, rtol: float | None, atol: float | None) -> tuple[float, float]:
    name = str(dtype).replace("torch.", "")
    r, a = _TOL.get(name, _TOL["float32"] if "float" in name else _TOL["python"])
    return (r if rtol is None else rtol, a if atol is None else atol)


def _where(path: str) -> str:
    return f"at {path}: " if path else ""


def _kind(x: Any) -> str:
    if x is None:
        return "None"
    return "a torch.Tensor" if _is_tensor(x) else f"a {type(x).__name__}"


def explain_difference(
    expected: Any,
    received: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    check_dtype: bool = True,
    path: str = "",
) -> str | None:
    """None when `received` matches `expected`; otherwise one sentence on the first difference.

    Ints, strings, bools compare exactly; floats within rtol/atol (defaults by dtype, as in
    torch.testing); lists, tuples, dicts, sets, dataclasses recursively (list vs tuple differs);
    tensors and arrays by shape, dtype (unless check_dtype=False) and values.
    """
    e, r = expected, received
    if e is r:
        return None
    if r is None:
        return f"{_where(path)}expected {short(e, 60)}, received None (did the function forget to `return`?)"
    if e is None:
        return f"{_where(path)}expected None, received {short(r, 60)}"
    if _is_tensor(e) or _is_ndarray(e):
        return _diff_array(e, r, rtol, atol, check_dtype, path)
    if isinstance(e, bool) or isinstance(r, bool):
        if type(e) is not type(r) and not (_is_np_bool(e) or _is_np_bool(r)):
            return f"{_where(path)}expected {_kind(e)} ({e!r}), received {_kind(r)} ({short(r, 60)})"
        return None if bool(e) == bool(r) else f"{_where(path)}expected {e!r}, received {r!r}"
    if _is_number(e):
        return _diff_number(e, r, rtol, atol, path)
    if isinstance(e, (str, bytes)):
        return _diff_str(e, r, path)
    if isinstance(e, (list, tuple)):
        return _diff_seq(e, r, rtol, atol, check_dtype, path)
    if isinstance(e, Mapping):
        return _diff_map(e, r, rtol, atol, check_dtype, path)
    if isinstance(e, (set, frozenset)):
        if not isinstance(r, (set, frozenset)):
            return f"{_where(path)}expected {_kind(e)}, received {_kind(r)}: {short(r, 80)}"
        missing, extra = e - r, r - e
        if not missing and not extra:
            return None
        return f"{_where(path)}missing {short(missing, 80)}, unexpected {short(extra, 80)}"
    if dataclasses.is_dataclass(e) and not isinstance(e, type):
        if type(r) is not type(e) and not dataclasses.is_dataclass(r):
            return f"{_where(path)}expected {_kind(e)}, received {_kind(r)}: {short(r, 80)}"
        for f in dataclasses.fields(e):
            if not hasattr(r, f.name):
                return f"{_where(path)}received {_kind(r)} without the field `{f.name}`"
            d = explain_difference(
                getattr(e, f.name),
                getattr(r, f.name),
                rtol=rtol,
                atol=atol,
                check_dtype=check_dtype,
                path=f"{path}.{f.name}",
            )
            if d:
                return d
        return None
    try:
        equal = bool(e == r)
    except Exception as err:
        return f"{_where(path)}cannot compare {_kind(e)} with {_kind(r)} ({type(err).__name__}: {err})"
    if equal:
        return None
    types_note = "" if type(e) is type(r) else f" ({_kind(e)} vs {_kind(r)})"
    return f"{_where(path)}expected {short(e, 80)}, received {short(r, 80)}{types_note}"


def _is_np_bool(x: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.bool_)


def _is_number(x: Any) -> bool:
    import numbers

    return isinstance(x, numbers.Number) and not isinstance(x, bool)


def _diff_number(e: Any, r: Any, rtol: float | None, atol: float | None, path: str) -> str | None:
    import numbers

    if not _is_number(r):
        return f"{_where(path)}expected a number ({e!r}), received {_kind(r)}: {short(r, 60)}"
    if isinstance(e, numbers.Integral) and isinstance(r, numbers.Integral):
        return None if int(e) == int(r) else f"{_where(path)}expected {e!r}, received {r!r}"
    if isinstance(e, numbers.Integral) and not isinstance(r, numbers.Integral) and float(r) != int(e):
        return f"{_where(path)}expected the integer {e!r}, received {r!r}"
    fe, fr = complex(e), complex(r)
    if any(math.isnan(v) for v in (fe.real, fe.imag)) and any(math.isnan(v) for v in (fr.real, fr.imag)):
        return None
    rt, at = _tol(getattr(e, "dtype", "python"), rtol, atol)
    if abs(fe - fr) <= at + rt * abs(fe):
        return None
    rel = f" (relative error {abs(fe - fr) / abs(fe):.3g})" if fe != 0 else ""
    return f"{_where(path)}expected {e!r}, received {r!r}{rel}; tolerance rtol={rt:g}, atol={at:g}"


def _diff_str(e: str | bytes, r: Any, path: str) -> str | None:
    if type(r) is not type(e):
        return f"{_where(path)}expected {_kind(e)}, received {_kind(r)}: {short(r, 80)}"
    if e == r:
        return None
    i = next((k for k, (a, b) in enumerate(zip(e, r)) if a != b), min(len(e), len(r)))
    unit = "character" if isinstance(e, str) else "byte"
    lens = f" (lengths {len(e)} and {len(r)})" if len(e) != len(r) else ""
    return (
        f"{_where(path)}first difference at {unit} {i}{lens}: expected {short(e[i : i + 12], 40)}..., "
        f"received {short(r[i : i + 12], 40)}..."
    )


def _diff_seq(e, r, rtol, atol, check_dtype, path) -> str | None:
    if not isinstance(r, (list, tuple)):
        return f"{_where(path)}expected {_kind(e)}, received {_kind(r)}: {short(r, 80)}"
    if type(e) is not type(r) and {type(e), type(r)} <= {list, tuple}:
        return f"{_where(path)}expected {_kind(e)}, received {_kind(r)} (the container type differs)"
    for i, (a, b) in enumerate(zip(e, r)):
        d = explain_difference(a, b, rtol=rtol, atol=atol, check_dtype=check_dtype, path=f"{path}[{i}]")
        if d:
            lens = f"lengths {len(e)} and {len(r)}; " if len(e) != len(r) else ""
            return lens + d
    if len(e) != len(r):
        n = min(len(e), len(r))
        extra = f"missing {short(e[n:], 80)}" if len(e) > len(r) else f"unexpected extra {short(r[n:], 80)}"
        return f"{_where(path)}expected {len(e)} items, received {len(r)} (equal up to index {n}; {extra})"
    return None


def _diff_map(e, r, rtol, atol, check_dtype, path) -> str | None:
    if not isinstance(r, Mapping):
        return f"{_where(path)}expected {_kind(e)}, received {_kind(r)}: {short(r, 80)}"
    missing = [k for k in e if k not in r]
    extra = [k for k in r if k not in e]
    if missing or extra:
        return (
            f"{_where(path)}keys differ: missing {short(missing, 80)}, unexpected {short(extra, 80)} "
            f"({len(e)} keys expected, {len(r)} received)"
        )
    for k in e:
        d = explain_difference(
            e[k], r[k], rtol=rtol, atol=atol, check_dtype=check_dtype, path=f"{path}[{k!r}]"
        )
        if d:
            return d
    return None


def _diff_array(e, r, rtol, atol, check_dtype, path) -> str | None:
    import numpy as np

    if _is_tensor(e) != _is_tensor(r) or not (_is_tensor(r) or _is_ndarray(r)):
        return f"{_where(path)}expected {_kind(e)}, received {_kind(r)}: {short(r, 80)}"
    if tuple(e.shape) != tuple(r.shape):
        return f"{_where(path)}expected shape {tuple(e.shape)}, received shape {tuple(r.shape)}"
    if check_dtype and e.dtype != r.dtype:
        return f"{_where(path)}expected dtype {e.dtype}, received dtype {r.dtype}"
    dtype = e.dtype
    ea, ra = _to_numpy(e), _to_numpy(r)
    if np.issubdtype(ea.dtype, np.floating) or np.issubdtype(ra.dtype, np.floating):
        rt, at = _tol(dtype, rtol, atol)
        ok = np.isclose(ea.astype(np.float64), ra.astype(np.float64), rtol=rt, atol=at, equal_nan=True)
    else:
        ok = ea == ra
    if ok.all():
        return None
    bad = np.argwhere(~ok)
    first = tuple(int(v) for v in bad[0])
    msg = (
        f"{_where(path)}values differ at {len(bad)} of {ok.size} positions; first at index {first}: "
        f"expected {ea[first].item()!r}, received {ra[first].item()!r}"
    )
    if np.issubdtype(ea.dtype, np.floating):
        with np.errstate(invalid="ignore"):
            msg += f"; max abs difference {float(np.nanmax(np.abs(ea - ra))):.3g}"
    return msg


def _to_numpy(x: Any):
    # float tensors (bfloat16 included) become float64 arrays; ints and bools keep their values.
    if _is_tensor(x):
        x = x.detach().cpu()
        return (x.double() if x.is_floating_point() else x).numpy()
    return x


def same(expected: Any, received: Any) -> str | None:
    """The default comparison: explain_difference with dtype-based float tolerances."""
    return explain_difference(expected, received)


def close(rtol: float | None = None, atol: float | None = None, check_dtype: bool = True) -> Callable:
    """A comparison with explicit float tolerances (and optionally ignoring dtypes)."""
    return functools.partial(explain_difference, rtol=rtol, atol=atol, check_dtype=check_dtype)


def _compare(compare: Callable | None, expected: Any, received: Any) -> str | None:
    # compare returns True/None for a match, False or a sentence for a mismatch.
    fn = compare or same
    out = fn(expected, received)
    if out is True or out is None:
        return None
    if out is False:
        return f"expected {short(expected, 80)}, received {short(received, 80)}"
    return str(out)


# --------------------------------------------------------------------------------------------------
# Quiet: nothing the student's code (or a warning) prints may reach stderr
# --------------------------------------------------------------------------------------------------


class _Quiet:
    """Capture sys.stdout, sys.stderr, warnings and file descriptor 2 for the duration of a check."""

    def __enter__(self) -> _Quiet:
        self.out, self.err = io.StringIO(), io.StringIO()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(self.out))
        self._stack.enter_context(contextlib.redirect_stderr(self.err))
        self.warnings = self._stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("always")
        self._fd_saved = None
        try:
            self._fd_file = tempfile.TemporaryFile()
            self._fd_saved = os.dup(2)
            os.dup2(self._fd_file.fileno(), 2)
        except OSError:  # no usable fd 2 (an embedded interpreter): Python-level capture still holds
            self._fd_saved = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd_saved is not None:
            os.dup2(self._fd_saved, 2)
            os.close(self._fd_saved)
            self._fd_file.seek(0)
            self.err.write(self._fd_file.read().decode("utf-8", "replace"))
            self._fd_file.close()
        self._stack.close()

    def printed(self, limit: int = 400) -> str:
        text = (self.out.getvalue() + self.err.getvalue()).strip()
        return text if len(text) <= limit else "..." + text[-limit:]


# --------------------------------------------------------------------------------------------------
# Time limit
# --------------------------------------------------------------------------------------------------


_THIS_FILE = os.path.normcase(os.path.abspath(__file__))


def _file_of(frame: types.FrameType) -> str:
    return os.path.normcase(os.path.abspath(frame.f_code.co_filename))


class _TimeUp(BaseException):
    """Raised inside the student's code when the check's time is spent (BaseException: `except
    Exception` does not catch it)."""


class _Budget:
    """Seconds left for the student's code in one check; `run` charges each call against it."""

    RETRY_S = 0.05  # after the first alarm, fire again this often until the exception escapes

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"time_limit must be > 0 seconds, got {seconds}")
        self.total = seconds
        self.left = seconds
        self._armed = False

    def run(self, fn: Callable[[], Any]) -> Any:
        """fn() within the remaining budget; raises _TimeUp when it is spent."""
        if self.left <= 0:
            raise _TimeUp
        start = time.perf_counter()
        try:
            if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
                return self._run_signal(fn)
            return self._run_thread(fn)
        finally:
            self.left -= time.perf_counter() - start

    def _run_signal(self, fn: Callable[[], Any]) -> Any:
        # The alarm raises _TimeUp in the student's code, and again every RETRY_S. Code that swallows
        # it (a bare `except:` inside the loop) gets a line tracer on its frames from the second alarm
        # on, which raises at every line, including the loop's own lines outside the `try`.
        fired = 0
        traced: list[types.FrameType] = []
        saved_trace = sys.gettrace()

        def tracer(frame, event, arg):
            if self._armed and event == "line" and _file_of(frame) != _THIS_FILE:
                raise _TimeUp
            return tracer

        def on_alarm(signum, frame):
            nonlocal fired
            if not self._armed:
                return
            fired += 1
            if fired > 1:
                f = frame
                while f is not None and _file_of(f) != _THIS_FILE:  # the student's frames only
                    f.f_trace = tracer
                    traced.append(f)
                    f = f.f_back
                sys.settrace(tracer)
            raise _TimeUp

        t0 = time.monotonic()
        old_handler = signal.signal(signal.SIGALRM, on_alarm)
        old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, self.left, self.RETRY_S)
        self._armed = True
        try:
            return fn()
        finally:
            self._armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)
            if traced:
                sys.settrace(saved_trace)  # a debugger's or coverage's tracer comes back
                for f in traced:
                    f.f_trace = None
            if old_delay > 0:  # give back someone else's timer (pytest-timeout), minus the time spent
                spent = time.monotonic() - t0
                signal.setitimer(signal.ITIMER_REAL, max(old_delay - spent, 1e-3), old_interval)

    def _run_thread(self, fn: Callable[[], Any]) -> Any:
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # carried back to the caller's thread
                box["error"] = e

        worker = threading.Thread(target=target, name="labkit-grading-check", daemon=True)
        worker.start()
        worker.join(self.left)
        for _ in range(20):  # ask the thread to stop; a C call that never returns cannot be stopped
            if not worker.is_alive():
                break
            tid = ctypes.c_ulong(worker.ident)
            ctypes.pythonapi.PyThreadState_SetAsyncExc(tid, ctypes.py_object(_TimeUp))
            worker.join(self.RETRY_S)
        if "error" in box:
            raise box["error"]
        if "value" not in box:
            raise _TimeUp
        return box["value"]


# --------------------------------------------------------------------------------------------------
# Delegation guard: the reference's code is swapped for a tripwire while the student's code runs
# --------------------------------------------------------------------------------------------------


class _Delegated(BaseException):
    """Raised by a tripwire: the student's code reached the reference."""


_TRIPPED: list[str] = []  # labels of the references the student's code reached (this check)


def _trip(label: str) -> None:
    _TRIPPED.append(label)
    raise _Delegated(label)


@functools.cache
def _tripwire_code(label: str, n_free: int) -> types.CodeType:
    # A function of (*args, **kwargs) that calls _trip(label); it names n_free variables after the
    # raise so that it has exactly as many free variables as the function whose __code__ it replaces.
    free = [f"_free{i}" for i in range(n_free)]
    src = (
        ["def _outer():"]
        + [f"    {v} = None" for v in free]
        + [
            "    def _tripwire(*args, **kwargs):",
            f"        __import__('sys').modules[{__name__!r}]._trip({label!r})",
        ]
    )
    if free:
        src.append("        " + ", ".join(free))
    src.append("    return _tripwire")
    ns: dict[str, Any] = {}
    exec(compile("\n".join(src), f"<labkit.grading tripwire for {label}>", "exec"), ns)
    code = ns["_outer"]().__code__
    assert len(code.co_freevars) == n_free, (code.co_freevars, n_free)
    return code


def _label(obj: Any) -> str:
    mod = getattr(obj, "__module__", None) or "?"
    return f"{mod}.{getattr(obj, '__qualname__', getattr(obj, '__name__', repr(obj)))}"


def _python_functions(target: Any) -> list[types.FunctionType]:
    """Every Python function whose code runs when `target` (function, method, class) is used."""
    if isinstance(target, type):
        found = []
        for attr in vars(target).values():
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            if isinstance(attr, property):
                found += [f for f in (attr.fget, attr.fset, attr.fdel) if f is not None]
            elif callable(attr) and not isinstance(attr, type):
                found += _python_functions(attr)
        return found
    if inspect.ismethod(target):
        return _python_functions(target.__func__)
    if isinstance(target, functools.partial):
        return _python_functions(target.func)
    found, seen, f = [], set(), target
    while f is not None and id(f) not in seen:  # follow functools.wraps / lru_cache chains
        seen.add(id(f))
        if isinstance(f, types.FunctionType):
            found.append(f)
        f = getattr(f, "__wrapped__", None)
    return found


class _Guard:
    """While active, calling any of `targets` raises _Delegated and records it."""

    def __init__(self, targets: Iterable[Any]) -> None:
        self.funcs: list[tuple[types.FunctionType, str]] = []
        seen: set[int] = set()
        for t in targets:
            label = _label(t)
            for f in _python_functions(t):
                if id(f) not in seen:
                    seen.add(id(f))
                    self.funcs.append((f, label if f is t else _label(f)))
        self._saved: list[tuple[types.FunctionType, types.CodeType]] = []

    def __enter__(self) -> _Guard:
        for f, label in self.funcs:
            code = f.__code__
            f.__code__ = _tripwire_code(label, len(code.co_freevars))
            self._saved.append((f, code))
        return self

    def __exit__(self, *exc: Any) -> None:
        while self._saved:
            f, code = self._saved.pop()
            f.__code__ = code


# --------------------------------------------------------------------------------------------------
# Running one call of the student's code
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Outcome:
    value: Any = None
    error: BaseException | None = None
    timed_out: bool = False
    delegated: str | None = None


def _student_call(fn: Callable[[], Any], budget: _Budget, guard: _Guard) -> _Outcome:
    _TRIPPED.clear()
    try:
        with guard:
            value = budget.run(fn)
        out = _Outcome(value=value)
    except _TimeUp:
        out = _Outcome(timed_out=True)
    except _Delegated as e:
        out = _Outcome(delegated=str(e))
    except Exception as e:
        out = _Outcome(error=e)
    except BaseException as e:  # SystemExit, GeneratorExit from student code; KeyboardInterrupt is the user's
        if isinstance(e, KeyboardInterrupt):
            raise
        out = _Outcome(error=e)
    if _TRIPPED and out.delegated is None:  # a tripwire fired but the student's code swallowed it
        out = _Outcome(delegated=_TRIPPED[0])
    return out


def _copy(call: Call) -> Call:
    # Each side gets its own copy of the inputs; objects that cannot be copied are shared.
    try:
        return copy.deepcopy(call)
    except Exception:
        return Call(tuple(call.args), dict(call.kwargs))


def _reference_call(fn: Callable[[], Any]) -> _Outcome:
    try:
        return _Outcome(value=fn())
    except Exception as e:
        return _Outcome(error=e)


def _where_raised(err: BaseException) -> str:
    """'line 5 in merge: `ids[i + 1]`' for the innermost frame outside this module, or ''."""
    frames = [
        f
        for f in traceback.extract_tb(err.__traceback__)
        if os.path.normcase(os.path.abspath(f.filename)) != _THIS_FILE
    ]
    if not frames:
        return ""
    f = frames[-1]
    where = f"line {f.lineno} in {f.name}"
    return f"{where}: `{short(f.line.strip(), 100)[1:-1]}`" if f.line else where


def _exc_text(err: BaseException) -> str:
    msg = str(err)
    if not msg:
        return type(err).__name__
    return f"{type(err).__name__}: {short(msg, 300) if len(msg) > 300 else msg}"


# --------------------------------------------------------------------------------------------------
# Seeds and messages
# --------------------------------------------------------------------------------------------------


def _time_scale() -> float:
    """LABKIT_GRADING_TIME_SCALE multiplies every time limit (a slow or busy grading machine)."""
    return float(os.environ.get(TIME_SCALE_ENV, "1"))


def _fresh_seed(seed: int | None) -> int:
    if seed is not None:
        return int(seed)
    env = os.environ.get(SEED_ENV)
    if env:
        return int(env)
    return int.from_bytes(os.urandom(4), "little")


def _param_names(fn: Callable) -> list[str]:
    try:
        return [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return []


def _name_of(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


class _Report:
    """Builds the failure message: a headline, labelled lines, the hint and how to replay."""

    def __init__(self, title: str, seed: int, hint: str) -> None:
        self.title, self.seed, self.hint = title, seed, hint

    def fail(
        self, headline: str, lines: Sequence[tuple[str, str]] = (), printed: str = "", replay: bool = True
    ) -> CheckFailed:
        width = max([len(k) for k, _ in lines] + [0])
        body = [f"{self.title}: {headline}"]
        body += [re.sub(r" +\n", "\n", f"  {k + ':':<{width + 1}} {v}") for k, v in lines if v]
        if printed:
            body.append("  your code printed: " + printed.replace("\n", "\n    "))
        if self.hint:
            body.append(f"  hint: {self.hint}")
        if replay:
            body.append(
                f"  (inputs drawn from seed {self.seed}; to replay them pass seed={self.seed} to the "
                f"check or set os.environ['{SEED_ENV}'] = '{self.seed}')"
            )
        return CheckFailed("\n".join(body))


def _not_written(err: BaseException | None) -> bool:
    return isinstance(err, NotImplementedError)


def _not_written_text(err: BaseException) -> str:
    """"`merge` raised NotImplementedError: ...": names the function that is still a stub."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if os.path.normcase(os.path.abspath(f.filename)) != _THIS_FILE]
    return (f"`{frames[-1].name}` raised " if frames else "") + _exc_text(err)


# --------------------------------------------------------------------------------------------------
# check_function
# --------------------------------------------------------------------------------------------------


def _expand(cases: Any, n: int) -> list[Any]:
    # Fixed cases once each, in order; each generator n times. A single generator is allowed.
    if callable(cases) and not isinstance(cases, Call):
        cases = [cases]
    if isinstance(cases, (Call, str, bytes)) or not isinstance(cases, Iterable):
        raise TypeError(f"cases must be a list of cases and/or generators, got {short(cases, 60)}")
    out = []
    for c in cases:
        out += [c] * n if callable(c) and not isinstance(c, Call) else [c]
    return out


def check_function(
    student_fn: Callable,
    reference_fn: Callable,
    cases: Any,
    *,
    n: int = 30,
    compare: Callable | None = None,
    hint: str = "",
    time_limit: float = 10.0,
    name: str | None = None,
    forbid: Sequence[Any] = (),
    guard: bool = True,
    check_inputs: bool = True,
    seed: int | None = None,
    verbose: bool = True,
) -> None:
    """Check `student_fn` against `reference_fn` on `cases`; raise CheckFailed at the first difference.

    cases: a list of fixed cases (a `case(...)`, a tuple of positional arguments, or a single
        argument) and generators (rng -> case, e.g. `args(texts(), ints(1, 9))`), or one generator.
        Fixed cases run once, in order; each generator is drawn `n` times.
    compare(expected, received): True/None when they match, False or a sentence when not
        (default `same`; `close(rtol, atol)` for explicit tolerances).
    time_limit: seconds the student's code may use in total over all cases.
    forbid: more functions or classes the student's code must not call (the reference always is,
        unless guard=False).
    check_inputs: fail when the student's function changes an argument in place and the
        reference does not.
    When the reference raises on a case, the student's function must raise the same type.
    """
    title = name or _name_of(student_fn)
    seed = _fresh_seed(seed)
    report = _Report(title, seed, hint)
    if not callable(student_fn):
        raise report.fail(f"expected a function, got {_kind(student_fn)}: {short(student_fn, 60)}")
    rng = random.Random(seed)
    params = _param_names(reference_fn)
    budget = _Budget(time_limit * _time_scale())
    guard_ = _Guard([reference_fn, *forbid] if guard else list(forbid))
    planned = _expand(cases, n)
    ref_time = 0.0
    with _Quiet() as quiet:
        for i, item in enumerate(planned):
            call = _as_call(item(rng) if callable(item) and not isinstance(item, Call) else item)
            where = f"case {i + 1} of {len(planned)}"
            shown = functools.partial(call.render, title, params)  # rendered only for a failure
            ref_in, stu_in = _copy(call), _copy(call)
            t0 = time.perf_counter()
            ref = _reference_call(functools.partial(ref_in.apply, reference_fn))
            ref_time += time.perf_counter() - t0
            stu = _student_call(functools.partial(stu_in.apply, student_fn), budget, guard_)
            failure = _judge_call(report, where, shown, ref, stu, compare, budget, ref_time, quiet)
            if failure is None and check_inputs:
                failure = _judge_inputs(report, where, shown, call, ref_in, stu_in, params, quiet)
            if failure is not None:
                raise failure from None
    if verbose:
        print(f"✓ {title}: {len(planned)} cases passed")


def _expected_text(ref: _Outcome) -> str:
    return f"raises {_exc_text(ref.error)}" if ref.error is not None else short(ref.value)


def _judge_call(report, where, shown, ref, stu, compare, budget, ref_time, quiet) -> CheckFailed | None:
    if stu.delegated:
        return report.fail(
            f"your code called {stu.delegated}, the reference this task is checked against ({where}). "
            "Write the logic yourself; calling the reference earns no points.",
            [("input", shown())],
        )
    if stu.timed_out:
        return report.fail(
            f"no result within the time limit ({budget.total:g} s for the whole check), {where}. "
            f"Is there a loop that never ends? (the reference took {ref_time:.3f} s for the cases so far)",
            [("input", shown())],
            quiet.printed(),
        )
    if _not_written(stu.error):
        return report.fail(f"not written yet: {_not_written_text(stu.error)}.", replay=False)
    if stu.error is not None:
        if ref.error is not None and isinstance(stu.error, type(ref.error)):
            return None
        return report.fail(
            f"your code raised {_exc_text(stu.error)}, {where}.",
            [("input", shown()), ("raised at", _where_raised(stu.error)), ("expected", _expected_text(ref))],
            quiet.printed(),
        )
    if ref.error is not None:
        return report.fail(
            f"expected an exception, {where}, but your code returned a value.",
            [("input", shown()), ("expected", _expected_text(ref)), ("received", short(stu.value))],
            quiet.printed(),
        )
    diff = _compare(compare, ref.value, stu.value)
    if diff is None:
        return None
    return report.fail(
        f"wrong result, {where}.",
        [
            ("input", shown()),
            ("expected", _expected_text(ref)),
            ("received", short(stu.value)),
            ("difference", diff),
        ],
        quiet.printed(),
    )


def _judge_inputs(report, where, shown, call, ref_in, stu_in, params, quiet) -> CheckFailed | None:
    for idx, (orig, r, s) in enumerate(zip(call.args, ref_in.args, stu_in.args)):
        if explain_difference(orig, s) is not None and explain_difference(orig, r) is None:
            arg = f"`{params[idx]}`" if idx < len(params) else f"number {idx + 1}"
            return report.fail(
                f"your code changed its argument {arg} in place, {where}; the reference leaves it as it was. "
                "Build a new value instead of modifying the one you were given.",
                [("input", shown()), ("afterwards", short(s)), ("difference", explain_difference(orig, s))],
                quiet.printed(),
            )
    for k, orig in call.kwargs.items():
        changed = explain_difference(orig, stu_in.kwargs[k]) is not None
        if changed and explain_difference(orig, ref_in.kwargs[k]) is None:
            return report.fail(
                f"your code changed its argument `{k}` in place, {where}.",
                [("input", shown()), ("afterwards", short(stu_in.kwargs[k]))],
                quiet.printed(),
            )
    return None


# --------------------------------------------------------------------------------------------------
# check_value
# --------------------------------------------------------------------------------------------------


def check_value(
    received: Any,
    expected: Any,
    name: str,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    compare: Callable | None = None,
    hint: str = "",
    verbose: bool = True,
) -> None:
    """Check one value (a number computed from labkit, a list, a tensor) against the expected one."""
    with _Quiet():
        diff = _compare(compare or close(rtol=rtol, atol=atol), expected, received)
    if diff is not None:
        lines = [
            f"{name}: wrong value.",
            f"  expected:   {short(expected)}",
            f"  received:   {short(received)}",
            f"  difference: {diff}",
        ]
        if hint:
            lines.append(f"  hint: {hint}")
        raise CheckFailed("\n".join(lines)) from None
    if verbose:
        print(f"✓ {name} is right")


# --------------------------------------------------------------------------------------------------
# check_class
# --------------------------------------------------------------------------------------------------


def _gen_call(gen: Any, rng: random.Random, obj: Any) -> Any:
    """A method's case: gen(rng, reference_object) or gen(rng); a fixed case as is."""
    if not callable(gen) or isinstance(gen, Call):
        return gen
    try:
        n_params = len(inspect.signature(gen).parameters)
    except (TypeError, ValueError):
        n_params = 1
    return gen(rng, obj) if n_params >= 2 else gen(rng)


def _observe(observe: Any, obj: Any) -> Any:
    if observe is None:
        return None
    if callable(observe):
        return observe(obj)
    return {attr: getattr(obj, attr) for attr in observe}


def check_class(
    student_cls: type,
    reference_cls: type,
    methods: Mapping[str, Any],
    *,
    init: Any = None,
    n: int = 10,
    steps: int = 20,
    observe: Any = None,
    compare: Callable | None = None,
    hint: str = "",
    time_limit: float = 10.0,
    name: str | None = None,
    forbid: Sequence[Any] = (),
    guard: bool = True,
    seed: int | None = None,
    verbose: bool = True,
) -> None:
    """Drive `student_cls` and `reference_cls` through the same random sequences of method calls.

    init: the constructor's case (a fixed case or a generator rng -> case); None means no arguments.
    methods: {method name: generator} where a generator is rng -> case or (rng, reference_object) ->
        case, or returns None when the method does not apply in the current state; a value may be
        (generator, weight) to call a method more often. Each of `n` sequences builds both objects
        and makes `steps` calls; results are compared after each call, and so is `observe`: a list
        of attribute names or a function obj -> value (e.g. the free block count).
    When the reference raises (e.g. allocating from an empty pool), the student's method must
    raise the same exception type.
    """
    title = name or _name_of(student_cls)
    seed = _fresh_seed(seed)
    report = _Report(title, seed, hint)
    if not isinstance(student_cls, type):
        raise report.fail(f"expected a class, got {_kind(student_cls)}: {short(student_cls, 60)}")
    rng = random.Random(seed)
    budget = _Budget(time_limit * _time_scale())
    guard_ = _Guard([reference_cls, *forbid] if guard else list(forbid))
    table = {m: (g if isinstance(g, tuple) else (g, 1.0)) for m, g in methods.items()}
    names = sorted(table)
    weights = [table[m][1] for m in names]
    with _Quiet() as quiet:
        for seq in range(n):
            failure = _run_sequence(
                student_cls,
                reference_cls,
                table,
                names,
                weights,
                init,
                steps,
                observe,
                compare,
                rng,
                budget,
                guard_,
                report,
                quiet,
                seq,
                n,
            )
            if failure is not None:
                raise failure from None
    if verbose:
        print(f"✓ {title}: {n} sequences of {steps} calls passed")


def _run_sequence(
    stu_cls,
    ref_cls,
    table,
    names,
    weights,
    init,
    steps,
    observe,
    compare,
    rng,
    budget,
    guard,
    report,
    quiet,
    seq,
    n,
) -> CheckFailed | None:
    history: list[str] = []

    def fail(headline: str, lines: Sequence[tuple[str, str]] = ()) -> CheckFailed:
        shown = history[-12:]
        if len(history) > 12:
            shown = [f"... ({len(history) - 12} earlier calls)"] + shown
        calls = "\n    " + "\n    ".join(shown) if shown else ""
        return report.fail(
            f"{headline} (sequence {seq + 1} of {n}).", [("calls", calls), *lines], quiet.printed()
        )

    call = _as_call(_gen_call(init, rng, None)) if init is not None else Call()
    history.append(f"obj = {call.render(ref_cls.__name__, _param_names(ref_cls))}")
    ref_in, stu_in = _copy(call), _copy(call)
    ref = _reference_call(lambda: ref_in.apply(ref_cls))
    if ref.error is not None:
        raise RuntimeError(
            f"check_class: the reference constructor raised {_exc_text(ref.error)} on "
            f"{history[-1]}; fix the test's `init` generator"
        ) from ref.error
    stu = _student_call(lambda: stu_in.apply(stu_cls), budget, guard)
    bad = _judge_step(stu, ref, compare, budget, fail, construct=True)
    if bad is not None:
        return bad
    ref_obj, stu_obj = ref.value, stu.value
    for _ in range(steps):
        method, args = None, None
        for _attempt in range(20):  # skip methods whose generator says they do not apply now
            method = rng.choices(names, weights)[0]
            args = _gen_call(table[method][0], rng, ref_obj)
            if args is not None:
                break
        if args is None:
            break
        call = _as_call(args)
        history.append(f"obj.{call.render(method, _param_names(getattr(ref_obj, method)))}")
        if not callable(getattr(stu_obj, method, None)):
            return fail(f"your class has no method `{method}`")
        ref_in, stu_in = _copy(call), _copy(call)
        ref = _reference_call(functools.partial(ref_in.apply, getattr(ref_obj, method)))
        stu = _student_call(functools.partial(stu_in.apply, getattr(stu_obj, method)), budget, guard)
        bad = _judge_step(stu, ref, compare, budget, fail)
        if bad is not None:
            return bad
        outcome = short(ref.value, 60) if ref.error is None else f"raises {type(ref.error).__name__}"
        history[-1] += f"  -> {outcome}"
        if observe is not None:
            exp_state = _observe(observe, ref_obj)
            got = _student_call(functools.partial(_observe, observe, stu_obj), budget, guard)
            bad = _judge_step(
                got, _Outcome(value=exp_state), compare, budget, fail, what="state after the last call"
            )
            if bad is not None:
                return bad
    return None


def _judge_step(
    stu, ref, compare, budget, fail, construct=False, what="result of the last call"
) -> CheckFailed | None:
    if stu.delegated:
        return fail(
            f"your code called {stu.delegated}, the reference this task is checked against. "
            "Write the logic yourself; using the reference earns no points"
        )
    if stu.timed_out:
        return fail(
            f"no result within the time limit ({budget.total:g} s for the whole check); "
            "is there a loop that never ends?"
        )
    if _not_written(stu.error):
        return fail(f"not written yet: {_not_written_text(stu.error)}")
    if stu.error is not None:
        if ref.error is not None and isinstance(stu.error, type(ref.error)):
            return None
        return fail(
            f"the last call raised {_exc_text(stu.error)}",
            [("raised at", _where_raised(stu.error)), ("expected", _expected_text(ref))],
        )
    if ref.error is not None:
        return fail(
            "the last call should raise an exception but returned a value",
            [("expected", _expected_text(ref)), ("received", short(stu.value))],
        )
    if construct:
        return None
    diff = _compare(compare, ref.value, stu.value)
    if diff is None:
        return None
    return fail(
        f"wrong {what}",
        [("expected", _expected_text(ref)), ("received", short(stu.value)), ("difference", diff)],
    )
