"""Registries of merge methods and pooling functions, looked up by name.

A merge method is a plain function `(tensors, *, key, stats, **hparams) -> Tensor` over the T task
tensors of one parameter, registered with `@register_method(name)`. Its keyword-only arguments with
defaults are its hyper-parameters (the public names used by `weaving.merge` and the configs); a tuple
default marks a per-task list (one number per task vector, as mergekit's per-model weights). Methods
that need statistics over whole task vectors (thresholds, quantiles) also register a `prepare` function
that the engine runs once, streaming over the task vectors, before the per-tensor pass.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

RESERVED_ARGS = ("key", "stats", "seed")


@dataclass(frozen=True)
class MergeMethod:
    name: str
    merge: Callable[..., Any]
    prepare: Callable[..., Any] | None = None
    random: bool = False
    sums_tasks: bool = False  # g is exactly the sum of the task vectors (weaving's closed form reuses it)
    defaults: dict[str, Any] = field(default_factory=dict)
    compared: bool = True  # among the methods a comparison (the demo, ComparisonModule) runs when none are named

    def resolve(self, hparams: dict[str, Any]) -> dict[str, Any]:
        """Defaults overridden by `hparams`; unknown names raise a ValueError listing the valid ones."""
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(
                f"method {self.name!r} has no hyper-parameter {unknown[0]!r}; its hyper-parameters: {known}"
            )
        resolved = dict(self.defaults)
        for name, value in hparams.items():
            default = self.defaults[name]
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"method {self.name!r}: {name} must be true or false, got {value!r}")
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"method {self.name!r}: {name} must be a whole number, got {value!r}")
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(f"method {self.name!r}: {name} must be a finite number, got {value!r}")
                value = float(value)
            elif isinstance(default, str) and not isinstance(value, str):
                raise ValueError(f"method {self.name!r}: {name} must be a string, got {value!r}")
            elif isinstance(default, tuple):  # one number per task (mergekit's per-model parameters)
                if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not all(
                        not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in value):
                    raise ValueError(f"method {self.name!r}: {name} must be a list of finite numbers, one per task, "
                                     f"got {value!r}")
                value = tuple(float(v) for v in value)
            resolved[name] = value
        return resolved


METHODS: dict[str, MergeMethod] = {}


def register_method(name: str, *, prepare: Callable[..., Any] | None = None, random: bool = False,
                    sums_tasks: bool = False, compared: bool = True):
    """Register a per-tensor merge function under `name`; its keyword defaults are its hyper-parameters.
    `compared=False` leaves it out of the comparisons that run every method by default (a method that only
    reproduces another tool's rules, such as the mergekit_* methods)."""

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        params = inspect.signature(fn).parameters.values()
        defaults = {
            p.name: p.default
            for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in RESERVED_ARGS
        }
        if name in METHODS:
            raise ValueError(f"merge method {name!r} is registered twice")
        METHODS[name] = MergeMethod(name=name, merge=fn, prepare=prepare, random=random, sums_tasks=sums_tasks,
                                    defaults=defaults, compared=compared)
        return fn

    return decorator


def compared_methods() -> list[str]:
    """The methods a comparison runs when none are named: every registered method that is `compared`."""
    import weaving.merging.methods  # noqa: F401  (fills the registry)

    return [name for name, method in METHODS.items() if method.compared]


def get_method(name: str) -> MergeMethod:
    """The registered method called `name`; the one place that decides whether a method name is known."""
    import weaving.merging.methods  # noqa: F401  (fills the registry)

    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"unknown merge method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def with_recorded_zero_entries(method: str, args: dict[str, Any], zero_entries: int) -> dict[str, Any]:
    """`args` plus the `zero_entries` a run records (index.json) when `method` counts them (ties, pcb) and
    `args` does not set it: a run's merges use the population of the official harness by default. A
    per-tensor threshold (`per_tensor: true`) has no whole-vector population: nothing is added."""
    if zero_entries and "zero_entries" in get_method(method).defaults and "zero_entries" not in args \
            and args.get("per_tensor") is not True:
        return {**args, "zero_entries": zero_entries}
    return dict(args)


def get_pooling(name: str) -> MergeMethod | None:
    """None for an elementwise pooling of weaving.merging.pooling (mean, random, magmax), else the merge
    method used as pooling; an unknown name raises a ValueError listing both kinds."""
    import weaving.merging.methods  # noqa: F401
    from weaving.merging.pooling import POOLINGS

    if isinstance(name, str) and name in POOLINGS:
        return None
    if isinstance(name, str) and name in METHODS:
        return METHODS[name]
    raise ValueError(f"unknown pooling {name!r}; known poolings: {', '.join(POOLINGS)}, "
                     f"or any merge method: {', '.join(sorted(METHODS))}")


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed for one (tensor, member, ...) from the user's seed, independent of processing order."""
    digest = hashlib.blake2b(repr((int(seed),) + parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
