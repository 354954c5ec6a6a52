"""`make lab` brings JupyterLab up headless on notebooks/, serves /lab, and is stopped again."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read()


@pytest.mark.slow
def test_make_lab_serves_the_workbook():
    port, token = _free_port(), "labkit-test-token"
    cmd = ["make", "-s", "lab", f"PORT={port}", f"LAB_ARGS=--IdentityProvider.token={token}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, status = time.time() + 120, None
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"make lab exited with {proc.returncode}: {proc.stdout.read().decode()[-2000:]}")
            try:
                status, body = _get(f"http://127.0.0.1:{port}/lab?token={token}")
                break
            except OSError:
                time.sleep(1)
        assert status == 200, "JupyterLab did not answer on /lab within 120 s"
        assert b"JupyterLab" in body or b"jupyter-config-data" in body
        _, listing = _get(f"http://127.0.0.1:{port}/api/contents?token={token}")
        names = {item["name"] for item in json.loads(listing)["content"]}
        expected = {p.name for p in (ROOT / "notebooks").iterdir() if not p.name.startswith(".")}
        assert names == expected, f"the server's root is not notebooks/: {names} vs {expected}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode is not None
