"""The course directory that nbgrader works on, its configuration, and notebook hygiene.

Layout (all relative to the course root, the repository root by default):

    solutions/lab0.1/*.ipynb                    nbgrader's source directory (instructor versions)
    notebooks/lab0.1/*.ipynb                    nbgrader's release directory (what students open)
    autograder/submitted/<student>/lab0.1/      collected submissions
    autograder/autograded/<student>/lab0.1/     executed and scored copies
    autograder/feedback/<student>/lab0.1/       HTML feedback
    autograder/gradebook.db, autograder/grades.csv

`configure(c, root)` fills an nbgrader traitlets Config with this layout, so a test can build the
same course in a temporary directory. `clean_notebook` removes what running a notebook leaves behind
(outputs, execution counts, volatile metadata) so that committed notebooks and the release are
deterministic. `run_nbgrader` runs one nbgrader converter in process with its log captured.

Importing this module adjusts the process for nbgrader: the interpreter's bin directory goes on PATH
(nbgrader runs `alembic`), JUPYTER_PREFER_ENV_PATH=1 makes the venv's python3 kernelspec win over a
user-level one, and `configure` swaps nbgrader.api.get_alembic_version for an in-process equivalent.

Not handled here: the exchange (nbgrader's release_assignment/collect); submissions are copied into
autograder/submitted/ by hand or by an LMS export (see autograder/README.md).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import nbformat
from nbformat.notebooknode import NotebookNode
from traitlets.config import Config

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENT = "lab0.1"
COURSE_ID = "text-to-tensors"
SOURCE_DIR = "solutions"
RELEASE_DIR = "notebooks"
SUBMITTED_DIR = os.path.join("autograder", "submitted")
AUTOGRADED_DIR = os.path.join("autograder", "autograded")
FEEDBACK_DIR = os.path.join("autograder", "feedback")
GRADEBOOK = os.path.join("autograder", "gradebook.db")
GRADES_CSV = os.path.join("autograder", "grades.csv")

# nbgrader's Gradebook runs the `alembic` command, which lives next to this interpreter; `make grade`
# runs .venv/bin/python without activating the venv, so put its bin directory first on PATH.
_BIN = os.path.dirname(sys.executable)
if _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")


@functools.cache
def alembic_head() -> str:
    """The gradebook schema revision nbgrader stamps on a new gradebook.db.

    nbgrader.api.get_alembic_version finds it by running the `alembic` command (1-3 s per new
    gradebook); this reads the same scripts in process. tests/test_notebooks.py checks they agree.
    """
    import nbgrader
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", os.path.join(os.path.dirname(nbgrader.__file__), "alembic"))
    return ScriptDirectory.from_config(cfg).get_current_head()


def _use_in_process_alembic() -> None:
    import nbgrader.api

    nbgrader.api.get_alembic_version = alembic_head


# Kernels come from this environment's share/jupyter (the venv's python3), before any user-level
# kernelspec of the same name (jupyter_core already does so in a venv; conda environments need this).
os.environ.setdefault("JUPYTER_PREFER_ENV_PATH", "1")

# Seconds one cell may run during autograde; a student's endless loop outside a check costs this much.
CELL_TIMEOUT_S = 600


GRADEBOOK_URL_ENV = "LABKIT_GRADEBOOK_URL"  # e.g. postgresql://grader@dbhost/course (make grade DB_URL=...)


def db_url(root: Path | str = ROOT) -> str:
    """The gradebook: $LABKIT_GRADEBOOK_URL when set (PostgreSQL for a large course), else SQLite in
    autograder/gradebook.db."""
    return os.environ.get(GRADEBOOK_URL_ENV) or "sqlite:///" + str(Path(root).resolve() / GRADEBOOK)


def configure(c: Config | None = None, root: Path | str = ROOT) -> Config:
    """nbgrader settings of the course rooted at `root` (added to `c`, or to a new Config)."""
    c = Config() if c is None else c
    _use_in_process_alembic()
    root = Path(root).resolve()
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.course_id = COURSE_ID
    c.CourseDirectory.source_directory = SOURCE_DIR
    c.CourseDirectory.release_directory = RELEASE_DIR
    c.CourseDirectory.submitted_directory = SUBMITTED_DIR
    c.CourseDirectory.autograded_directory = AUTOGRADED_DIR
    c.CourseDirectory.feedback_directory = FEEDBACK_DIR
    c.CourseDirectory.solution_directory = os.path.join("autograder", "solution")
    c.CourseDirectory.db_url = db_url(root)
    # The stubs name their task (see autograder/preprocessors.py); everything else is nbgrader's
    # default pipeline, in nbgrader's order.
    from nbgrader.converters import GenerateAssignment

    from autograder.preprocessors import TaskStubs

    default = GenerateAssignment.class_traits()["preprocessors"].default()
    c.GenerateAssignment.preprocessors = [TaskStubs if p.__name__ == "ClearSolutions" else p for p in default]
    c.Execute.timeout = CELL_TIMEOUT_S
    c.Execute.interrupt_on_timeout = True
    # A test cell the student deleted comes back (and is run) instead of silently scoring nothing.
    c.OverwriteCells.add_missing_cells = True
    return c


# --------------------------------------------------------------------------------------------------
# Notebook hygiene
# --------------------------------------------------------------------------------------------------

KEPT_NOTEBOOK_METADATA = ("kernelspec", "language_info")
VOLATILE_CELL_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled", "trusted")


def clean_notebook(nb: NotebookNode) -> NotebookNode:
    """Strip outputs, execution counts and volatile metadata in place; give every cell a stable id."""
    nb.nbformat, nb.nbformat_minor = 4, max(nb.get("nbformat_minor", 5), 5)
    meta = nb.metadata
    for key in list(meta):
        if key not in KEPT_NOTEBOOK_METADATA:
            del meta[key]
    if "language_info" in meta:
        meta["language_info"] = {"name": meta["language_info"].get("name", "python")}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        if "attachments" in cell and not cell["attachments"]:
            del cell["attachments"]
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        jupyter = cell.metadata.get("jupyter")
        if isinstance(jupyter, dict):
            jupyter.pop("outputs_hidden", None)
            if not jupyter:
                del cell.metadata["jupyter"]
        if not cell.get("id"):
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            cell["id"] = grade_id or f"{cell.cell_type}-{index}"
    return nb


def read_notebook(path: Path | str) -> NotebookNode:
    return nbformat.read(str(path), as_version=4)


def write_notebook(nb: NotebookNode, path: Path | str) -> bool:
    """Write nb to path in nbformat's canonical JSON; returns True when the file's bytes changed."""
    path = Path(path)
    text = nbformat.writes(nb) + "\n"
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return True


def notebooks(directory: Path | str) -> list[Path]:
    """The .ipynb files of an assignment directory, sorted (checkpoints excluded)."""
    return sorted(p for p in Path(directory).glob("*.ipynb") if not p.name.startswith("."))


# --------------------------------------------------------------------------------------------------
# Running nbgrader in process
# --------------------------------------------------------------------------------------------------


class NbgraderError(RuntimeError):
    """An nbgrader step failed; the message carries the end of its log."""


@contextlib.contextmanager
def quiet_sqlalchemy():
    """Silence the SAWarnings nbgrader 0.9's gradebook code triggers (harmless, noisy on stderr)."""
    from sqlalchemy.exc import SAWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SAWarning)
        yield


def run_nbgrader(app: Any, what: str) -> str:
    """app.start() with the app's log captured (nothing on the terminal); returns the log text.

    Raises NbgraderError with the last lines of the log when the step fails.
    """
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    log = app.log
    saved = (log.handlers[:], log.propagate, log.level)
    log.handlers, log.propagate = [handler], False
    log.setLevel(logging.INFO)
    try:
        with quiet_sqlalchemy():
            app.start()
    except BaseException as e:
        tail = "\n".join(buffer.getvalue().splitlines()[-40:])
        raise NbgraderError(f"nbgrader {what} failed: {type(e).__name__}: {e}\n--- log ---\n{tail}") from e
    finally:
        log.handlers, log.propagate = saved[0], saved[1]
        log.setLevel(saved[2])
    return buffer.getvalue()
