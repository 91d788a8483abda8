"""Model Breadcrumbs (Davari & Belilovsky, 2024) against a reference written from the definition."""

import pytest
import torch

import weaving
from weaving.merging.methods.breadcrumbs import breadcrumbs, breadcrumbs_mask

from .conftest import assert_float64_close


def breadcrumbs_reference(tensor: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """Per row of the last dimension (length n): zero the int(n*gamma) largest |x|, then keep only the
    int(n*beta) largest |x| of the rest. Plain Python on each row; 0-dim tensors pass unchanged."""
    if tensor.dim() == 0:
        return tensor.clone()
    rows = tensor.reshape(-1, tensor.shape[-1]).tolist()
    out = []
    for row in rows:
        n = len(row)
        by_magnitude = sorted(range(n), key=lambda i: -abs(row[i]))
        kept = set(by_magnitude[int(n * gamma):][:int(n * beta)])
        out.append([row[i] if i in kept else 0.0 for i in range(n)])
    return torch.tensor(out, dtype=tensor.dtype).reshape(tensor.shape)


@pytest.mark.parametrize("beta, gamma", [(0.2, 0.1), (0.15, 0.006), (0.5, 0.25), (1.0, 0.0)])
def test_matches_the_reference_in_float64(inputs, beta, gamma):
    pretrained, tvs = inputs
    merged = weaving.merge(pretrained, tvs, "breadcrumbs", beta=beta, gamma=gamma)
    for key in pretrained:
        expected = sum(breadcrumbs_reference(tv[key], beta, gamma) for tv in tvs)
        assert_float64_close(merged[key] - pretrained[key], expected)


def test_long_rows_with_the_default_fractions():
    g = torch.Generator().manual_seed(0)
    taus = [torch.randn(3, 700, generator=g, dtype=torch.float64) for _ in range(2)]
    out = breadcrumbs(taus, key="w", stats=None)
    assert_float64_close(out, sum(breadcrumbs_reference(t, 0.15, 0.006) for t in taus))
    # each task keeps int(700 * 0.15) = 105 entries per row, after dropping its int(700 * 0.006) = 4 largest
    assert (breadcrumbs([taus[0]], key="w", stats=None) != 0).sum(dim=1).tolist() == [105, 105, 105]


def test_drops_top_gamma_then_keeps_next_beta_per_row():
    row = torch.tensor([[5.0, -1.0, 4.0, 2.0, -3.0], [0.1, 0.5, -0.4, 0.3, 0.2]])
    mask = breadcrumbs_mask(row, beta=0.4, gamma=0.2)  # n=5: drop int(1.0)=1 largest, keep int(2.0)=2
    assert mask.tolist() == [[False, False, True, False, True], [False, False, True, True, False]]


def test_sum_over_tasks_and_scalars_pass_unchanged():
    a = {"w": torch.tensor([[5.0, -1.0, 4.0, 2.0, -3.0]]), "s": torch.tensor(0.7)}
    b = {"w": torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]]), "s": torch.tensor(-0.2)}
    merged = weaving.merge({"w": torch.zeros(1, 5), "s": torch.tensor(0.0)}, [a, b], "breadcrumbs", beta=0.4, gamma=0.2)
    # a: drop 5, keep 4 and -3; b: drop 5, keep 4 and 3
    torch.testing.assert_close(merged["w"], torch.tensor([[0.0, 0.0, 7.0, 4.0, -3.0]]))
    torch.testing.assert_close(merged["s"], torch.tensor(0.5))


def test_bad_fractions(inputs):
    with pytest.raises(ValueError, match="beta and gamma"):
        weaving.merge(*inputs, "breadcrumbs", beta=1.5)


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
def test_per_tensor_ranks_all_entries_of_a_tensor_together(inputs, method):
    """per_tensor: the reference applied to each tensor flattened (one row of n entries), then reshaped."""
    pretrained, tvs = inputs
    merged = weaving.merge(pretrained, tvs, method, beta=0.3, gamma=0.1, per_tensor=True)
    per_row = weaving.merge(pretrained, tvs, method, beta=0.3, gamma=0.1)
    assert not torch.equal(merged["visual.proj.weight"], per_row["visual.proj.weight"])
    for key in pretrained:
        kept = [breadcrumbs_reference(tv[key].reshape(-1), 0.3, 0.1).reshape(tv[key].shape) if tv[key].dim() else tv[key]
                for tv in tvs]
        if method == "breadcrumbs":
            expected = sum(kept)
        else:
            from .conftest import elected_disjoint_mean
            expected = elected_disjoint_mean([k.reshape(-1).tolist() for k in kept]).reshape(tvs[0][key].shape)
        assert_float64_close(merged[key] - pretrained[key], expected)


def test_ties_at_the_window_edges_go_by_index():
    # |x| = 3 3 3 1 1 (n=5), gamma 0.2 drops int(1.0) = 1: the first 3; beta 0.4 keeps the next 2: the other 3s
    value = torch.tensor([3.0, -3.0, 3.0, 1.0, -1.0])
    assert breadcrumbs_mask(value, beta=0.4, gamma=0.2).tolist() == [False, True, True, False, False]
    # beta 0.6 keeps 3: the two other 3s and the first 1
    assert breadcrumbs_mask(value, beta=0.6, gamma=0.2).tolist() == [False, True, True, True, False]
