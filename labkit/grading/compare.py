"""Short reprs for messages and comparison: None when equal, else a sentence on the first difference."""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

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
        d = explain_difference(e[k], r[k], rtol=rtol, atol=atol, check_dtype=check_dtype, path=f"{path}[{k!r}]")
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
