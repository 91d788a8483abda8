import pytest
import torch
from safetensors.torch import save_file

from weaving.io.loader import open_checkpoint
from weaving.merging import engine, summed
from weaving.merging.recipe import run_recipe

from ..formats.llm import finetunes, llama_like, write_hf_folder


def read(path):
    source = open_checkpoint(path)
    return {key: source.get(key) for key in source.keys()}


def bits(tensor):
    return tensor.view(torch.int16) if tensor.element_size() == 2 else tensor


def both_paths(recipe, monkeypatch, tmp_path):
    """The recipe's output through the blocked sum, and through the plain tensor-by-tensor path."""
    calls = []
    original = summed.sum_into
    monkeypatch.setattr(summed, "sum_into", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(summed, "SUM_BLOCK", 7)  # many blocks and a ragged last one per tensor
    fast = read(run_recipe({**recipe, "output": str(tmp_path / "fast")}))
    assert calls, "the blocked sum did not run"
    with monkeypatch.context() as plain:
        plain.setattr(engine, "summed_merger", lambda *args: None)
        slow = read(run_recipe({**recipe, "output": str(tmp_path / "plain")}))
    return fast, slow


@pytest.fixture
def bf16_models(tmp_path):
    base = llama_like(dtype=torch.bfloat16)
    tuned = finetunes(base)
    tuned[2] = {k: v.float() for k, v in tuned[2].items()}  # one fine-tune stored in float32
    base_dir = write_hf_folder(tmp_path / "base", base, shards=2)
    paths = [str(write_hf_folder(tmp_path / f"ft{i}", t, shards=2, config=False)) for i, t in enumerate(tuned)]
    return str(base_dir), paths


@pytest.mark.parametrize("lam, dtype", [(1.0, None), (0.7, "float16"), (0.35, "float32")])
def test_the_blocked_sum_is_bit_identical_to_the_plain_path(bf16_models, monkeypatch, tmp_path, lam, dtype):
    base_dir, paths = bf16_models
    recipe = {"pretrained": base_dir, "finetuned": [{"model": paths[0], "weight": 0.5}, paths[1],
                                                    {"model": paths[2], "weight": 2.0}],
              "method": "task_arithmetic", "lam": lam, **({"dtype": dtype} if dtype else {})}
    fast, slow = both_paths(recipe, monkeypatch, tmp_path)
    assert sorted(fast) == sorted(slow)
    for key in slow:
        assert fast[key].dtype == slow[key].dtype and torch.equal(bits(fast[key]), bits(slow[key])), key


def test_stored_task_vectors_take_the_blocked_sum_too(tmp_path, monkeypatch):
    base = llama_like()
    files = []
    for i, tuned in enumerate(finetunes(base)):
        files.append(str(tmp_path / f"tv{i}.safetensors"))
        save_file({k: (v - base[k]).to(torch.bfloat16) for k, v in tuned.items()}, files[-1])
    save_file(base, str(tmp_path / "base.safetensors"))
    recipe = {"pretrained": str(tmp_path / "base.safetensors"),
              "task_vectors": [files[0], {"model": files[1], "weight": -0.25}, files[2]],
              "method": "task_arithmetic", "lam": 0.9}
    fast, slow = both_paths(recipe, monkeypatch, tmp_path)
    assert all(torch.equal(fast[key], slow[key]) for key in slow)
    expected = base["lm_head.weight"] + 0.9 * sum(w * read(f)["lm_head.weight"].float() for w, f in zip([1, -0.25, 1], files))
    assert torch.allclose(fast["lm_head.weight"], expected, atol=1e-6)


def test_a_nan_in_a_finetune_is_named_as_on_the_plain_path(bf16_models, tmp_path):
    base_dir, paths = bf16_models
    bad = read(paths[1])
    bad["model.norm.weight"][3] = float("nan")
    save_file(bad, str(tmp_path / "bad.safetensors"))
    recipe = {"pretrained": base_dir, "finetuned": [paths[0], str(tmp_path / "bad.safetensors")],
              "method": "task_arithmetic", "output": str(tmp_path / "out")}
    with pytest.raises(ValueError, match=r"bad\.safetensors: tensor 'model.norm.weight' contains NaN or Inf"):
        run_recipe(recipe)
    assert not (tmp_path / "out").exists()


def test_sum_into_reports_a_non_finite_result():
    theta = torch.zeros(10)
    out = torch.empty(10)
    assert summed.sum_into(out, theta, [torch.ones(10), torch.ones(10)], [True, False], [None, 2.0], 1.0, torch.float32, 4)
    assert torch.equal(out, torch.full((10,), 3.0))
    stored = torch.ones(10)
    stored[9] = float("inf")
    assert not summed.sum_into(out, theta, [stored, -stored], [False, False], [None, None], 1.0, torch.float32, 4)


def test_a_difference_from_another_checkpoint_is_not_seen_through(tmp_path):
    from weaving.merging.sources import DifferenceSource, ScaledSource

    base = llama_like()
    save_file(base, str(tmp_path / "a.safetensors"))
    a, b = open_checkpoint(tmp_path / "a.safetensors"), open_checkpoint(tmp_path / "a.safetensors")
    assert summed.term_of(DifferenceSource(a, b), a) is None
    assert summed.term_of(ScaledSource(ScaledSource(a, 2.0), 2.0), a) is None
    assert summed.term_of(ScaledSource(DifferenceSource(a, b), 3.0), b) == summed.Term(a, True, 3.0)
