"""The one safetensors reader: every input's header is checked before a byte of tensor data is read."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from weaving.cli import main
from weaving.io.safetensors import SafetensorsFile, read_metadata


def write_raw(path, header: dict, data: bytes) -> str:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return str(path)


def run_cli(capsys, *args):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code, capsys.readouterr().err.strip()


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
HOSTILE = {
    "negative offset": ({"w": {**F32, "data_offsets": [-8, 0]}}, "non-negative whole numbers"),
    "offset past the data": ({"w": {**F32, "data_offsets": [8, 16]}}, "inconsistent offsets"),
    "negative shape": ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "not a list of non-negative"),
    "float shape": ({"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, "not a list of non-negative"),
    "list metadata": ({"__metadata__": ["a", "b"], "w": F32}, "__metadata__ is not a mapping of strings"),
    "number in metadata": ({"__metadata__": {"step": 3}, "w": F32}, "__metadata__ is not a mapping of strings"),
    "overlapping tensors": ({"w": F32, "v": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, "overlap"),
    "unknown dtype": ({"w": {"dtype": "F128", "shape": [2], "data_offsets": [0, 8]}}, "dtype 'F128'"),
    "not an object": ([1, 2], "not a JSON object"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_headers_are_one_line_errors(tmp_path, case):
    header, message = HOSTILE[case]
    path = write_raw(tmp_path / "bad.safetensors", header, struct.pack("<2f", 1.0, 2.0))
    with pytest.raises(ValueError, match=message) as info:
        SafetensorsFile(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{path}: not a readable safetensors file")


@pytest.mark.parametrize("role", ["--pretrained", "--finetuned", "--task_vectors"])
def test_every_merge_input_is_read_by_the_checked_reader(tmp_path, capsys, role):
    """A negative data offset was read from the header bytes for --pretrained and --finetuned (values like
    1e22, exit 0); every input now fails the same way, with nothing written."""
    good = {"w": torch.ones(2)}
    save_file(good, tmp_path / "good.safetensors")
    save_file({"w": torch.full((2,), 2.0)}, tmp_path / "ft.safetensors")
    save_file({"w": torch.full((2,), 0.5)}, tmp_path / "tv.safetensors")
    bad = write_raw(tmp_path / "bad.safetensors", {"w": {**F32, "data_offsets": [-16, -8]}}, b"\0" * 8)
    inputs = {"--pretrained": str(tmp_path / "good.safetensors"), "--finetuned": str(tmp_path / "ft.safetensors"),
              "--task_vectors": None}
    inputs[role] = bad
    if role == "--task_vectors":
        del inputs["--finetuned"]
    args = [arg for key, value in inputs.items() if value for arg in (key, value)]
    code, err = run_cli(capsys, "merge", *args, "--method", "task_arithmetic", "--output", str(tmp_path / "m.safetensors"))
    assert code == 2 and "bad.safetensors: not a readable safetensors file" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.safetensors").exists()


def test_metadata_and_tensors_of_a_good_file(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(0, 4), "c": torch.tensor(True)}
    save_file(tensors, tmp_path / "ok.safetensors", metadata={"run_id": "r1"})
    source = SafetensorsFile(tmp_path / "ok.safetensors")
    assert read_metadata(tmp_path / "ok.safetensors") == {"run_id": "r1"}
    for key, value in tensors.items():
        assert source.dtype(key) == value.dtype and torch.equal(source.get(key), value)
        buffer = torch.empty(source.shape(key), dtype=source.dtype(key))
        assert torch.equal(source.read_into(key, buffer), value)
