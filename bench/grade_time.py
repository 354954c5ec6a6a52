"""How long `make grade` takes: one complete submission of every chapter, then a class of N.

    python bench/grade_time.py                 # 1 student, then 4 students with 2 workers
    python bench/grade_time.py --class-size 40 --jobs 2
    python bench/grade_time.py --quick         # chapter 1 only, 1 student then 2: a smoke run

Baseline, measured in the same run: the same solution notebooks executed top to bottom by nbclient
in one plain kernel (no sandbox, no restore, no scoring), in the same quick mode. The ratio says
what grading adds to running the notebooks. Grading runs the notebooks' experiments in quick mode
(LABKIT_QUICK=1) and every graded check, hidden tests included, in full.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions" / "lab0.1"


def _notebooks(pattern: str) -> list[Path]:
    return sorted(SOLUTIONS.glob(pattern))


def _copy_notebooks(dst: Path, pattern: str) -> None:
    dst.mkdir(parents=True)
    for path in _notebooks(pattern):
        shutil.copy2(path, dst / path.name)


def plain_execution(tmp: Path, pattern: str = "*.ipynb") -> float:
    """Seconds to run the solution notebooks in a plain kernel (quick mode): the baseline."""
    import nbformat
    from nbclient import NotebookClient

    os.environ["LABKIT_QUICK"] = "1"
    t = time.perf_counter()
    for path in _notebooks(pattern):
        nb = nbformat.read(str(path), as_version=4)
        NotebookClient(nb, kernel_name="python3", timeout=1200, resources={"metadata": {"path": str(tmp)}}).execute()
    return time.perf_counter() - t


def grade_class(tmp: Path, students: int, jobs: int, pattern: str = "*.ipynb") -> float:
    """Seconds for one `python -m autograder.grade --quick` run over `students` complete submissions."""
    course = tmp / f"course-{students}"
    _copy_notebooks(course / "solutions" / "lab0.1", pattern)
    for k in range(students):
        _copy_notebooks(course / "autograder" / "submitted" / f"student{k:03d}" / "lab0.1", pattern)
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "autograder.grade", "--root", str(course), "--quick", "-j", str(jobs)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(out.stdout[-2000:] + out.stderr[-2000:])
    full = out.stdout.count("100%")
    print(f"  {students} student(s), {jobs} worker(s): {seconds:.1f} s, {full} of {students} with full marks")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--class-size", type=int, default=4)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="chapter 1 only, a class of 2: a smoke run")
    opts = p.parse_args()
    pattern, class_size = ("01_*.ipynb", 2) if opts.quick else ("*.ipynb", opts.class_size)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCH_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    with tempfile.TemporaryDirectory(prefix="grade-bench-") as tmp:
        tmp = Path(tmp)
        base = plain_execution(tmp, pattern)
        print(f"baseline: the {len(_notebooks(pattern))} solution notebook(s) in one plain kernel: {base:.1f} s")
        one = grade_class(tmp, 1, 1, pattern)
        print(f"one complete submission graded: {one:.1f} s = {one / base:.2f}x the baseline")
        many = grade_class(tmp, class_size, opts.jobs, pattern)
        print(f"{class_size} submissions, {opts.jobs} workers: {many:.1f} s "
              f"({many / class_size:.1f} s per student; {many / base:.2f}x the baseline)")  # fmt: skip

if __name__ == "__main__":
    main()
