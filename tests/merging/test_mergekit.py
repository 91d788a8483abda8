"""mergekit configuration files run as they are, with mergekit's rules: each method's output equals a float64
reference written from mergekit's definitions (`merge_methods/generalized_task_arithmetic.py`, `sparsify.py`,
mergekit 0.1.5), and what weaving does not do is refused in one line."""

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import weaving
from weaving.merging.mergekit import recipe_from_mergekit
from weaving.merging.methods.generalized import outliers_mask
from weaving.merging.recipe import run_recipe
from weaving.merging.registry import derive_seed

# a 2-D tensor of 320 entries (gamma 0.01 drops 3), a matrix, a vector of 16 (gamma 0.01 drops none) and a
# vector of 3 (density 0.3 keeps int(0.9) = 0 entries, mergekit's magnitude keeps one)
SHAPES = {"embed.weight": (40, 8), "layers.0.mlp.weight": (12, 10), "layers.0.norm.weight": (16,), "head.bias": (3,)}


@pytest.fixture
def models(tmp_path) -> dict[str, Path]:
    g = torch.Generator().manual_seed(3)
    base = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in SHAPES.items()}
    paths = {"base": tmp_path / "base.safetensors"}
    save_file(base, paths["base"])
    for name in ("a", "b", "c"):
        paths[name] = tmp_path / f"{name}.safetensors"
        save_file({k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in base.items()},
                  paths[name])
    return paths


def merge_file(tmp_path: Path, config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write `config` as a mergekit YAML file, read it back and run it (output next to it)."""
    file = tmp_path / "mergekit.yml"
    file.write_text(yaml.safe_dump(config))
    recipe = {**recipe_from_mergekit(yaml.safe_load(file.read_text())), "output": str(tmp_path / "out.safetensors"), "overwrite": True,
              "seed": seed}
    return load_file(run_recipe(recipe))


def reference(method: str, base: dict, finetuned: list[dict], weights: list[float], densities: list[float],
              gammas: list[float], normalize: bool, rescale: bool, lam: float = 1.0,
              keep: dict[str, list[torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
    """mergekit's generalized task arithmetic, tensor by tensor, from its definitions: delta = model - base;
    sparsify each delta (ties: `magnitude`, the max(1, int(density*n)) largest |x|; breadcrumbs: `magnitude_outliers`,
    positions n_bot .. n_bot + int(density*n) - 1 of the ascending |x| order, n_bot = max(0, n - int(density*n) -
    int(gamma*n)); dare_ties: the `keep` mask given), with rescale times |delta|_1 / |sparse|_1; weight; sum
    (ties family: only the entries whose sign is that of the weighted sum, +1 where the sum is >= 0); with
    normalize divide by the sum of the (agreeing) weights, 1 where that is 0; times lambda; add to base."""
    out = {}
    for key, b in base.items():
        n = b.numel()
        deltas = []
        for t, model in enumerate(finetuned):
            delta = (model[key] - b).reshape(-1)
            density = densities[t]
            if method != "task_arithmetic" and density < 1:
                mask = torch.zeros(n, dtype=torch.float64)
                if method == "ties":
                    order = sorted(range(n), key=lambda i: (-abs(float(delta[i])), i))
                    mask[order[:max(1, int(density * n))]] = 1
                elif method.startswith("breadcrumbs"):
                    target = int(density * n)
                    bottom = max(0, n - target - int(gammas[t] * n))
                    order = sorted(range(n), key=lambda i: (abs(float(delta[i])), -i))
                    mask[order[bottom:bottom + target]] = 1
                else:
                    mask = keep[key][t].to(torch.float64)
                sparse = delta * mask
                before, after = delta.abs().sum(), sparse.abs().sum()
                if rescale and before >= 1e-7 and after >= 1e-7:
                    sparse = sparse * (before / after)
                delta = sparse
            deltas.append(delta * weights[t])
        mixed, divisor = [], []
        for i in range(n):
            column = [float(d[i]) for d in deltas]
            if method in ("ties", "dare_ties", "breadcrumbs_ties"):
                sign = 1 if sum(column) >= 0 else -1
                agree = [t for t, v in enumerate(column) if (v > 0 and sign > 0) or (v < 0 and sign < 0)]
                mixed.append(sum(column[t] for t in agree))
                total = sum(weights[t] for t in agree)
                divisor.append(total if total != 0 else 1.0)
            else:
                mixed.append(sum(column))
                total = sum(weights)
                divisor.append(total if abs(total) >= 1e-8 else 1.0)
        merged = torch.tensor([m / d if normalize else m for m, d in zip(mixed, divisor)], dtype=torch.float64)
        out[key] = b + lam * merged.reshape(b.shape)
    return out


def loaded(models: dict[str, Path]) -> tuple[dict, list[dict]]:
    return load_file(models["base"]), [load_file(models[name]) for name in ("a", "b", "c")]


def entries(models: dict[str, Path], parameters: list[dict]) -> list[dict]:
    return [{"model": str(models[name]), "parameters": p} for name, p in zip(("a", "b", "c"), parameters)]


def assert_close(merged: dict, expected: dict) -> None:
    assert merged.keys() == expected.keys()
    for key in expected:
        assert merged[key].dtype == torch.float64
        torch.testing.assert_close(merged[key], expected[key], rtol=1e-12, atol=1e-12)


WEIGHTS = [0.6, 0.3, 1.1]
DENSITIES = [0.5, 0.3, 0.8]


def test_task_arithmetic_weights_each_model_and_normalize_divides_by_their_sum(tmp_path, models):
    base, finetuned = loaded(models)
    config = {"merge_method": "task_arithmetic", "base_model": str(models["base"]),
              "models": [{"model": str(models["base"])}] + entries(models, [{"weight": w} for w in WEIGHTS])}
    assert_close(merge_file(tmp_path, config), reference("task_arithmetic", base, finetuned, WEIGHTS, [1] * 3, [], False, False))
    config["parameters"] = {"normalize": True, "lambda": 0.7}
    assert_close(merge_file(tmp_path, config),
                 reference("task_arithmetic", base, finetuned, WEIGHTS, [1] * 3, [], True, False, lam=0.7))


@pytest.mark.parametrize("rescale", [False, True])
def test_ties_per_model_densities_per_tensor_with_normalize_by_default(tmp_path, models, rescale):
    base, finetuned = loaded(models)
    parameters = [{"weight": w, "density": d} for w, d in zip(WEIGHTS, DENSITIES)]
    del parameters[2]["density"]  # the top-level density
    config = {"merge_method": "ties", "base_model": str(models["base"]), "models": entries(models, parameters),
              "parameters": {"density": 0.8, "rescale": rescale, "int8_mask": True}}
    expected = reference("ties", base, finetuned, WEIGHTS, DENSITIES, [], True, rescale)
    merged = merge_file(tmp_path, config)
    assert_close(merged, expected)
    assert int((merged["head.bias"] != base["head.bias"]).sum()) >= 1  # n=3 at density 0.3 keeps max(1, 0) = 1


def test_ties_normalize_false(tmp_path, models):
    base, finetuned = loaded(models)
    config = {"merge_method": "ties", "base_model": str(models["base"]),
              "models": entries(models, [{"weight": w, "density": d} for w, d in zip(WEIGHTS, DENSITIES)]),
              "parameters": {"normalize": False}}
    assert_close(merge_file(tmp_path, config), reference("ties", base, finetuned, WEIGHTS, DENSITIES, [], False, False))


@pytest.mark.parametrize("rescale", [True, False])
def test_dare_ties_with_the_same_drop_masks(tmp_path, models, rescale):
    """The drop masks are weaving's seeded DARE draws (each entry kept with probability density, from the
    stream of (seed, tensor, task)); the reference is given the same masks, drawn here from that stream."""
    base, finetuned = loaded(models)
    seed = 5
    config = {"merge_method": "dare_ties", "base_model": str(models["base"]),
              "models": entries(models, [{"weight": w, "density": d} for w, d in zip(WEIGHTS, DENSITIES)])}
    if not rescale:
        config["parameters"] = {"rescale": False}
    keep = {}
    for key, value in base.items():
        keep[key] = []
        for task, density in enumerate(DENSITIES):
            generator = torch.Generator().manual_seed(derive_seed(derive_seed(seed, key), "dare", task))
            keep[key].append(torch.rand(value.numel(), generator=generator, dtype=torch.float64) >= 1.0 - density)
    expected = reference("dare_ties", base, finetuned, WEIGHTS, DENSITIES, [], False, rescale, keep=keep)
    assert_close(merge_file(tmp_path, config, seed=seed), expected)
    kept = float(sum(m.sum() for masks in keep.values() for m in masks[:1])) / sum(v.numel() for v in base.values())
    assert 0.35 < kept < 0.65  # density 0.5 of the first model


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
def test_breadcrumbs_drop_the_top_gamma_then_keep_density_per_tensor(tmp_path, models, method):
    base, finetuned = loaded(models)
    gammas = [0.05, 0.01, 0.1]
    config = {"merge_method": method, "base_model": str(models["base"]),
              "models": entries(models, [{"weight": w, "density": d, "gamma": g}
                                         for w, d, g in zip(WEIGHTS, DENSITIES, gammas)])}
    del config["models"][1]["parameters"]["gamma"]  # mergekit's default, 0.01
    assert_close(merge_file(tmp_path, config), reference(method, base, finetuned, WEIGHTS, DENSITIES, gammas, False, False))
    config["parameters"] = {"normalize": True, "rescale": True}
    assert_close(merge_file(tmp_path, config), reference(method, base, finetuned, WEIGHTS, DENSITIES, gammas, True, True))


def test_outliers_mask_gives_up_top_entries_to_reach_the_density():
    # n=10, density 0.9 keeps 9 and gamma 0.3 would drop 3: only 1 is dropped (mergekit's n_bot = max(0, ...))
    flat = torch.arange(1.0, 11.0)
    assert outliers_mask(flat, 0.9, 0.3).tolist() == [True] * 9 + [False]
    # gamma 0.01 drops int(0.1) = 0: density 0.5 keeps the 5 largest
    assert outliers_mask(flat, 0.5, 0.01).tolist() == [False] * 5 + [True] * 5


def test_dtype_is_the_compute_dtype_and_out_dtype_the_output(tmp_path, models):
    config = {"merge_method": "ties", "base_model": str(models["base"]), "dtype": "float32", "out_dtype": "bfloat16",
              "models": entries(models, [{"weight": w, "density": d} for w, d in zip(WEIGHTS, DENSITIES)])}
    recipe = recipe_from_mergekit(config)
    assert recipe["dtype"] == "bfloat16" and recipe["method_args"]["compute_dtype"] == "float32"
    del config["out_dtype"]
    merged = merge_file(tmp_path, config)  # float64 models merged in float32, written in float32
    base, finetuned = loaded(models)
    expected = reference("ties", base, finetuned, WEIGHTS, DENSITIES, [], True, False)
    for key, value in merged.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, expected[key].float(), rtol=1e-6, atol=1e-6)
    assert "compute_dtype" not in recipe_from_mergekit({**config, "dtype": None})["method_args"]


def mergekit_in_dtype(method: str, base: dict, finetuned: list[dict], weights: list[float], densities: list[float],
                      normalize: bool, rescale: bool, lam: float = 1.0) -> dict[str, torch.Tensor]:
    """mergekit's tensor operations in the models' own (half) precision, op for op from its definitions
    (`get_mask`, `GeneralizedTaskArithmeticMerge.merge_group`, `sparsify.magnitude`: its argsort, which is
    not stable and decides among the many equal bfloat16 magnitudes)."""
    out = {}
    for key, b in base.items():
        deltas = []
        for t, model in enumerate(finetuned):
            delta = model[key] - b  # rounded to the models' dtype, as mergekit's subtraction
            if method == "ties" and densities[t] < 1:
                k = max(1, int(densities[t] * delta.numel()))
                mask = torch.zeros(delta.numel(), dtype=delta.dtype)
                mask[torch.argsort(delta.abs().reshape(-1).float(), descending=True)[:k]] = 1  # mergekit's own call
                masked = delta * mask.reshape(delta.shape)
                if rescale:
                    before, after = delta.abs().sum(), masked.abs().sum()
                    masked = masked * (before / after) if before >= 1e-7 and after >= 1e-7 else masked
                delta = masked
            deltas.append(delta)
        stacked = torch.stack(deltas)
        w = torch.tensor(weights, dtype=stacked.dtype).view((-1,) + (1,) * b.dim())
        stacked = stacked * w
        if method == "task_arithmetic":
            mixed, divisor = stacked.sum(dim=0), w.sum(dim=0)
        else:
            sign = stacked.sign()
            majority = (stacked.sum(dim=0) >= 0).to(stacked.dtype) * 2 - 1
            mask = (sign == majority).to(stacked.dtype)
            mixed = (stacked * mask).sum(dim=0)
            divisor = (w * mask).sum(dim=0)
            divisor[divisor == 0] = 1
        mixed = mixed / divisor if normalize else mixed
        out[key] = (b + (mixed * lam if lam != 1 else mixed)).to(b.dtype)
    return out


@pytest.mark.parametrize("method, rescale, lam", [("ties", False, 1.0), ("ties", True, 0.8),
                                                  ("task_arithmetic", False, 0.9)])
def test_bfloat16_models_are_merged_in_bfloat16_as_mergekit_does(tmp_path, models, method, rescale, lam):
    """Models stored in bfloat16 and no dtype: mergekit computes the deltas, masks, weights, sums and its
    lambda in bfloat16, and so do mergekit's methods here (compute_dtype "inputs"), selecting with
    mergekit's own sort call: the same output bits, where float32 arithmetic would keep other entries at the
    density threshold (and round the lambda-scaled sum once instead of twice)."""
    base, finetuned = loaded(models)
    half = {}
    for name, tensors in [("base", base), *zip(("a", "b", "c"), finetuned)]:
        half[name] = tmp_path / f"{name}-bf16.safetensors"
        save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, half[name])
    config = {"merge_method": method, "base_model": str(half["base"]),
              "parameters": {"lambda": lam, **({"rescale": rescale} if method == "ties" else {})},
              "models": entries(half, [{"weight": w, "density": d} for w, d in zip(WEIGHTS, DENSITIES)])}
    merged = merge_file(tmp_path, config)
    expected = mergekit_in_dtype(method, load_file(half["base"]), [load_file(half[n]) for n in ("a", "b", "c")],
                                 WEIGHTS, DENSITIES, method == "ties", rescale, lam)
    for key, value in expected.items():
        assert merged[key].dtype == torch.bfloat16
        assert torch.equal(merged[key], value), key
    config["dtype"] = "float32"  # mergekit computes in float32 then (and writes float32)
    wide = merge_file(tmp_path, config)
    assert any(not torch.equal(wide[k].to(torch.bfloat16), expected[k]) for k in expected)


def test_the_recipe_it_makes():
    config = {"merge_method": "breadcrumbs_ties", "base_model": "org/base",
              "models": [{"model": "org/base", "parameters": {"weight": 9}}, {"model": "org/a", "parameters": {"weight": 0.5}},
                         {"model": "org/b", "parameters": {"weight": 0.5, "density": 0.4, "gamma": 0.02}}],
              "parameters": {"density": 0.7, "lambda": 1.2, "normalize": True}, "tokenizer_source": "base"}
    assert recipe_from_mergekit(config) == {
        "pretrained": "org/base", "finetuned": ["org/a", "org/b"], "method": "mergekit_breadcrumbs_ties",
        "method_args": {"weights": [0.5, 0.5], "normalize": True, "densities": [0.7, 0.4], "gammas": [0.01, 0.02],
                        "scale": 1.2}}


BASE = {"merge_method": "ties", "base_model": "base", "models": [{"model": "a", "parameters": {"weight": 1.0}}]}


@pytest.mark.parametrize("change, message", [
    ({"merge_method": "slerp"}, "merge_method 'slerp' is not supported; weaving runs mergekit's task_arithmetic, ties"),
    ({"slices": [{"sources": []}]}, "slices (layer ranges) are not supported"),
    ({"modules": {}}, "modules are not supported"),
    ({"merge_method": "ties", "base_model": None}, "ties needs base_model"),
    ({"foo": 1}, "unknown key 'foo'"),
    ({"models": [{"model": "a", "parameters": {"weight": [0.1, 0.9]}}]}, "models[0] weight: gradients and filtered values"),
    ({"models": [{"model": "a", "parameters": {"weight": [{"filter": "mlp", "value": 0.5}]}}]}, "gradients and filtered"),
    ({"models": [{"model": "a", "parameters": {"density": 0.5}}]}, "models[0] (a) has no weight"),
    ({"models": [{"model": "a", "parameters": {"weight": 1, "gamma": 0.1}}]}, "models[0].parameters.gamma is not a parameter of mergekit's ties"),
    ({"models": [{"model": "a", "parameters": {"weight": 1, "normalize": True}}]}, "merge-wide parameter"),
    ({"models": [{"model": "a", "parameters": {"weight": 1, "density": 1.5}}]}, "density is the kept fraction"),
    ({"models": [{"model": "a+lora", "parameters": {"weight": 1}}]}, "LoRA references"),
    ({"models": [{"model": "a", "parameters": {"weight": 1}, "layer_range": [0, 4]}]}, "models[0]: unknown key 'layer_range'"),
    ({"models": [{"model": "base"}]}, "models lists only the base model"),
    ({"models": []}, "models must be a non-empty list"),
    ({"parameters": {"normalize": "yes"}}, "parameters.normalize must be true or false"),
    ({"parameters": {"epsilon": 0.1}}, "parameters.epsilon is not a parameter of mergekit's ties"),
    ({"dtype": "float64"}, "dtype 'float64' is not supported"),
    ({"out_dtype": "int64"}, "out_dtype 'int64' is not supported"),
    ({"tokenizer_source": "union"}, "tokenizer_source 'union' is not supported"),
    ({"tokenizer": {"source": "union"}}, "tokenizer is not supported"),
    ({"chat_template": "chatml"}, "chat_template is not supported"),
])
def test_refusals_are_one_line(change, message):
    with pytest.raises(ValueError) as error:
        recipe_from_mergekit({**BASE, **change})
    assert message in str(error.value)
    assert str(error.value).startswith("mergekit config: ") and "\n" not in str(error.value)


def test_per_model_lists_must_match_the_task_vectors():
    pre = {"w": torch.zeros(4)}
    tvs = [{"w": torch.ones(4)}, {"w": -torch.ones(4)}]
    with pytest.raises(ValueError, match="weights holds 3 numbers for 2 task vectors"):
        weaving.merge(pre, tvs, "mergekit_ties", weights=[1, 1, 1])
    with pytest.raises(ValueError, match="must be a list of finite numbers, one per task"):
        weaving.merge(pre, tvs, "mergekit_ties", densities=0.5)


def test_the_documented_example_is_read():
    """docs/recipes.md's mergekit.yml example translates (its models need not exist to be read)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "recipes.md").read_text()
    block = text.split("# mergekit.yml\n", 1)[1].split("```", 1)[0]
    recipe = recipe_from_mergekit(yaml.safe_load(block))
    assert recipe["method"] == "mergekit_ties"
    assert recipe["method_args"] == {"weights": [0.7, 0.3], "normalize": True, "densities": [0.5, 0.6],
                                     "compute_dtype": "bfloat16"}
    assert recipe["finetuned"] == ["./llama-math", "./llama-code"] and recipe["dtype"] == "bfloat16"


CUDA_CASES = {"ties": {"k": 0.3, "per_tensor": True}, "breadcrumbs": {"beta": 0.3, "gamma": 0.1, "per_tensor": True},
              "breadcrumbs_ties": {"beta": 0.3, "gamma": 0.1, "per_tensor": True},
              "mergekit_task_arithmetic": {"weights": [0.5, 1.0, 2.0], "normalize": True},
              "mergekit_ties": {"weights": [0.5, 1.0, 2.0], "densities": [0.3, 0.5, 0.7], "rescale": True},
              "mergekit_breadcrumbs": {"densities": [0.3, 0.5, 0.7], "gammas": [0.1, 0.01, 0.2]},
              "mergekit_breadcrumbs_ties": {"densities": [0.3, 0.5, 0.7], "normalize": True}}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", sorted(CUDA_CASES))
def test_on_cuda_the_masks_and_merges_match_the_cpu(method):
    """On a GPU weaving's rank masks come from one sort instead of kthvalue: the same entries, ties included
    (repeated magnitudes), so the merges equal the CPU's to rounding. mergekit's methods sort as mergekit
    does, whose order among equal values is the device's: they are compared on distinct magnitudes."""
    g = torch.Generator().manual_seed(0)
    shapes = {"w": (64, 300), "b": (300,), "s": ()}
    pretrained = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    if method.startswith("mergekit_"):
        tvs = [{k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()} for _ in range(3)]
    else:
        tvs = [{k: torch.randint(-20, 21, s, generator=g).double() / 10 for k, s in shapes.items()} for _ in range(3)]
    on_cpu = weaving.merge(pretrained, tvs, method, **CUDA_CASES[method])
    on_gpu = weaving.merge(pretrained, tvs, method, device="cuda", **CUDA_CASES[method])
    for key, value in on_cpu.items():
        torch.testing.assert_close(on_gpu[key], value, rtol=1e-12, atol=1e-12)


def test_weaving_merge_weaves_over_a_mergekit_file(tmp_path, models):
    """`weaving merge --config mergekit.yml --output DIR --lambdas 0.1:1.0:0.1 --pooling mean`: mean pooling
    of the task vectors and the ten lambda-scaled mergekit merges, (sum_t tau_t + sum_i l_i * g) / (T + 10),
    with g mergekit's ties (float64 reference); without --lambdas the file's own merge."""
    from weaving.merging.cli import merge_main

    base, finetuned = loaded(models)
    config = {"merge_method": "ties", "base_model": str(models["base"]),
              "models": entries(models, [{"weight": w, "density": d} for w, d in zip(WEIGHTS, DENSITIES)])}
    (tmp_path / "mk.yml").write_text(yaml.safe_dump(config))
    merge_main(["--config", str(tmp_path / "mk.yml"), "--output", str(tmp_path / "woven"), "--lambdas", "0.1:1.0:0.1",
                "--pooling", "mean"])
    merge_main(["--config", str(tmp_path / "mk.yml"), "--output", str(tmp_path / "one.safetensors")])
    merged = reference("ties", base, finetuned, WEIGHTS, DENSITIES, [], True, False)
    assert_close(load_file(tmp_path / "one.safetensors"), merged)
    woven = load_file(tmp_path / "woven" / "model.safetensors")
    lambdas = sum(round(0.1 * i, 10) for i in range(1, 11))
    expected = {k: b + (sum(ft[k] - b for ft in finetuned) + lambdas * (merged[k] - b)) / (3 + 10) for k, b in base.items()}
    assert_close(woven, expected)


def test_comparisons_run_every_method_but_the_mergekit_ones_by_default():
    from weaving.merging.registry import METHODS, compared_methods

    names = compared_methods()
    assert {name for name in METHODS if name not in names} == {
        "mergekit_task_arithmetic", "mergekit_ties", "mergekit_dare_ties", "mergekit_breadcrumbs",
        "mergekit_breadcrumbs_ties"}
    assert {"task_arithmetic", "ties", "dare_ties", "breadcrumbs_ties", "pcb", "tsv", "iso_cts"} <= set(names)
