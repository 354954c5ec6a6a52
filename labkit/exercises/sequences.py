"""Check an object through random sequences of method calls and report the SHORTEST failing one.

    check_program(MyAllocator, RefAllocator, programs, observe=lambda a: a.num_free_blocks)

A `Program` is a constructor call plus a list of method calls, printed as the code that makes them.
Both classes run the same programs; after every call the result (or the exception's type) and
`observe(obj)` are compared. Each run goes through `grading.check_function`, so the student's code gets
the usual time limit, no-delegation guard and quiet output. When a program fails, it is shrunk (delta
debugging: drop chunks of calls while the run still fails) and the failure of the shortest program
found is reported, with the length it was shrunk from.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from labkit import grading as g

MAX_SHRINK_RUNS = 200  # check_function calls spent on shrinking one failure


@dataclass
class Program:
    """`obj = cls(*init)`, then `obj.<name>(*args)` for each (name, args) in `calls`."""

    cls_name: str
    init: tuple
    calls: list[tuple[str, tuple]] = field(default_factory=list)

    def __repr__(self) -> str:
        lines = [f"obj = {self.cls_name}({', '.join(map(repr, self.init))})"]
        lines += [f"obj.{name}({', '.join(map(repr, args))})" for name, args in self.calls]
        return "; ".join(lines)

    def with_calls(self, calls: list[tuple[str, tuple]]) -> Program:
        return Program(self.cls_name, self.init, list(calls))


def run_program(cls: Callable, program: Program, observe: Callable[[Any], Any]) -> list[tuple]:
    """[(call, result or 'raises <Type>', observe(obj)) per call]; NotImplementedError propagates."""
    obj = cls(*program.init)
    trace = []
    for name, args in program.calls:
        try:
            out = getattr(obj, name)(*args)
        except NotImplementedError:
            raise
        except Exception as e:  # a misuse the contract says must raise: compared by type
            out = f"raises {type(e).__name__}"
        trace.append((f"obj.{name}({', '.join(map(repr, args))})", out, observe(obj)))
    return trace


def first_difference(expected: list[tuple], received: list[tuple]) -> str | None:
    """A sentence naming the first call whose result or observed state differs, or None."""
    for (call, e_out, e_state), got in zip(expected, received):
        _, r_out, r_state = got
        if e_out != r_out:
            return f"{call} returned {g.short(r_out, 60)}, expected {g.short(e_out, 60)}"
        if e_state != r_state:
            return f"after {call} the state is {g.short(r_state, 80)}, expected {g.short(e_state, 80)}"
    if len(expected) != len(received):
        return f"{len(received)} calls recorded, expected {len(expected)}"
    return None


def _seed() -> int:
    env = os.environ.get(g.SEED_ENV)
    return int(env) if env else random.SystemRandom().randrange(2**32)


def check_program(
    student_cls: Any,
    reference_cls: Any,
    make_programs: Callable[[random.Random], Sequence[Program]],
    *,
    observe: Callable[[Any], Any],
    name: str,
    hint: str = "",
    forbid: Sequence[Any] = (),
    time_limit: float = 20.0,
) -> None:
    """Run the programs on both classes; on a difference raise the shortest failing program's report."""
    seed = _seed()
    programs = list(make_programs(random.Random(seed)))

    def stu(program: Program) -> list[tuple]:
        return run_program(student_cls, program, observe)

    def ref(program: Program) -> list[tuple]:
        return run_program(reference_cls, program, observe)

    def failure(cases: list[Program]) -> g.CheckFailed | None:
        try:
            g.check_function(stu, ref, cases, compare=first_difference, hint=hint, name=name, forbid=forbid,
                             time_limit=time_limit, seed=seed, check_inputs=False, verbose=False)
        except g.CheckFailed as e:
            return e
        return None

    first = failure(programs)
    if first is None:
        print(f"✓ {name}: {len(programs)} random call sequences passed")
        return
    if "wrong result" not in str(first):  # not written, delegated, timed out: nothing to shrink
        raise first
    failing = next(p for p in programs if failure([p]) is not None)
    calls, runs = failing.calls, 0
    best = failure([failing])
    chunk = max(len(calls) // 2, 1)
    while chunk >= 1 and runs < MAX_SHRINK_RUNS:
        i, shrunk = 0, False
        while i < len(calls) and runs < MAX_SHRINK_RUNS:
            candidate = calls[:i] + calls[i + chunk:]
            runs += 1
            found = failure([failing.with_calls(candidate)]) if candidate else None
            if found is not None:
                calls, best, shrunk = candidate, found, True
            else:
                i += chunk
        if not shrunk:
            chunk //= 2
    raise g.CheckFailed(
        f"{best}\n  (the shortest failing sequence found: {len(calls)} calls, shrunk from a failing "
        f"sequence of {len(failing.calls)})"
    ) from None
