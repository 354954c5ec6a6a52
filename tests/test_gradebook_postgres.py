"""`make grade` with a PostgreSQL gradebook (`--db-url`), against a real server this test starts.

The server is Debian's postgresql (initdb + pg_ctl from /usr/lib/postgresql/<version>/bin), run as
the `postgres` user when the test runs as root, listening on a Unix socket in a temporary folder
only. Skipped, saying why, where PostgreSQL is not installed.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# GPU machines may have only the runtime dependencies: skip (with this reason), do not fail collection
pytest.importorskip("nbformat", reason="needs the dev extras: pip install -e '.[dev]'")
import nbformat  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "adversarial"))

from corpus import CORPUS  # noqa: E402
from tiny import STEM, instructor_notebook  # noqa: E402

from autograder import course, grade  # noqa: E402
from autograder.authoring import write  # noqa: E402
from autograder.release import generate_assignment  # noqa: E402

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def _as_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run the server as")
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


@pytest.fixture(scope="module")
def postgres():
    if not BIN:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[dev]')")
    bindir = Path(BIN[-1]).parent
    base = Path(tempfile.mkdtemp(prefix="labkit-pg-"))  # not under pytest's 0700 folder: the server's user reads it
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    as_user = _as_user()
    if as_user:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
        base.chmod(0o755)
    run = lambda *cmd: subprocess.run(as_user + list(cmd), check=True, capture_output=True, timeout=120)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-U", "grader", "--auth=trust", "-E", "UTF8")
    port = "54329"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"), "-o",
        f"-k {sock} -p {port} -c listen_addresses=''", "start")  # fmt: skip
    try:
        run(str(bindir / "createdb"), "-h", str(sock), "-p", port, "-U", "grader", "gradebook")
        yield f"postgresql+psycopg://grader@/gradebook?host={sock}&port={port}"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(base, ignore_errors=True)


def test_grade_into_postgresql(postgres, tmp_path, monkeypatch):
    root = tmp_path / "course"
    write(instructor_notebook(), root / course.SOURCE_DIR / course.ASSIGNMENT / f"{STEM}.ipynb")
    release = generate_assignment(root, tmp_path / "release")
    sol = nbformat.read(str(root / course.SOURCE_DIR / course.ASSIGNMENT / f"{STEM}.ipynb"), 4)
    rel = nbformat.read(str(release / f"{STEM}.ipynb"), 4)
    chosen = [s for s in CORPUS if s.name in ("honest-full", "honest-partial")]
    for sub in chosen:
        folder = root / course.SUBMITTED_DIR / sub.name / course.ASSIGNMENT
        folder.mkdir(parents=True)
        nbformat.write(sub.build(sol, rel, {}), str(folder / f"{STEM}.ipynb"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "autograder.grade", "--root", str(root), "-j", "2", "--quick", "--db-url", postgres],
        capture_output=True, text=True, env=env, cwd=course.ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not (root / course.GRADEBOOK).exists(), "graded into SQLite instead of PostgreSQL"
    monkeypatch.setenv(course.GRADEBOOK_URL_ENV, postgres)
    scores = grade.read_scores(root)
    for sub in chosen:
        assert {k: s for k, (s, _) in scores[sub.name][STEM].items()} == sub.expected
    assert (root / course.GRADES_CSV).read_text().count("\n") == 3  # header and two students
