"""Test cells judged outside the student's kernel.

A graded test cell's source is the instructor's (restored from solutions/), so it runs here, in the
grading process, with labkit's checkers and references loaded from the grading process's own
files. The instructor's locked set-up cells run here too (`Trusted.setup`), giving the test cells
`g`, the reference modules and the data they load. Every other name a test cell reads (the
student's functions, classes and values) is fetched from the student's kernel: a value is sent over
as JSON (autograder/wire.py; never a pickle), a function or class becomes a proxy whose calls send
their arguments into the kernel and the result back. Cases are drawn, expected values computed,
results compared and the verdict decided here: monkeypatching the checkers in the kernel, an input
transformer, reading a checker's stack frame, pinning the seed, editing labkit on disk (read-only in
the sandbox anyway) cannot reach any of them.

What crosses is in autograder/wire.py: values, tensors with their storage, labkit objects by state
(with their identity for the session), objects of `@rebuildable` labkit functions by recipe (the
kernel builds its own), and served objects (labkit/grading/served.py: chapter 3's decode-loop model)
by name: the kernel gets a client whose requests come back on the same socket during the call, and
`Link.request` answers them (`Link._answer`) until the call's own reply arrives. An argument the
kernel cannot receive otherwise (a reference object with state of its own, a hook) raises
`Unsendable` and sets `Remote.unsendable`; the cell is then run in the kernel as before (`confined:
false` in the cell's metadata, and a line in the student's log; no test of this workbook does).
Set-up cells run here without their line magics (`%matplotlib inline`).
"""

from __future__ import annotations

import ast
import builtins
import collections
import contextlib
import inspect
import io
import json
import os
import queue
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from autograder import wire

WIRE_SOURCE = Path(wire.__file__).read_text(encoding="utf-8")

# Defined in the student's kernel by the executor's prelude: runs one request, writes the reply.
KERNEL_SERVER = """
def _labkit_server():
    import json as _json, traceback as _tb
    _w = {"__name__": "labkit_wire"}
    exec(compile(_WIRE_SOURCE, "<labkit wire>", "exec"), _w)
    ns, handles, memo, _MISSING = get_ipython().user_ns, {}, {}, object()
    session = [None]  # the tensor storages shared with the grader during one request loop
    link = [None]  # the stream of that loop: a served object's requests go back on it during a call
    guards = {}  # forbidden labels -> (their Guard, the bytecode of each forbidden function)

    def params(obj):
        import inspect
        try:
            return [p.name for p in inspect.signature(obj).parameters.values()
                    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            return []

    def enc(x):
        return _w["encode"](x, handles, storages=session[0])

    def resolve(label):  # "labkit.tokenizer.merge" -> the object, or None
        import importlib
        parts = label.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
                return obj
            except AttributeError:
                return None
        return None

    def dec(d):
        return _w["decode"](d, lambda k, info: handles[k], storages=session[0])

    def ask(key, request):  # a request to the grader's served object `key`, from inside a call
        import builtins as _b
        data = _json.dumps({"cb": key, "request": request}).encode()
        link[0].write(len(data).to_bytes(8, "big") + data)
        link[0].flush()
        head = link[0].read(8)
        if len(head) < 8:
            raise ConnectionError("the grader closed the connection")
        reply = _json.loads(link[0].read(int.from_bytes(head, "big")))
        if "error" in reply:
            cls = getattr(_b, str(reply["error"]), None)
            cls = cls if isinstance(cls, type) and issubclass(cls, Exception) else RuntimeError
            raise cls(str(reply.get("message", "")))
        return _w["decode"](reply["value"])

    def client(key, info):  # a "$M": the grader's served object, reached through ask()
        from labkit.grading.served import ModelClient
        return ModelClient(info, lambda request: ask(key, request))

    def handle(r):
        try:
            op = r["op"]
            if op == "describe":
                obj = ns[r["name"]]
                if isinstance(obj, type):
                    out = {"kind": "class", "params": params(obj)}
                elif callable(obj):
                    out = {"kind": "function", "params": params(obj)}
                else:
                    out = {"kind": "value", "value": enc(obj)}
            elif op == "call":
                fn = ns[r["name"]] if "name" in r else handles[r["h"]]
                if r.get("attr"):
                    fn = getattr(fn, r["attr"])
                for key, data in r.get("memo", {}).items():  # big arguments, sent once per object
                    memo[key] = dec(data)
                args = tuple(memo[a["$memo"]] if isinstance(a, dict) and "$memo" in a else dec(a)
                             for a in r["args"])
                kwargs = dec(r["kwargs"])
                from labkit.grading import sandbox as _sb
                forbid = tuple(r.get("forbid", []))
                if forbid not in guards:  # resolved once per check: a check makes thousands of calls
                    forbidden = [o for o in map(resolve, forbid) if o is not None]
                    # A copy of the reference (a code-object clone, getsource + exec, a second import) runs
                    # the same bytecode under another function object: a profiler spots it by its bytecode.
                    # Short functions (under 160 bytes of bytecode) are left out: an answer written
                    # independently can compile to the same few instructions.
                    guards[forbid] = (_sb.Guard(forbidden), {
                        (f.__code__.co_code, f.__code__.co_names): _sb._label(f)
                        for t in forbidden for f in _sb._python_functions(t) if len(f.__code__.co_code) >= 160})
                guard, codes = guards[forbid]
                patched = {k: resolve(v) for k, v in r.get("patch", {}).items()}
                saved = {k: ns.get(k, _MISSING) for k, v in patched.items() if v is not None}
                _sb._TRIPPED.clear()
                copies = []

                def spot(frame, event, arg):
                    if event == "call" and codes:
                        hit = codes.get((frame.f_code.co_code, frame.f_code.co_names))
                        if hit is not None and not copies:
                            copies.append(hit)

                import sys as _sys
                try:
                    ns.update({k: patched[k] for k in saved})
                    with guard:
                        _sys.setprofile(spot)
                        try:
                            value = fn(*args, **kwargs)
                        finally:
                            _sys.setprofile(None)
                    if copies:
                        raise _sb._Delegated(copies[0] + " (a copy of it)")
                finally:
                    for k, v in saved.items():
                        if v is _MISSING:
                            ns.pop(k, None)
                        else:
                            ns[k] = v
                if _sb._TRIPPED:  # a tripwire fired and the student's code swallowed it
                    raise _sb._Delegated(_sb._TRIPPED[0])
                same = [i for i, a in enumerate(args) if a is value]
                out = {"value": None if same else enc(value), "same_as": same[0] if same else None,
                       "args": [None if i in r.get("big", []) else enc(a) for i, a in enumerate(args)],
                       "kwargs": enc(kwargs)}
            elif op == "getattr":
                v = getattr(handles[r["h"]], r["attr"])
                out = {"method": True} if callable(v) and not isinstance(v, type) else {"value": enc(v)}
            else:
                out = {"error": "ValueError", "message": "unknown request"}
        except BaseException as e:
            frames = [f for f in _tb.extract_tb(e.__traceback__) if "ipykernel" in f.filename]
            last = frames[-1] if frames else None
            where = f"line {last.lineno} in {last.name}: `{(last.line or '').strip()}`" if last else ""
            out = {"error": type(e).__name__, "message": str(e)[:2000], "where": where}
        return out

    def serve(path):  # one test cell's requests over the grader's Unix socket, until "bye"
        import socket as _socket
        conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        conn.connect(path)
        stream = conn.makefile("rwb")
        session[0] = _w["Storages"](rebuild=True)
        session[0].client, link[0] = client, stream
        try:
            while True:
                head = stream.read(8)
                if len(head) < 8:
                    break
                r = _json.loads(stream.read(int.from_bytes(head, "big")))
                if r.get("op") == "bye":
                    break
                data = _json.dumps(handle(r)).encode()
                stream.write(len(data).to_bytes(8, "big") + data)
                stream.flush()
        finally:
            stream.close()
            conn.close()
            session[0] = link[0] = None


    return serve


_labkit_serve = _labkit_server()
del _labkit_server
"""


def kernel_prelude() -> str:
    """Source the executor runs first in each kernel, defining `_labkit_serve`."""
    return f"_WIRE_SOURCE = {WIRE_SOURCE!r}\n{KERNEL_SERVER}\ndel _WIRE_SOURCE\n"


class KernelStuck(Exception):
    """A call into the kernel did not come back (the check's time ran out); restart the kernel."""


class RemoteError(Exception):
    """An exception of the student's code whose type is not a builtin one."""


def _exception(reply: dict) -> BaseException:
    name, message = str(reply.get("error", "Exception")), str(reply.get("message", ""))
    if name == "_Delegated":  # the student's code called the reference, in the kernel
        from labkit.grading.sandbox import _Delegated

        return _Delegated(message)
    cls = getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)) or issubclass(cls, KeyboardInterrupt):
        cls = type(name if name.isidentifier() else "RemoteError", (RemoteError,), {})
    err = cls(message)
    err.labkit_where = reply.get("where", "")
    return err


class Link:
    """Requests to one kernel over a Unix socket in its scratch folder.

    The first request of a test cell starts the kernel's `_labkit_serve` loop (a silent execute
    request), which connects to the socket and answers length-prefixed JSON requests until `end()`
    says "bye": one execute request per test cell part, not per call (a call costs a socket round
    trip, well under a millisecond, instead of a kernel execute request).
    """

    def __init__(self, km, scratch: Path, uid: int | None, timeout: float) -> None:
        self.kc = km.blocking_client()
        self.kc.start_channels()
        self.scratch, self.uid, self.timeout = scratch, uid, timeout
        self.stuck = False
        self.path = str(scratch / "wire.sock")
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        if uid is not None:
            os.chown(self.path, uid, uid)
        self.server.listen(1)
        self.conn: socket.socket | None = None
        self.storages = wire.Storages()  # tensor storages shared with the kernel in this loop
        self.msg_id = ""

    def close(self) -> None:
        for s in (self.conn, self.server):
            with contextlib.suppress(Exception):
                s.close()
        with contextlib.suppress(Exception):
            self.kc.stop_channels()

    def _connect(self) -> bool:
        """Start the kernel's loop; False when it ended without connecting (its helper was removed)."""
        self.msg_id = self.kc.execute(f"_labkit_serve({self.path!r})", silent=True, store_history=False)
        self.server.settimeout(0.02)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                self.conn, _ = self.server.accept()
                self.conn.settimeout(self.timeout)
                return True
            except TimeoutError:
                with contextlib.suppress(queue.Empty):
                    if self.kc.get_shell_msg(timeout=0)["parent_header"].get("msg_id") == self.msg_id:
                        return False
        raise KernelStuck("the student's kernel did not answer")

    def _recv(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.conn.recv(min(left, 1 << 20))
            if not chunk:
                raise KernelStuck("the student's kernel closed the connection (it exited or crashed)")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def request(self, payload: dict) -> dict:
        if self.stuck:
            raise KernelStuck("the student's kernel is still busy with an earlier call")
        try:
            if self.conn is None and not self._connect():
                return {"error": "RuntimeError", "message": "no reply from the student's kernel (was the helper "
                        "`_labkit_serve` removed?)"}  # fmt: skip
            data = json.dumps(payload).encode()
            self.conn.sendall(len(data).to_bytes(8, "big") + data)
            deadline = time.monotonic() + self.timeout  # requests of a served object do not keep it forever
            while True:
                reply = json.loads(self._recv(int.from_bytes(self._recv(8), "big")))
                if not (isinstance(reply, dict) and "cb" in reply):
                    return reply
                if time.monotonic() > deadline:
                    raise KernelStuck("the student's kernel kept asking and never answered")
                self._answer(reply)  # the call asks a served object of ours, then goes on
        except BaseException as e:  # the check's time limit (raised by its alarm), a dead kernel, no reply
            self.stuck = True
            raise e if not isinstance(e, Exception) else KernelStuck(str(e)) from e

    def _answer(self, message: dict) -> None:
        """A request the student's code made, during a call, to an object served from here ("$M" in
        autograder/wire.py: chapter 3's model, labkit/grading/served.py): it validates the request and
        runs it; an error it raises goes back to the student's code as its type and message."""
        served = self.storages.served.get(str(message.get("cb")))
        try:
            if served is None:
                raise ValueError("no such served object")
            out = {"value": wire.encode(served.serve(message.get("request")))}
        except (ValueError, TypeError, IndexError) as e:
            out = {"error": type(e).__name__, "message": str(e)[:500]}
        except Exception:  # the grader's own failure: nothing of it goes to the kernel
            out = {"error": "RuntimeError", "message": "the grader could not answer this request"}
        data = json.dumps(out).encode()
        self.conn.sendall(len(data).to_bytes(8, "big") + data)

    def end(self) -> None:
        """Stop the kernel's request loop before the kernel runs anything else; `stuck` if it won't."""
        if self.conn is None or self.stuck:
            return
        conn, self.conn = self.conn, None
        self.storages = wire.Storages()
        try:
            conn.sendall(_BYE)
            conn.close()
            while self.kc.get_shell_msg(timeout=self.timeout)["parent_header"].get("msg_id") != self.msg_id:
                pass
        except Exception:
            self.stuck = True


_BYE = len(b'{"op": "bye"}').to_bytes(8, "big") + b'{"op": "bye"}'


class Remote:
    """Builds proxies for the names a test cell reads from the student's kernel."""

    def __init__(self, link: Link) -> None:
        self.link = link
        # {name: "module.qualname"}: labkit functions a test cell bound to a global name (e.g. with
        # mock.patch.dict(globals(), merge=lt.merge)) so that the student's code uses the reference's
        # helper instead of their own; the kernel binds the same names during each call.
        self.patches = lambda: {}
        # {name: labkit object}: what a check substitutes for the student's helpers with
        # mock.patch.dict(fn.__globals__, ...) (labkit.exercises.common.substituted); a proxy's
        # __globals__ is this dict, and each call asks the kernel to bind the same names.
        self.overrides: dict[str, Any] = {}
        self.unsendable = ""  # set when an argument could not be sent: the cell is judged in the kernel
        self._memo: dict[int, tuple[Any, str, Any]] = {}  # id(arg) -> (arg, key, encoded)
        self._sent: dict[str, Any] = {}  # memo keys the kernel already holds

    def _handle(self, key: int, info: dict) -> Any:
        return RemoteObject(self, key, str(info.get("type", "object")), bool(info.get("callable")))

    def decode(self, data: Any) -> Any:
        return wire.decode(data, self._handle, storages=self.link.storages)

    BIG = 1 << 16  # encoded bytes above which an argument is sent once and kept by the kernel

    def _memo_or_encode(self, x: Any) -> Any:
        """A big container or tensor (a 50,000-entry vocabulary) crosses once per object: the kernel
        keeps its copy, later calls name it, and it is not sent back (its in-place changes are not
        checked). Smaller arguments go both ways every call."""
        if id(x) in self._memo and self._memo[id(x)][0] is x:
            return {"$memo": self._memo[id(x)][1]}
        data = self.encode(x)
        if isinstance(x, (dict, list, set)) or type(x).__name__ == "Tensor":
            if len(json.dumps(data)) > self.BIG:
                key = f"m{len(self._memo) + 1}"
                self._memo[id(x)] = (x, key, data)  # x stays referenced: its id is not reused
                return {"$memo": key}
        return data

    def encode(self, x: Any) -> Any:
        if isinstance(x, RemoteObject):
            return {"$h": x._labkit_key}
        if isinstance(x, (list, tuple)) and any(isinstance(v, RemoteObject) for v in x):
            tag = "$l" if isinstance(x, list) else "$t"
            return {tag: [self.encode(v) for v in x]}
        return wire.encode(x, storages=self.link.storages)

    def call(self, target: dict, args: tuple, kwargs: dict) -> Any:
        from labkit.grading.sandbox import ACTIVE_LABELS

        try:
            sent = {"args": [self._memo_or_encode(a) for a in args], "kwargs": self.encode(dict(kwargs))}
        except wire.Unsendable as e:  # the checks catch every exception: leave a note for the executor
            self.unsendable = str(e)
            raise
        big = [i for i, a in enumerate(args) if id(a) in self._memo]
        first = {self._memo[id(args[i])][1]: self._memo[id(args[i])][2] for i in big
                 if self._memo[id(args[i])][1] not in self._sent}  # fmt: skip
        self._sent.update(first)
        sent.update(big=big, memo=first)
        payload = {"op": "call", **target, **sent, "forbid": list(dict.fromkeys(ACTIVE_LABELS)),
                   "patch": {**self.patches(), **{k: f"{v.__module__}.{v.__qualname__}"
                                                  for k, v in self.overrides.items()}}}  # fmt: skip
        reply = self.link.request(payload)
        if "error" in reply:
            raise _exception(reply)
        back = [None if v is None else self.decode(v) for v in reply["args"]]
        _write_back(args, [b if b is not None else a for a, b in zip(args, back)])
        _write_back(kwargs, self.decode(reply["kwargs"]))
        if reply.get("same_as") is not None:
            return args[int(reply["same_as"])]
        return self.decode(reply["value"])

    def lookup(self, name: str) -> Any:
        reply = self.link.request({"op": "describe", "name": name})
        if "error" in reply:
            if reply["error"] == "KeyError":
                raise NameError(f"name {name!r} is not defined")
            raise _exception(reply)
        if reply["kind"] == "value":
            return self.decode(reply["value"])
        params = [str(p) for p in reply.get("params", [])]
        if reply["kind"] == "class":
            return remote_class(self, name, params)
        return RemoteFunction(self, name, params)


def _write_back(sent: Any, returned: Any) -> None:
    """Arguments the student's code changed in place are changed here too (the checks look)."""
    if isinstance(sent, dict) and isinstance(returned, dict):
        for k, v in returned.items():
            if k in sent and not _write_back_one(sent, k, v):
                sent[k] = v
        return
    if isinstance(sent, (list, tuple)) and isinstance(returned, (list, tuple)):
        for i in range(min(len(sent), len(returned))):
            _write_back_one(sent, i, returned[i])


def _write_back_one(container: Any, key: Any, new: Any) -> bool:
    old = container[key]
    if old is new:  # not sent back (a big argument): nothing to copy
        return True
    if isinstance(old, list) and isinstance(new, list):
        old[:] = new
    elif isinstance(old, dict) and isinstance(new, dict):
        old.clear()
        old.update(new)
    elif isinstance(old, set) and isinstance(new, set):
        old.clear()
        old.update(new)
    elif type(old).__name__ == "Tensor" and type(new).__name__ == "Tensor" and old.shape == new.shape:
        old.copy_(new)
    elif isinstance(old, collections.deque) and isinstance(new, collections.deque):
        old.clear()
        old.extend(new)
    elif type(old).__name__ == "Generator" and type(new).__name__ == "Generator":  # the draws it made
        old.set_state(new.get_state())
    else:
        return False
    return True


def _signature(params: list[str]) -> inspect.Signature:
    return inspect.Signature([inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in params])


class RemoteFunction:
    """The student's function: calling it runs it in the kernel."""

    def __init__(self, remote: Remote, name: str, params: list[str]) -> None:
        self._remote, self.__name__, self.__qualname__ = remote, name, name
        self.__signature__ = _signature(params)
        self.__globals__ = remote.overrides

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._remote.call({"name": self.__name__}, args, kwargs)

    def __repr__(self) -> str:
        return f"<student's function {self.__name__}>"


# Dunder methods a check may call on a student's object by name (check_class: `obj.__len__()`).
_PROTOCOL_METHODS = frozenset(
    f"__{n}__" for n in "len getitem setitem delitem contains iter next reversed bool eq ne lt le gt ge "
    "add sub mul truediv floordiv mod neg enter exit".split()
)


class RemoteObject:
    """An object living in the student's kernel (an instance of the student's class, ...)."""

    def __init__(self, remote: Remote, key: int, type_name: str, is_callable: bool = False) -> None:
        object.__setattr__(self, "_labkit_remote", remote)
        object.__setattr__(self, "_labkit_key", key)
        object.__setattr__(self, "_labkit_type", type_name)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr not in _PROTOCOL_METHODS:  # copy, pickle, numpy, inspect probes
            raise AttributeError(attr)
        remote = self._labkit_remote
        reply = remote.link.request({"op": "getattr", "h": self._labkit_key, "attr": attr})
        if "error" in reply:
            raise _exception(reply)
        if reply.get("method"):
            key = self._labkit_key
            return lambda *a, **k: remote.call({"h": key, "attr": attr}, a, k)
        return remote.decode(reply["value"])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._labkit_remote.call({"h": self._labkit_key}, args, kwargs)

    def _labkit_protocol(self, name: str, *args: Any) -> Any:
        try:
            method = self.__getattr__(name)
        except AttributeError:
            raise TypeError(f"the student's {self._labkit_type} object has no {name}") from None
        return method(*args)

    def __len__(self) -> int:
        return self._labkit_protocol("__len__")

    def __getitem__(self, key: Any) -> Any:
        return self._labkit_protocol("__getitem__", key)

    def __contains__(self, item: Any) -> bool:
        return self._labkit_protocol("__contains__", item)

    def __bool__(self) -> bool:  # as Python decides truth: __bool__, else __len__, else true
        for name in ("__bool__", "__len__"):
            try:
                return bool(self.__getattr__(name)())
            except AttributeError:
                continue
        return True

    def __repr__(self) -> str:
        return f"<{self._labkit_type} object in the student's kernel>"


def remote_class(remote: Remote, name: str, params: list[str]) -> type:
    """The student's class: a type whose instances are built in the kernel."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = remote.call({"name": name}, args, kwargs)
        if not isinstance(obj, RemoteObject):  # a class whose instances are plain values
            return obj
        return obj

    cls = type(name, (), {"__new__": __new__, "__signature__": _signature(params), "__module__": "student",
                          "__globals__": remote.overrides})
    return cls


# --------------------------------------------------------------------------------------------------
# The trusted namespace and one test cell
# --------------------------------------------------------------------------------------------------


def python_source(source: str) -> str:
    """A cell's source without IPython's line magics and shell escapes (`%matplotlib inline`, `!ls`):
    they set up the notebook's display, which the grading process does not have."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def free_names(source: str) -> list[str]:
    """Names a cell reads and never assigns (nor imports, nor defines)."""
    tree = ast.parse(python_source(source))
    loaded, stored = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded.append(node.id) if isinstance(node.ctx, ast.Load) else stored.add(node.id))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stored.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            stored.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            stored.add(node.arg)
    return list(dict.fromkeys(n for n in loaded if n not in stored and not hasattr(builtins, n)))


class Trusted:
    """The grading process's namespace for one notebook: set-up cells run here, test cells judged here."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {"__name__": "__main__"}
        self.ok = True  # False once a set-up cell failed here: later test cells run in the kernel
        self.done: set[int] = set()  # indices of the set-up cells already run here
        self.current: dict[str, Any] = {}  # the namespace of the test cell being judged

    def begin_cell(self) -> None:
        """A new test cell: its parts share one namespace; what it defines stays in it."""
        self.current = dict(self.ns)

    def _patches(self) -> dict[str, str]:
        out = {}
        for name, obj in self.current.items():
            module = getattr(obj, "__module__", None) or ""
            if callable(obj) and module.startswith("labkit.") and self.ns.get(name) is not obj:
                out[name] = f"{module}.{getattr(obj, '__qualname__', name)}"
        return out

    def run(self, source: str, remote: Remote) -> tuple[str, BaseException | None]:
        """(what the cell printed, the exception it raised or None); Unsendable propagates."""
        ns = self.current
        remote.patches = self._patches
        printed = io.StringIO()
        error = None
        try:
            for name in free_names(source):
                if name not in ns:
                    with contextlib.suppress(NameError):  # the cell raises NameError itself, as in the kernel
                        ns[name] = remote.lookup(name)
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                exec(compile(python_source(source), "<test cell>", "exec"), ns)
        except wire.Unsendable:
            raise
        except KernelStuck:
            raise
        except BaseException as e:  # the verdict: CheckFailed, NameError, ...
            if isinstance(e, KeyboardInterrupt):
                raise
            error = e
        return printed.getvalue(), error

    def setup_run(self, source: str, remote: Remote) -> None:
        """A locked set-up cell: run in this namespace itself (its imports and data stay)."""
        try:
            for name in free_names(source):
                if name not in self.ns:
                    with contextlib.suppress(NameError):
                        self.ns[name] = remote.lookup(name)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                exec(compile(python_source(source), "<set-up cell>", "exec"), self.ns)
        except Exception:
            self.ok = False
            traceback.print_exc(limit=3)
