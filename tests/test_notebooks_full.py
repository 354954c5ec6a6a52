"""Each solution notebook executed top to bottom at full experiment size (LABKIT_QUICK unset).

tests/test_notebooks.py runs the notebooks many times through the autograder in quick mode (smaller
experiments, the same graded checks); this runs each one once as a student or instructor would,
with the sizes the prose talks about, and prints the time it took.
"""

import os
import time

import pytest

# GPU machines may have only the runtime dependencies: skip (with this reason), do not fail collection
pytest.importorskip("nbformat", reason="needs the dev extras: pip install -e '.[dev]'")
pytest.importorskip("nbclient", reason="needs the dev extras: pip install -e '.[dev]'")
import nbformat  # noqa: E402
from nbclient import NotebookClient  # noqa: E402
from notebook_tools import solution_notebooks  # noqa: E402

import autograder.course  # noqa: F401, E402  (puts the venv's python3 kernelspec first)


@pytest.mark.slow
@pytest.mark.parametrize("path", solution_notebooks(), ids=lambda p: p.stem)
def test_solution_runs_at_full_size(path, monkeypatch, capsys):
    monkeypatch.delenv("LABKIT_QUICK", raising=False)
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, kernel_name="python3", timeout=900, resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    errors = [c for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    stderr = [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "stream" and o.name == "stderr" and c.metadata.get("nbgrader", {}).get("grade")]
    assert not stderr, f"a graded cell wrote to stderr (nbgrader would give it 0): {stderr}"
    with capsys.disabled():
        print(f"\n  {path.name}: executed at full size in {seconds:.1f} s (OMP_NUM_THREADS="
              f"{os.environ.get('OMP_NUM_THREADS', 'unset')})")
