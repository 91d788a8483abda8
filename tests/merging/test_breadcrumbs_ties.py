import pytest
import torch

import weaving
from weaving.merging.methods.breadcrumbs import breadcrumbs_mask

from .conftest import delta, elected_disjoint_mean, make_inputs


def test_keeping_everything_is_ties_keeping_everything(inputs):
    pretrained, tvs = inputs
    a = weaving.merge(pretrained, tvs, "breadcrumbs_ties", beta=1.0, gamma=0.0)
    b = weaving.merge(pretrained, tvs, "ties", k=1.0)
    for key in pretrained:
        torch.testing.assert_close(a[key], b[key])


def test_rows_by_hand():
    pre = {"w": torch.zeros(1, 5)}
    # per row of 5: gamma 0.2 drops the largest |value|, beta 0.4 keeps the next two
    tvs = [{"w": torch.tensor([[9.0, 3.0, -2.0, 1.0, 0.5]])}, {"w": torch.tensor([[1.0, -4.0, 5.0, 3.0, 0.1]])}]
    # task 1 keeps 3, -2; task 2 keeps -4, 3 -> sums: 0, -1, -2, 3, 0 -> signs +, -, -, +, +
    out = weaving.merge(pre, tvs, "breadcrumbs_ties", beta=0.4, gamma=0.2)["w"]
    assert out.tolist() == [[0.0, -4.0, -2.0, 3.0, 0.0]]


def test_equals_an_elementwise_reference():
    pretrained, tvs = make_inputs(dtype=torch.float64)
    merged = delta(weaving.merge(pretrained, tvs, "breadcrumbs_ties", beta=0.5, gamma=0.2), pretrained)
    for key in pretrained:
        kept = [(tv[key] * breadcrumbs_mask(tv[key], 0.5, 0.2) if tv[key].dim() else tv[key]).reshape(-1).tolist()
                for tv in tvs]
        torch.testing.assert_close(merged[key].reshape(-1), elected_disjoint_mean(kept))


def test_bad_fractions(inputs):
    with pytest.raises(ValueError, match="beta and gamma must be in"):
        weaving.merge(*inputs, "breadcrumbs_ties", beta=1.5)
