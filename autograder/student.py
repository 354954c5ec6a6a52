"""Grade one student's notebooks: `python -m autograder.student ROOT STUDENT SCRATCH SLOT [options]`.

`autograder/grade.py` runs this in a subprocess per student (so nothing a submission does can stop
the run) and reads the result from disk: for each notebook of the assignment,
autograder/executed/<student>/lab0.1/<notebook>.ipynb, restored from solutions/ and executed in the
sandbox (autograder/executor.py); a notebook missing from the submission is restored with every
answer missing and not run. The student's log goes to autograder/logs/<student>.log. With
`--parallel N` (grade.py gives it when there are fewer students than workers) N notebooks are graded
at once: this process grades some and N - 1 helpers (`--serve`) the others.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
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


def prepare(root: Path, student: str) -> None:
    """An empty autograder/executed/<student>/lab0.1/, with the submission's timestamp."""
    out_dir = executed_dir(root, student)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    stamp = Path(root) / SUBMITTED_DIR / student / ASSIGNMENT / "timestamp.txt"
    if stamp.is_file():
        shutil.copyfile(stamp, out_dir / "timestamp.txt")


def grade_student(root: Path, student: str, scratch: Path, limits: executor.Limits, threads: int,
                  quick: bool, log: logging.Logger, log_file, only: str | None = None) -> None:  # fmt: skip
    """Grade every notebook of the assignment (or only the one named `only`, for `_grade_in_parallel`)."""
    root = Path(root)
    out_dir = executed_dir(root, student)
    submitted = root / SUBMITTED_DIR / student / ASSIGNMENT
    if only is None:
        prepare(root, student)
    for k, source_path in enumerate(notebooks(root / SOURCE_DIR / ASSIGNMENT)):
        if only is not None and source_path.stem != only:
            continue
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


def _helpers(argv: list[str], names: queue.Queue, count: int) -> list[threading.Thread]:
    """`count` helper processes (`--serve`) that grade the notebooks this process hands them, one name
    a line on their stdin, while this process grades others: a student graded alone uses every core
    it was given. Each notebook keeps its own kernel, scratch folder and trusted namespace."""
    base = [a for a in argv if not a.startswith(("--parallel", "--serve"))]

    def feed(child: subprocess.Popen) -> None:
        with contextlib.suppress(OSError, ValueError):
            while True:
                try:
                    name = names.get_nowait()
                except queue.Empty:
                    break
                child.stdin.write(name + "\n")
                child.stdin.flush()
                if not child.stdout.readline():  # it died: what it did not write scores 0 (grade.py)
                    break
            child.stdin.close()
        child.wait()

    threads = []
    for _ in range(count):
        child = subprocess.Popen([sys.executable, "-m", "autograder.student", *base, "--serve"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        threads.append(threading.Thread(target=feed, args=(child,), daemon=True))
        threads[-1].start()
    return threads


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
    p.add_argument("--parallel", type=int, default=1, help="notebooks graded at the same time")
    p.add_argument("--serve", action="store_true", help="grade the notebooks named on stdin (a helper)")
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
        def grade(only: str | None = None) -> None:
            grade_student(opts.root, opts.student, opts.scratch, limits, opts.threads, opts.quick, log, log_file,
                          only=only)  # fmt: skip

        if opts.serve:  # a helper of the process below
            for line in sys.stdin:
                grade(line.strip())
                print("done", flush=True)
        elif opts.parallel > 1:
            names: queue.Queue[str] = queue.Queue()
            prepare(opts.root, opts.student)
            for path in notebooks(opts.root / SOURCE_DIR / ASSIGNMENT):
                names.put(path.stem)
            helpers = _helpers(sys.argv[1:] if argv is None else argv, names, opts.parallel - 1)
            while True:  # the signal-based time limits of the checks need the main thread
                try:
                    grade(names.get_nowait())
                except queue.Empty:
                    break
            for t in helpers:
                t.join()
        else:
            grade()
    return 0


if __name__ == "__main__":
    sys.exit(main())
