"""A make target that starts a Jupyter server (make lab, lab-solutions, formgrader), run headless for a test.

    with make_server("lab", cwd=ROOT, variables={"WORKSPACE": str(ws)}) as server:
        server.names("lab0.1")          # the file names the server lists in that folder
        server.get("/formgrader/api/assignments")

The server gets a free port and a fixed token, and its whole process group is stopped on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "labkit-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    token: str
    proc: subprocess.Popen
    output: Path  # what the make target prints, stdout and stderr

    def get(self, path: str) -> tuple[int, bytes]:
        sep = "&" if "?" in path else "?"
        with urllib.request.urlopen(f"{self.url}{path}{sep}token={self.token}", timeout=10) as r:
            return r.status, r.read()

    def names(self, folder: str = "") -> set[str]:
        """The names the server lists in folder (relative to its root_dir)."""
        _, listing = self.get(f"/api/contents/{folder}".rstrip("/"))
        return {item["name"] for item in json.loads(listing)["content"]}

    def log(self) -> str:
        """What the make target printed so far."""
        return self.output.read_text(errors="replace")


@contextlib.contextmanager
def make_server(
    target: str,
    *,
    cwd: Path = ROOT,
    makefile_dir: Path | None = None,
    variables: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 120,
) -> Iterator[Server]:
    """`make -C makefile_dir target PORT=... LAB_ARGS=--IdentityProvider.token=...` started from cwd,
    until it answers on /lab (at most timeout_s); stopped with its process group afterwards."""
    port = free_port()
    args = {"PORT": str(port), "LAB_ARGS": f"--IdentityProvider.token={TOKEN}", **(variables or {})}
    cmd = ["make", "-s", "-C", str(makefile_dir or cwd), target, *(f"{k}={v}" for k, v in args.items())]
    logdir = Path(tempfile.mkdtemp(prefix="labkit-server-"))
    with open(logdir / "output.txt", "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", TOKEN, proc, logdir / "output.txt")
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"make {target} exited with {proc.returncode}: {server.log()[-3000:]}")
            try:
                status, body = server.get("/lab")
                break
            except OSError:
                if time.time() > deadline:
                    raise AssertionError(f"make {target} did not answer on /lab within {timeout_s:.0f} s") from None
                time.sleep(1)
        assert status == 200 and (b"JupyterLab" in body or b"jupyter-config-data" in body), body[:500]
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        server.output.unlink()
        logdir.rmdir()
