"""The sandbox a student's kernel runs in during grading: bubblewrap plus resource limits.

`wrap(cmd, ...)` returns the command that starts the kernel inside bubblewrap (Debian package
`bubblewrap`, installed by `make sandbox`): the whole file system read-only, the course's
`autograder/` (submissions, gradebook, other students' work) and `solutions/` replaced by empty
folders, a private /tmp, one writable scratch folder, no network (`--unshare-net`: only a loopback
device of its own), its own PID namespace (every process it forks dies with it), and a uid of its own
(`setpriv`) so that the process limit applies (the kernel counts no processes against root).
`limits(policy)` is the `preexec_fn` that sets the rlimits: CPU seconds, address space, processes,
the size of any file written, open files.

The kernel talks to the grader over Unix sockets in the scratch folder (jupyter_client's `ipc`
transport), which cross the network namespace. Where bubblewrap cannot run (not installed, no user
namespaces), `wrap` falls back to the rlimits and the other uid alone and `warning()` says so loudly:
then the student's code can read the course tree and reach the network.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import resource
import shutil
import subprocess
from pathlib import Path

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Policy:
    """Limits of one sandboxed kernel."""

    cpu_s: int = 1800  # CPU seconds over the kernel's life (one notebook)
    memory_bytes: int = 8 * GiB  # address space (torch reserves more than it touches)
    nproc: int = 64  # processes and threads of the sandbox's uid
    file_bytes: int = 64 << 20  # largest file the kernel may write
    nofile: int = 1024
    uid: int | None = None  # run as this uid (default: 61000 + a worker slot when started as root)

    def __post_init__(self) -> None:
        for name in ("cpu_s", "memory_bytes", "nproc", "file_bytes", "nofile"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Policy.{name} must be > 0, got {getattr(self, name)}")


@functools.cache
def bwrap_works() -> bool:
    """bubblewrap is installed and can create the namespaces we use on this machine."""
    exe = shutil.which("bwrap")
    if exe is None:
        return False
    probe = [exe, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-net", "--unshare-pid",
             "--die-with-parent", "true"]  # fmt: skip
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def warning() -> str | None:
    """A loud message when kernels cannot be sandboxed on this machine, else None."""
    if bwrap_works():
        return None
    return (
        "WARNING: bubblewrap (bwrap) is missing or cannot create namespaces here: student code is "
        "graded with resource limits only; it can read the course tree and use the network. "
        "Install it with `make sandbox` (apt-get install bubblewrap)."
    )


def _hidden_dirs(course_root: Path) -> list[Path]:
    # What a student's kernel must not see: other submissions, the gradebook, the solutions.
    return [course_root / "autograder", course_root / "solutions"]


def wrap(cmd: list[str], scratch: Path, course_root: Path, uid: int | None, readable: list[Path] = ()) -> list[str]:
    """The command that runs `cmd` in the sandbox (or unchanged but for the uid, without bwrap).

    readable: folders under /root (0700) the kernel must read: the asset cache, the interpreter.
    """
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"] if uid is not None else []
    if not bwrap_works():  # without a private /root the interpreter may be unreadable to another uid
        return cmd
    args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-net", "--unshare-pid", "--unshare-ipc",
            "--unshare-uts", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--perms", "0755", "--tmpfs", "/root"]  # fmt: skip
    for path in readable:
        if path.exists():
            args += _reachable(path) + ["--ro-bind", str(path), str(path)]
    for path in _hidden_dirs(course_root):
        if path.exists() and not str(scratch).startswith(str(path) + os.sep):
            args += ["--tmpfs", str(path)]
    args += _reachable(scratch) + ["--bind", str(scratch), str(scratch), "--chdir", str(scratch)]
    # In its own PID namespace the kernel's parent is pid 1, which ipykernel reads as "orphaned";
    # --die-with-parent does that job instead.
    args += ["--unsetenv", "JPY_PARENT_PID"]
    return args + ["--"] + drop + cmd


def _reachable(path: Path) -> list[str]:
    # The folders above a bind mount inside our tmpfs (/tmp, /root) would copy the host's modes
    # (0700): create them traversable but not listable for the sandbox's uid.
    return [arg for parent in reversed(path.parents) if str(parent).startswith(("/tmp/", "/root/"))
            for arg in ("--perms", "0711", "--dir", str(parent))]  # fmt: skip


def limits(policy: Policy):
    """A preexec_fn that applies the policy's rlimits to the process about to start the kernel."""

    def apply() -> None:
        for limit, value in (
            (resource.RLIMIT_CPU, policy.cpu_s),
            (resource.RLIMIT_AS, policy.memory_bytes),
            (resource.RLIMIT_NPROC, policy.nproc),
            (resource.RLIMIT_FSIZE, policy.file_bytes),
            (resource.RLIMIT_NOFILE, policy.nofile),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(limit, (value, value))

    return apply
