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
