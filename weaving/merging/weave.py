"""Weight Weaving (Chaves et al., 2025): pool the task vectors with the method's merged deltas over a
search space, then add the pooled delta to the pretrained weights.

The search space is a list of points (`weaving.merging.search_space`): a lambda (a number or a per-layer
function) and the method's hyper-parameters. Augmented set A = [tau_1..tau_T] + [l_i * g_i per point i]
(without the task vectors when include_deltas is false), g_i the method's merge at point i's
hyper-parameters. A is never materialized for a whole model: for a deterministic method, points with the
same hyper-parameters share one g, so mean pooling is closed form, `(sum_t tau_t + sum_h (sum_{i in h} l_i)
* g_h) / (T + N)`, and weaving costs one merge per distinct setting of the hyper-parameters, with each
input tensor read once in the merge pass. Random and magmax pooling are computed from the g_h, the task
vectors and the lambdas tensor by tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from weaving.io.source import StateDictLike
from weaving.merging.engine import MergeInputs, assemble, method_seed, open_inputs, prepare_method
from weaving.merging.pooling import POOLINGS, random_choice
from weaving.merging.registry import MergeMethod, derive_seed, get_method, get_pooling
from weaving.merging.search_space import (  # noqa: F401  (parse_lambdas, MAX_SEARCH_POINTS: public names here too)
    MAX_SEARCH_POINTS,
    LayerLambda,
    Point,
    group_points,
    parse_lambdas,
    parse_search_space,
)
from weaving.merging.task_set import TaskVectorSet
from weaving.merging.tensor_ops import max_magnitude, sequential_sum


class WeavePlan:
    """The points of a search space resolved against one method: settings, groups and per-tensor lambdas.

    Points with the same hyper-parameters form a group; a deterministic method is merged once per group.
    """

    def __init__(self, spec: MergeMethod, points: list[Point], fixed: dict[str, Any], keys: Sequence[str]):
        self.spec, self.points = spec, points
        settings = []
        for point in points:
            clash = sorted(set(point.setting) & set(fixed))
            if clash:
                raise ValueError(f"search space: {clash[0]!r} is given both as a fixed hyper-parameter and in the "
                                 "search space; give it in one place")
            settings.append(spec.resolve({**fixed, **point.setting}))
        self.groups = group_points(settings)
        self.group_of = [0] * len(points)
        for g, (_, indices) in enumerate(self.groups):
            for index in indices:
                self.group_of[index] = g
        self._lambdas = [p.lam.bind(keys) if isinstance(p.lam, LayerLambda) else p.lam for p in points]

    def lam(self, index: int, key: str) -> float:
        value = self._lambdas[index]
        return value(key) if callable(value) else value

    def lambdas(self, key: str) -> list[float]:
        return [self.lam(i, key) for i in range(len(self.points))]


class AugmentedSet(TaskVectorSet):
    """The augmented set as a lazy task-vector set, so any merge method can pool over it."""

    def __init__(self, inputs: MergeInputs, plan: WeavePlan, stats: list[Any], include_deltas: bool, seed: int):
        base = inputs.task_set
        super().__init__(base.sources, base.keys, base.device)
        self.base, self.plan, self.method, self.stats = base, plan, plan.spec, stats
        self.offset, self.seed = (base.num_tasks if include_deltas else 0), seed
        self._cache: dict[tuple[int, str], torch.Tensor] = {}

    @property
    def num_tasks(self) -> int:
        return self.offset + len(self.plan.points)

    # statistics of a merge method used as pooling: over the same tensors as the task vectors (all ranks)
    def numel(self) -> int:
        return self.base.numel()

    def all_sum(self, value: Any) -> Any:
        return self.base.all_sum(value)

    @property
    def partial(self) -> bool:
        return self.base.partial

    def selection_dtype(self) -> torch.dtype:
        return self.base.selection_dtype()

    def reduce_counts(self, counts: torch.Tensor) -> torch.Tensor:
        return self.base.reduce_counts(counts)

    def merged(self, index: int, key: str, taus: list[torch.Tensor] | None = None) -> torch.Tensor:
        """g for the point `index` and one tensor: one g per group of hyper-parameters for a deterministic
        method, a fresh seeded draw per point for a random one. `taus`: this tensor's task vectors when the
        caller has already read them (read once, checked once)."""
        group = self.plan.group_of[index]
        draw = index if self.method.random else group
        if (draw, key) not in self._cache:
            if len(self._cache) > 2 * len(self.keys) + 1 and self.method.random:
                self._cache.clear()
            setting = self.plan.groups[group][0]
            self._cache[(draw, key)] = self.method.merge(
                self.base.tensors(key) if taus is None else taus, key=key, stats=self.stats[group], **setting,
                **method_seed(self.method, self.seed, key, "lambda", draw),
            )
        return self._cache[(draw, key)]

    def tensor(self, task: int, key: str) -> torch.Tensor:
        if task < self.offset:
            return self.base.tensor(task, key)
        index = task - self.offset
        return self.plan.lam(index, key) * self.merged(index, key)


def weave(
    pretrained: StateDictLike,
    task_vectors: Sequence[StateDictLike],
    method: str,
    lambdas: Any = None,
    pooling: str = "mean",
    include_deltas: bool = True,
    *,
    device: str | torch.device | None = None,
    seed: int = 0,
    grid: Mapping[str, Any] | None = None,
    points: Sequence[Mapping[str, Any]] | None = None,
    **hparams: Any,
) -> dict[str, torch.Tensor]:
    """Weight Weaving: `pretrained + pool(A)` over the augmented set A (see the module docstring).

    `lambdas` is any search space of `weaving.merging.search_space` (a list, 'start:stop:step', a
    distribution, per-layer lambdas, or a mapping with lambdas/grid/points); `grid` maps the method's
    hyper-parameters to lists of values (crossed with the lambdas); `points` lists explicit points
    `[{"lam": 0.5, "k": 0.1}, ...]`. `hparams` are the method's fixed hyper-parameters.
    """
    return run_weave(pretrained, task_vectors, method, lambdas, pooling, include_deltas,
                     device=device, seed=seed, progress=None, hparams=hparams, grid=grid, points=points)


def prepare_weave(pretrained, task_vectors, method: str, lambdas, pooling: str, include_deltas: bool, *, device,
                  seed: int, hparams: dict[str, Any], grid=None, points=None,
                  distributed: bool = False) -> tuple[MergeInputs, Callable[[str], torch.Tensor], str]:
    """Check everything, run the statistics passes, and return the inputs and the pooled delta per tensor."""
    spec = get_method(method)
    spec.resolve(hparams)
    space = parse_search_space(lambdas, grid, points)
    pooling_method = get_pooling(pooling)
    if not isinstance(include_deltas, bool):
        raise ValueError(f"include_deltas must be true or false, got {include_deltas!r}")
    inputs = open_inputs(pretrained, task_vectors, device, distributed)
    plan = WeavePlan(spec, space, hparams, inputs.task_set.keys)
    with torch.no_grad():
        stats = [prepare_method(spec, inputs.task_set, setting) for setting, _ in plan.groups]
        augmented = AugmentedSet(inputs, plan, stats, include_deltas, seed)
        if pooling_method is None:
            delta_for = _elementwise_pooling(augmented, pooling)
        else:
            delta_for = _method_pooling(augmented, pooling_method, spec.resolve(hparams).get("zero_entries", 0))
    merges = len(space) if spec.random else len(plan.groups)
    return inputs, delta_for, f"weave[{method}, {len(space)} points, {merges} merges, {pooling}]"


def run_weave(pretrained, task_vectors, method: str, lambdas, pooling: str, include_deltas: bool, *,
              device, seed: int, progress: bool | None, hparams: dict[str, Any], grid=None,
              points=None) -> dict[str, torch.Tensor]:
    inputs, delta_for, description = prepare_weave(pretrained, task_vectors, method, lambdas, pooling, include_deltas,
                                                   device=device, seed=seed, hparams=hparams, grid=grid, points=points)
    with torch.no_grad():
        return assemble(inputs, delta_for, description, progress)


def _elementwise_pooling(augmented: AugmentedSet, pooling: str):
    task_set, plan, seed = augmented.base, augmented.plan, augmented.seed
    with_deltas = augmented.offset > 0
    count = augmented.num_tasks

    def delta_for(key: str) -> torch.Tensor:
        pool_seed = derive_seed(seed, "pooling", key)
        if augmented.method.random:  # a fresh g per point: pool the members of this tensor explicitly
            members = [augmented.tensor(m, key) for m in range(count)]
            return POOLINGS[pooling](members, seed=pool_seed)
        taus = task_set.tensors(key)  # read once for every group of the search space
        gs = [augmented.merged(indices[0], key, taus) for _, indices in plan.groups]
        augmented._cache.clear()
        lambdas = plan.lambdas(key)
        if pooling == "mean":  # closed form: one merge per group, whatever the number of lambdas
            sums = [sum(lambdas[i] for i in indices) for _, indices in plan.groups]
            if with_deltas and augmented.method.sums_tasks and len(gs) == 1:  # g is sum_t tau_t: don't sum twice
                return gs[0] * ((sums[0] + 1) / count)
            total = sums[0] * gs[0]
            for extra, g in zip(sums[1:], gs[1:]):
                total += extra * g
            if with_deltas:
                total = sequential_sum(taus) + total
            return total / count
        if pooling == "magmax":  # per group, among the l_i * g, the last lambda of largest |l_i| wins
            winners = []
            for g, (_, indices) in zip(gs, plan.groups):
                largest = max(abs(lambdas[i]) for i in indices)
                winner = [i for i in indices if abs(lambdas[i]) == largest][-1]
                winners.append((winner, lambdas[winner] * g))
            winners.sort(key=lambda item: item[0])  # members keep their order: later ones win equal values
            return max_magnitude((taus if with_deltas else []) + [value for _, value in winners])
        # random: each element picks one member index; member i of the search space is l_i * g_(its group)
        g0 = gs[0]
        choice = random_choice(g0.shape, count, pool_seed, g0.device)
        scales = torch.tensor(lambdas, dtype=g0.dtype, device=g0.device)
        num_tasks = task_set.num_tasks if with_deltas else 0
        point = (choice - num_tasks).clamp(min=0)
        if len(gs) == 1:
            from_lambdas = scales[point] * g0
        else:
            group = torch.tensor(plan.group_of, device=g0.device)[point]
            from_lambdas = scales[point] * torch.stack(gs).gather(0, group.unsqueeze(0)).squeeze(0)
        if not with_deltas:
            return from_lambdas
        from_tasks = torch.stack(taus).gather(0, choice.clamp(max=num_tasks - 1).unsqueeze(0)).squeeze(0)
        return torch.where(choice < num_tasks, from_tasks, from_lambdas)

    return delta_for


def _method_pooling(augmented: AugmentedSet, pooling_method: MergeMethod, zero_entries: int = 0):
    """The pooling method's g over the augmented set, at its default hyper-parameters. Every member of A
    has the task vectors' population, so a pooling that counts `zero_entries` (ties, pcb) gets the method's."""
    pool_hparams = dict(pooling_method.defaults)
    if "zero_entries" in pool_hparams:
        pool_hparams["zero_entries"] = zero_entries
    pool_stats = prepare_method(pooling_method, augmented, pool_hparams)

    def delta_for(key: str) -> torch.Tensor:
        members = augmented.tensors(key)
        return pooling_method.merge(members, key=key, stats=pool_stats, **pool_hparams,
                                    **method_seed(pooling_method, augmented.seed, key, "pooling"))

    return delta_for
