"""Values across the sandbox's wall, as JSON: never pickle, never eval what the student's kernel sends.

`encode(x, handles, storages=session)` turns a value into JSON-able data: None, bools, ints, floats
and strings as themselves; lists, tuples, dicts (any keys, ordered ones stay ordered), sets, deques,
bytes, dataclass instances, labkit enums, numpy arrays, torch generators (their state) and torch
tensors (their whole storage, base64, and their view) as tagged objects; instances of labkit classes
by their attributes, named for the session (`Storages`) so that identity holds and what comes back
updates the original; objects made by a `@rebuildable` labkit function (labkit/grading/recipe.py)
by their recipe, which only the kernel's side rebuilds; a labkit object marked `labkit_served` (the
model of chapter 3's decode-loop checks, labkit/grading/served.py) as "$M", a name the receiver
turns into a client (`Storages.client`, set only on the kernel's side) whose requests the sender
answers during the call (autograder/confine.py). Anything else becomes a handle
(`{"$h": n}`) when a `handles` registry is given (the kernel keeps its objects and the grader gets a
proxy), else raises `Unsendable`. `decode(data, handle, storages=session)` rebuilds the value;
`handle(n, info)` makes what a handle decodes to; only labkit's own types and functions are named.
Both sides import only the standard library (numpy, torch and labkit when such a value arrives).
This file is also sent as source text into the student's kernel, which keeps its own copy: editing
it there changes only what that student's kernel sends.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import enum
import json
import sys
from typing import Any


class Unsendable(TypeError):
    """A value that cannot cross the wall (a function, a reference object, ...)."""


def _tensor_bytes(t) -> tuple[str, bytes]:
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return "bfloat16", t.view(torch.int16).numpy().tobytes()
    return str(t.dtype).replace("torch.", ""), t.numpy().tobytes()


class Storages:
    """Tensor storages of one session between the grader and a kernel (one test cell's part).

    A tensor crosses as its whole storage plus its view (shape, stride, offset), so views of one
    storage stay views of one storage and `untyped_storage().nbytes()` reads the same on both sides.
    A storage is named by the sender's address; the receiver keeps one local storage per name for
    the session (a later value on the same storage lands in the same local storage: `data_ptr()`
    identity across calls holds), and a storage that came from the peer is sent back under the
    peer's name (the peer writes the new bytes into its own storage: in-place changes come back).
    The sender keeps what it sent alive for the session, so an address is never reused in it.
    """

    def __init__(self, rebuild: bool = False) -> None:
        self.received: dict[str, Any] = {}  # the peer's name -> our storage
        self.origin: dict[int, str] = {}  # id of our storage made from the peer's -> the peer's name
        self.own: dict[str, Any] = {}  # our name -> our storage, for what we sent
        self.sent: set[str] = set()  # names whose bytes are already in the value being encoded
        self.rebuild = rebuild  # objects of labkit.grading.recipe may be rebuilt (the kernel's side)
        self.rebuilt: dict[str, Any] = {}  # recipe -> what its call returned here
        self.received_objects: dict[str, Any] = {}  # the peer's name -> our labkit object
        self.object_origin: dict[int, str] = {}  # id of our object made from the peer's -> its name
        self.own_objects: dict[str, Any] = {}  # our name -> our labkit object, for what we sent
        self.served: dict[str, Any] = {}  # our name -> our served object ("$M"), for the peer's requests
        self.client = None  # (name, info) -> a client of the peer's served object; None: refused here


def _storage_id(storage) -> int:
    """One number per storage, whichever Python object wraps it (`untyped_storage()` makes new ones)."""
    return storage._cdata


def _storage_bytes(storage) -> bytes:
    import torch

    n = storage.nbytes()
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (n,), (1,)).numpy().tobytes() if n else b""


def _tensor(t, storages: Storages) -> dict:
    storage = t.untyped_storage()
    peer = storages.origin.get(_storage_id(storage))
    key = peer or f"{storage.data_ptr()}:{storage.nbytes()}"
    out = {"$T": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "stride": list(t.stride()),
           "offset": t.storage_offset(), "storage": key, "peer": peer is not None}  # fmt: skip
    if peer is None:
        storages.own[key] = storage
    if key not in storages.sent:
        storages.sent.add(key)
        out["data"] = base64.b64encode(_storage_bytes(storage)).decode()
    return out


def _object(x: Any, storages: Storages, enc) -> dict:
    """An instance of a labkit class as its type and its attributes, named for the session like a
    storage: the same object twice in a value is one object on the other side, and one sent back
    under the peer's name updates the peer's own object in place."""
    peer = storages.object_origin.get(id(x))
    key = peer or f"o{id(x)}"
    out = {"$o": _label(type(x)), "key": key, "peer": peer is not None}
    if peer is None:
        storages.own_objects[key] = x
    if key not in storages.sent:
        storages.sent.add(key)
        out["state"] = enc(dict(vars(x)))
    return out


def encode(x: Any, handles: dict | None = None, depth: int = 0, storages: Storages | None = None) -> Any:
    storages = Storages() if storages is None else storages
    if depth == 0:
        storages.sent = set()
    if depth > 64:
        raise Unsendable("nested more than 64 levels")
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):
        return x if abs(x) < 2**53 else {"$i": str(x)}
    if isinstance(x, float):
        return {"$f": repr(x)}
    enc = lambda v: encode(v, handles, depth + 1, storages)  # noqa: E731
    if isinstance(x, list):
        return {"$l": [enc(v) for v in x]}
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return {"$t": [enc(v) for v in x]}
    if type(x) is collections.OrderedDict:
        return {"$d": [[enc(k), enc(v)] for k, v in x.items()], "ordered": True}
    if isinstance(x, dict):
        return {"$d": [[enc(k), enc(v)] for k, v in x.items()]}
    if isinstance(x, (set, frozenset)):
        return {"$s": [enc(v) for v in x], "frozen": isinstance(x, frozenset)}
    if isinstance(x, collections.deque):
        return {"$q": [enc(v) for v in x], "maxlen": x.maxlen}
    if isinstance(x, enum.Enum) and _labkit_type(_label(type(x)), enum.Enum) is type(x):
        return {"$e": _label(type(x)), "name": x.name}
    if isinstance(x, (bytes, bytearray)):
        return {"$b": base64.b64encode(bytes(x)).decode()}
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Generator) and x.device.type == "cpu":
        return {"$G": base64.b64encode(x.get_state().numpy().tobytes()).decode()}
    if torch is not None and isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.layout == torch.strided:
        return _tensor(x.detach(), storages)
    if torch is not None and isinstance(x, torch.Tensor):
        dtype, raw = _tensor_bytes(x)
        return {"$T": dtype, "shape": list(x.shape), "data": base64.b64encode(raw).decode()}
    np = sys.modules.get("numpy")
    if np is not None and isinstance(x, np.ndarray) and x.dtype != object:
        raw = np.ascontiguousarray(x).tobytes()
        return {"$A": x.dtype.str, "shape": list(x.shape), "data": base64.b64encode(raw).decode()}
    if np is not None and isinstance(x, np.generic):
        return enc(x.item())
    if handles is None and getattr(type(x), "labkit_served", False) is True \
            and _labkit_type(_label(type(x)), object) is type(x):  # the kernel gets a client; requests come here
        key = f"M{id(x)}"
        storages.served[key] = x
        return {"$M": key, "info": enc(x.served_info())}
    plain = hasattr(x, "__dict__") and not isinstance(x, type) and not (torch and isinstance(x, torch.nn.Module))
    if plain and _labkit_type(_label(type(x)), object) is type(x):  # a module's state is torch's, not ours
        return _object(x, storages, enc)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        fields = {f.name: enc(getattr(x, f.name)) for f in dataclasses.fields(x)}
        return {"$dc": type(x).__name__, "type": _label(type(x)), "fields": fields}
    recipe = getattr(x, "_labkit_recipe", None) if handles is None else None
    if isinstance(recipe, tuple) and len(recipe) == 5:  # labkit.grading.recipe: the kernel builds its own
        label, args, kwargs, item, call = recipe
        return {"$r": label, "args": enc(list(args)), "kwargs": enc(dict(kwargs)), "item": item, "call": call}
    if handles is not None:
        key = len(handles) + 1
        handles[key] = x
        return {"$h": key, "type": type(x).__name__, "callable": callable(x)}
    raise Unsendable(f"a {type(x).__name__} cannot be sent to or from the student's kernel")


def _label(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _labkit_dataclass(label: str):
    """The dataclass type `label` names when it is one of labkit's (nothing else is imported)."""
    cls = _labkit_type(label, object)
    return cls if cls is not None and dataclasses.is_dataclass(cls) else None


def _labkit_type(label: str, base: type):
    """The subclass of `base` that `label` names when it is one of labkit's (nothing else is imported)."""
    import importlib

    module, _, qualname = label.rpartition(".")
    if not (module == "labkit" or module.startswith("labkit.")) or not qualname.isidentifier():
        return None
    try:
        cls = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, base) else None


def _torch_dtype(name: str):
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a torch dtype: {name!r}")
    return dtype


def _view(data: dict, storages: Storages):
    """The tensor `_tensor` encoded, on the session's local storage of its name."""
    import torch

    key, peer = str(data["storage"]), bool(data.get("peer"))
    table = storages.own if peer else storages.received
    if "data" in data:
        raw = bytearray(base64.b64decode(data["data"]))
        new = torch.UntypedStorage(0) if not raw else torch.frombuffer(raw, dtype=torch.uint8).untyped_storage()
        if key in table and table[key].nbytes() == len(raw):
            table[key].copy_(new)  # the same storage as before, with its new bytes
        elif peer:
            raise ValueError(f"storage {key} is not one of ours of {len(raw)} bytes")
        else:
            table[key] = new
            storages.origin[_storage_id(new)] = key
    if key not in table:
        raise ValueError(f"storage {key} used before it was sent")
    shape, stride = [int(v) for v in data["shape"]], [int(v) for v in data["stride"]]
    t = torch.empty(0, dtype=_torch_dtype(str(data["$T"])))
    return t.set_(table[key], int(data["offset"]), shape, stride)


def _decode_object(data: dict, storages: Storages, dec) -> Any:
    key, peer = str(data["key"]), bool(data.get("peer"))
    table = storages.own_objects if peer else storages.received_objects
    obj = table.get(key)
    if obj is None:
        cls = _labkit_type(str(data["$o"]), object)
        if peer or cls is None or "state" not in data:
            raise ValueError(f"not an object of this session: {str(data['$o'])[:80]} {key[:40]}")
        obj = table[key] = object.__new__(cls)
        storages.object_origin[id(obj)] = key
    if "state" in data:  # registered first: an attribute may lead back to the object itself
        state = dec(data["state"])
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise ValueError("an object's state must be a dict of attribute names")
        obj.__dict__.clear()
        obj.__dict__.update(state)
    return obj


def _rebuild(data: dict, storages: Storages, dec) -> Any:
    """The object a `@rebuildable` labkit function built on the other side, built again here (only
    where the session allows it: the kernel, never the grading process)."""
    import importlib

    if not storages.rebuild:
        raise ValueError("rebuilt objects are not accepted here")
    module, _, name = str(data["$r"]).rpartition(".")
    fn = None
    if (module == "labkit" or module.startswith("labkit.")) and name.isidentifier():
        fn = getattr(importlib.import_module(module), name, None)
    if not getattr(fn, "labkit_rebuildable", False):
        raise ValueError(f"not a rebuildable labkit function: {str(data['$r'])[:80]}")
    key = json.dumps([data["$r"], data["args"], data["kwargs"], data["call"]])
    if key not in storages.rebuilt:
        storages.rebuilt[key] = fn(*dec(data["args"]), **dec(data["kwargs"]))
    out = storages.rebuilt[key]
    return out if data["item"] is None else out[int(data["item"])]


def decode(data: Any, handle=None, storages: Storages | None = None) -> Any:
    storages = Storages() if storages is None else storages
    if data is None or isinstance(data, (bool, int, str)):
        return data
    if isinstance(data, list):  # plain JSON lists only appear inside tagged objects
        return [decode(v, handle, storages) for v in data]
    if not isinstance(data, dict) or len(data) == 0:
        raise ValueError(f"not a wire value: {str(data)[:80]}")
    dec = lambda v: decode(v, handle, storages)  # noqa: E731
    if "$T" in data and "storage" in data:
        return _view(data, storages)
    if "$i" in data:
        return int(data["$i"])
    if "$f" in data:
        return float(data["$f"])
    if "$l" in data:
        return [dec(v) for v in data["$l"]]
    if "$t" in data:
        return tuple(dec(v) for v in data["$t"])
    if "$d" in data:
        items = ((dec(k), dec(v)) for k, v in data["$d"])
        return collections.OrderedDict(items) if data.get("ordered") else dict(items)
    if "$s" in data:
        items = [dec(v) for v in data["$s"]]
        return frozenset(items) if data.get("frozen") else set(items)
    if "$b" in data:
        return base64.b64decode(data["$b"])
    if "$q" in data:
        return collections.deque((dec(v) for v in data["$q"]), data.get("maxlen"))
    if "$e" in data:
        cls = _labkit_type(str(data["$e"]), enum.Enum)
        if cls is None:
            raise ValueError(f"not a labkit enum: {str(data['$e'])[:80]}")
        return cls[str(data["name"])]
    if "$G" in data:
        import torch

        gen = torch.Generator()
        gen.set_state(torch.frombuffer(bytearray(base64.b64decode(data["$G"])), dtype=torch.uint8).clone())
        return gen
    if "$T" in data:
        import numpy as np
        import torch

        raw = base64.b64decode(data["data"])
        shape = [int(s) for s in data["shape"]]
        if data["$T"] == "bfloat16":
            return torch.from_numpy(np.frombuffer(raw, dtype=np.int16).copy()).view(torch.bfloat16).reshape(shape)
        dtype = _torch_dtype(str(data["$T"]))
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        return torch.from_numpy(np.frombuffer(raw, dtype=np_dtype).copy()).reshape(shape)
    if "$A" in data:
        import numpy as np

        dtype = np.dtype(str(data["$A"]))
        if dtype.hasobject:
            raise ValueError("object arrays are not accepted")
        return np.frombuffer(base64.b64decode(data["data"]), dtype=dtype).reshape(data["shape"]).copy()
    if "$dc" in data:
        name = str(data["$dc"])
        fields = {str(k): dec(v) for k, v in data["fields"].items()}
        cls = _labkit_dataclass(str(data.get("type", "")))
        if cls is not None and set(fields) == {f.name for f in dataclasses.fields(cls)}:
            obj = object.__new__(cls)  # labkit's own type, with its properties and methods
            for k, v in fields.items():
                object.__setattr__(obj, k, v)
            return obj
        cls = dataclasses.make_dataclass(name if name.isidentifier() else "Received", list(fields))
        return cls(**fields)
    if "$r" in data:
        return _rebuild(data, storages, dec)
    if "$o" in data:
        return _decode_object(data, storages, dec)
    if "$M" in data:
        if storages.client is None:
            raise ValueError("a served object where none is accepted")
        return storages.client(str(data["$M"]), dec(data["info"]))
    if "$h" in data:
        if handle is None:
            raise ValueError("a handle where none is expected")
        return handle(int(data["$h"]), data)
    raise ValueError(f"not a wire value: {str(data)[:80]}")
