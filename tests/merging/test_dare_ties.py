import pytest
import torch

import weaving
from weaving.merging.tensor_ops import sign_consensus
from weaving.merging.registry import derive_seed

from .conftest import delta, elected_disjoint_mean, make_inputs


def test_elect_and_disjoint_mean_by_hand():
    x1 = torch.tensor([1.0, -2.0, 0.0, 1.0, 0.0])
    x2 = torch.tensor([3.0, 1.0, 0.0, -1.0, -4.0])
    # sums 4, -1, 0, 0, -4 -> signs +, -, + (sum 0), + (sum 0), -
    assert sign_consensus([x1, x2]).tolist() == [2.0, -2.0, 0.0, 1.0, -4.0]


def test_p_zero_is_ties_keeping_everything(inputs):
    pretrained, tvs = inputs
    a = weaving.merge(pretrained, tvs, "dare_ties", p=0.0)
    b = weaving.merge(pretrained, tvs, "ties", k=1.0)
    for key in pretrained:
        torch.testing.assert_close(a[key], b[key])


def test_equals_an_elementwise_reference_with_the_same_masks():
    pretrained, tvs = make_inputs(dtype=torch.float64)
    p, seed = 0.4, 11
    merged = delta(weaving.merge(pretrained, tvs, "dare_ties", p=p, seed=seed), pretrained)
    for key in pretrained:
        kept = []
        for task, tv in enumerate(tvs):  # dare's own mask: one seeded stream per tensor and task
            generator = torch.Generator().manual_seed(derive_seed(derive_seed(seed, key), "dare", task))
            mask = torch.rand(tv[key].shape, generator=generator, dtype=torch.float64) >= p
            kept.append((tv[key] * mask / (1 - p)).reshape(-1).tolist())
        torch.testing.assert_close(merged[key].reshape(-1), elected_disjoint_mean(kept))


def test_seeded_random_and_p_checked(inputs):
    pretrained, tvs = inputs
    a = weaving.merge(pretrained, tvs, "dare_ties", p=0.5, seed=1)
    b = weaving.merge(pretrained, tvs, "dare_ties", p=0.5, seed=1)
    c = weaving.merge(pretrained, tvs, "dare_ties", p=0.5, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.proj.weight"], c["visual.proj.weight"])
    with pytest.raises(ValueError, match="p is the drop probability"):
        weaving.merge(pretrained, tvs, "dare_ties", p=1.0)
