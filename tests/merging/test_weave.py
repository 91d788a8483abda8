import pytest
import torch

import weaving
from weaving.merging.pooling import POOLINGS
from weaving.merging.registry import derive_seed
from weaving.merging.weave import parse_lambdas

from .conftest import assert_float64_close, delta

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
