"""Weight Weaving (Chaves et al., 2025): pool the task vectors with the method's merged deltas over a
search space of lambdas, then add the pooled delta to the pretrained weights.

Augmented set A = [tau_1..tau_T] + [l_i * g_i for l_i in lambdas] (without the task vectors when
include_deltas is false). A is never materialized for a whole model: for a deterministic method
(g_i = g) mean pooling is closed form, `(sum_t tau_t + sum(L) * g) / (T + N)`, so weaving costs one merge;
random and magmax pooling are computed from g, the task vectors and L tensor by tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from weaving.merging.engine import MergeInputs, assemble, method_seed, open_inputs, prepare_method
from weaving.merging.methods.magmax import max_magnitude
from weaving.merging.pooling import POOLINGS, random_choice
from weaving.merging.registry import MergeMethod, derive_seed, get_method, get_pooling
from weaving.merging.task_set import TaskVectorSet
from weaving.merging.task_vectors import StateDictLike
from weaving.merging.tensor_ops import sequential_sum


MAX_SEARCH_POINTS = 10_000  # each lambda is one member of the augmented set; more is a typo, not a search


def _too_many(space: object, count: int) -> ValueError:
    return ValueError(f"search space {space!r} has {count} points; at most {MAX_SEARCH_POINTS} are allowed "
                      "(use a larger step)")


def parse_lambdas(space: str | float | Sequence[float]) -> list[float]:
    """A search space as a list of numbers, 'a,b,c', or 'start:stop:step' (stop inclusive), of at most
    MAX_SEARCH_POINTS points."""
    if isinstance(space, str):
        text = space.strip()
        try:
            if ":" in text:
                parts = [float(p) for p in text.split(":")]
                if len(parts) != 3:
                    raise ValueError
                start, stop, step = parts
                if not all(math.isfinite(p) for p in parts):
                    raise ValueError(f"search space {space!r}: start, stop and step must be finite numbers")
                if not step > 0:
                    raise ValueError(f"search space {space!r}: step must be positive")
                if stop < start:
                    raise ValueError(f"search space {space!r}: stop is below start, so it is empty")
                count = int(math.floor((stop - start) / step + 1e-9)) + 1
                if count > MAX_SEARCH_POINTS:
                    raise _too_many(space, count)
                values = [round(start + i * step, 12) for i in range(count)]
            else:
                values = [float(p) for p in text.replace(",", " ").split()]
        except ValueError as error:
            if str(error).startswith("search space"):
                raise
            raise ValueError(f"search space {space!r}: expected 'start:stop:step' or numbers like '0.5,1.0'") from None
    elif isinstance(space, (int, float)) and not isinstance(space, bool):
        values = [float(space)]
    else:
        try:
            values = [float(v) for v in space]
        except (TypeError, ValueError):
            raise ValueError(f"search space {space!r}: expected numbers") from None
    if not values:
        raise ValueError(f"search space {space!r} is empty; give at least one lambda, e.g. '0.1:1.0:0.1'")
    if len(values) > MAX_SEARCH_POINTS:
        raise _too_many(space if len(str(space)) < 60 else f"{str(space)[:57]}...", len(values))
    for value in values:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"search space {space!r} holds {value}; every lambda must be a finite positive number")
    return values


class AugmentedSet(TaskVectorSet):
    """The augmented set as a lazy task-vector set, so any merge method can pool over it."""

    def __init__(self, inputs: MergeInputs, method: MergeMethod, hparams: dict[str, Any], stats: Any,
                 lambdas: list[float], include_deltas: bool, seed: int):
        base = inputs.task_set
        super().__init__(base.sources, base.keys, base.device)
        self.base, self.method, self.hparams, self.stats = base, method, hparams, stats
        self.lambdas, self.offset, self.seed = lambdas, (base.num_tasks if include_deltas else 0), seed
        self._cache: dict[tuple[int, str], torch.Tensor] = {}

    @property
    def num_tasks(self) -> int:
        return self.offset + len(self.lambdas)

    def merged(self, index: int, key: str, taus: list[torch.Tensor] | None = None) -> torch.Tensor:
        """g_i for one tensor: one cached g for a deterministic method, a fresh seeded draw per lambda otherwise.
        `taus`: this tensor's task vectors when the caller has already read them (read once, checked once)."""
        draw = index if self.method.random else 0
        if (draw, key) not in self._cache:
            if len(self._cache) > 2 * len(self.keys) + 1 and self.method.random:
                self._cache.clear()
            self._cache[(draw, key)] = self.method.merge(
                self.base.tensors(key) if taus is None else taus, key=key, stats=self.stats, **self.hparams,
                **method_seed(self.method, self.seed, key, "lambda", draw),
            )
        return self._cache[(draw, key)]

    def tensor(self, task: int, key: str) -> torch.Tensor:
        if task < self.offset:
            return self.base.tensor(task, key)
        index = task - self.offset
        return self.lambdas[index] * self.merged(index, key)


def weave(
    pretrained: StateDictLike,
    task_vectors: Sequence[StateDictLike],
    method: str,
    lambdas: str | Sequence[float],
    pooling: str = "mean",
    include_deltas: bool = True,
    *,
    device: str | torch.device | None = None,
    seed: int = 0,
    **hparams: Any,
) -> dict[str, torch.Tensor]:
    """Weight Weaving: `pretrained + pool(A)` over the augmented set A (see the module docstring)."""
    return run_weave(pretrained, task_vectors, method, lambdas, pooling, include_deltas,
                     device=device, seed=seed, progress=None, hparams=hparams)


def run_weave(pretrained, task_vectors, method: str, lambdas, pooling: str, include_deltas: bool, *,
              device, seed: int, progress: bool | None, hparams: dict[str, Any]) -> dict[str, torch.Tensor]:
    spec = get_method(method)
    hparams = spec.resolve(hparams)
    values = parse_lambdas(lambdas)
    pooling_method = get_pooling(pooling)
    if not isinstance(include_deltas, bool):
        raise ValueError(f"include_deltas must be true or false, got {include_deltas!r}")
    inputs = open_inputs(pretrained, task_vectors, device)
    with torch.no_grad():
        stats = prepare_method(spec, inputs.task_set, hparams)
        augmented = AugmentedSet(inputs, spec, hparams, stats, values, include_deltas, seed)
        if pooling_method is None:
            delta_for = _elementwise_pooling(augmented, pooling)
        else:
            delta_for = _method_pooling(augmented, pooling_method)
        description = f"weave[{method}, {len(values)} lambdas, {pooling}]"
        return assemble(inputs, delta_for, description, progress)


def _elementwise_pooling(augmented: AugmentedSet, pooling: str):
    task_set, lambdas, seed = augmented.base, augmented.lambdas, augmented.seed
    with_deltas = augmented.offset > 0
    count = augmented.num_tasks

    def delta_for(key: str) -> torch.Tensor:
        pool_seed = derive_seed(seed, "pooling", key)
        if augmented.method.random:  # a fresh g per lambda: pool the members of this tensor explicitly
            members = [augmented.tensor(m, key) for m in range(count)]
            return POOLINGS[pooling](members, seed=pool_seed)
        taus = task_set.tensors(key)
        g = augmented.merged(0, key, taus)
        augmented._cache.clear()
        if pooling == "mean":  # closed form: one merge, whatever the number of lambdas
            if with_deltas and augmented.method.sums_tasks:  # sum_t tau_t is g itself: don't sum twice
                return g * ((sum(lambdas) + 1) / count)
            total = sum(lambdas) * g
            if with_deltas:
                total = sequential_sum(taus) + total
            return total / count
        if pooling == "magmax":  # among the l_i * g, the last lambda of largest |l_i| wins
            largest = max(abs(l) for l in lambdas)
            winner = [l for l in lambdas if abs(l) == largest][-1]
            return max_magnitude((taus if with_deltas else []) + [winner * g])
        # random: each element picks one member index; lambda members are l_i * g
        choice = random_choice(g.shape, count, pool_seed, g.device)
        scales = torch.tensor(lambdas, dtype=g.dtype, device=g.device)
        if not with_deltas:
            return scales[choice] * g
        num_tasks = task_set.num_tasks
        from_lambdas = scales[(choice - num_tasks).clamp(min=0)] * g
        from_tasks = torch.stack(taus).gather(0, choice.clamp(max=num_tasks - 1).unsqueeze(0)).squeeze(0)
        return torch.where(choice < num_tasks, from_tasks, from_lambdas)

    return delta_for


def _method_pooling(augmented: AugmentedSet, pooling_method: MergeMethod):
    pool_hparams = dict(pooling_method.defaults)
    pool_stats = prepare_method(pooling_method, augmented, pool_hparams)

    def delta_for(key: str) -> torch.Tensor:
        members = augmented.tensors(key)
        return pooling_method.merge(members, key=key, stats=pool_stats, **pool_hparams,
                                    **method_seed(pooling_method, augmented.seed, key, "pooling"))

    return delta_for
