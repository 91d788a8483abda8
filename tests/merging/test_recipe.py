import pytest
import torch
import yaml
from safetensors.torch import save_file

import weaving
from weaving.io.loader import open_checkpoint
from weaving.merging.recipe import parse_recipe, run_recipe

from ..formats.llm import finetunes, llama_like, write_hf_folder


@pytest.fixture
def models(tmp_path):
    """A pretrained 'LLM' as a sharded HF folder, three fine-tunes (two folders, one file)."""
    base = llama_like()
    tuned = finetunes(base)
    base_dir = write_hf_folder(tmp_path / "base", base, shards=3)
    paths = [str(write_hf_folder(tmp_path / f"ft{i}", t, shards=2, config=False)) for i, t in enumerate(tuned[:2])]
    save_file(tuned[2], str(tmp_path / "ft2.safetensors"))
    paths.append(str(tmp_path / "ft2.safetensors"))
    return tmp_path, str(base_dir), paths, base, [{k: t[k] - base[k] for k in base} for t in tuned]


def read(path):
    source = open_checkpoint(path)
    return {key: source.get(key) for key in source.keys()}


@pytest.mark.parametrize("method, args", [("task_arithmetic", {}), ("ties", {"k": 0.3}), ("pcb", {"ratio": 0.2}),
                                          ("dare_ties", {"p": 0.3})])
def test_sharded_folders_merge_bit_identically_to_the_same_tensors_in_memory(models, method, args):
    tmp, base_dir, paths, base, tvs = models
    recipe = {"pretrained": base_dir, "finetuned": paths, "method": method, "method_args": args, "lam": 0.8,
              "output": str(tmp / "out"), "out_shard_size": 400, "seed": 5}
    out = run_recipe(recipe)
    expected = weaving.merge(base, tvs, method, lam=0.8, seed=5, **args)
    got = read(out)
    assert sorted(got) == sorted(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    assert (out / "config.json").exists() and (out / "model.safetensors.index.json").exists()


def test_weights_scale_each_task_vector_and_weaving_with_a_grid(models):
    tmp, base_dir, paths, base, tvs = models
    recipe = {"pretrained": base_dir, "finetuned": [{"model": paths[0], "weight": 0.5}, paths[1],
                                                    {"model": paths[2], "weight": 2}],
              "method": "ties", "lambdas": [0.5, 1.0], "grid": {"k": [0.2, 0.4]}, "pooling": "mean",
              "output": str(tmp / "woven.safetensors"), "dtype": "bfloat16"}
    out = run_recipe(recipe)
    weighted = [{k: w * v for k, v in tv.items()} for w, tv in zip([0.5, 1.0, 2.0], tvs)]
    expected = weaving.weave(base, weighted, "ties", [0.5, 1.0], grid={"k": [0.2, 0.4]})
    got = read(out)
    assert all(got[k].dtype == torch.bfloat16 for k in got)
    for key in expected:  # the same float32 merge, rounded once to bf16 (weaving.weave rounds to the base's fp32)
        assert torch.equal(got[key], expected[key].to(torch.bfloat16))


def test_recipe_from_a_yaml_file_with_task_vectors(models):
    tmp, base_dir, paths, base, tvs = models
    for i, tv in enumerate(tvs):
        save_file(tv, str(tmp / f"tv{i}.safetensors"))
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump({"pretrained": base_dir, "task_vectors": [str(tmp / f"tv{i}.safetensors") for i in range(3)],
                                    "method": "breadcrumbs_ties", "method_args": {"beta": 0.5}, "output": str(tmp / "m")}))
    got = read(run_recipe(path))
    expected = weaving.merge(base, tvs, "breadcrumbs_ties", beta=0.5)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


BAD = [
    ({"colour": "red"}, "Option 'colour' is not accepted"),
    ({"finetuned": [{"model": "A", "weight": "heavy"}]}, "weight: expected float, got heavy"),
    ({"finetuned": [{"model": "A", "weigth": 1}]}, "weigth"),
    ({"method_args": {"beta": 0.1}}, "has no hyper-parameter 'beta'"),
    ({"lambdas": [1.0], "grid": {"beta": [0.1, 0.2]}}, "has no hyper-parameter 'beta'"),
    ({"lambdas": [1.0], "grid": {"k": []}}, "grid over 'k' is empty"),
    ({"lambdas": [1.0], "pooling": "median"}, "unknown pooling 'median'"),
    ({"lambda": [1.0]}, "Option 'lambda' is not accepted"),
    ({"lam": 0.5, "lambdas": [1.0]}, "not both"),
    ({"dtype": "int8"}, "dtype"),
    ({"seed": 0.5}, "--seed: expected int, got 0.5"),
    ({"method": {"ties": {"k": 0.2}}}, "a nested recipe .* is no longer read; write its keys flat"),
    ({"inputs": {"pretrained": "B", "finetuned": ["A"]}}, "a nested recipe .* is no longer read; write its keys flat"),
    ({"weaving": {"lambdas": [1.0]}}, "a nested recipe .* is no longer read; write its keys flat"),
    ({"finetuned": ["nowhere/at-all/x"]}, "no such file or folder"),
]


@pytest.mark.parametrize("change, message", BAD)
def test_bad_recipes_are_one_line_errors_and_write_nothing(models, change, message):
    tmp, base_dir, paths, _, _ = models
    recipe = {"pretrained": base_dir, "finetuned": paths, "method": "ties", "output": str(tmp / "out")}
    if "finetuned" in change:
        change = {"finetuned": [paths[0] if e == "A" else e if isinstance(e, str) else {**e, "model": paths[0]}
                                for e in change["finetuned"]]}
    with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
        run_recipe({**recipe, **change})
    assert "\n" not in str(error.value)
    assert not (tmp / "out").exists() and not [p for p in tmp.iterdir() if p.name.startswith(".")]


def test_hub_id_while_offline_and_missing_shard_tensor(models, monkeypatch):
    tmp, base_dir, paths, _, _ = models
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    recipe = {"pretrained": base_dir, "finetuned": ["weaving-tests/surely-not-cached-model"],
              "method": "ties", "output": str(tmp / "out")}
    with pytest.raises(ValueError, match="not in the local cache and HF_HUB_OFFLINE is set"):
        run_recipe(recipe)
    (tmp / "ft0" / "model-00002-of-00002.safetensors").unlink()
    save_file({"lm_head.weight": torch.zeros(11, 8)}, str(tmp / "ft0" / "model-00002-of-00002.safetensors"))
    with pytest.raises(ValueError, match="has no tensor .* the checkpoint is incomplete"):
        run_recipe({**recipe, "finetuned": paths})
    assert not (tmp / "out").exists()


def test_parse_recipe_defaults():
    recipe = parse_recipe({"pretrained": "b", "finetuned": "a", "method": "task_arithmetic", "output": "o.safetensors"})
    assert (recipe.models[0].model, recipe.models[0].weight, recipe.scale, recipe.weaving, recipe.seed) == ("a", 1.0, 1.0, None, 0)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_the_pretrained_is_read_once_per_key_and_pass(models, monkeypatch, method):
    """Each fine-tuned model subtracts the pretrained tensor, and the output adds it back: one read of it
    per key and pass serves them all (ties makes 4 passes: two for its thresholds, its sign, the merge)."""
    from weaving.io import safetensors as sharded

    tmp, base_dir, paths, base, _ = models
    reads: dict[str, int] = {}

    def counting(original):
        def read(self, key):
            if str(self.path).startswith(base_dir):
                reads[key] = reads.get(key, 0) + 1
            return original(self, key)
        return read

    for name in ("get", "view"):  # a plain read or a memory map of the tensor's bytes
        monkeypatch.setattr(sharded.SafetensorsFile, name, counting(getattr(sharded.SafetensorsFile, name)))
    run_recipe({"pretrained": base_dir, "finetuned": paths, "method": method, "output": str(tmp / "o")})
    passes = 1 if method == "task_arithmetic" else 4
    assert reads == {key: passes for key in base}


def test_the_progress_bar_of_a_streamed_merge_ends_full(models, capsys):
    tmp, base_dir, paths, base, _ = models
    run_recipe({"pretrained": base_dir, "finetuned": paths, "method": "ties", "output": str(tmp / "o")},
               progress=True)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    assert f"{len(base)}/{len(base)}" in bar[-1]


def test_recipe_file_numbers_read_as_yaml_1_2(tmp_path):
    """`lambdas: 1:3:1` is a range (YAML 1.1: the base-60 integer 3781); `lam: 1e-3`, `weight: 1e39` numbers."""
    path = tmp_path / "recipe.yaml"
    path.write_text("pretrained: B\nfinetuned: [{model: A, weight: 1e39}]\nmethod: ties\n"
                    "lambdas: 1:3:1\noutput: out.safetensors\n")
    recipe = parse_recipe(path)
    assert recipe.weaving["lambdas"] == "1:3:1" and recipe.models[0].weight == 1e39
    assert weaving.parse_lambdas(recipe.weaving["lambdas"]) == [1.0, 2.0, 3.0]
    path.write_text("pretrained: B\nfinetuned: A\nmethod: ties\nlam: 1e-3\noutput: out.safetensors\n")
    assert parse_recipe(path).lam == 1e-3 and [m.model for m in parse_recipe(path).models] == ["A"]
    with pytest.raises(ValueError, match="--lam: expected float, got 1:3:1"):
        parse_recipe({"pretrained": "B", "finetuned": ["A"], "method": "ties", "lam": "1:3:1", "output": "out.safetensors"})
