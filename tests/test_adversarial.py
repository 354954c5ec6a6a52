"""One `make grade` run over a class of honest and hostile submissions (tests/adversarial/corpus.py).

The grader must never stop, every graded cell must get its expected score, the honest students'
grades and files must be untouched, and the feedback must show no hidden test, hint or path of the
grading machine. The assignment is tests/adversarial/tiny.py (three tasks, seconds per student), in
quick mode with 2 workers, so the whole class costs a few minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# GPU machines may have only the runtime dependencies: skip (with this reason), do not fail collection
pytest.importorskip("nbformat", reason="needs the dev extras: pip install -e '.[dev]'")
import nbformat  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "adversarial"))

from corpus import CORPUS  # noqa: E402
from tiny import POINTS, STEM, T3, instructor_notebook  # noqa: E402

from autograder import course, grade, sandbox  # noqa: E402
from autograder.authoring import write  # noqa: E402
from autograder.release import generate_assignment  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the grading sandbox is Linux-only")
CORRECT_MERGE = "\n".join(line for line in T3.splitlines() if "###" not in line) + "\n"


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # a correct answer for whoever can reach this host's loopback
        body = CORRECT_MERGE.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    write(instructor_notebook(), root / course.SOURCE_DIR / course.ASSIGNMENT / f"{STEM}.ipynb")
    release = generate_assignment(root, tmp_path_factory.mktemp("release"))
    sol = nbformat.read(str(root / course.SOURCE_DIR / course.ASSIGNMENT / f"{STEM}.ipynb"), 4)
    rel = nbformat.read(str(release / f"{STEM}.ipynb"), 4)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ctx = {"root": str(root), "port": server.server_address[1]}
    for sub in CORPUS:
        folder = root / course.SUBMITTED_DIR / sub.name / course.ASSIGNMENT
        folder.mkdir(parents=True)
        nb = sub.build(sol, rel, ctx)
        if isinstance(nb, str):
            (folder / f"{STEM}.ipynb").write_text(nb)
        elif nb is not None:
            nbformat.write(nb, str(folder / f"{STEM}.ipynb"))
    honest_files = {p: hashlib.sha256(p.read_bytes()).hexdigest()
                    for p in (root / course.SUBMITTED_DIR).glob("honest-*/*/*.ipynb")}  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop(course.GRADEBOOK_URL_ENV, None)
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "autograder.grade", "--root", str(root), "-j", "2", "--quick",
         "--cell-timeout", "20", "--notebook-budget", "240"],
        capture_output=True, text=True, env=env, cwd=course.ROOT, timeout=1200,
    )  # fmt: skip
    seconds = time.perf_counter() - t
    server.shutdown()
    print(f"\ngraded {len(CORPUS)} submissions in {seconds:.0f} s\n{proc.stdout[-3000:]}")
    return root, proc, honest_files, seconds


def test_the_run_never_stops(graded_class):
    root, proc, _, _ = graded_class
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    scores = grade.read_scores(root)
    assert set(scores) == {s.name for s in CORPUS}, f"students not graded: {set(s.name for s in CORPUS) - set(scores)}"


@pytest.mark.parametrize("sub", CORPUS, ids=[s.name for s in CORPUS])
def test_every_cell_gets_its_expected_score(graded_class, sub):
    root = graded_class[0]
    if sub.needs_sandbox and not sandbox.bwrap_works():
        pytest.skip("needs bubblewrap (make sandbox); without it this cheat is only warned about")
    got = grade.read_scores(root)[sub.name][STEM]
    assert {k: s for k, (s, _) in got.items()} == sub.expected
    assert {k: m for k, (_, m) in got.items()} == POINTS, "the points of a cell come from solutions/"
    if sub.says:
        executed = root / course.AUTOGRADED_DIR / sub.name / course.ASSIGNMENT / f"{STEM}.ipynb"
        assert sub.says in executed.read_text()


def test_honest_files_untouched(graded_class):
    _, _, honest_files, _ = graded_class
    for path, digest in honest_files.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} was changed while grading"


def test_feedback_hides_hidden_tests_and_paths(graded_class):
    root = graded_class[0]
    for sub in CORPUS:
        page = root / course.FEEDBACK_DIR / sub.name / course.ASSIGNMENT / f"{STEM}.html"
        text = page.read_text()
        # the grader's own set-up code (prelude, wire) never shows as a cell
        setup = ("_labkit_no_exit", "def _labkit_server")
        for secret in ("SECRET-HINT", "BEGIN HIDDEN", "g.args(", str(root), "/root/", "/tmp/", "/work/", *setup):
            assert secret not in text, f"{sub.name}'s feedback shows {secret!r}"
    partial = (root / course.FEEDBACK_DIR / "honest-partial" / course.ASSIGNMENT / f"{STEM}.html").read_text()
    assert "t2-pairs-tests" in partial and "FAIL" in partial and "wrong result" in partial
    assert "# try your merge" in partial, "the notebook's last cell is missing from the graded notebook"


def test_a_second_run_grades_nothing_again(graded_class):
    root = graded_class[0]
    proc = subprocess.run([sys.executable, "-m", "autograder.grade", "--root", str(root), "-j", "2", "--quick"],
                          capture_output=True, text=True, cwd=course.ROOT, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{len(CORPUS)} unchanged submission(s) not re-graded" in proc.stdout


def test_similarity_report_lists_copies_and_side_doors(graded_class):
    import csv

    root = graded_class[0]
    rows = list(csv.DictReader(open(root / "autograder" / "reports" / "similarity.csv")))
    copied = [r for r in rows if r["student"] == "copies-the-reference"]
    assert copied and float(copied[0]["similarity"]) >= 0.9, rows
    assert not [r for r in rows if r["student"] == "honest-full"], "an honest answer is flagged"
    framed = [r for r in rows if r["student"] == "expected-from-stack-frame"]
    assert framed and "frame inspection" in framed[0]["flags"]
    for student, flag in (("clones-the-reference-code", "a code object"), ("getsource-exec", "inspect.getsource"),
                          ("second-import", "importlib")):  # fmt: skip
        assert any(r["student"] == student and flag in r["flags"] for r in rows), (student, rows)
