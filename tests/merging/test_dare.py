import pytest
import torch

import weaving


def test_p_zero_is_task_arithmetic(inputs):
    pretrained, tvs = inputs
    a = weaving.merge(pretrained, tvs, "dare", p=0.0)
    b = weaving.merge(pretrained, tvs, "task_arithmetic")
    for key in pretrained:
        torch.testing.assert_close(a[key], b[key])


def test_kept_entries_are_rescaled_and_drop_rate_is_p():
    pre = {"w": torch.zeros(20000)}
    tvs = [{"w": torch.ones(20000)}]
    out = weaving.merge(pre, tvs, "dare", p=0.3, seed=1)["w"]
    values = out.unique()
    assert len(values) == 2 and values[0] == 0.0
    assert values[1].item() == pytest.approx(1 / 0.7)
    assert abs((out == 0).float().mean().item() - 0.3) < 0.02
    no_rescale = weaving.merge(pre, tvs, "dare", p=0.3, seed=1, rescale=False)["w"]
    assert set(no_rescale.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(no_rescale == 0, out == 0)


def test_seeded_and_bit_identical(inputs):
    pretrained, tvs = inputs
    a = weaving.merge(pretrained, tvs, "dare", p=0.5, seed=3)
    b = weaving.merge(pretrained, tvs, "dare", p=0.5, seed=3)
    c = weaving.merge(pretrained, tvs, "dare", p=0.5, seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.proj.weight"], c["visual.proj.weight"])


def test_each_task_gets_its_own_mask():
    pre = {"w": torch.zeros(1000)}
    out = weaving.merge(pre, [{"w": torch.ones(1000)}, {"w": torch.full((1000,), 10.0)}], "dare", p=0.5, rescale=False)["w"]
    assert {0.0, 1.0, 10.0, 11.0} == set(out.unique().tolist())


def test_bad_p(inputs):
    with pytest.raises(ValueError, match=r"p is the drop probability"):
        weaving.merge(*inputs, "dare", p=1.0)


def test_float64_each_element_is_a_rescaled_subset_sum_of_the_tasks():
    """g = sum_t m_t * tau_t / (1 - p) with m_t in {0, 1}: each output element is one of the 2^T subset sums."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(3000, generator=g, dtype=torch.float64) for _ in range(2))
    out = weaving.merge({"w": torch.zeros(3000, dtype=torch.float64)}, [{"w": a}, {"w": b}], "dare", p=0.4, seed=5)["w"]
    assert out.dtype == torch.float64
    candidates = torch.stack([torch.zeros_like(a), a, b, a + b]) / 0.6
    distance = (candidates - out).abs().min(dim=0).values
    assert distance.max().item() < 1e-12
    chosen = (candidates - out).abs().argmin(dim=0)
    kept_a = (chosen == 1) | (chosen == 3)
    kept_b = (chosen == 2) | (chosen == 3)
    assert abs(kept_a.double().mean().item() - 0.6) < 0.04 and abs(kept_b.double().mean().item() - 0.6) < 0.04
    assert (kept_a != kept_b).any()  # independent masks per task
