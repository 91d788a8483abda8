"""Bad inputs: one-line ValueError / FileNotFoundError naming the file and key."""

import pytest
import torch
from safetensors.torch import save_file

import weaving
from weaving.io.safetensors import read_metadata
from weaving.merging.task_vectors import load_task_vector, save_task_vector, task_vector_from_finetuned


def test_round_trip_with_metadata(tmp_path):
    path = tmp_path / "tv" / "mnist.safetensors"
    save_task_vector(path, {"visual.w": torch.ones(2, 2)}, {"task": "mnist", "steps": 10})
    assert torch.equal(load_task_vector(path)["visual.w"], torch.ones(2, 2))
    assert read_metadata(path) == {"task": "mnist", "steps": "10"}
    assert [p.name for p in path.parent.iterdir()] == ["mnist.safetensors"]  # no temporary file left


def test_finetuned_minus_pretrained():
    pre = {"w": torch.ones(3), "ids": torch.arange(3)}
    ft = {"w": torch.tensor([1.5, 1.0, 0.0]), "ids": torch.arange(3)}
    assert torch.equal(task_vector_from_finetuned(pre, ft)["w"], torch.tensor([0.5, 0.0, -1.0]))
    assert "ids" not in task_vector_from_finetuned(pre, ft)


def test_mismatched_keys_name_the_input_and_key(inputs):
    pretrained, tvs = inputs
    del tvs[1]["visual.proj.bias"]
    with pytest.raises(ValueError, match=r"task_vectors\[1\]: missing key 'visual.proj.bias'"):
        weaving.merge(pretrained, tvs, "ties")


def test_mismatched_shapes(inputs):
    pretrained, tvs = inputs
    tvs[2]["visual.proj.weight"] = torch.zeros(5, 6)
    with pytest.raises(ValueError, match=r"task_vectors\[2\]: tensor 'visual.proj.weight' has shape \[5, 6\]"):
        weaving.merge(pretrained, tvs, "task_arithmetic")


def test_pretrained_shape_mismatch(inputs):
    pretrained, tvs = inputs
    pretrained["visual.proj.bias"] = torch.zeros(7)
    with pytest.raises(ValueError, match=r"pretrained: tensor 'visual.proj.bias' has shape"):
        weaving.merge(pretrained, tvs, "task_arithmetic")


def test_non_floating_tensor(inputs):
    pretrained, tvs = inputs
    tvs[0]["visual.proj.bias"] = torch.zeros(6, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"task_vectors\[0\]: tensor 'visual.proj.bias' has dtype torch.int64"):
        weaving.merge(pretrained, tvs, "ties")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "pcb"])
def test_nan_and_inf(inputs, bad, method):
    pretrained, tvs = inputs
    tvs[1]["visual.proj.weight"][0, 0] = bad
    with pytest.raises(ValueError, match=r"task_vectors\[1\]: tensor 'visual.proj.weight' contains NaN or Inf"):
        weaving.merge(pretrained, tvs, method)


def test_unknown_method_lists_the_known_ones(inputs):
    with pytest.raises(ValueError, match=r"unknown merge method 'tie'; known methods: breadcrumbs, breadcrumbs_ties, dare, dare_ties, iso_c"):
        weaving.merge(*inputs, "tie")


def test_unknown_hyper_parameter(inputs):
    with pytest.raises(ValueError, match=r"method 'ties' has no hyper-parameter 'p'; its hyper-parameters: k"):
        weaving.merge(*inputs, "ties", p=0.3)


def test_missing_and_corrupt_files(tmp_path, inputs):
    pretrained, tvs = inputs
    with pytest.raises(FileNotFoundError, match="nope.safetensors: no such file"):
        weaving.merge(pretrained, [str(tmp_path / "nope.safetensors")], "ties")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="corrupt.safetensors: not a readable safetensors file"):
        weaving.merge(pretrained, [str(corrupt)], "ties")


def test_no_task_vectors(inputs):
    with pytest.raises(ValueError, match="no task vectors"):
        weaving.merge(inputs[0], [], "ties")


def test_messages_are_one_line(inputs, tmp_path):
    pretrained, tvs = inputs
    save_file({"x": torch.ones(1)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError) as info:
        weaving.merge(pretrained, [tvs[0], str(tmp_path / "other.safetensors")], "ties")
    assert "\n" not in str(info.value) and "other.safetensors" in str(info.value)
