import pytest
import torch

import weaving


def test_hand_computed_case():
    # tau1 = [1, -2, 0.5, 0], tau2 = [-3, 1, 0.2, 0.1], k = 0.5: keep abs >= the 2nd smallest abs of each task
    # trimmed: [1, -2, .5, 0] and [-3, 1, .2, 0]; elected sign [-1, -1, 1, 0 -> majority (-1)]
    pre = {"w": torch.zeros(4)}
    tvs = [{"w": torch.tensor([1.0, -2.0, 0.5, 0.0])}, {"w": torch.tensor([-3.0, 1.0, 0.2, 0.1])}]
    merged = weaving.merge(pre, tvs, "ties", k=0.5)
    torch.testing.assert_close(merged["w"], torch.tensor([-3.0, -2.0, 0.35, 0.0]))


def test_threshold_is_global_over_all_tensors_of_a_task():
    flat = [{"w": torch.tensor([1.0, -2.0, 0.5, 0.0])}, {"w": torch.tensor([-3.0, 1.0, 0.2, 0.1])}]
    split = [{"a": tv["w"][:1], "b": tv["w"][1:]} for tv in flat]
    whole = weaving.merge({"w": torch.zeros(4)}, flat, "ties", k=0.5)["w"]
    parts = weaving.merge({"a": torch.zeros(1), "b": torch.zeros(3)}, split, "ties", k=0.5)
    torch.testing.assert_close(torch.cat([parts["a"], parts["b"]]), whole)


def test_zero_elected_sign_uses_majority_of_all_signs():
    # element 2: +1 and -1 cancel; elected signs elsewhere are all positive -> majority +1 -> keep the +1
    tvs = [{"w": torch.tensor([1.0, 2.0, 1.0])}, {"w": torch.tensor([1.0, 2.0, -1.0])}]
    merged = weaving.merge({"w": torch.zeros(3)}, tvs, "ties", k=1.0)
    torch.testing.assert_close(merged["w"], torch.tensor([1.0, 2.0, 1.0]))


def test_k_one_is_the_plain_disjoint_mean(inputs):
    pretrained, tvs = inputs
    merged = weaving.merge(pretrained, tvs, "ties", k=1.0)
    for key in pretrained:
        stacked = torch.stack([tv[key] for tv in tvs])
        sign = torch.sign(stacked.sum(0))
        agree = (torch.sign(stacked) == sign) & (stacked != 0)
        expected = (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)
        torch.testing.assert_close(merged[key] - pretrained[key], expected, atol=1e-6, rtol=1e-5)


def test_matches_dense_reference(inputs):
    """The original formulation on one dense T x d matrix (small here) gives the same result."""
    pretrained, tvs = inputs
    keys = list(pretrained)
    dense = torch.stack([torch.cat([tv[k].reshape(-1) for k in keys]) for tv in tvs])
    d = dense.shape[1]
    kth = dense.abs().kthvalue(d - int(d * 0.2), dim=1, keepdim=True).values
    trimmed = dense * (dense.abs() >= kth)
    sign = torch.sign(trimmed.sum(0))
    sign[sign == 0] = torch.sign(sign.sum())
    keep = torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    selected = trimmed * keep
    expected = selected.sum(0) / (selected != 0).sum(0).float().clamp(min=1)
    merged = weaving.merge(pretrained, tvs, "ties")
    got = torch.cat([(merged[k] - pretrained[k]).reshape(-1) for k in keys])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("k", [0.0, -0.1, 1.5])
def test_bad_k(inputs, k):
    with pytest.raises(ValueError, match="k is the kept fraction"):
        weaving.merge(*inputs, "ties", k=k)
