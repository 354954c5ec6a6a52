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

Two modes. Under the autograder (LABKIT_GRADING=1 in the kernel's environment) a failed check
raises `CheckFailed`, so nbgrader scores the test cell 0. In a student's own kernel it prints the
message (no traceback into this package) and returns, so Run All goes on to the widgets and
experiments below; `self_check()` then lists which visible tests of the notebook pass.

What it does not do on its own: sandbox the student's code (it runs in the same process). The
autograder (autograder/executor.py, autograder/sandbox.py) runs the kernel in a sandbox and scores
from the cell outputs. Floats are not compared bit for bit (tolerances follow torch.testing).

Modules: cases (calls and random generators), compare (short reprs, explain_difference), sandbox
(output capture, time limit, delegation guard around one call), checks (the checkers), selfcheck.
"""

from labkit.grading.cases import (
    Call,
    args,
    case,
    choice,
    floats,
    ints,
    lists,
    pairs,
    shapes,
    tensors,
    texts,
    token_ids,
)
from labkit.grading.checks import (
    GRADING_ENV,
    SEED_ENV,
    TIME_SCALE_ENV,
    CheckFailed,
    check_class,
    check_function,
    check_value,
)
from labkit.grading.compare import close, explain_difference, same, short
from labkit.grading.selfcheck import self_check

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
    "self_check",
    "GRADING_ENV",
    "SEED_ENV",
    "TIME_SCALE_ENV",
]
