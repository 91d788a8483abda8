"""Pooling functions of Weight Weaving: elementwise over the members of the augmented set.

Each takes the members' tensors for one parameter (in augmented-set order) and a seed. Any merge method
name is also accepted as a pooling (see weave.py): that method's g over the augmented set.
"""

from __future__ import annotations

from typing import Callable

import torch

from weaving.merging.tensor_ops import max_magnitude, sequential_sum


def mean_pool(members: list[torch.Tensor], *, seed: int) -> torch.Tensor:
    """Arithmetic mean."""
    return sequential_sum(members) / len(members)


def random_choice(shape: torch.Size, count: int, seed: int, device: torch.device) -> torch.Tensor:
    """For each element, the index of one member chosen uniformly at random (seeded)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randint(0, count, tuple(shape), generator=generator, device=device)


def random_pool(members: list[torch.Tensor], *, seed: int) -> torch.Tensor:
    """Each element takes the value of one member chosen uniformly at random."""
    choice = random_choice(members[0].shape, len(members), seed, members[0].device)
    return torch.stack(members).gather(0, choice.unsqueeze(0)).squeeze(0)


def magmax_pool(members: list[torch.Tensor], *, seed: int) -> torch.Tensor:
    """The member value with the largest abs value; on equal abs values the later member wins."""
    return max_magnitude(members)


POOLINGS: dict[str, Callable[..., torch.Tensor]] = {
    "mean": mean_pool,
    "random": random_pool,
    "magmax": magmax_pool,
}
