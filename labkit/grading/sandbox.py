"""What surrounds one call of the student's code inside a check: output capture (`Quiet`), the time
limit (`Budget`), the delegation guard (`Guard`), and the outcome of the call (`Outcome`)."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import inspect
import io
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from labkit.grading.compare import short

# --------------------------------------------------------------------------------------------------
# Quiet: nothing the student's code (or a warning) prints may reach stderr
# --------------------------------------------------------------------------------------------------


class Quiet:
    """Capture sys.stdout, sys.stderr, warnings and file descriptor 2 for the duration of a check."""

    def __enter__(self) -> Quiet:
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


# Frames of this package are the grader's; every other frame is the student's (or the reference's).
_PACKAGE_DIR = os.path.normcase(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _is_grader_file(filename: str) -> bool:
    return os.path.normcase(os.path.abspath(filename)).startswith(_PACKAGE_DIR)


class _TimeUp(BaseException):
    """Raised inside the student's code when the check's time is spent (BaseException: `except
    Exception` does not catch it)."""


class Budget:
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
            if self._armed and event == "line" and not _is_grader_file(frame.f_code.co_filename):
                raise _TimeUp
            return tracer

        def on_alarm(signum, frame):
            nonlocal fired
            if not self._armed:
                return
            fired += 1
            if fired > 1:
                f = frame
                while f is not None and not _is_grader_file(f.f_code.co_filename):  # the student's frames only
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


# Labels ("module.qualname") of what the active guards forbid: a check whose student code runs in
# another process (the autograder's sandboxed kernel) sends them there, to be guarded on that side.
ACTIVE_LABELS: list[str] = []


class Guard:
    """While active, calling any of `targets` raises _Delegated and records it."""

    def __init__(self, targets: Iterable[Any]) -> None:
        targets = list(targets)
        self.labels = [_label(t) for t in targets]
        self.funcs: list[tuple[types.FunctionType, str]] = []
        seen: set[int] = set()
        for t in targets:
            label = _label(t)
            for f in _python_functions(t):
                if id(f) not in seen:
                    seen.add(id(f))
                    self.funcs.append((f, label if f is t else _label(f)))
        self._saved: list[tuple[types.FunctionType, types.CodeType]] = []

    def __enter__(self) -> Guard:
        ACTIVE_LABELS.extend(self.labels)
        for f, label in self.funcs:
            code = f.__code__
            f.__code__ = _tripwire_code(label, len(code.co_freevars))
            self._saved.append((f, code))
        return self

    def __exit__(self, *exc: Any) -> None:
        del ACTIVE_LABELS[len(ACTIVE_LABELS) - len(self.labels) :]
        while self._saved:
            f, code = self._saved.pop()
            f.__code__ = code


# --------------------------------------------------------------------------------------------------
# Running one call of the student's code
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    value: Any = None
    error: BaseException | None = None
    timed_out: bool = False
    delegated: str | None = None


def student_call(fn: Callable[[], Any], budget: Budget, guard: Guard) -> Outcome:
    _TRIPPED.clear()
    try:
        with guard:
            value = budget.run(fn)
        out = Outcome(value=value)
    except _TimeUp:
        out = Outcome(timed_out=True)
    except _Delegated as e:
        out = Outcome(delegated=str(e))
    except Exception as e:
        out = Outcome(error=e)
    except BaseException as e:  # SystemExit, GeneratorExit from student code; KeyboardInterrupt is the user's
        if isinstance(e, KeyboardInterrupt):
            raise
        out = Outcome(error=e)
    if _TRIPPED and out.delegated is None:  # a tripwire fired but the student's code swallowed it
        out = Outcome(delegated=_TRIPPED[0])
    return out


def reference_call(fn: Callable[[], Any]) -> Outcome:
    try:
        return Outcome(value=fn())
    except Exception as e:
        return Outcome(error=e)


def where_raised(err: BaseException) -> str:
    """'line 5 in merge: `ids[i + 1]`' for the innermost frame outside this module, or ''."""
    if getattr(err, "labkit_where", ""):  # raised in another process, which said where
        return err.labkit_where
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not _is_grader_file(f.filename)]
    if not frames:
        return ""
    f = frames[-1]
    where = f"line {f.lineno} in {f.name}"
    return f"{where}: `{short(f.line.strip(), 100)[1:-1]}`" if f.line else where


def exc_text(err: BaseException) -> str:
    msg = str(err)
    if not msg:
        return type(err).__name__
    return f"{type(err).__name__}: {short(msg, 300) if len(msg) > 300 else msg}"
