"""weaving.io.runs: the run identity (id, theta_pre hash), reading run folders, and the same-base check."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from weaving.merging.task_vectors import save_task_vector
from weaving.io.runs import (RunIdentity, check_same_base, index_payload, pretrained_source, read_run,
                          state_dict_hash, write_index)


def test_state_dict_hash_is_sha256_of_sorted_names_dtypes_shapes_and_bytes():
    a = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    b = torch.tensor([1.5], dtype=torch.bfloat16)
    expected = hashlib.sha256()
    for name, t, dtype in (("a", a, "float32"), ("b", b, "bfloat16")):
        expected.update(f"{name}\0{dtype}\0{list(t.shape)}\0".encode())
        expected.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    assert state_dict_hash({"b": b, "a": a}) == "sha256:" + expected.hexdigest()
    assert state_dict_hash({"a": a.t().contiguous().t(), "b": b}) == state_dict_hash({"a": a, "b": b})  # layout-free
    changed = a.clone()
    changed[1, 2] += 1
    for other in ({"a": changed, "b": b}, {"a": a.double(), "b": b}, {"a": a.reshape(3, 2), "b": b},
                  {"c": a, "b": b}):
        assert state_dict_hash(other) != state_dict_hash({"a": a, "b": b})


def test_state_dict_hash_of_a_file_equals_the_tensors(tmp_path):
    tensors = {"x": torch.randn(3, 4), "y": torch.randn(2, dtype=torch.float16)}
    save_task_vector(tmp_path / "t.safetensors", tensors)
    assert state_dict_hash(tmp_path / "t.safetensors") == state_dict_hash(tensors)


def _run(folder, run_id, tasks, base="sha256:aa", model="m"):
    identity = RunIdentity(run_id, model, None, base)
    for task in tasks:
        save_task_vector(folder / "task_vectors" / f"{task}.safetensors", {"w": torch.ones(2)},
                         {"task": task, **identity.metadata()})
    write_index(folder, index_payload(identity, pretrained_file=None, seed=3, stream="sequential", tasks=tasks,
                                      entries=[{"task": t, "file": f"{t}.safetensors"} for t in tasks]))
    return identity


def test_read_run_folder_order_identity_and_seed(tmp_path):
    identity = _run(tmp_path, "r1", ["b", "a"])
    run = read_run(tmp_path)
    assert list(run.paths) == ["b", "a"] and run.identity == identity
    assert (run.seed, run.stream, run.root) == (3, "sequential", tmp_path)
    assert list(read_run(tmp_path / "task_vectors").paths) == ["b", "a"]
    assert list(run.select(["a"]).paths) == ["a"]
    with pytest.raises(ValueError, match=r"no task vectors for \['z'\]; available: b, a"):
        run.select(["z"])


def test_index_of_another_run_than_its_files_is_refused(tmp_path):
    _run(tmp_path, "r1", ["a", "b"])
    index = json.loads((tmp_path / "task_vectors" / "index.json").read_text())
    index["run_id"] = "r2"
    (tmp_path / "task_vectors" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="different runs: .*a.safetensors has run_id='r1', .*index.json has 'r2'"):
        read_run(tmp_path)


def test_runs_of_different_bases_are_refused_unless_allow_mixed(tmp_path):
    _run(tmp_path / "x", "r1", ["a"])
    _run(tmp_path / "y", "r2", ["b"], base="sha256:bb")
    _run(tmp_path / "z", "r3", ["c"])
    assert list(read_run([tmp_path / "x", tmp_path / "z"]).paths) == ["a", "c"]  # one base, separate runs
    with pytest.raises(ValueError, match=r"different base models .*b.safetensors has pretrained_hash='sha256:bb'"
                                         r".*--allow_mixed"):
        read_run([tmp_path / "x", tmp_path / "y"])
    assert list(read_run([tmp_path / "x", tmp_path / "y"], allow_mixed=True).paths) == ["a", "b"]


def test_check_same_base_messages_are_one_line():
    a, b = RunIdentity("r1", "m", None, "h"), RunIdentity("r1", "other", None, "h")
    with pytest.raises(ValueError) as error:
        check_same_base([("A", a), ("B", b)])
    assert "\n" not in str(error.value) and "different models: B has model='other', A has 'm'" in str(error.value)
    check_same_base([("A", a), ("B", RunIdentity("r2", "m", None, "h"))], same_run=False)
    with pytest.raises(ValueError, match="different runs"):
        check_same_base([("A", a), ("B", RunIdentity("r2", "m", None, "h"))])
    with pytest.raises(ValueError, match="different base models"):  # one side records no hash: not a pass
        check_same_base([("A", a), ("B", RunIdentity("r1", "m", None, None))])
    check_same_base([("A", a), ("B", b)], allow_mixed=True)


def test_missing_and_empty_sources_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope: no such file or folder"):
        read_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors files"):
        read_run(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="an empty list"):
        read_run([])
    (tmp_path / "bad" / "task_vectors").mkdir(parents=True)
    (tmp_path / "bad" / "task_vectors" / "index.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_run(tmp_path / "bad")


def test_pretrained_source_of_a_run_folder(tmp_path):
    _run(tmp_path, "r1", ["a"])
    with pytest.raises(FileNotFoundError, match="a run folder without pretrained.safetensors"):
        pretrained_source(tmp_path)
    (tmp_path / "pretrained.safetensors").write_bytes(b"x")
    assert pretrained_source(tmp_path) == tmp_path / "pretrained.safetensors"
    assert pretrained_source(tmp_path / "file.safetensors") == tmp_path / "file.safetensors"


def test_reads_the_written_format_and_refuses_others(tmp_path):
    folder = tmp_path / "task_vectors"
    for task in ("b", "a"):
        save_task_vector(folder / f"{task}.safetensors", {"w": torch.ones(2)}, {"task": task, "model": "m"})
    index = folder / "index.json"
    index.write_text(json.dumps({"model": "m", "task_vectors": [{"task": "b", "file": "b.safetensors"},
                                                               {"task": "a", "file": "a.safetensors"}]}))
    found = read_run(tmp_path)
    assert list(found.paths) == ["b", "a"] and found.paths["a"] == folder / "a.safetensors"
    for other in ([{"task": "a", "file": "a.safetensors"}], {"entries": [{"name": "a", "path": "a.safetensors"}]},
                  {"task_vectors": [{"name": "a", "path": "a.safetensors"}]}):
        index.write_text(json.dumps(other))
        with pytest.raises(ValueError, match="index.json"):
            read_run(tmp_path)
