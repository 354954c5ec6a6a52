"""Run one student's notebook for grading, whatever the notebook does.

`restore(source, submitted)` builds the notebook that is run: every cell with nbgrader metadata of
the instructor's version (solutions/, hidden tests included), with its metadata, in its order; a
solution cell takes the student's source of the cell with the same grade_id (a missing one raises
NotImplementedError); the plain cells between them are the student's. So deleting or editing a
locked or test cell, marking a locked cell as a solution or raising a cell's points changes nothing.

`execute(nb, ...)` runs it cell by cell in a sandboxed kernel (autograder/sandbox.py) and never
raises for what the notebook does:
- a cell that kills the kernel (os._exit, a crash, the memory or CPU limit) or runs past
  `cell_timeout` (a loop that ignores SIGINT) gets an error output; the kernel is restarted, the
  cells before it that ran cleanly are run again (outputs kept from the first run), and grading goes
  on, so that only what the cell broke scores 0 (a cell during which the kernel died is run once
  more after the restart, and blamed only if the kernel dies again);
- a notebook gets `notebook_budget` seconds in all, then the remaining cells get an error output;
- a cell's output is cut at `max_output_bytes`;
- a test cell runs in two parts, its visible tests and its hidden tests, and records which part
  failed and the message (cell.metadata.labkit) for the feedback; its stderr becomes stdout (a
  warning or a log line from a correct answer does not cost the cell: the check's verdict, an error
  output, decides) and an `execute_result` is dropped (nbgrader would read it as partial credit).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
from nbformat.notebooknode import NotebookNode

import labkit
from autograder import confine, sandbox

HIDDEN_BEGIN = "### BEGIN HIDDEN TESTS"
HIDDEN_END = "### END HIDDEN TESTS"
# Run in every kernel before the first cell: the checkers learn they are graded (a failed check raises).
# IPython's exit()/quit() would end the kernel after the cell, blaming whichever cell runs next; here
# they raise SystemExit in the cell that calls them, which IPython reports as that cell's error.
PRELUDE = """\
import labkit.grading as _labkit_grading_preload
def _labkit_no_exit(*args, **kwargs):
    raise SystemExit("exit() and quit() do not end the kernel while grading")
get_ipython().ask_exit = _labkit_no_exit
exit = quit = _labkit_no_exit
del _labkit_grading_preload, _labkit_no_exit
"""


SLOW_CELL_S = 1.0  # a cell that runs longer is named in the student's log, with its time

MISSING_ANSWER = 'raise NotImplementedError("this answer cell is missing from the submission")\n'


def _meta(cell: NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def is_test_cell(cell: NotebookNode) -> bool:
    m = _meta(cell)
    return cell.cell_type == "code" and bool(m.get("grade")) and not m.get("solution")


# --------------------------------------------------------------------------------------------------
# The notebook that is run
# --------------------------------------------------------------------------------------------------


def _segments(nb: NotebookNode, known: set[str]) -> dict[str, list[NotebookNode]]:
    """{grade_id of the graded/locked/answer cell they follow ("" = top): the plain cells after it}."""
    out: dict[str, list[NotebookNode]] = {"": []}
    anchor = ""
    for cell in nb.get("cells", []):
        grade_id = _meta(cell).get("grade_id")
        if grade_id in known:
            anchor = grade_id
            out.setdefault(anchor, [])
        elif cell.get("cell_type") in ("code", "markdown") and isinstance(cell.get("source"), str):
            out[anchor].append(cell)
    return out


def restore(source: NotebookNode, submitted: NotebookNode | None) -> NotebookNode:
    """The instructor's notebook with the student's answers and plain cells put in.

    Cells with nbgrader metadata come from the instructor (answer cells take the student's source);
    the plain cells between two of them (demos, experiments, the student's own cells) are the
    student's, as nbgrader keeps them, or the instructor's where the student's copy lost that spot.
    """
    nb = copy.deepcopy(source)
    if submitted is None:  # a notebook not handed in: every answer is missing
        submitted = nbformat.v4.new_notebook()
    known = {_meta(c).get("grade_id") for c in source.cells if _meta(c).get("grade_id")}
    answers: dict[str, str] = {}
    for cell in submitted.get("cells", []):
        grade_id = _meta(cell).get("grade_id")
        if grade_id in known and cell.get("cell_type") == "code" and isinstance(cell.get("source"), str):
            answers.setdefault(grade_id, cell.source)
    theirs, ours = _segments(submitted, known), _segments(source, known)

    def plain(anchor: str) -> list[NotebookNode]:
        cells = theirs[anchor] if anchor in theirs else ours.get(anchor, [])
        make = {"code": nbformat.v4.new_code_cell, "markdown": nbformat.v4.new_markdown_cell}
        return [make[c["cell_type"]](c["source"]) for c in cells]

    out = plain("")
    for cell in nb.cells:
        m = _meta(cell)
        if m.get("grade_id") not in known:
            continue  # a plain cell: the segment's owner decides (above)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if m.get("solution"):
                cell.source = answers.get(m["grade_id"], MISSING_ANSWER)
        out.append(cell)
        out += plain(m["grade_id"])
    nb.cells = out
    return nb


def split_test(source: str) -> tuple[str, str]:
    """(visible part, hidden part) of a test cell's source."""
    if HIDDEN_BEGIN not in source:
        return source, ""
    head, _, rest = source.partition(HIDDEN_BEGIN)
    hidden, _, tail = rest.partition(HIDDEN_END)
    return head + tail, hidden


def error_output(ename: str, evalue: str) -> NotebookNode:
    return nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


# --------------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Limits:
    """How long and how loud one notebook may run."""

    cell_timeout: float = 600.0  # seconds per cell
    notebook_budget: float = 1800.0  # seconds for the whole notebook, restarts included
    max_output_bytes: int = 1 << 20  # per cell
    confine: bool = True  # judge test cells in the grading process (autograder/confine.py)
    policy: sandbox.Policy = dataclasses.field(default_factory=sandbox.Policy)

    def __post_init__(self) -> None:
        if not (self.cell_timeout > 0 and self.notebook_budget > 0 and self.max_output_bytes > 0):
            raise ValueError(f"Limits must be positive, got {self}")


class _Client:
    """An nbclient NotebookClient on a sandboxed kernel, with an output cap."""

    starts = 0  # kernels started by this process

    def __init__(self, nb, scratch: Path, course_root: Path, limits: Limits, env: dict, log_file):
        from jupyter_client.manager import AsyncKernelManager
        from nbclient import NotebookClient

        uid = limits.policy.uid
        # What the kernel must read where the sandbox's private /tmp and /root would hide it: the asset
        # cache, the interpreter, the virtual environment and the labkit package (not the whole checkout:
        # its solutions/ and autograder/ stay out of reach).
        readable = [_assets_home(), Path(sys.base_prefix).resolve(), Path(sys.prefix),
                    Path(labkit.__file__).resolve().parent]
        wrap_args = (scratch, course_root, limits.policy.uid, readable)

        class SandboxedKernel(AsyncKernelManager):
            def format_kernel_cmd(self, extra_arguments=None):
                return sandbox.wrap(super().format_kernel_cmd(extra_arguments), *wrap_args)

            def write_connection_file(self, **kwargs):
                super().write_connection_file(**kwargs)
                if uid is not None:  # the kernel's uid reads it; nobody else does
                    os.chown(self.connection_file, uid, uid)

        cap = limits.max_output_bytes

        class CappedClient(NotebookClient):
            def output(self, outs, msg, display_id, cell_index):
                size = self._labkit_sizes.get(cell_index, 0) + len(str(msg.get("content", "")))
                self._labkit_sizes[cell_index] = size
                if size > cap:
                    if not self._labkit_cut.get(cell_index):
                        self._labkit_cut[cell_index] = True
                        note = f"\n[output cut: more than {cap} bytes]\n"
                        outs.append(nbformat.v4.new_output("stream", name="stdout", text=note))
                    return None
                return super().output(outs, msg, display_id, cell_index)

        scratch.mkdir(parents=True, exist_ok=True)
        if limits.policy.uid is not None:  # the sandbox's uid owns its scratch and can reach it
            os.chown(scratch, limits.policy.uid, limits.policy.uid)
            scratch.chmod(0o700)
            scratch.parent.chmod(0o711)
        _Client.starts += 1  # each kernel gets its own socket paths: none is shared with a dead one
        km = SandboxedKernel(kernel_name="python3", transport="ipc", ip=str(scratch / f"ipc{_Client.starts}"))
        km.connection_file = str(scratch / f"kernel{_Client.starts}.json")
        self.client = CappedClient(nb, km=km, timeout=limits.cell_timeout, allow_errors=True,
                                   interrupt_on_timeout=False, kernel_name="python3", record_timing=True)  # fmt: skip
        self.client._labkit_sizes, self.client._labkit_cut = {}, {}
        self._start = dict(env=env, cwd=str(scratch), stdout=log_file, stderr=log_file,
                           preexec_fn=sandbox.limits(limits.policy))  # fmt: skip
        self._ctx = None
        self._scratch, self._uid, self._timeout = scratch, uid, limits.cell_timeout

    def __enter__(self) -> _Client:
        self._ctx = self.client.setup_kernel(**self._start)
        self._ctx.__enter__()
        self.link = confine.Link(self.client.km, self._scratch, self._uid, self._timeout)
        self.remote = confine.Remote(self.link)
        return self

    def __exit__(self, *exc: Any) -> None:
        if getattr(self, "link", None) is not None:
            self.link.close()
        try:
            self._ctx.__exit__(None, None, None)
        except Exception:
            pass
        try:
            if self.client.km is not None and self.client.km.has_kernel:
                from jupyter_core.utils import run_sync

                run_sync(self.client.km.shutdown_kernel)(now=True)
        except Exception:
            pass

    def run_prelude(self, source: str) -> None:
        """Run `source` before the notebook's cells, leaving no trace in the notebook.

        nbclient stores an executed cell back at nb.cells[index], so the prelude runs as a cell
        appended for the moment and taken out again (index -1 would overwrite the last cell).
        """
        cells = self.client.nb.cells
        cells.append(nbformat.v4.new_code_cell(source))
        try:
            self.run(cells[-1], len(cells) - 1, source)
        finally:
            cells.pop()

    def run(self, cell: NotebookNode, index: int, source: str) -> list[NotebookNode]:
        """Run `source` as cell `index`; the outputs. Raises CellTimeoutError or DeadKernelError."""
        self.link.end()  # the kernel leaves the grader's request loop first
        if self.link.stuck:
            from nbclient.exceptions import DeadKernelError

            raise DeadKernelError("the student's kernel is stuck in a call from a check")
        saved = cell.source
        cell.source = source
        self.client._labkit_sizes[index] = 0
        self.client._labkit_cut[index] = False
        try:
            self.client.execute_cell(cell, index)
        finally:
            cell.source = saved
        return list(cell.outputs)


def _assets_home() -> Path:
    from labkit import assets

    return assets.home().resolve()


def kernel_env(threads: int, quick: bool, scratch: Path) -> dict[str, str]:
    """The kernel's whole environment: nothing of the grader's (no tokens, no paths) but these."""
    keep = ("PATH", "LANG", "LC_ALL", "JUPYTER_PREFER_ENV_PATH", "VIRTUAL_ENV")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    bindir = os.path.dirname(sys.executable)
    n = str(max(1, threads))
    env.update(
        PATH=bindir + os.pathsep + env.get("PATH", "/usr/bin:/bin"), HOME=str(scratch), TMPDIR=str(scratch),
        IPYTHONDIR=str(scratch / ".ipython"), JUPYTER_RUNTIME_DIR=str(scratch / ".runtime"),
        MPLCONFIGDIR=str(scratch / ".mpl"), MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, TORCH_NUM_THREADS=n, LABKIT_GRADING="1",
        LABKIT_QUICK="1" if quick else "0", LABKIT_HOME=str(_assets_home()), LABKIT_OFFLINE="1",
    )  # fmt: skip
    return env


def _clean_test_outputs(outputs: list[NotebookNode]) -> list[NotebookNode]:
    out = []
    for o in outputs:
        if o.output_type == "execute_result":
            continue
        if o.output_type == "stream" and o.name == "stderr":
            o = nbformat.v4.new_output("stream", name="stdout", text=o.text)
        out.append(o)
    return out


def _message(outputs: list[NotebookNode]) -> str:
    for o in outputs:
        if o.output_type == "error":
            return f"{o.ename}: {o.evalue}"
    return ""


class _Restart(Exception):
    """The kernel died or was stopped; start a new one and go on."""


def _fatal(e: Exception, limits: Limits) -> str | None:
    """What happened, when `e` means the kernel is gone or stuck; None for anything else."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    if isinstance(e, CellTimeoutError):
        return f"the cell ran longer than {limits.cell_timeout:g} s"
    if isinstance(e, (DeadKernelError, RuntimeError, TimeoutError)):
        return "the kernel died (the cell exited, crashed or passed a resource limit)"
    return None


def execute(
    nb: NotebookNode,
    scratch: Path,
    course_root: Path,
    limits: Limits,
    env: dict[str, str],
    log: logging.Logger,
    log_file=None,
) -> NotebookNode:
    """Run the restored notebook in place (see the module docstring); returns it."""
    start = time.monotonic()
    done: list[int] = []  # cells that ran without killing the kernel, in order (replayed on a restart)
    cells, index = nb.cells, 0
    retried: set[int] = set()  # cells during which the kernel died once: a second death is theirs
    trusted = confine.Trusted()  # the grading process's namespace for this notebook's test cells

    def broke(i: int, what: str) -> None:
        log.warning("cell %d: %s", i, what)
        cells[i].outputs = [*cells[i].get("outputs", [])[:20], error_output("GradingError", what)]
        if is_test_cell(cells[i]):
            cells[i].metadata["labkit"] = {"failed": "visible", "message": what}

    while True:
        try:
            t_start = time.monotonic()
            with _Client(nb, scratch, course_root, limits, env, log_file) as client:
                prelude = PRELUDE + (confine.kernel_prelude() if limits.confine else "")
                client.run_prelude(prelude)
                log.info("kernel ready in %.1f s", time.monotonic() - t_start)
                for i in list(done):  # after a restart: the cells that ran before, outputs kept
                    if limits.confine and is_test_cell(cells[i]):
                        continue  # judged here, never run in the kernel
                    saved = copy.deepcopy(cells[i].outputs)
                    try:
                        client.run(cells[i], i, cells[i].source)
                    except Exception as e:  # e.g. a cell that calls exit(): the kernel dies after it
                        if _fatal(e, limits) is None:
                            raise
                        done.remove(i)
                        cells[i].outputs = saved
                        broke(i, _fatal(e, limits) + " (when run again after a restart)")
                        raise _Restart from e
                    finally:
                        if i in done:
                            cells[i].outputs = saved
                while index < len(cells):
                    cell = cells[index]
                    if cell.cell_type != "code":
                        index += 1
                        continue
                    if time.monotonic() - start > limits.notebook_budget:
                        for i in range(index, len(cells)):
                            if cells[i].cell_type == "code":
                                broke(i, f"not run: the notebook used its {limits.notebook_budget:g} s")
                        return nb
                    try:
                        t_cell = time.monotonic()
                        _run_cell(client, cell, index, trusted if limits.confine else None, log)
                        if time.monotonic() - t_cell > SLOW_CELL_S:  # where a submission's time goes
                            log.info("cell %d took %.1f s", index, time.monotonic() - t_cell)
                    except _Stuck as e:  # the test cell has its verdict; its call never came back
                        log.warning("cell %d: the student's code did not return; restarting the kernel", index)
                        done.append(index)
                        index += 1
                        raise _Restart from e
                    except Exception as e:  # the kernel died or the cell ran past its time: restart
                        what = _fatal(e, limits)
                        if what is None:
                            raise
                        if "died" in what and index not in retried:  # once more after a fresh start
                            retried.add(index)
                            raise _Restart from e
                        broke(index, what)
                        index += 1
                        raise _Restart from e
                    done.append(index)
                    index += 1
            return nb
        except _Restart:
            continue


class _Stuck(Exception):
    """A test cell judged here left the kernel busy in a call that never returned."""


def _is_setup_cell(cell: NotebookNode) -> bool:
    m = _meta(cell)
    return cell.cell_type == "code" and bool(m.get("locked")) and not m.get("grade") and not m.get("solution")


def _judge_here(client: _Client, trusted: confine.Trusted, source: str) -> list[NotebookNode]:
    """Run one part of a test cell in the grading process; its outputs."""
    printed, error = trusted.run(source, client.remote)
    outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)] if printed else []
    if error is not None:
        outputs.append(error_output(type(error).__name__, str(error)))
    return outputs


def _run_part(client, cell, index, source, trusted, log) -> list[NotebookNode]:
    if trusted is None or not trusted.ok:
        cell.metadata.setdefault("labkit", {})["confined"] = False
        return client.run(cell, index, source)
    client.remote.unsendable = ""
    try:
        outputs = _judge_here(client, trusted, source)
        client.link.end()
    except confine.KernelStuck:
        outputs = [error_output("CheckFailed", "the student's code did not return")]
    except confine.wire.Unsendable as e:
        client.remote.unsendable = str(e)
    if client.remote.unsendable:  # the test passes something the kernel cannot receive
        log.warning("cell %d judged in the kernel: %s", index, client.remote.unsendable)
        cell.metadata.setdefault("labkit", {})["confined"] = False
        return client.run(cell, index, source)
    cell.metadata.setdefault("labkit", {}).setdefault("confined", True)
    return outputs


def _run_cell(client: _Client, cell: NotebookNode, index: int, trusted, log) -> None:
    if not is_test_cell(cell):
        client.run(cell, index, cell.source)
        if trusted is not None and _is_setup_cell(cell) and index not in trusted.done:
            trusted.done.add(index)
            trusted.setup_run(cell.source, client.remote)
            client.link.end()
            if not trusted.ok:
                log.warning("set-up cell %d failed in the grading process: the test cells after it are judged "
                            "in the student's kernel", index)  # fmt: skip
        return
    visible, hidden = split_test(cell.source)
    if trusted is not None:
        trusted.begin_cell()
    outputs = _clean_test_outputs(_run_part(client, cell, index, visible, trusted, log))
    failed = "visible" if _message(outputs) else None
    if failed is None and hidden.strip() and not client.link.stuck:
        more = _clean_test_outputs(_run_part(client, cell, index, hidden, trusted, log))
        outputs += more
        failed = "hidden" if _message(more) else None
    cell.outputs = outputs
    cell.metadata.setdefault("labkit", {}).update(failed=failed, message=_message(outputs))
    if client.link.stuck:
        raise _Stuck
