import pytest

import weaving
from weaving.merging.search_space import DEFAULT_SEARCH_SPACE, default_search_space


def test_multi_task_uses_each_methods_own_range():
    assert default_search_space("ties", "multi_task") == "0.1:1.5:0.1"
    assert default_search_space("pcb", "multi_task") == "0.1:2.5:0.1"
    assert default_search_space("tsv", "multi_task") == "0.5:2.0:0.1"
    assert default_search_space("iso_c", "multi_task") == default_search_space("iso_cts", "multi_task") == "0.1:2.0:0.1"
    assert default_search_space("magmax", "multi_task") == DEFAULT_SEARCH_SPACE


@pytest.mark.parametrize("setup", ["continual", "domain_generalization"])
def test_other_setups_use_the_standard_range(setup):
    assert {default_search_space(m, setup) for m in weaving.METHODS} == {DEFAULT_SEARCH_SPACE}


def test_every_default_space_parses():
    for method in weaving.METHODS:
        values = weaving.parse_lambdas(default_search_space(method))
        assert values[0] > 0 and len(values) >= 10


def test_unknown_setup_lists_the_known_ones():
    with pytest.raises(ValueError, match="multi_task, continual, domain_generalization"):
        default_search_space("ties", "multitask")


# ------------------------------------------------------------------------------------------ the parser
from weaving.merging.search_space import MAX_SEARCH_POINTS, LayerLambda, Point, layer_number, parse_search_space  # noqa: E402


def test_lambdas_and_grid_cross_with_the_grid_outermost():
    points = parse_search_space({"lambdas": "0.5:1.0:0.5", "grid": {"k": [0.1, 0.2], "beta": [0.3]}})
    assert [(p.lam, p.setting) for p in points] == [
        (0.5, {"k": 0.1, "beta": 0.3}), (1.0, {"k": 0.1, "beta": 0.3}),
        (0.5, {"k": 0.2, "beta": 0.3}), (1.0, {"k": 0.2, "beta": 0.3}),
    ]
    assert parse_search_space([0.5, 1.0], grid={"k": "0.1:0.3:0.1"})[-1] == Point(1.0, (("k", 0.3),))


def test_explicit_points_keep_their_order_and_settings():
    points = parse_search_space([{"lam": 0.5, "k": 0.1}, {"lam": 1.0}])
    assert points == [Point(0.5, (("k", 0.1),)), Point(1.0, ())]
    assert parse_search_space(points=[{"lam": 2, "p": 0.3}]) == [Point(2.0, (("p", 0.3),))]


def test_distribution_is_seeded_and_within_bounds():
    spec = {"distribution": "uniform", "low": 0.2, "high": 0.4, "n": 50, "seed": 7}
    a = [p.lam for p in parse_search_space(spec)]
    assert a == [p.lam for p in parse_search_space(dict(spec))] and len(set(a)) == 50
    assert all(0.2 <= v < 0.4 for v in a)
    assert a != [p.lam for p in parse_search_space({**spec, "seed": 8})]
    log = [p.lam for p in parse_search_space({**spec, "distribution": "loguniform", "low": 0.01, "high": 10.0})]
    assert all(0.01 <= v < 10.0 for v in log) and sum(v < 0.1 for v in log) > 5  # a third of the mass per decade


def test_linear_depth_lambda_grows_with_the_layer_number():
    (point,) = parse_search_space({"kind": "linear_depth", "start": 0.2, "stop": 1.0})
    keys = ["embed.weight", "model.layers.0.attn.weight", "model.layers.2.mlp.weight", "model.layers.4.norm"]
    lam = point.lam.bind(keys)
    assert [lam(k) for k in keys] == pytest.approx([0.6, 0.2, 0.6, 1.0])
    assert layer_number("visual.transformer.resblocks.11.attn.in_proj_weight") == 11
    assert layer_number("visual.conv1.weight") is None


def test_pattern_lambda_takes_the_first_matching_pattern():
    (point,) = parse_search_space([{"kind": "pattern", "patterns": {"*attn*": 0.5, "*.0.*": 2.0}, "default": 0.8}])
    lam = point.lam.bind([])
    assert (lam("layers.0.attn.w"), lam("layers.0.mlp.w"), lam("head.w")) == (0.5, 2.0, 0.8)
    assert isinstance(point.lam, LayerLambda)


@pytest.mark.parametrize("space, message", [
    ({"lambdas": [1.0], "grid": {"k": []}}, "grid over 'k' is empty"),
    ({"lambdas": [1.0], "grid": {"lam": [1.0]}}, "not in the grid"),
    ({"lambdas": [1.0], "grids": {"k": [0.1]}}, "unknown key .grids. in a search space"),
    ({"distribution": "normal", "low": 0, "high": 1, "n": 3}, "unknown distribution 'normal'"),
    ({"distribution": "uniform", "low": 0.1, "high": 1}, "needs 'n'"),
    ({"distribution": "uniform", "low": 1.0, "high": 0.5, "n": 2}, "low < high"),
    ({"distribution": "uniform", "low": -1.0, "high": 0.5, "n": 20}, "finite positive"),
    ({"kind": "cosine"}, "unknown per-layer lambda kind 'cosine'"),
    ({"kind": "linear_depth", "start": 0.1}, "needs 'start' and 'stop'"),
    ({"kind": "pattern", "patterns": {}}, "non-empty mapping"),
    ({"lambdas": "0.001:1000:0.001"}, f"at most {MAX_SEARCH_POINTS}"),
    ({"lambdas": [0.5, 1.0], "grid": {"k": "0.0001:1:0.0001"}}, f"at most {MAX_SEARCH_POINTS}"),
    ([{"lam": 0.5}, {"k": 0.1}], "point 1"),
    ({"lambdas": [1.0], "points": [{"lam": 1.0}]}, "not both"),
])
def test_bad_search_spaces_say_what_is_wrong(space, message):
    with pytest.raises(ValueError, match=message):
        parse_search_space(space)


# ------------------------------------------------------------------------------------- reading numbers
from weaving.merging.search_space import number  # noqa: E402
from weaving.schema import load_yaml, use_in_jsonargparse  # noqa: E402


@pytest.mark.parametrize("text, value", [
    ("1:3:1", "1:3:1"), ("1:0:0.1", "1:0:0.1"), ("2:4:1", "2:4:1"),  # YAML 1.1 base-60: 3781, 3600.1, 7441
    ("1e-3", 1e-3), ("1e39", 1e39), ("-2.5E+2", -250.0), ("0.5", 0.5), ("7", 7), ("0x10", 16), ("1_000", 1000),
    (".inf", float("inf")), ("2024-01-02", "2024-01-02"), ("[1e-3, 1:2:1]", [1e-3, "1:2:1"]),
])
def test_yaml_reads_ranges_as_text_and_exponents_as_numbers(text, value):
    assert load_yaml(text) == value


def test_jsonargparse_reads_typed_flags_with_the_same_rules():
    from jsonargparse import ArgumentParser

    use_in_jsonargparse()
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--lam", type=float)
    parser.add_argument("--grid", type=dict)
    assert parser.parse_args(["--lam", "1e-3"]).lam == 1e-3
    assert parser.parse_args(["--grid", "{k: 1:3:1}"]).grid == {"k": "1:3:1"}
    with pytest.raises(Exception, match="1:3:1"):
        parser.parse_args(["--lam", "1:3:1"])


def test_number_takes_yaml_number_text_and_refuses_ranges():
    assert number("1e-3", "lam") == 1e-3 and number(2, "lam") == 2.0 and number(" 1e39 ", "w") == 1e39
    for bad in ("1:3:1", "heavy", True, float("nan"), "inf", None):
        with pytest.raises(ValueError, match="lam must be a finite number"):
            number(bad, "lam")


@pytest.mark.parametrize("space, lambdas", [
    ("1:3:1", [1.0, 2.0, 3.0]),
    ("[1e-3, 0.5]", [1e-3, 0.5]),
    ("{distribution: uniform, low: 0.1, high: 0.2, n: 3, seed: 0}",
     weaving.parse_lambdas({"distribution": "uniform", "low": 0.1, "high": 0.2, "n": 3, "seed": 0})),
])
def test_search_spaces_given_as_text_parse_like_their_values(space, lambdas):
    assert weaving.parse_lambdas(space) == pytest.approx(lambdas)


def test_per_layer_lambdas_and_grids_given_as_text():
    (point,) = parse_search_space("{kind: linear_depth, start: 0.2, stop: 1.0}")
    assert point.lam == LayerLambda("linear_depth", 0.2, 1.0)
    points = parse_search_space("[0.5]", grid="{k: 0.1:0.2:0.1}")
    assert [p.setting["k"] for p in points] == [0.1, 0.2]
    with pytest.raises(ValueError, match="not readable YAML"):
        parse_search_space("{kind: linear_depth")
