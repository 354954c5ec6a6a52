"""The checkers test cells call: check_function, check_value, check_class."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from labkit.grading.cases import Call, _as_call, copy_call
from labkit.grading.compare import _compare, _kind, close, explain_difference, short
from labkit.grading.sandbox import (
    Budget,
    Guard,
    Outcome,
    Quiet,
    exc_text,
    reference_call,
    student_call,
    where_raised,
)

SEED_ENV = "LABKIT_GRADING_SEED"
TIME_SCALE_ENV = "LABKIT_GRADING_TIME_SCALE"


GRADING_ENV = "LABKIT_GRADING"  # "1" in the autograder's kernels: a failed check raises
# Read once, when the autograder's kernel imports this module before any student code runs. nbgrader's
# own runs (its Validate button, `nbgrader autograde`) set NBGRADER_EXECUTION: failures raise there too.
GRADED = os.environ.get(GRADING_ENV) == "1" or bool(os.environ.get("NBGRADER_EXECUTION"))


class CheckFailed(AssertionError):
    """A check found a difference from the reference; the message says what and how to replay it."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows these lines instead of a traceback through this package.
        return ["CheckFailed: " + str(self)]


@dataclasses.dataclass
class CheckResult:
    """One check run in this process: its title, whether it passed, and the failure message."""

    title: str
    passed: bool
    message: str = ""


RAISE_ALWAYS = False  # self_check sets it while it runs the test cells
RESULTS: list[CheckResult] = []  # every check run in this process, in order (self_check reads them)


def _interactive() -> bool:
    """True in a student's Jupyter kernel (not under the autograder, not in pytest or a script)."""
    if GRADED:
        return False
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def _reported(check: Callable) -> Callable:
    """Run a checker; record its result; a failure raises, or in a student's kernel is printed.

    Printing instead of raising lets Run All go past a failed test cell to the widgets below; the
    autograder sets LABKIT_GRADING=1 so that the same failure raises and the cell scores 0.
    """

    @functools.wraps(check)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            check(*args, **kwargs)
        except CheckFailed as failure:
            message = str(failure)
            RESULTS.append(CheckResult(message.split(":", 1)[0], False, message))
            if RAISE_ALWAYS or not _interactive():
                raise
            print("✗ " + message.replace("\n", "\n  "))
            return
        RESULTS.append(CheckResult(_title_of(check, args, kwargs), True))

    return run


def _title_of(check: Callable, args: tuple, kwargs: dict) -> str:
    if kwargs.get("name"):
        return str(kwargs["name"])
    if check.__name__ == "check_value" and len(args) >= 3:
        return str(args[2])
    return _name_of(args[0]) if args else check.__name__


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
    if env and not GRADED:  # an answer cell cannot pin the graded inputs through the environment
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
    found = re.match(r"line \d+ in ([^:\s]+)", where_raised(err))
    return (f"`{found.group(1)}` raised " if found else "") + exc_text(err)


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


@_reported
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
    budget = Budget(time_limit * _time_scale())
    guard_ = Guard([reference_fn, *forbid] if guard else list(forbid))
    planned = _expand(cases, n)
    ref_time = 0.0
    with Quiet() as quiet:
        for i, item in enumerate(planned):
            call = _as_call(item(rng) if callable(item) and not isinstance(item, Call) else item)
            where = f"case {i + 1} of {len(planned)}"
            shown = functools.partial(call.render, title, params)  # rendered only for a failure
            ref_in, stu_in = copy_call(call), copy_call(call)
            t0 = time.perf_counter()
            ref = reference_call(functools.partial(ref_in.apply, reference_fn))
            ref_time += time.perf_counter() - t0
            stu = student_call(functools.partial(stu_in.apply, student_fn), budget, guard_)
            failure = _judge_call(report, where, shown, ref, stu, compare, budget, ref_time, quiet)
            if failure is None and check_inputs:
                failure = _judge_inputs(report, where, shown, call, ref_in, stu_in, params, quiet)
            if failure is not None:
                raise failure from None
    if verbose:
        print(f"✓ {title}: {len(planned)} cases passed")


def _expected_text(ref: Outcome) -> str:
    return f"raises {exc_text(ref.error)}" if ref.error is not None else short(ref.value)


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
            f"your code raised {exc_text(stu.error)}, {where}.",
            [("input", shown()), ("raised at", where_raised(stu.error)), ("expected", _expected_text(ref))],
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


@_reported
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
    with Quiet():
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


@_reported
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
    budget = Budget(time_limit * _time_scale())
    guard_ = Guard([reference_cls, *forbid] if guard else list(forbid))
    table = {m: (g if isinstance(g, tuple) else (g, 1.0)) for m, g in methods.items()}
    names = sorted(table)
    with Quiet() as quiet:
        run = _ClassRun(
            student_cls, reference_cls, table, names, [table[m][1] for m in names], init, steps, observe,
            compare, rng, budget, guard_, report, quiet, n,
        )  # fmt: skip
        for seq in range(n):
            failure = _run_sequence(run, seq)
            if failure is not None:
                raise failure from None
    if verbose:
        print(f"✓ {title}: {n} sequences of {steps} calls passed")


@dataclasses.dataclass
class _ClassRun:
    """Everything one check_class run shares across its sequences."""

    stu_cls: type
    ref_cls: type
    table: dict[str, tuple[Any, float]]  # method -> (generator, weight)
    names: list[str]  # the methods, sorted
    weights: list[float]  # their weights, in the order of `names`
    init: Any
    steps: int
    observe: Any
    compare: Callable | None
    rng: random.Random
    budget: Budget
    guard: Guard
    report: _Report
    quiet: Quiet
    n: int  # sequences in all


def _run_sequence(run: _ClassRun, seq: int) -> CheckFailed | None:
    stu_cls, ref_cls, table, rng, budget, guard = run.stu_cls, run.ref_cls, run.table, run.rng, run.budget, run.guard
    observe, compare = run.observe, run.compare
    history: list[str] = []

    def fail(headline: str, lines: Sequence[tuple[str, str]] = ()) -> CheckFailed:
        shown = history[-12:]
        if len(history) > 12:
            shown = [f"... ({len(history) - 12} earlier calls)"] + shown
        calls = "\n    " + "\n    ".join(shown) if shown else ""
        return run.report.fail(
            f"{headline} (sequence {seq + 1} of {run.n}).", [("calls", calls), *lines], run.quiet.printed()
        )

    call = _as_call(_gen_call(run.init, rng, None)) if run.init is not None else Call()
    history.append(f"obj = {call.render(ref_cls.__name__, _param_names(ref_cls))}")
    ref_in, stu_in = copy_call(call), copy_call(call)
    ref = reference_call(lambda: ref_in.apply(ref_cls))
    if ref.error is not None:
        raise RuntimeError(
            f"check_class: the reference constructor raised {exc_text(ref.error)} on "
            f"{history[-1]}; fix the test's `init` generator"
        ) from ref.error
    stu = student_call(lambda: stu_in.apply(stu_cls), budget, guard)
    bad = _judge_step(stu, ref, compare, budget, fail, construct=True)
    if bad is not None:
        return bad
    ref_obj, stu_obj = ref.value, stu.value
    for _ in range(run.steps):
        method, args = None, None
        for _attempt in range(20):  # skip methods whose generator says they do not apply now
            method = rng.choices(run.names, run.weights)[0]
            args = _gen_call(table[method][0], rng, ref_obj)
            if args is not None:
                break
        if args is None:
            break
        call = _as_call(args)
        history.append(f"obj.{call.render(method, _param_names(getattr(ref_obj, method)))}")
        if not callable(getattr(stu_obj, method, None)):
            return fail(f"your class has no method `{method}`")
        ref_in, stu_in = copy_call(call), copy_call(call)
        ref = reference_call(functools.partial(ref_in.apply, getattr(ref_obj, method)))
        stu = student_call(functools.partial(stu_in.apply, getattr(stu_obj, method)), budget, guard)
        bad = _judge_step(stu, ref, compare, budget, fail)
        if bad is not None:
            return bad
        outcome = short(ref.value, 60) if ref.error is None else f"raises {type(ref.error).__name__}"
        history[-1] += f"  -> {outcome}"
        if observe is not None:
            exp_state = _observe(observe, ref_obj)
            got = student_call(functools.partial(_observe, observe, stu_obj), budget, guard)
            bad = _judge_step(got, Outcome(value=exp_state), compare, budget, fail, what="state after the last call")
            if bad is not None:
                return bad
    return None


def _judge_step(stu, ref, compare, budget, fail, construct=False, what="result of the last call") -> CheckFailed | None:
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
            f"the last call raised {exc_text(stu.error)}",
            [("raised at", where_raised(stu.error)), ("expected", _expected_text(ref))],
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
