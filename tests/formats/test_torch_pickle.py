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

from weaving.formats.torch_pickle import GlobalRef, ObjectRecord, UnsafePickleError, read_torch_file, restricted_loads


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
    assert isinstance(got, ObjectRecord) and got.cls.qualname == "weaving.formats.torch_pickle.GlobalRef"
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
