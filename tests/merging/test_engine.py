"""Contract tests run over every registered method (timm-style)."""

import subprocess
import sys

import pytest
import torch

import weaving

from .conftest import assert_float64_close, delta, make_inputs

ALL = sorted(weaving.METHODS)
# hyper-parameters that keep every method non-trivial on the small fixtures (rows of 2..6 entries)
HPARAMS = {"breadcrumbs": {"beta": 0.6, "gamma": 0.2}, "ties": {"k": 0.5}, "pcb": {"ratio": 0.5}, "dare": {"p": 0.3},
           "breadcrumbs_ties": {"beta": 0.6, "gamma": 0.2}, "dare_ties": {"p": 0.3},
           **{f"mergekit_{m}": {"densities": [0.5, 0.5, 0.5]} for m in ("ties", "dare_ties", "breadcrumbs", "breadcrumbs_ties")},
           "mergekit_task_arithmetic": {"weights": [0.5, 1.0, 2.0]}}


def test_all_methods_are_registered():
    assert ALL == sorted(["task_arithmetic", "dare", "ties", "breadcrumbs", "magmax", "pcb", "tsv", "iso_c", "iso_cts",
                          "dare_ties", "breadcrumbs_ties", "mergekit_task_arithmetic", "mergekit_ties", "mergekit_dare_ties",
                          "mergekit_breadcrumbs", "mergekit_breadcrumbs_ties"])
    assert list(weaving.POOLINGS) == ["mean", "random", "magmax"]


@pytest.mark.parametrize("method", ALL)
def test_shapes_keys_and_lam_independence(inputs, method):
    pretrained, tvs = inputs
    one = weaving.merge(pretrained, tvs, method, lam=1.0, seed=1, **HPARAMS.get(method, {}))
    two = weaving.merge(pretrained, tvs, method, lam=2.5, seed=1, **HPARAMS.get(method, {}))
    assert any(not torch.equal(one[key], pretrained[key]) for key in pretrained)
    assert list(one) == list(pretrained)
    for key in pretrained:
        assert one[key].shape == pretrained[key].shape
        assert_float64_close(delta(two, pretrained)[key], 2.5 * delta(one, pretrained)[key])


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_output_dtype_is_input_dtype(method, dtype):
    pretrained, tvs = make_inputs(dtype=dtype)
    merged = weaving.merge(pretrained, tvs, method)
    woven = weaving.weave(pretrained, tvs, method, [0.5, 1.0])
    assert all(merged[k].dtype == dtype and woven[k].dtype == dtype for k in pretrained)


@pytest.mark.parametrize("method", ALL)
def test_float64_inputs_are_merged_in_float64(method):
    """Float64 draws (not float32 cast up): a 1e-12 change of one input must reach the output, which
    float32 arithmetic anywhere in the path would round away."""
    pretrained, tvs = make_inputs()
    base = weaving.merge(pretrained, tvs, method, seed=1, **HPARAMS.get(method, {}))
    for tv in tvs:
        tv["visual.proj.weight"] = tv["visual.proj.weight"] * (1 + 1e-12)
    nudged = weaving.merge(pretrained, tvs, method, seed=1, **HPARAMS.get(method, {}))
    change = (nudged["visual.proj.weight"] - base["visual.proj.weight"]).abs().max().item()
    assert base["visual.proj.weight"].dtype == torch.float64
    assert 0 < change < 1e-9


def test_float64_sum_matches_float64_arithmetic():
    pretrained, tvs = make_inputs()
    merged = weaving.merge(pretrained, tvs, "task_arithmetic")
    for key in pretrained:
        assert_float64_close(merged[key], pretrained[key] + ((tvs[0][key] + tvs[1][key]) + tvs[2][key]))


def test_keys_only_in_pretrained_pass_through(inputs):
    pretrained, tvs = inputs
    pretrained = dict(pretrained, **{"text.weight": torch.ones(3), "position_ids": torch.arange(4)})
    merged = weaving.merge(pretrained, tvs, "ties")
    assert torch.equal(merged["position_ids"], torch.arange(4))
    assert torch.equal(merged["text.weight"], torch.ones(3))


@pytest.mark.parametrize("method", ALL)
def test_seeded_results_are_bit_identical(inputs, method):
    a = weaving.merge(*inputs, method, seed=7, **HPARAMS.get(method, {}))
    b = weaving.merge(*inputs, method, seed=7, **HPARAMS.get(method, {}))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_safetensors_paths_are_accepted(tmp_path, inputs):
    from safetensors.torch import save_file

    pretrained, tvs = inputs
    save_file(pretrained, tmp_path / "pre.safetensors")
    paths = []
    for i, tv in enumerate(tvs):
        save_file(tv, tmp_path / f"tv{i}.safetensors")
        paths.append(str(tmp_path / f"tv{i}.safetensors"))
    from_files = weaving.weave(str(tmp_path / "pre.safetensors"), paths, "ties", [0.5, 1.0])
    from_memory = weaving.weave(pretrained, tvs, "ties", [0.5, 1.0])
    assert all(torch.equal(from_files[k], from_memory[k]) for k in pretrained)


def test_unavailable_cuda_is_a_clear_error(inputs):
    if torch.cuda.is_available():
        merged = weaving.merge(*inputs, "tsv", device="cuda")
        assert merged["visual.proj.weight"].device.type == "cpu"
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            weaving.merge(*inputs, "tsv", device="cuda")


def test_merging_imports_without_lightning():
    code = "import sys, weaving, weaving.merging; assert 'lightning' not in sys.modules, 'lightning imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ non-finite outputs
def half_inputs():
    pretrained = {"visual.a.weight": torch.full((4, 4), 40000.0, dtype=torch.float16), "visual.b": torch.ones(3, dtype=torch.float16)}
    return pretrained, [{k: torch.full_like(v, 20000.0) for k, v in pretrained.items()} for _ in range(2)]


@pytest.mark.parametrize("call", [
    lambda pre, tvs: weaving.merge(pre, tvs, "task_arithmetic"),
    lambda pre, tvs: weaving.merge(pre, tvs, "ties", lam=2.0, k=1.0),
    lambda pre, tvs: weaving.merge(pre, tvs, "magmax", lam=2.0),
    lambda pre, tvs: weaving.weave(pre, tvs, "task_arithmetic", [1.0, 2.0]),
    lambda pre, tvs: weaving.weave(pre, tvs, "ties", [1.0, 2.0], pooling="magmax"),
])
def test_float16_overflow_is_refused_naming_tensor_dtype_and_cause(call):
    pre, tvs = half_inputs()
    with pytest.raises(ValueError, match=r"merged tensor 'visual.a.weight' \(float16\) is not finite: .*overflow float16"):
        call(pre, tvs)


def test_huge_lambdas_are_refused_as_overflow_not_as_not_finite(inputs):
    pretrained, tvs = inputs
    single = [{k: v.float() for k, v in tv.items()} for tv in tvs]
    pre32 = {k: v.float() for k, v in pretrained.items()}
    with pytest.raises(ValueError, match=r"lam=1e\+39 overflows float32 \(largest 3.403e\+38\)"):
        weaving.merge(pre32, single, "ties", lam=1e39)
    with pytest.raises(ValueError, match=r"\(float32\) is not finite: overflow: a lambda or weight too large for float32"):
        weaving.merge(pre32, [{k: v * 1e30 for k, v in tv.items()} for tv in single], "task_arithmetic", lam=1e37)
    with pytest.raises(ValueError, match=r"\(float32\) is not finite: overflow"):
        weaving.weave(pre32, single, "task_arithmetic", [0.5, 1e39], pooling="magmax")
    with pytest.raises(ValueError, match="lam must be a finite number"):
        weaving.merge(pre32, single, "ties", lam=float("inf"))
    merged = weaving.merge(pretrained, tvs, "task_arithmetic", lam=1e39)  # float64 holds it
    assert all(torch.isfinite(v).all() for v in merged.values())


# ------------------------------------------------------------------------------ documented defaults
def documented_defaults():
    """{method: {name: value}} from docs/methods.md's table (the 'hyper-parameters (default)' column)."""
    import ast
    import re
    from pathlib import Path

    table = (Path(__file__).resolve().parents[2] / "docs" / "methods.md").read_text()
    found = {}
    for name, column in re.findall(r"^\| `(\w+)` \| ([^|]*) \|", table, flags=re.M):
        if name in weaving.METHODS:
            found[name] = {k: ast.literal_eval(v) for k, v in re.findall(r"`(\w+)=([^`]+)`", column)}
    return found


def test_every_method_has_a_documented_row():
    assert set(documented_defaults()) == set(weaving.METHODS)


@pytest.mark.parametrize("method", sorted(weaving.METHODS))
def test_documented_defaults_are_the_defaults(method):
    """A merge that leaves the hyper-parameters implicit equals one that spells out the documented values
    (and a different value changes the result, so the comparison can fail)."""
    g = torch.Generator().manual_seed(0)
    shapes = {"visual.w": (64, 64), "visual.b": (64,)}  # rows long enough for breadcrumbs' small fractions
    pretrained = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    tvs = [{k: 0.1 * torch.randn(s, generator=g) for k, s in shapes.items()} for _ in range(3)]
    documented = documented_defaults()[method]
    implicit = weaving.merge(pretrained, tvs, method, seed=1)
    explicit = weaving.merge(pretrained, tvs, method, seed=1, **documented)
    assert all(torch.equal(implicit[k], explicit[k]) for k in pretrained)
    for name, value in documented.items():
        if isinstance(value, (bool, str)):
            continue
        changed = value + 10_000 if isinstance(value, int) else 0.5 if value < 0.5 else value / 2
        other = weaving.merge(pretrained, tvs, method, seed=1, **{**documented, name: changed})
        assert any(not torch.equal(implicit[k], other[k]) for k in pretrained), (method, name)


def test_documented_weaving_defaults(inputs):
    """weave's pooling='mean' and include_deltas=True, merge's lam=1.0 and seed=0 (README, docs/evaluation.md)."""
    pretrained, tvs = inputs
    implicit = weaving.weave(pretrained, tvs, "dare", [0.5, 1.0])
    explicit = weaving.weave(pretrained, tvs, "dare", [0.5, 1.0], pooling="mean", include_deltas=True, seed=0)
    assert all(torch.equal(implicit[k], explicit[k]) for k in pretrained)
    without = weaving.weave(pretrained, tvs, "dare", [0.5, 1.0], include_deltas=False)
    assert any(not torch.equal(implicit[k], without[k]) for k in pretrained)
    merged = weaving.merge(pretrained, tvs, "dare")
    assert all(torch.equal(merged[k], weaving.merge(pretrained, tvs, "dare", lam=1.0, seed=0)[k]) for k in pretrained)
    assert any(not torch.equal(merged[k], weaving.merge(pretrained, tvs, "dare", seed=1)[k]) for k in pretrained)
