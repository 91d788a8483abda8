import dataclasses
import fnmatch
import itertools

import pytest
import torch

import weaving
from weaving.merging.engine import open_inputs
from weaving.merging.pooling import POOLINGS
from weaving.merging.registry import METHODS, derive_seed, get_method
from weaving.merging.weave import parse_lambdas

from .conftest import assert_float64_close, delta, make_inputs

DETERMINISTIC = ["task_arithmetic", "ties", "breadcrumbs", "magmax", "pcb", "tsv", "iso_c", "iso_cts"]
LAMBDAS = [0.1, 0.4, 0.7, 1.0, 1.5]


def augmented_set(pretrained, tvs, method, lambdas, include_deltas=True):
    """A built explicitly: the task vectors, then l_i * g for each lambda."""
    g = delta(weaving.merge(pretrained, tvs, method), pretrained)
    members = [{k: lam * g[k] for k in g} for lam in lambdas]
    return (list(tvs) if include_deltas else []) + members


@pytest.mark.parametrize("method", DETERMINISTIC)
@pytest.mark.parametrize("include_deltas", [True, False])
def test_closed_form_mean_equals_pooling_the_augmented_set(inputs, method, include_deltas):
    pretrained, tvs = inputs
    woven = weaving.weave(pretrained, tvs, method, LAMBDAS, include_deltas=include_deltas)
    members = augmented_set(pretrained, tvs, method, LAMBDAS, include_deltas)
    for key in pretrained:
        expected = pretrained[key] + torch.stack([m[key] for m in members]).mean(0)
        assert_float64_close(woven[key], expected)


@pytest.mark.parametrize("pooling", ["magmax", "random"])
@pytest.mark.parametrize("include_deltas", [True, False])
def test_fast_paths_equal_the_explicit_pooling(inputs, pooling, include_deltas):
    pretrained, tvs = inputs
    woven = weaving.weave(pretrained, tvs, "ties", LAMBDAS, pooling=pooling, include_deltas=include_deltas, seed=5)
    members = augmented_set(pretrained, tvs, "ties", LAMBDAS, include_deltas)
    for key in pretrained:
        pooled = POOLINGS[pooling]([m[key] for m in members], seed=derive_seed(5, "pooling", key))
        assert_float64_close(woven[key], pretrained[key] + pooled)


def test_magmax_pooling_without_deltas_picks_the_largest_lambda(inputs):
    pretrained, tvs = inputs
    woven = weaving.weave(pretrained, tvs, "task_arithmetic", LAMBDAS, pooling="magmax", include_deltas=False)
    plain = weaving.merge(pretrained, tvs, "task_arithmetic", lam=max(LAMBDAS))
    for key in pretrained:
        assert_float64_close(woven[key], plain[key])


def test_random_pooling_takes_each_element_from_one_member():
    pre = {"w": torch.zeros(5000)}
    tvs = [{"w": torch.full((5000,), 100.0)}, {"w": torch.full((5000,), 200.0)}]
    out = weaving.weave(pre, tvs, "task_arithmetic", [1.0, 2.0], pooling="random", seed=0)["w"]
    # members: 100, 200, 1*300, 2*300, each chosen about a quarter of the time
    counts = {v: (out == v).float().mean().item() for v in (100.0, 200.0, 300.0, 600.0)}
    assert sum(counts.values()) == pytest.approx(1.0)
    assert all(0.2 < c < 0.3 for c in counts.values())


def test_method_as_pooling_is_that_method_over_the_augmented_set(inputs):
    pretrained, tvs = inputs
    woven = weaving.weave(pretrained, tvs, "task_arithmetic", LAMBDAS, pooling="ties")
    members = augmented_set(pretrained, tvs, "task_arithmetic", LAMBDAS)
    expected = weaving.merge(pretrained, members, "ties")
    for key in pretrained:
        assert_float64_close(woven[key], expected[key])


def test_random_method_draws_fresh_masks_per_lambda_and_is_seeded(inputs):
    pretrained, tvs = inputs
    a = weaving.weave(pretrained, tvs, "dare", [1.0, 1.0], include_deltas=False, p=0.5, seed=2)
    b = weaving.weave(pretrained, tvs, "dare", [1.0, 1.0], include_deltas=False, p=0.5, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # two draws averaged differ from one draw (same lambda): the masks are not shared
    one = weaving.weave(pretrained, tvs, "dare", [1.0], include_deltas=False, p=0.5, seed=2)
    assert not torch.equal(a["visual.proj.weight"], one["visual.proj.weight"])


def test_seeded_random_pooling_is_bit_identical(inputs):
    pretrained, tvs = inputs
    a = weaving.weave(pretrained, tvs, "ties", "0.1:1.0:0.1", pooling="random", seed=9)
    b = weaving.weave(pretrained, tvs, "ties", "0.1:1.0:0.1", pooling="random", seed=9)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "space, expected",
    [("0.1:1.0:0.1", [round(0.1 * i, 12) for i in range(1, 11)]), ("0.5:2.0:0.5", [0.5, 1.0, 1.5, 2.0]),
     ("0.3,0.6", [0.3, 0.6]), ([1, 2], [1.0, 2.0]), (0.7, [0.7]), ("1:1:0.1", [1.0])],
)
def test_parse_lambdas(space, expected):
    assert parse_lambdas(space) == pytest.approx(expected)
    assert len(parse_lambdas(space)) == len(expected)


@pytest.mark.parametrize("space", ["", [], "1.0:0.5:0.1", "0.1:1:0", "0.1:1:-0.1", "0:1:0.5", [-1.0], "a:b:c", "1:2"])
def test_bad_search_spaces(inputs, space):
    with pytest.raises(ValueError, match="search space"):
        weaving.weave(*inputs, "ties", space)


def test_unknown_pooling_lists_the_known_ones(inputs):
    with pytest.raises(ValueError, match=r"unknown pooling 'median'.*mean, random, magmax.*ties"):
        weaving.weave(*inputs, "ties", [1.0], pooling="median")


def test_search_space_size_is_capped_with_one_line():
    from weaving.merging.weave import MAX_SEARCH_POINTS

    assert len(parse_lambdas(f"1:{MAX_SEARCH_POINTS}:1")) == MAX_SEARCH_POINTS
    for space in (f"1:{MAX_SEARCH_POINTS + 1}:1", "0.1:100000000:0.1", [0.5] * (MAX_SEARCH_POINTS + 1)):
        with pytest.raises(ValueError, match=f"at most {MAX_SEARCH_POINTS} are allowed") as info:
            parse_lambdas(space)
        assert "\n" not in str(info.value) and len(str(info.value)) < 200


# ------------------------------------------------------------------------------- general search spaces
GRIDS = {"ties": {"k": [0.3, 0.6]}, "dare": {"p": [0.2, 0.5]}, "breadcrumbs": {"beta": [0.3, 0.6], "gamma": [0.0, 0.2]},
         "pcb": {"ratio": [0.2, 0.5]}, "iso_cts": {"common_fraction": [0.5, 0.8]},
         "dare_ties": {"p": [0.2, 0.5]}, "breadcrumbs_ties": {"beta": [0.3, 0.6]}}
BY_NAME = {"kind": "pattern", "patterns": {"*bias": 2.0, "*conv*": 0.3}, "default": 0.9}


def point_delta(pretrained, tvs, method, setting, index, seed, key):
    """g at one point: through weaving.merge for deterministic methods, the method's own draw for random ones."""
    spec = get_method(method)
    if spec.random:
        inputs = open_inputs(pretrained, tvs, None)
        resolved = spec.resolve(setting)
        stats = spec.prepare(inputs.task_set, **resolved) if spec.prepare else None
        return spec.merge(inputs.task_set.tensors(key), key=key, stats=stats, **resolved,
                          seed=derive_seed(seed, key, "lambda", index))
    return weaving.merge(pretrained, tvs, method, **setting)[key] - pretrained[key]


def lam_of(lam, key):
    if isinstance(lam, dict):
        return next((v for p, v in lam["patterns"].items() if fnmatch.fnmatchcase(key, p)), lam["default"])
    return lam


def explicit_members(pretrained, tvs, method, points, include_deltas, seed, key):
    members = [tv[key] for tv in tvs] if include_deltas else []
    for index, (lam, setting) in enumerate(points):
        members.append(lam_of(lam, key) * point_delta(pretrained, tvs, method, setting, index, seed, key))
    return members


@pytest.mark.parametrize("method", sorted(weaving.METHODS))
@pytest.mark.parametrize("include_deltas", [True, False])
def test_grid_mean_pooling_equals_the_average_over_the_explicit_augmented_set(method, include_deltas):
    pretrained, tvs = make_inputs(dtype=torch.float64)
    grid = GRIDS.get(method, {})
    lambdas = [0.5, 1.2, BY_NAME]
    woven = weaving.weave(pretrained, tvs, method, lambdas, include_deltas=include_deltas, grid=grid, seed=3)
    names = list(grid)
    points = [(lam, dict(zip(names, combo))) for combo in itertools.product(*grid.values()) for lam in lambdas]
    assert len(points) == 3 * (4 if method == "breadcrumbs" else 2 if grid else 1)
    for key in pretrained:
        members = explicit_members(pretrained, tvs, method, points, include_deltas, 3, key)
        expected = pretrained[key] + torch.stack(members).mean(0)
        torch.testing.assert_close(woven[key], expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("pooling", ["magmax", "random"])
@pytest.mark.parametrize("include_deltas", [True, False])
def test_explicit_points_with_random_and_magmax_pooling(pooling, include_deltas):
    pretrained, tvs = make_inputs(dtype=torch.float64)
    # interleaved settings and equal lambdas: member order decides magmax ties between groups
    points = [{"lam": 1.0, "k": 0.3}, {"lam": 0.4, "k": 0.6}, {"lam": 1.0, "k": 0.6}, {"lam": BY_NAME, "k": 0.3}]
    woven = weaving.weave(pretrained, tvs, "ties", points=points, pooling=pooling, include_deltas=include_deltas, seed=4)
    explicit = [(p["lam"], {"k": p["k"]}) for p in points]
    for key in pretrained:
        members = explicit_members(pretrained, tvs, "ties", explicit, include_deltas, 4, key)
        pooled = POOLINGS[pooling](members, seed=derive_seed(4, "pooling", key))
        torch.testing.assert_close(woven[key], pretrained[key] + pooled, atol=1e-12, rtol=1e-10)


def test_grid_costs_one_merge_per_setting_whatever_the_number_of_lambdas(monkeypatch):
    pretrained, tvs = make_inputs()
    spec = get_method("ties")
    calls = []

    def counting(tensors, **kwargs):
        calls.append((kwargs["key"], kwargs["k"]))
        return spec.merge(tensors, **kwargs)

    monkeypatch.setitem(METHODS, "ties", dataclasses.replace(spec, merge=counting))
    weaving.weave(pretrained, tvs, "ties", "0.1:1.5:0.1", grid={"k": [0.1, 0.2, 0.3]})
    assert sorted(calls) == sorted((key, k) for key in pretrained for k in (0.1, 0.2, 0.3))


def test_grid_with_one_value_equals_the_fixed_hyper_parameter(inputs):
    pretrained, tvs = inputs
    a = weaving.weave(pretrained, tvs, "ties", LAMBDAS, grid={"k": [0.4]})
    b = weaving.weave(pretrained, tvs, "ties", LAMBDAS, k=0.4)
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("kwargs, message", [
    ({"lambdas": [1.0], "grid": {"beta": [0.1]}}, "has no hyper-parameter 'beta'"),
    ({"lambdas": [1.0], "grid": {"k": []}}, "grid over 'k' is empty"),
    ({"lambdas": [1.0], "grid": {"k": [0.1]}, "k": 0.2}, "both as a fixed hyper-parameter"),
    ({"lambdas": [1.0], "grid": {"k": [1.5]}}, "k is the kept fraction"),
    ({"lambdas": None, "points": [{"k": 0.1}]}, "needs a 'lam'"),
    ({"lambdas": None}, "search space is empty"),
])
def test_bad_grids_and_points(inputs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        weaving.weave(*inputs, "ties", **kwargs)


def test_two_seeds_give_different_random_pooling(inputs):
    pretrained, tvs = inputs
    a = weaving.weave(pretrained, tvs, "ties", "0.1:1.0:0.1", pooling="random", seed=0)
    b = weaving.weave(pretrained, tvs, "ties", "0.1:1.0:0.1", pooling="random", seed=1)
    assert any(not torch.equal(a[k], b[k]) for k in pretrained)
    differing = sum(int((a[k] != b[k]).sum()) for k in pretrained)
    assert differing > sum(v.numel() for v in pretrained.values()) // 2  # 13 members: most elements change


@pytest.mark.parametrize("method", ["ties", "pcb"])
def test_method_pooling_counts_the_methods_zero_entries(inputs, method):
    """Every member of A has the task vectors' population: with zero_entries, ties and pcb weave (and pool,
    here with pooling=method) exactly as on task vectors with that many zeros appended."""
    pretrained, tvs = inputs
    zeros = 40
    woven = weaving.weave(pretrained, tvs, method, LAMBDAS, pooling=method, zero_entries=zeros)
    padded_pre = {**pretrained, "appended": torch.zeros(zeros, dtype=torch.float64)}
    padded = [{**tv, "appended": torch.zeros(zeros, dtype=torch.float64)} for tv in tvs]
    expected = weaving.weave(padded_pre, padded, method, LAMBDAS, pooling=method)
    plain = weaving.weave(pretrained, tvs, method, LAMBDAS, pooling=method)
    assert expected["appended"].abs().sum() == 0
    for key in pretrained:
        assert_float64_close(woven[key], expected[key])
    assert any(not torch.allclose(woven[key], plain[key]) for key in pretrained)
