"""Weight Weaving search spaces as data: one parser turns every form into a list of points.

A point is a lambda (a number, or a function of the tensor's name: per-layer lambdas) plus the method's
hyper-parameters at that point. Forms accepted (Python values or the same YAML):

- lambdas: `[0.1, 0.5]`, `"0.1,0.5"`, `"start:stop:step"` (stop inclusive), one number;
- a distribution of lambdas: `{distribution: uniform, low: 0.1, high: 1.5, n: 8, seed: 0}`
  (also `loguniform`); drawn once with its own generator, so the same seed gives the same points;
- a per-layer lambda: `{kind: linear_depth, start: 0.2, stop: 1.0}` (lambda grows linearly with the
  layer number found in the tensor's name) or `{kind: pattern, patterns: {"*attn*": 0.5}, default: 1.0}`;
  a list of lambdas may mix numbers and per-layer lambdas;
- a grid over the method's hyper-parameters: `{lambdas: ..., grid: {k: [0.1, 0.2, 0.3]}}` (a grid value
  is a list, a 'start:stop:step' string or a distribution);
- explicit points: `[{lam: 0.5, k: 0.1}, {lam: 1.0, k: 0.2}]`.

Points come in this order: for each grid combination (the grid's keys vary like nested loops, the first
key outermost), every lambda. The order matters for random and magmax pooling (later members win ties).
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Union

import torch

from weaving.schema import load_yaml

# How the typed command lines declare a search space (lambdas, grid, points): any YAML value, checked by
# parse_search_space below (the one place, with its cap on the number of points) before any tensor is read.
# Not a typed list: jsonargparse checks a list item by item with a copy of the whole list each time, so a
# 3,000-number list took 15 s to parse and a 10^5-point typo would run for hours before being refused.
SpaceValue = Any

# The one cap on the number of points a search space may expand to: each point is one member of the
# augmented set, so more is a typo (a grid or a range mistyped into millions of merges), not a search.
MAX_SEARCH_POINTS = 10_000

SETUPS = ("multi_task", "continual", "domain_generalization")

DEFAULT_SEARCH_SPACE = "0.1:1.0:0.1"

# Multi-task learning uses the ranges proposed by each method's authors; every other (method, setup)
# pair uses DEFAULT_SEARCH_SPACE. ISO-CTS shares ISO-C's range (same family, same scale of g).
MULTI_TASK_SEARCH_SPACES = {
    "ties": "0.1:1.5:0.1",
    "pcb": "0.1:2.5:0.1",
    "tsv": "0.5:2.0:0.1",
    "iso_c": "0.1:2.0:0.1",
    "iso_cts": "0.1:2.0:0.1",
}


def check_setup(setup: str) -> str:
    """Return `setup` if it is a known setup name, else raise a one-line ValueError listing them."""
    if setup not in SETUPS:
        raise ValueError(f"unknown setup {setup!r}; expected one of: {', '.join(SETUPS)}")
    return setup


def default_search_space(method: str, setup: str = "multi_task") -> str:
    """The paper's lambda search space ("start:stop:step", inclusive) for `method` in `setup`."""
    check_setup(setup)
    if setup == "multi_task":
        return MULTI_TASK_SEARCH_SPACES.get(method, DEFAULT_SEARCH_SPACE)
    return DEFAULT_SEARCH_SPACE


# ------------------------------------------------------------------------------------ per-layer lambdas
_LAYER_NUMBER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_number(key: str) -> int | None:
    """The first dotted component of a tensor name that is a number (`model.layers.12.mlp` -> 12)."""
    match = _LAYER_NUMBER.search(key)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class LayerLambda:
    """A lambda that depends on the tensor: `kind` is `linear_depth` or `pattern`.

    linear_depth: lambda = start + (stop - start) * i / max_i for a tensor of layer i (the first number
    in its name; max_i the largest layer number among the merged tensors); tensors without a layer number
    take `default` (the mean of start and stop when not given).
    pattern: the value of the first shell pattern (fnmatch) in `patterns` that matches the name, else
    `default` (1.0 when not given).
    """

    kind: str
    start: float = 0.0
    stop: float = 0.0
    patterns: tuple[tuple[str, float], ...] = ()
    default: float | None = None

    def bind(self, keys: Sequence[str]) -> Callable[[str], float]:
        """The lambda of each merged tensor, given the names of all of them."""
        if self.kind == "pattern":
            default = 1.0 if self.default is None else self.default

            def by_pattern(key: str) -> float:
                return next((value for pattern, value in self.patterns if fnmatch.fnmatchcase(key, pattern)), default)

            return by_pattern
        numbers = [n for n in (layer_number(k) for k in keys) if n is not None]
        deepest = max(numbers, default=0)
        default = (self.start + self.stop) / 2 if self.default is None else self.default

        def by_depth(key: str) -> float:
            layer = layer_number(key)
            if layer is None:
                return default
            return self.start + (self.stop - self.start) * (layer / deepest if deepest else 0.0)

        return by_depth

    def describe(self) -> str:
        if self.kind == "pattern":
            return f"pattern({dict(self.patterns)}, default={self.default})"
        return f"linear_depth({self.start}->{self.stop})"


Lambda = Union[float, LayerLambda]


@dataclass(frozen=True)
class Point:
    """One member of the search space: a lambda and the method's hyper-parameters (name, value) pairs."""

    lam: Lambda
    hparams: tuple[tuple[str, Any], ...] = ()

    @property
    def setting(self) -> dict[str, Any]:
        return dict(self.hparams)


# ------------------------------------------------------------------------------------- reading numbers
def number(value: Any, what: str) -> float:
    """A finite number: an int or float, or text that YAML reads as one ('1e-3', '0.5'); `what` names the
    value in the one-line error. A range such as '1:3:1' is not a number."""
    if isinstance(value, str):
        import yaml

        try:
            parsed = load_yaml(value)
        except yaml.YAMLError:
            parsed = value
        value = parsed if isinstance(parsed, (int, float)) and not isinstance(parsed, bool) else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def check_lambda(lam: Any, dtype: torch.dtype = torch.float32, what: str = "lam") -> float:
    """A lambda that scales tensors of `dtype`: a finite number whose size that dtype can hold (1e39 is
    finite, but lam * g overflows float32 to Inf)."""
    value = number(lam, what)
    largest = torch.finfo(dtype).max
    if abs(value) > largest:
        raise ValueError(f"{what}={value:g} overflows {str(dtype).removeprefix('torch.')} (largest {largest:.4g}): "
                         "use a smaller lambda")
    return value


def _positive(value: float, space: Any) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"search space {space!r} holds {value}; every lambda must be a finite positive number")
    return value


def check_keys(mapping: Mapping, allowed: Sequence[str], where: str, prefix: str) -> None:
    """Refuse a key of `mapping` that is not in `allowed`: '{prefix}: unknown key 'x' in {where}; known keys: ...'."""
    unknown = [key for key in mapping if key not in allowed]
    if unknown:
        raise ValueError(f"{prefix}: unknown key {unknown[0]!r} in {where}; known keys: {', '.join(allowed)}")




def too_many(space: object, count: int) -> ValueError:
    shown = space if len(str(space)) < 60 else f"{str(space)[:57]}..."
    return ValueError(f"search space {shown!r} has {count} points; at most {MAX_SEARCH_POINTS} are allowed "
                      "(use a larger step)")


def structured(value: Any) -> Any:
    """Text that holds a YAML list or mapping (`'{distribution: uniform, ...}'`, `'[0.5, 1.0]'`, as a flag or
    the demo's --lambdas gives it) -> that list or mapping; anything else unchanged."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        import yaml

        try:
            return load_yaml(value)
        except yaml.YAMLError as error:
            raise ValueError(f"search space {value!r}: not readable YAML ({' '.join(str(error).split())})") from None
    return value


def parse_range(text: str) -> list[float]:
    """'start:stop:step' (stop inclusive) or numbers like '0.5,1.0' -> floats (any sign)."""
    text = text.strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if not all(math.isfinite(p) for p in parts):
                raise ValueError(f"search space {text!r}: start, stop and step must be finite numbers")
            if not step > 0:
                raise ValueError(f"search space {text!r}: step must be positive")
            if stop < start:
                raise ValueError(f"search space {text!r}: stop is below start, so it is empty")
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            if count > MAX_SEARCH_POINTS:
                raise too_many(text, count)
            return [round(start + i * step, 12) for i in range(count)]
        return [float(p) for p in text.replace(",", " ").split()]
    except ValueError as error:
        if str(error).startswith("search space"):
            raise
        raise ValueError(f"search space {text!r}: expected 'start:stop:step' or numbers like '0.5,1.0'") from None


def draw(spec: Mapping) -> list[float]:
    """`{distribution: uniform|loguniform, low, high, n, seed}` -> n values, drawn with their own generator."""
    check_keys(spec, ("distribution", "low", "high", "n", "seed"), "a distribution", "search space")
    kind = spec.get("distribution")
    if kind not in ("uniform", "loguniform"):
        raise ValueError(f"search space: unknown distribution {kind!r}; known: uniform, loguniform")
    missing = [name for name in ("low", "high", "n") if name not in spec]
    if missing:
        raise ValueError(f"search space: distribution {kind!r} needs {missing[0]!r} (keys: low, high, n, seed)")
    low, high = number(spec["low"], "search space: low"), number(spec["high"], "search space: high")
    n, seed = spec["n"], spec.get("seed", 0)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_SEARCH_POINTS:
        raise ValueError(f"search space: n must be a whole number in [1, {MAX_SEARCH_POINTS}], got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"search space: seed must be a whole number, got {seed!r}")
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ValueError(f"search space: distribution {kind!r} needs {'0 < ' if kind == 'loguniform' else ''}low < high, "
                         f"got low={low}, high={high}")
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if kind == "loguniform":
        return [float(v) for v in torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))]
    return [float(v) for v in low + u * (high - low)]


def layer_lambda(spec: Mapping) -> LayerLambda:
    kind = spec.get("kind")
    if kind == "linear_depth":
        check_keys(spec, ("kind", "start", "stop", "default"), "linear_depth", "search space")
        if "start" not in spec or "stop" not in spec:
            raise ValueError("search space: linear_depth needs 'start' and 'stop'")
        default = spec.get("default")
        values = [number(spec["start"], "search space: start"), number(spec["stop"], "search space: stop")]
        if default is not None:
            values.append(number(default, "search space: default"))
        for value in values:
            _positive(value, dict(spec))
        return LayerLambda("linear_depth", values[0], values[1], default=None if default is None else values[2])
    if kind == "pattern":
        check_keys(spec, ("kind", "patterns", "default"), "pattern", "search space")
        patterns = spec.get("patterns")
        if not isinstance(patterns, Mapping) or not patterns:
            raise ValueError("search space: pattern needs 'patterns', a non-empty mapping of name pattern -> lambda")
        pairs = tuple((str(p), _positive(number(v, f"search space: pattern {p!r}"), dict(spec))) for p, v in patterns.items())
        default = spec.get("default")
        if default is not None:
            default = _positive(number(default, "search space: default"), dict(spec))
        return LayerLambda("pattern", patterns=pairs, default=default)
    raise ValueError(f"search space: unknown per-layer lambda kind {kind!r}; known: linear_depth, pattern")


def parse_lambda_list(space: Any) -> list[Lambda]:
    """Lambdas in any of the lambda forms (numbers, ranges, a distribution, per-layer lambdas)."""
    space = structured(space)
    if isinstance(space, str):
        values: list[Lambda] = [_positive(v, space) for v in parse_range(space)]
    elif isinstance(space, Mapping):
        if "distribution" in space:
            values = [_positive(v, dict(space)) for v in draw(space)]
        elif "kind" in space:
            values = [layer_lambda(space)]
        else:
            raise ValueError(f"search space {dict(space)!r}: expected a distribution, a per-layer lambda (kind), "
                             "or lambdas/grid/points")
    elif isinstance(space, (int, float)) and not isinstance(space, bool):
        values = [_positive(float(space), space)]
    elif isinstance(space, Sequence):
        values = []
        for item in space:
            if isinstance(item, Mapping):
                values += parse_lambda_list(item)
            elif isinstance(item, bool) or not isinstance(item, (int, float)):
                raise ValueError(f"search space {space!r}: expected numbers") from None
            else:
                values.append(_positive(float(item), space))
    else:
        raise ValueError(f"search space {space!r}: expected numbers")
    if not values:
        raise ValueError(f"search space {space!r} is empty; give at least one lambda, e.g. '0.1:1.0:0.1'")
    if len(values) > MAX_SEARCH_POINTS:
        raise too_many(space, len(values))
    return values


def parse_lambdas(space: str | float | Sequence[float]) -> list[float]:
    """A list of numbers, 'a,b,c', 'start:stop:step' (stop inclusive) or a distribution -> lambdas."""
    values = parse_lambda_list(space)
    if any(isinstance(v, LayerLambda) for v in values):
        raise ValueError(f"search space {space!r}: per-layer lambdas need weave(); parse_lambdas gives numbers only")
    return values  # type: ignore[return-value]


def grid_values(name: str, values: Any) -> list[Any]:
    values = structured(values)
    if isinstance(values, str):
        return parse_range(values)
    if isinstance(values, Mapping):
        if "distribution" not in values:
            raise ValueError(f"search space: grid value of {name!r} must be a list, 'start:stop:step' or a distribution")
        return draw(values)
    if isinstance(values, Sequence):
        values = list(values)
    else:
        values = [values]
    if not values:
        raise ValueError(f"search space: the grid over {name!r} is empty; give at least one value")
    return values


def parse_search_space(space: Any = None, grid: Mapping[str, Any] | None = None,
                       points: Sequence[Mapping[str, Any]] | None = None) -> list[Point]:
    """Every search-space form -> the list of points (see the module docstring).

    `space` may itself be a mapping with `lambdas`, `grid` and/or `points`, or a list of point mappings;
    any of them may be YAML text.
    """
    space, grid, points = structured(space), structured(grid), structured(points)
    if isinstance(space, Mapping) and not ("distribution" in space or "kind" in space):
        check_keys(space, ("lambdas", "grid", "points"), "a search space", "search space")
        if grid is not None and "grid" in space or points is not None and "points" in space:
            raise ValueError("search space: grid or points given twice (in the search space and as arguments)")
        grid = space.get("grid", grid)
        points = space.get("points", points)
        space = space.get("lambdas")
    elif isinstance(space, Sequence) and not isinstance(space, str) and space and \
            all(isinstance(item, Mapping) and "kind" not in item and "distribution" not in item for item in space):
        if points is not None:
            raise ValueError("search space: points given twice")
        space, points = None, space
    if points is not None:
        if space is not None or grid is not None:
            raise ValueError("search space: give explicit points, or lambdas (with an optional grid), not both")
        return _explicit_points(points)
    if space is None:
        raise ValueError("search space is empty; give lambdas (e.g. '0.1:1.0:0.1'), a grid with lambdas, or points")
    lambdas = parse_lambda_list(space)
    grid = dict(grid or {})
    if not isinstance(grid, Mapping):
        raise ValueError(f"search space: grid must map hyper-parameter names to values, got {grid!r}")
    names = [str(name) for name in grid]
    if "lam" in names or "lambdas" in names:
        raise ValueError("search space: put lambdas under 'lambdas', not in the grid")
    columns = [grid_values(name, grid[name]) for name in names]
    count = len(lambdas) * math.prod(len(c) for c in columns)
    if count > MAX_SEARCH_POINTS:
        raise too_many({"lambdas": space, "grid": dict(grid)}, count)
    return [Point(lam, tuple(zip(names, combo))) for combo in itertools.product(*columns) for lam in lambdas]


def _explicit_points(points: Sequence[Mapping[str, Any]]) -> list[Point]:
    if isinstance(points, (str, Mapping)) or not isinstance(points, Sequence) or not points:
        raise ValueError("search space: points must be a non-empty list like [{lam: 0.5, k: 0.1}, ...]")
    if len(points) > MAX_SEARCH_POINTS:
        raise too_many(f"{len(points)} explicit points", len(points))
    parsed = []
    for i, point in enumerate(points):
        if not isinstance(point, Mapping) or "lam" not in point:
            raise ValueError(f"search space: point {i} ({point!r}) needs a 'lam' (and the method's hyper-parameters)")
        lams = parse_lambda_list(point["lam"])
        if len(lams) != 1:
            raise ValueError(f"search space: point {i} needs one lambda, got {point['lam']!r}")
        parsed.append(Point(lams[0], tuple((str(k), v) for k, v in point.items() if k != "lam")))
    return parsed


def search_space_numbers(points: Sequence[Point]) -> list[float]:
    """The distinct numbers a search space's lambdas hold, in order (a per-layer lambda gives its start and
    stop, or its pattern values): what results tables list as a weaving row's lambdas."""
    numbers: list[float] = []
    for point in points:
        lam = point.lam
        if isinstance(lam, LayerLambda):
            numbers += [lam.start, lam.stop] if lam.kind == "linear_depth" else [v for _, v in lam.patterns]
        else:
            numbers.append(float(lam))
    return list(dict.fromkeys(numbers))


def group_points(settings: Sequence[Mapping[str, Any]]) -> list[tuple[dict[str, Any], list[int]]]:
    """Point indices grouped by their (resolved) hyper-parameters, in order of first appearance."""
    groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
    for index, setting in enumerate(settings):
        groups.setdefault(tuple(sorted(setting.items())), []).append(index)
    return [(dict(key), indices) for key, indices in groups.items()]


# The lambda each method's authors recommend after tuning on evaluation data, as the Weight Weaving paper's
# Table 1 marks them (*): 0.3 for Task Arithmetic, DARE and Breadcrumbs, 0.5 for MagMax; the other methods
# were proposed data-free, at lambda = 1.
RECOMMENDED_LAMBDAS = {"task_arithmetic": 0.3, "dare": 0.3, "breadcrumbs": 0.3, "magmax": 0.5}


def recommended_lambda(method: str) -> float:
    """The authors' recommended lambda of `method` (1.0 where they recommend none)."""
    return RECOMMENDED_LAMBDAS.get(method, 1.0)
