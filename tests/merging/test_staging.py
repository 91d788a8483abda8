"""The staged (prefetched, double-buffered) reading path gives bit-identical merges to the plain path."""

import pytest
import torch

import weaving
from weaving.io.safetensors import SafetensorsFile
from weaving.io.writer import save_state_dict
from weaving.merging.staging import StagedTaskVectorSet, make_task_set
from weaving.merging.task_set import TaskVectorSet
from weaving.merging.task_vectors import save_task_vector

from .conftest import make_inputs

METHODS = ["task_arithmetic", "dare", "ties", "breadcrumbs", "magmax", "pcb", "tsv", "iso_c", "iso_cts"]


def test_safetensors_are_read_straight_into_a_buffer_bit_for_bit(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"f32": torch.randn(5, 7, generator=g), "f64": torch.randn(3, generator=g, dtype=torch.float64),
               "bf16": torch.randn(4, 4, generator=g).bfloat16(), "f16": torch.randn(9, generator=g).half(),
               "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3)}
    source = SafetensorsFile(save_state_dict(tmp_path / "x.safetensors", tensors, {"run_id": "r"}))
    for name, value in tensors.items():
        buffer = torch.empty(source.shape(name), dtype=source.dtype(name))
        assert source.read_into(name, buffer) is buffer
        assert buffer.dtype == value.dtype and torch.equal(buffer.reshape(-1).view(torch.uint8), value.reshape(-1).view(torch.uint8))


def _merge_all(monkeypatch, staging, pretrained, task_vectors):
    monkeypatch.setenv("WEAVING_STAGING", staging)
    out = {}
    for method in METHODS:
        out[method, "merge"] = weaving.merge(pretrained, task_vectors, method, lam=0.7, seed=3)
        out[method, "weave"] = weaving.weave(pretrained, task_vectors, method, [0.5, 1.0, 1.5], seed=3)
    out["ties", "weave-ties"] = weaving.weave(pretrained, task_vectors, "task_arithmetic", [0.5, 1.0], pooling="ties")
    return out


@pytest.mark.parametrize("from_files", [False, True])
def test_staged_path_is_bit_identical_to_the_plain_path(monkeypatch, tmp_path, from_files):
    pretrained, task_vectors = make_inputs(num_tasks=3)
    task_vectors[1]["visual.proj.weight"] = task_vectors[1]["visual.proj.weight"].bfloat16()  # mixed dtypes
    if from_files:
        task_vectors = [save_task_vector(tmp_path / f"t{i}.safetensors", tv) for i, tv in enumerate(task_vectors)]
    plain = _merge_all(monkeypatch, "0", pretrained, task_vectors)
    staged = _merge_all(monkeypatch, "1", pretrained, task_vectors)
    for case, merged in plain.items():
        for key, value in merged.items():
            assert torch.equal(staged[case][key], value), (case, key)


def _sources(tmp_path, num_tasks=3):
    _, task_vectors = make_inputs(num_tasks=num_tasks)
    paths = [save_task_vector(tmp_path / f"t{i}.safetensors", tv) for i, tv in enumerate(task_vectors)]
    sources = [SafetensorsFile(p) for p in paths]
    return sources, sources[0].keys(), task_vectors


def test_every_read_after_the_first_is_staged_ahead(tmp_path):
    sources, keys, task_vectors = _sources(tmp_path)
    by_key = StagedTaskVectorSet(sources, keys, torch.device("cpu"))
    for key in keys:  # the merge pass: all T tensors of one key, key after key
        for task, value in enumerate(by_key.tensors(key)):
            assert torch.equal(value, task_vectors[task][key])
    assert by_key.misses == 3  # only the first key's tensors are read on the spot
    by_task = StagedTaskVectorSet(sources, keys, torch.device("cpu"))
    for task in range(3):  # a statistics pass: one task vector after the other
        assert torch.equal(by_task.flat(task), torch.cat([task_vectors[task][k].reshape(-1) for k in keys]))
    assert by_task.misses == 1
    walk = StagedTaskVectorSet(sources, keys, torch.device("cpu"))
    for key in keys:  # tensor by tensor, tasks inside keys
        for task in range(3):
            assert torch.equal(walk.tensor(task, key), task_vectors[task][key])
    assert walk.misses == 2  # the first request, and the second (whose order is not known yet)


def test_staged_reads_check_values(tmp_path):
    _, task_vectors = make_inputs(num_tasks=2)
    task_vectors[1]["visual.proj.bias"][0] = float("nan")
    paths = [save_task_vector(tmp_path / f"t{i}.safetensors", tv) for i, tv in enumerate(task_vectors)]
    sources = [SafetensorsFile(p) for p in paths]
    staged = StagedTaskVectorSet(sources, sources[0].keys(), torch.device("cpu"))
    with pytest.raises(ValueError, match="t1.safetensors: tensor 'visual.proj.bias' contains NaN"):
        staged.tensors("visual.proj.bias")


def test_truncated_file_is_one_clear_error(tmp_path):
    sources, keys, _ = _sources(tmp_path, num_tasks=2)
    data = sources[1].path.read_bytes()
    sources[1].path.write_bytes(data[:-8])
    staged = StagedTaskVectorSet(sources, keys, torch.device("cpu"))
    with pytest.raises(ValueError, match="cannot read tensor"):
        for key in keys:
            staged.tensors(key)


def test_switch(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("WEAVING_STAGING", raising=False)
    assert type(make_task_set([], [], cpu)) is TaskVectorSet  # auto: plain on the CPU
    monkeypatch.setenv("WEAVING_STAGING", "1")
    assert isinstance(make_task_set([], [], cpu), StagedTaskVectorSet)
    monkeypatch.setenv("WEAVING_STAGING", "yes")
    with pytest.raises(ValueError, match="WEAVING_STAGING='yes': use auto, 1 or 0"):
        make_task_set([], [], cpu)
