"""Read `torch.save` files without running anything from them: a restricted unpickler.

`torch.save` writes a zip archive: `<name>/data.pkl` (a pickle whose tensors point, through persistent ids
`("storage", storage_type, key, location, numel)`, at raw byte records `<name>/data/<key>`), `byteorder` and
`version`. The pickle itself may name any class or function (a whole `nn.Module`, torchvision transforms...).

This unpickler never imports a module and never calls anything the file names. It rebuilds exactly:
tensors and parameters (`torch._utils._rebuild_tensor_v2` / `_rebuild_parameter`, from the raw records),
containers (dict, OrderedDict, list, tuple, set) and plain values; members of allow-listed enums
(`ALLOWED_ENUMS`: torchvision's `InterpolationMode`, which open_clip's preprocess transforms hold) in both
forms Python pickles them (`Class(value)`, and `getattr(Class, name)` from Python 3.11.0-3.11.4) as
`EnumMember`; every other global becomes a `GlobalRef` and every object built from one an inert
`ObjectRecord` (class name, arguments, state) that a caller can walk (e.g. the `_parameters` / `_modules`
of a pickled module). A request to call a function of a module that runs code (`os.system`,
`builtins.eval`, any other `getattr`, `subprocess.Popen`, ...) is refused with one line naming it, before
anything else happens. Sizes are checked before memory is taken: a tensor never reads past its storage,
a storage record is never shorter than its declared size, and `bytearray` is only rebuilt from bytes. The
design follows `torch._weights_only_unpickler` (allow-listed rebuild functions, storages read by key),
without its need to import the classes.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}
DTYPE_NAMES = {str(dtype).removeprefix("torch."): dtype for dtype in STORAGE_DTYPES.values()}
DTYPE_NAMES.update(float="float32", double="float64", half="float16", long="int64", int="int32")
DTYPE_NAMES = {name: getattr(torch, value) if isinstance(value, str) else value for name, value in DTYPE_NAMES.items()}

# Modules whose functions run code or touch the system: asking to call one of them is an attack, refused.
CODE_RUNNING_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "importlib", "runpy", "shutil",
    "socket", "pty", "code", "codeop", "pickle", "_pickle", "marshal", "ctypes", "types", "operator",
    "functools", "webbrowser", "multiprocessing", "asyncio", "signal", "pathlib", "io", "tempfile", "platform",
    "pdb", "bdb", "timeit", "threading", "_thread", "commands", "popen2", "pip", "setuptools", "urllib",
    "requests", "http", "ftplib", "smtplib", "telnetlib", "glob", "inspect", "ast", "compileall",
}


class UnsafePickleError(ValueError):
    """The file asked the unpickler to run code; nothing was run."""


@dataclass(frozen=True)
class GlobalRef:
    """A class or function the file names, never imported."""

    module: str
    name: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False)
class ObjectRecord:
    """An inert stand-in for an object of a class that was not imported: what the file says about it."""

    cls: GlobalRef
    args: tuple = ()
    state: Any = None
    items: dict = field(default_factory=dict)
    listitems: list = field(default_factory=list)

    # the pickle machine fills objects through these; they only record
    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.listitems.append(value)

    def extend(self, values: Any) -> None:
        self.listitems.extend(values)

    def add(self, value: Any) -> None:
        self.listitems.append(value)


@dataclass(frozen=True)
class EnumMember:
    """A member of an allow-listed enum class (see `ALLOWED_ENUMS`), never imported."""

    cls: GlobalRef
    name: str
    value: Any


# Enum classes whose members a file may name, with their members (name -> value).
ALLOWED_ENUMS = {
    GlobalRef("torchvision.transforms.functional", "InterpolationMode"): {
        "NEAREST": "nearest", "NEAREST_EXACT": "nearest-exact", "BILINEAR": "bilinear", "BICUBIC": "bicubic",
        "BOX": "box", "HAMMING": "hamming", "LANCZOS": "lanczos"},
}


def _enum_member(cls: GlobalRef, name: str | None = None, value: Any = None) -> EnumMember:
    members = ALLOWED_ENUMS[cls]
    if name is None:
        name = next((n for n, v in members.items() if v == value), None)
    if name not in members:
        what = f"member {name!r}" if name is not None else f"value {value!r}"
        raise ValueError(f"{cls.qualname} has no {what}")
    return EnumMember(cls, name, members[name])


def _getattr(obj: Any, name: Any, *default: Any) -> EnumMember:
    """`getattr(Class, 'NAME')`, how Python 3.11.0-3.11.4 pickles an enum member: allowed for the members of
    allow-listed enums only."""
    if isinstance(obj, GlobalRef) and obj in ALLOWED_ENUMS and isinstance(name, str) and not default:
        return _enum_member(obj, name=name)
    target = obj.qualname if isinstance(obj, GlobalRef) else type(obj).__name__
    raise UnsafePickleError(f"refused a pickle that asks to call builtins.getattr({target}, {name!r}); nothing from "
                            "the file was run")


def _bytearray(data: Any = b"", *encoding: Any) -> bytearray:
    """`bytearray(bytes)` (or `bytearray(str, encoding)`), how protocols before 5 pickle one; never from a
    number, which would allocate that many bytes."""
    if isinstance(data, (bytes, bytearray)) and not encoding:
        return bytearray(data)
    if isinstance(data, str) and len(encoding) == 1 and encoding[0] in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        return bytearray(data, encoding[0])
    raise UnsafePickleError(f"refused a pickle that asks for bytearray({type(data).__name__}); only bytes are allowed")


@dataclass(frozen=True)
class StorageType:
    name: str
    dtype: torch.dtype


def _is_code_running(ref: GlobalRef) -> bool:
    return ref.module.split(".")[0] in CODE_RUNNING_MODULES


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise UnsafePickleError(f"unexpected _codecs.encode({type(text).__name__}, {encoding!r}) in the pickle")
    return text.encode(encoding)


def _tensor(storage: Any, offset: int, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise ValueError(f"a tensor's storage is a {type(storage).__name__}, not a storage record")
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
    if len(size) != len(stride) or min((*size, *stride, offset, 0)) < 0:
        raise ValueError(f"a tensor has size {list(size)}, stride {list(stride)} and offset {offset}; none may be negative")
    if 0 in size:
        return storage.new_empty(size)
    extent = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1
    if extent > storage.numel():  # checked before anything is allocated for the tensor
        raise ValueError(f"a tensor of size {list(size)} reads past its storage ({storage.numel()} elements)")
    return storage.as_strided(size, stride, offset).clone()


def _parameter(data: Any, *rest: Any) -> Any:
    return data  # a Parameter's data is all weaving needs; hooks and flags are dropped


def _from_type(func: Any, new_type: Any, args: tuple, state: Any) -> Any:
    return _call(func, args)  # rebuild the base tensor; the subclass (never imported) is dropped


def _set(items: Any = ()) -> set:
    return set(items)


def _frozenset(items: Any = ()) -> frozenset:
    return frozenset(items)


ALLOWED_CALLS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _tensor,
    ("torch._utils", "_rebuild_tensor_v3"): lambda storage, offset, size, stride, *rest: _tensor(storage, offset, size, stride),
    ("torch._utils", "_rebuild_tensor"): _tensor,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _from_type,
    ("builtins", "set"): _set, ("__builtin__", "set"): _set,
    ("builtins", "frozenset"): _frozenset, ("__builtin__", "frozenset"): _frozenset,
    ("builtins", "bytearray"): _bytearray, ("__builtin__", "bytearray"): _bytearray,
    ("builtins", "getattr"): _getattr, ("__builtin__", "getattr"): _getattr,
    ("builtins", "slice"): slice, ("builtins", "complex"): complex,
    ("_codecs", "encode"): _codecs_encode,
    ("torch", "Size"): lambda dims=(): tuple(int(d) for d in dims),
    ("torch", "device"): lambda *args: ":".join(str(a) for a in args),
}


def _call(func: Any, args: Any) -> Any:
    """What REDUCE / NEWOBJ / INST mean here: an allow-listed rebuild, a refusal, or an inert record."""
    if not isinstance(args, tuple):
        args = tuple(args) if isinstance(args, list) else (args,)
    if isinstance(func, GlobalRef):
        allowed = ALLOWED_CALLS.get((func.module, func.name))
        if allowed is not None:
            return allowed(*args)
        if _is_code_running(func):
            raise UnsafePickleError(f"refused a pickle that asks to call {func.qualname}{_short(args)} "
                                    "(a code-running payload); nothing from the file was run")
        if func in ALLOWED_ENUMS:
            if len(args) != 1:
                raise ValueError(f"{func.qualname}: an enum member is rebuilt from one value, got {len(args)}")
            return _enum_member(func, value=args[0])
        if func.module == "copyreg" and func.name == "_reconstructor" and args and isinstance(args[0], GlobalRef):
            return ObjectRecord(args[0])
        if func.module == "copyreg" and func.name == "__newobj__" and args and isinstance(args[0], GlobalRef):
            return ObjectRecord(args[0], tuple(args[1:]))
        if func.module.split(".")[0] in ("copyreg", "copy_reg"):
            raise UnsafePickleError(f"refused a pickle that asks to call {func.qualname}; nothing from the file was run")
        return ObjectRecord(func, args)
    if isinstance(func, (ObjectRecord, StorageType, EnumMember)) or func is None:
        return ObjectRecord(GlobalRef("<record>", type(func).__name__), args)
    raise UnsafePickleError(f"refused a pickle that asks to call a {type(func).__name__}; nothing from the file was run")


def _short(args: tuple) -> str:
    text = repr(args)
    return text if len(text) <= 60 else text[:57] + "...)"


class RestrictedUnpickler(pickle._Unpickler):
    """pickle's pure-Python machine with every opcode that imports or calls replaced (see module doc)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, storages: Any = None) -> None:
        super().__init__(file, encoding="utf-8")
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name, STORAGE_DTYPES[name])
        if module == "torch" and name in DTYPE_NAMES:
            return DTYPE_NAMES[name]
        return GlobalRef(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if self._storages is None:
            raise ValueError("the pickle refers to tensor data stored outside it, and none was found")
        return self._storages(pid)

    # --- opcodes that would import or call: rebuilt only through _call
    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = _call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(_call(cls, args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        record = _call(cls, args)
        if isinstance(record, ObjectRecord):
            record.items.update(kwargs or {})
        self.append(record)

    def load_inst(self) -> None:
        module = self.readline()[:-1].decode("ascii")
        name = self.readline()[:-1].decode("ascii")
        args = tuple(self.pop_mark())
        self.append(_call(self.find_class(module, name), args))

    def load_obj(self) -> None:
        args = self.pop_mark()
        cls = args.pop(0)
        self.append(_call(cls, tuple(args)))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, ObjectRecord):
            inst.state = state
        # real objects (dicts, tensors, sets...) keep no state from the file: for a dict it would be its
        # attributes (a state dict's `_metadata`), never its items

    def load_ext(self) -> None:
        raise UnsafePickleError("refused a pickle that uses the copyreg extension registry; nothing was run")

    def load_stack_global(self) -> None:
        name = self.stack.pop()
        module = self.stack.pop()
        if not isinstance(name, str) or not isinstance(module, str):
            raise ValueError("malformed pickle: STACK_GLOBAL needs two strings")
        self.append(self.find_class(module, name))

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.INST[0]] = load_inst
    dispatch[pickle.OBJ[0]] = load_obj
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.EXT1[0]] = load_ext
    dispatch[pickle.EXT2[0]] = load_ext
    dispatch[pickle.EXT4[0]] = load_ext
    dispatch[pickle.STACK_GLOBAL[0]] = load_stack_global


def restricted_loads(data: bytes, storages: Any = None) -> Any:
    """Unpickle `data` with `RestrictedUnpickler` (storages: persistent id -> tensor, or None)."""
    return RestrictedUnpickler(io.BytesIO(data), storages).load()


def _zip_storages(archive: zipfile.ZipFile, prefix: str, byteorder: str):
    cache: dict[str, torch.Tensor] = {}

    def load(pid: Any) -> torch.Tensor:
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] not in ("storage", b"storage"):
            raise ValueError(f"unexpected persistent record {str(pid)[:60]} (expected a storage)")
        storage_type, key = pid[1], str(pid[2])
        dtype = storage_type.dtype if isinstance(storage_type, StorageType) else storage_type
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"storage {key} has an unknown type {storage_type}")
        if key not in cache:
            try:
                raw = archive.read(f"{prefix}data/{key}")
            except KeyError:
                raise ValueError(f"storage record data/{key} is missing from the archive") from None
            size = dtype.itemsize
            if len(raw) % size:
                raise ValueError(f"storage record data/{key} has {len(raw)} bytes, not a multiple of {size}")
            declared = pid[4]
            if isinstance(declared, bool) or not isinstance(declared, int) or declared < 0 or declared * size > len(raw):
                raise ValueError(f"storage {key} declares {declared!r} elements of {dtype} but its record "
                                 f"data/{key} holds {len(raw) // size}")
            flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if byteorder == "big" and size > 1:
                flat = torch.from_numpy(flat.numpy().byteswap())
            cache[key] = flat
        return cache[key]

    return load


def is_torch_zip(path: str | Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("data.pkl") and name.count("/") == 1 for name in archive.namelist())


def is_legacy_torch(head: bytes) -> bool:
    """True for the pre-1.6 `torch.save` format (a pickled magic number first)."""
    try:
        return restricted_loads(head[:32]) == LEGACY_MAGIC
    except Exception:  # noqa: BLE001 - not a pickle starting with the magic number
        return False


def read_torch_file(path: str | Path) -> Any:
    """The object a `torch.save` zip file holds, rebuilt without running anything (see module doc)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise zipfile.BadZipFile("the file is empty")
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{path}: not a readable torch.save archive ({error})") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: not a torch.save archive (no <name>/data.pkl record)")
        prefix = pickles[0][: -len("data.pkl")]
        try:
            byteorder = archive.read(f"{prefix}byteorder").decode() if f"{prefix}byteorder" in archive.namelist() else "little"
            data = archive.read(pickles[0])
        except (zipfile.BadZipFile, OSError, ValueError) as error:
            raise ValueError(f"{path}: corrupt torch.save archive ({error})") from None
        try:
            return restricted_loads(data, _zip_storages(archive, prefix, byteorder))
        except UnsafePickleError as error:
            raise UnsafePickleError(f"{path}: {error}") from None
        except (pickle.UnpicklingError, EOFError, IndexError, KeyError, TypeError, ValueError, AttributeError,
                RuntimeError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path}: corrupt pickle in torch.save archive ({type(error).__name__}: {error})") from None


def read_torch_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A `pytorch_model.bin`-style state dict (optionally under a `state_dict` key), read by the restricted
    unpickler: the one policy for `.bin` / `.pt` weights (nothing from the file runs)."""
    try:
        state = read_torch_file(path)
    except ValueError as error:
        raise ValueError(f"{path}: not a loadable torch state dict ({str(error).removeprefix(f'{path}: ')})") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        what = type(state).__name__ if not isinstance(state, Mapping) else "a mapping with other values than tensors"
        raise ValueError(f"{path}: not a loadable torch state dict (it holds {what})")
    return {str(key): value for key, value in state.items()}


def check_lightning_checkpoint(path: str | Path, what: str = "--ckpt_path") -> None:
    """Refuse, in one line, a checkpoint Lightning would choke on or that carries a payload: it must be a
    readable torch.save archive (read by the restricted unpickler, so nothing runs) holding a `state_dict`.
    Run before Lightning reads it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file")
    try:
        content = read_torch_file(path)
    except UnsafePickleError as error:
        raise UnsafePickleError(f"{what} {error}") from None
    except ValueError as error:
        raise ValueError(f"{what} {str(error).removeprefix(f'{path}: ')}: not a checkpoint Lightning can resume "
                         f"from ({path})") from None
    if not isinstance(content, Mapping) or not isinstance(content.get("state_dict"), Mapping):
        raise ValueError(f"{what} {path}: not a Lightning checkpoint (no state_dict); give a .ckpt that "
                         "`weaving fit` wrote (RUN/ckpt/*.ckpt)")
