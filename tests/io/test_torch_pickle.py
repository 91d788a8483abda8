"""The restricted unpickler: tensors and containers rebuilt, other classes inert, code never run."""

from __future__ import annotations

import collections
import os
import pickle
import sys
import types
import zipfile

import pytest
import torch

from weaving.io.torch_pickle import GlobalRef, ObjectRecord, UnsafePickleError, read_torch_file, restricted_loads


def test_state_dict_round_trip_keeps_values_dtypes_and_views(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = collections.OrderedDict(
        w=base, view=base[:, 1::2], half=torch.randn(3, dtype=torch.float16), bf=torch.randn(2, 2).bfloat16(),
        ints=torch.tensor([1, 2, 3]), flag=torch.tensor(True), scalar=torch.tensor(2.5),
        param=torch.nn.Parameter(torch.ones(2)), nested={"a": [torch.zeros(1), (1, "x")], "s": {1, 2}})
    torch.save(state, tmp_path / "sd.pt")
    got = read_torch_file(tmp_path / "sd.pt")
    assert isinstance(got, collections.OrderedDict) and list(got) == list(state)
    for key in ("w", "view", "half", "bf", "ints", "flag", "scalar"):
        assert got[key].dtype == state[key].dtype and torch.equal(got[key], state[key])
    assert torch.equal(got["param"], torch.ones(2)) and got["nested"]["a"][1] == (1, "x")
    assert got["nested"]["s"] == {1, 2}
    got["view"][0, 0] = -1.0  # rebuilt tensors own their memory
    assert got["w"][0, 1] == 1.0


def test_unknown_classes_become_inert_records_and_are_never_imported(tmp_path):
    module = types.ModuleType("standin_lib_never_importable")

    class Thing:
        def __init__(self):
            self.value = torch.full((2,), 7.0)
            self.name = "thing"

    Thing.__module__ = module.__name__
    Thing.__qualname__ = "Thing"
    module.Thing = Thing
    sys.modules[module.__name__] = module
    try:
        torch.save({"thing": Thing()}, tmp_path / "obj.pt")
    finally:
        del sys.modules[module.__name__]
    got = read_torch_file(tmp_path / "obj.pt")["thing"]
    assert isinstance(got, ObjectRecord) and got.cls == GlobalRef(module.__name__, "Thing")
    assert got.state["name"] == "thing" and torch.equal(got.state["value"], torch.full((2,), 7.0))
    assert module.__name__ not in sys.modules


class _Payload:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Inert:
    def __reduce__(self):
        return GlobalRef, ("never", "called")  # pickled as a call of weaving's own class: must not happen


def test_code_running_payload_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"weights": torch.zeros(2), "x": _Payload(f"touch {marker}")}, tmp_path / "evil.pt")
    with pytest.raises(UnsafePickleError, match=r"refused .*(posix|os|nt)\.system.*nothing from the file was run") as info:
        read_torch_file(tmp_path / "evil.pt")
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_calls_of_unknown_functions_stay_inert(tmp_path):
    data = pickle.dumps(_Inert(), protocol=2)
    got = restricted_loads(data)
    assert isinstance(got, ObjectRecord) and got.cls.qualname == "weaving.io.torch_pickle.GlobalRef"
    assert got.args == ("never", "called")


@pytest.mark.parametrize("payload", [
    b"cbuiltins\neval\n(S'1+1'\ntR.",                      # protocol 0 REDUCE of eval
    b"(cos\nsystem\nS'true'\no.",                           # OBJ opcode
    b"(S'true'\nios\nsystem\n.",                            # INST opcode
    b"\x80\x02csubprocess\nPopen\n]U\x04trueaq\x00\x85R.",  # Popen via protocol 2
])
def test_every_calling_opcode_refuses_code_running_modules(payload):
    with pytest.raises(UnsafePickleError, match="refused"):
        restricted_loads(payload)


def test_corrupt_archive_is_one_line(tmp_path):
    torch.save({"w": torch.ones(4)}, tmp_path / "ok.pt")
    raw = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError) as info:
        read_torch_file(tmp_path / "cut.pt")
    assert "\n" not in str(info.value) and "cut.pt" in str(info.value)
    with zipfile.ZipFile(tmp_path / "nodata.pt", "w") as archive:
        archive.writestr("x/other.txt", "hi")
    with pytest.raises(ValueError, match="not a torch.save archive"):
        read_torch_file(tmp_path / "nodata.pt")


@pytest.mark.parametrize("data", [
    b"\x80\x02ctorch\nSize\n]\x85R(K\x01e.",       # APPENDS onto a tuple
    b"\x80\x02cnowhere\nthing\n(K\x01e.",            # APPENDS onto a global reference
])
def test_malformed_pickles_are_one_line_errors(tmp_path, data):
    with zipfile.ZipFile(tmp_path / "bad.pt", "w") as archive:
        archive.writestr("bad/data.pkl", data)
    with pytest.raises(ValueError, match="corrupt pickle"):
        read_torch_file(tmp_path / "bad.pt")


# ------------------------------------------------------------------- hand-built pickles (any Python)
def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


INTERPOLATION = _global("torchvision.transforms.functional", "InterpolationMode")
# Python 3.11.5+ (and before 3.11): Class(value); Python 3.11.0-3.11.4: getattr(Class, name)
BY_VALUE = b"\x80\x02" + INTERPOLATION + _text("bicubic") + b"\x85R."
BY_NAME = b"\x80\x02" + _global("builtins", "getattr") + INTERPOLATION + _text("BICUBIC") + b"\x86R."


def test_both_enum_pickle_forms_give_the_same_member():
    from weaving.io.torch_pickle import EnumMember

    by_value, by_name = restricted_loads(BY_VALUE), restricted_loads(BY_NAME)
    assert isinstance(by_name, EnumMember) and by_name == by_value
    assert (by_name.cls.name, by_name.name, by_name.value) == ("InterpolationMode", "BICUBIC", "bicubic")


@pytest.mark.parametrize("payload", [
    _global("builtins", "getattr") + _global("os", "system") + _text("__call__") + b"\x86R.",
    _global("builtins", "getattr") + _global("collections", "OrderedDict") + _text("fromkeys") + b"\x86R.",
    _global("builtins", "getattr") + INTERPOLATION + _text("__class__") + b"\x86R.",
    INTERPOLATION + _text("not-a-mode") + b"\x85R.",
])
def test_every_other_getattr_and_member_is_refused(payload):
    with pytest.raises(ValueError, match="refused|has no"):
        restricted_loads(b"\x80\x02" + payload)


def test_a_real_enum_pickle_of_this_python_is_read():
    from torchvision.transforms import InterpolationMode

    got = restricted_loads(pickle.dumps({"mode": InterpolationMode.BILINEAR}, protocol=2))
    assert got["mode"].name == "BILINEAR" and got["mode"].value == "bilinear"


def _tensor_archive(path, size: int, record: bytes, declared: int) -> None:
    """A torch.save archive whose one float32 tensor of `size` elements sits on a storage declared to hold
    `declared` elements, with `record` as the storage's bytes."""
    storage = (b"(" + _text("storage") + _global("torch", "FloatStorage") + _text("0") + _text("cpu")
               + b"J" + declared.to_bytes(4, "little") + b"tQ")
    data = (b"\x80\x02" + _global("torch._utils", "_rebuild_tensor_v2") + b"(" + storage + b"K\x00"
            + b"J" + size.to_bytes(4, "little") + b"\x85K\x01\x85\x89" + _global("collections", "OrderedDict")
            + b")Rtq\x00R.")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data)
        archive.writestr("archive/data/0", record)
        archive.writestr("archive/byteorder", "little")


def test_sizes_are_checked_before_memory_is_taken(tmp_path):
    _tensor_archive(tmp_path / "ok.pt", 2, b"\0" * 8, 2)
    assert torch.equal(read_torch_file(tmp_path / "ok.pt"), torch.zeros(2))
    _tensor_archive(tmp_path / "huge.pt", 2**25, b"", 0)  # 128 MiB over an empty storage: refused, not allocated
    with pytest.raises(ValueError, match="reads past its storage"):
        read_torch_file(tmp_path / "huge.pt")
    _tensor_archive(tmp_path / "short.pt", 2, b"\0" * 8, 2**20)  # a storage declared larger than its record
    with pytest.raises(ValueError, match="declares 1048576 elements"):
        read_torch_file(tmp_path / "short.pt")
    with pytest.raises(UnsafePickleError, match="bytearray"):  # bytearray(2**45) would allocate 32 TiB
        restricted_loads(b"\x80\x02" + _global("builtins", "bytearray") + b"\x8a\x06\x00\x00\x00\x00\x00\x20\x85R.")
    assert restricted_loads(b"\x80\x02" + _global("builtins", "bytearray") + b"C\x02hi\x85R.") == bytearray(b"hi")


def test_a_resume_checkpoint_is_checked_before_lightning_reads_it(tmp_path):
    from weaving.io.torch_pickle import check_lightning_checkpoint

    torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 1}, tmp_path / "ok.ckpt")
    check_lightning_checkpoint(tmp_path / "ok.ckpt")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    raw = (tmp_path / "ok.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(raw[: len(raw) // 2])
    torch.save({"state_dict": {}, "x": _Payload("true")}, tmp_path / "payload.ckpt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.ckpt")
    for name, message in [("empty", "empty"), ("cut", "not a checkpoint Lightning can resume"),
                          ("payload", "refused"), ("other", "no state_dict"), ("missing", "no such file")]:
        with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
            check_lightning_checkpoint(tmp_path / f"{name}.ckpt")
        assert str(info.value).startswith("--ckpt_path") and "\n" not in str(info.value)


def test_weaving_fit_refuses_a_bad_resume_checkpoint_in_one_line(tmp_path, capsys):
    from weaving.cli import main

    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "configs/finetune/digits_tiny.yaml", "--trainer.default_root_dir", str(tmp_path / "run"),
              "--ckpt_path", str(tmp_path / "empty.ckpt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and err[-1].startswith("weaving fit: error: --ckpt_path") and "empty" in err[-1]
    assert not (tmp_path / "run").exists()
