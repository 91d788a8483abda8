"""MagMax (Marczak et al., 2024) against a reference written from the definition, in float64."""

import torch

import weaving
from weaving.merging.methods.magmax import magmax

from .conftest import assert_float64_close


def magmax_reference(values: list[torch.Tensor]) -> torch.Tensor:
    """Per element, the value of largest |x|; among equal |x| the later task's value."""
    columns = zip(*[v.reshape(-1).tolist() for v in values])
    best = []
    for column in columns:
        winner = column[0]
        for x in column[1:]:
            if abs(x) >= abs(winner):
                winner = x
        best.append(winner)
    return torch.tensor(best, dtype=values[0].dtype).reshape(values[0].shape)


def test_matches_the_reference_in_float64(inputs):
    pretrained, tvs = inputs
    merged = weaving.merge(pretrained, tvs, "magmax")
    for key in pretrained:
        assert_float64_close(merged[key] - pretrained[key], magmax_reference([tv[key] for tv in tvs]))


def test_largest_magnitude_and_later_task_wins_ties():
    a = torch.tensor([1.0, -3.0, 2.0, 0.0])
    b = torch.tensor([-2.0, 3.0, -2.0, 0.0])
    c = torch.tensor([0.5, 1.0, 2.0, -0.0])
    assert torch.equal(magmax([a, b, c], key="w", stats=None), torch.tensor([-2.0, 3.0, 2.0, 0.0]))
    # the tie at index 2 is between a (2.0), b (-2.0) and c (2.0): the last one, c, wins
    assert magmax([a, b], key="w", stats=None)[2] == -2.0
    assert torch.equal(magmax([a, b], key="w", stats=None), magmax_reference([a, b]))
