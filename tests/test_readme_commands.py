"""The README's instructor commands, run as the README shows them: `make release` and `make grade`."""

import csv
import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from notebook_tools import graded_cells, solution_notebooks

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
