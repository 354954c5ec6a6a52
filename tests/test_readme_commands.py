"""The README's instructor commands, run as the README shows them: `make release` and `make grade`."""

import csv
import os
import shutil
import subprocess
from pathlib import Path

import pytest

# GPU machines may have only the runtime dependencies: skip (with this reason), do not fail collection
pytest.importorskip("nbformat", reason="needs the dev extras: pip install -e '.[dev]'")
import nbformat  # noqa: E402
from notebook_tools import graded_cells, solution_notebooks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_make_release_reports_the_committed_release_up_to_date():
    run = subprocess.run(["make", "-s", "release", "RELEASE_ARGS=--check"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, f"notebooks/ is stale; run `make release`:\n{run.stdout}{run.stderr}"


@pytest.mark.slow
def test_make_grade_grades_a_submission_and_exports_grades(tmp_path):
    """A student hands in chapter 1 only (the solution): full marks there, zero for the missing chapters."""
    course = tmp_path / "course"
    for d in ("solutions", "notebooks"):
        shutil.copytree(ROOT / d, course / d)
    sub = course / "autograder" / "submitted" / "alice" / "lab0.1"
    sub.mkdir(parents=True)
    shutil.copy(ROOT / "solutions" / "lab0.1" / "01_text_to_tokens.ipynb", sub)
    env = {**os.environ, "LABKIT_QUICK": "1"}
    run = subprocess.run(["make", "-s", "grade", f"GRADE_ARGS=--root {course} alice"], cwd=ROOT,
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "alice" in run.stdout
    rows = list(csv.DictReader(open(course / "autograder" / "grades.csv")))
    alice = [r for r in rows if r["student_id"] == "alice"]
    assert alice, rows
    points = {p.stem: sum(graded_cells(nbformat.read(p, as_version=4)).values()) for p in solution_notebooks()}
    assert float(alice[0]["score"]) == points["01_text_to_tokens"]
    assert float(alice[0]["max_score"]) == sum(points.values())
    assert (course / "autograder" / "feedback" / "alice" / "lab0.1" / "01_text_to_tokens.html").exists()


@pytest.mark.slow
def test_make_demo_generates_for_eight_prompts_next_to_hf():
    run = subprocess.run(["make", "-s", "demo", "DEMO_ARGS=--max-tokens 8"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert out.count(">>> ") == 8, out
    assert "The capital of France is Paris" in out  # a real model answering, greedy
    for row in ("labkit (continuous batching", "HF generate, 8 batched", "HF generate, one at a time"):
        assert row in out


@pytest.mark.slow
def test_make_bench_quick_runs_every_benchmark_and_writes_nothing():
    results = ROOT / "bench" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.iterdir()}
    run = subprocess.run(["make", "-s", "bench", "BENCH_ARGS=--quick"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for script in sorted((ROOT / "bench").glob("*.py")):
        assert f"== bench/{script.name}" in run.stdout
    assert {p.name: p.stat().st_mtime_ns for p in results.iterdir()} == before, "--quick must not overwrite results"


@pytest.mark.slow
def test_readme_python_example_runs(capsys):
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Using the engine from Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert len(printed.split()) > 5, printed  # the model's answer, 32 greedy tokens
