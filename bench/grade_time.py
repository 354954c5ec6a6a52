"""How long `make grade` takes: one complete submission (chapters 1-3, then all chapters), then a class.

    python bench/grade_time.py                          # 1 student ch1-3, 1 student ch1-5, 40 students ch1-3
    python bench/grade_time.py --class-size 10 --jobs 2 # a smaller class
    python bench/grade_time.py --quick                  # chapter 1 only, 1 student then 2: a smoke run

Every run is `python -m autograder.grade --quick -j JOBS` (default 2, the cores of the course's
grading machine; a student graded alone has their notebooks graded two at a time). Each figure
stands beside its baseline, measured in the same run: the same solution notebooks executed top to
bottom, one after another, by nbclient in a plain kernel each (no sandbox, no restore, no
judging), in the same quick mode. The ratio says what grading adds to running the notebooks. For the class the
baseline is the measured single run times the class size divided by the workers (perfect
parallelism of plain runs). Grading runs the notebooks' experiments in quick mode (LABKIT_QUICK=1)
and every graded check, hidden tests included, in full; a complete submission must score 100%.

Without --quick the results go to bench/results/grade_time.{json,md}, with the date, the machine
and its load average (a shared machine's load moves every figure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions" / "lab0.1"
RESULTS = ROOT / "bench" / "results"
CH13, ALL = "0[123]_*.ipynb", "*.ipynb"


def _notebooks(pattern: str) -> list[Path]:
    return sorted(SOLUTIONS.glob(pattern))


def _copy_notebooks(dst: Path, pattern: str) -> None:
    dst.mkdir(parents=True)
    for path in _notebooks(pattern):
        shutil.copy2(path, dst / path.name)


def _load() -> float:
    return os.getloadavg()[0]


def plain_execution(tmp: Path, pattern: str) -> float:
    """Seconds to run the solution notebooks in plain kernels, one after another (quick mode)."""
    import nbformat
    from nbclient import NotebookClient

    os.environ["LABKIT_QUICK"] = "1"
    t = time.perf_counter()
    for path in _notebooks(pattern):
        nb = nbformat.read(str(path), as_version=4)
        NotebookClient(nb, kernel_name="python3", timeout=1200, resources={"metadata": {"path": str(tmp)}}).execute()
    return time.perf_counter() - t


def grade_class(tmp: Path, students: int, jobs: int, pattern: str) -> dict:
    """One `python -m autograder.grade --quick` run over `students` complete submissions."""
    course = tmp / f"course-{students}-{len(_notebooks(pattern))}"
    _copy_notebooks(course / "solutions" / "lab0.1", pattern)
    for k in range(students):
        _copy_notebooks(course / "autograder" / "submitted" / f"student{k:03d}" / "lab0.1", pattern)
    load = _load()
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "autograder.grade", "--root", str(course), "--quick", "-j", str(jobs)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(out.stdout[-2000:] + out.stderr[-2000:])
    per_student = [float(s) for s in re.findall(r"^graded \S+\s+([\d.]+) s", out.stdout, re.M)]
    full = len(re.findall(r"^student\d+ .* 100%$", out.stdout, re.M))
    return {"students": students, "jobs": jobs, "notebooks": len(_notebooks(pattern)), "seconds": round(seconds, 1),
            "full_marks": full, "median_student_s": round(statistics.median(per_student), 1) if per_student else None,
            "load_before": round(load, 2), "load_after": round(_load(), 2)}  # fmt: skip


def _row(what: str, run: dict, base: float) -> str:
    return (f"| {what} | {run['seconds']:.1f} s | {base:.1f} s | {run['seconds'] / base:.2f}x | "
            f"{run['full_marks']}/{run['students']} | {run['load_before']:.1f} / {run['load_after']:.1f} |")


def _machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "?"
    system = f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    return f"{os.cpu_count()} cores ({model}), {system}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--class-size", type=int, default=40)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="chapter 1 only, a class of 2: a smoke run")
    opts = p.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCH_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": _machine(),
              "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip()}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="grade-bench-") as tmp:
        tmp = Path(tmp)
        if opts.quick:
            base = plain_execution(tmp, "01_*.ipynb")
            print(f"baseline: chapter 1 in a plain kernel: {base:.1f} s")
            for n in (1, 2):
                run = grade_class(tmp, n, opts.jobs, "01_*.ipynb")
                print(f"{n} student(s), chapter 1: {run['seconds']:.1f} s = {run['seconds'] / base:.2f}x the baseline")
            return
        rows = []
        singles = (("ch1-3", CH13, "one student, chapters 1-3"), ("ch1-5", ALL, "one student, all chapters"))
        for key, pattern, what in singles:
            load = _load()
            base = plain_execution(tmp, pattern)
            result[f"baseline_{key}_s"] = round(base, 1)
            result[f"baseline_{key}_load_before"] = round(load, 2)
            run = result[f"one_student_{key}"] = grade_class(tmp, 1, opts.jobs, pattern)
            rows.append(_row(what, run, base))
            print(f"{what}: graded in {run['seconds']:.1f} s; plain execution {base:.1f} s "
                  f"({run['seconds'] / base:.2f}x); full marks: {run['full_marks'] == 1}", flush=True)  # fmt: skip
        base = result["baseline_ch1-3_s"] * opts.class_size / opts.jobs
        run = result["class_ch1-3"] = grade_class(tmp, opts.class_size, opts.jobs, CH13)
        rows.append(_row(f"{opts.class_size} students, chapters 1-3, {opts.jobs} workers", run, base))
        print(f"{opts.class_size} students, {opts.jobs} workers: {run['seconds']:.1f} s "
              f"({run['seconds'] / opts.class_size:.1f} s per student); plain execution {base:.1f} s "
              f"(= {opts.class_size} x {result['baseline_ch1-3_s']} s / {opts.jobs}; {run['seconds'] / base:.2f}x); "
              f"full marks {run['full_marks']}/{opts.class_size}")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "grade_time.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [f"# Grading time ({result['date']}, commit {result['git']})", "", f"Machine: {result['machine']}.", "",
          "`python bench/grade_time.py`: complete submissions (the solution notebooks) graded by "
          f"`python -m autograder.grade --quick -j {opts.jobs}` (sandboxed kernels, every check judged in full in "
          "the grading process, experiments in quick mode), against the same notebooks run one after another "
          "in plain kernels by nbclient in the same run (no sandbox, no judging).", "",
          "| run | graded | plain execution | ratio | full marks | load avg before / after |",
          "|---|---|---|---|---|---|", *rows, "",
          f"The class's plain-execution figure is {opts.class_size} x the one-student chapters 1-3 baseline / "
          f"{opts.jobs} workers. Median wall time of one student inside the class: "
          f"{result['class_ch1-3']['median_student_s']} s."]  # fmt: skip
    (RESULTS / "grade_time.md").write_text("\n".join(md) + "\n")
    print(f"wrote {RESULTS / 'grade_time.json'} and {RESULTS / 'grade_time.md'}")


if __name__ == "__main__":
    main()
