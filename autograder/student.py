"""Grade one student's notebooks: `python -m autograder.student ROOT STUDENT SCRATCH SLOT [options]`.

`autograder/grade.py` runs this in a subprocess per student (so nothing a submission does can stop
the run) and reads the result from disk: for each notebook of the assignment,
autograder/executed/<student>/lab0.1/<notebook>.ipynb, restored from solutions/ and executed in the
sandbox (autograder/executor.py); a notebook missing from the submission is restored with every
answer missing and not run. The student's log goes to autograder/logs/<student>.log.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from autograder import executor, sandbox
from autograder.course import ASSIGNMENT, SOURCE_DIR, SUBMITTED_DIR, notebooks, read_notebook, write_notebook

EXECUTED_DIR = os.path.join("autograder", "executed")
LOG_DIR = os.path.join("autograder", "logs")
UID_BASE = 61000  # the sandbox of worker slot k runs as uid UID_BASE + k (when graded as root)


def executed_dir(root: Path, student: str) -> Path:
    return Path(root) / EXECUTED_DIR / student / ASSIGNMENT


def log_path(root: Path, student: str) -> Path:
    return Path(root) / LOG_DIR / f"{student}.log"


def _read_submission(path: Path, log: logging.Logger):
    if not path.exists():
        return None
    try:
        return read_notebook(path)
    except Exception as e:  # not JSON, not a notebook: graded as if every answer were missing
        log.warning("%s is not a readable notebook (%s: %s); graded as empty", path.name, type(e).__name__, e)
        import nbformat

        return nbformat.v4.new_notebook()


def grade_student(root: Path, student: str, scratch: Path, limits: executor.Limits, threads: int,
                  quick: bool, log: logging.Logger, log_file) -> None:  # fmt: skip
    root = Path(root)
    out_dir = executed_dir(root, student)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    submitted = root / SUBMITTED_DIR / student / ASSIGNMENT
    stamp = submitted / "timestamp.txt"
    if stamp.is_file():
        shutil.copyfile(stamp, out_dir / "timestamp.txt")
    for k, source_path in enumerate(notebooks(root / SOURCE_DIR / ASSIGNMENT)):
        t = time.perf_counter()
        source = read_notebook(source_path)
        sub = _read_submission(submitted / source_path.name, log)
        nb = executor.restore(source, sub)
        if sub is None:
            log.info("%s: not submitted", source_path.stem)
            for cell in nb.cells:
                if executor.is_test_cell(cell):
                    cell.outputs = [executor.error_output("NotSubmitted", "this notebook was not submitted")]
                    cell.metadata["labkit"] = {"failed": "visible", "message": "this notebook was not submitted"}
        else:
            work = scratch / f"nb{k}"  # short: the kernel's Unix socket paths must fit in 107 bytes
            env = executor.kernel_env(threads, quick, work)
            executor.execute(nb, work, root, limits, env, log, log_file)
        write_notebook(nb, out_dir / source_path.name)
        log.info("%s: graded in %.1f s", source_path.stem, time.perf_counter() - t)


def _die_with_parent() -> None:
    """Linux: this worker gets SIGKILL when `make grade` dies (its kernels follow: bwrap --die-with-parent)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autograder.student", description=__doc__.split("\n")[0])
    p.add_argument("root", type=Path)
    p.add_argument("student")
    p.add_argument("scratch", type=Path)
    p.add_argument("slot", type=int)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--cell-timeout", type=float, default=600.0)
    p.add_argument("--notebook-budget", type=float, default=1800.0)
    p.add_argument("--memory-gib", type=float, default=8.0)
    opts = p.parse_args(argv)
    _die_with_parent()
    # The checks judged here time the student's calls including the trip into the sandboxed kernel.
    os.environ.setdefault("LABKIT_GRADING_TIME_SCALE", "2")
    uid = UID_BASE + opts.slot if os.geteuid() == 0 and sandbox.bwrap_works() else None
    policy = sandbox.Policy(memory_bytes=int(opts.memory_gib * sandbox.GiB), uid=uid,
                            cpu_s=int(opts.notebook_budget) + 60)  # fmt: skip
    limits = executor.Limits(opts.cell_timeout, opts.notebook_budget, policy=policy)
    path = log_path(opts.root, opts.student)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log_file:
        handler = logging.StreamHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log = logging.getLogger(f"grade.{opts.student}")
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.info("grading %s (quick=%s, threads=%d, sandbox=%s)", opts.student, opts.quick, opts.threads,
                 "bubblewrap" if sandbox.bwrap_works() else "rlimits only")  # fmt: skip
        if sandbox.warning():
            log.warning(sandbox.warning())
        grade_student(opts.root, opts.student, opts.scratch, limits, opts.threads, opts.quick, log, log_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
