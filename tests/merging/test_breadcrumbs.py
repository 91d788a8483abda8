import pytest
import torch

import weaving
from weaving.merging.methods.breadcrumbs import breadcrumbs, breadcrumbs_mask


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


def test_per_tensor_function_on_matrix_rows():
    value = torch.arange(1.0, 11.0).reshape(1, 10)
    out = breadcrumbs([value], key="w", stats=None, beta=0.2, gamma=0.1)
    assert out.tolist() == [[0.0] * 7 + [8.0, 9.0, 0.0]]


def test_bad_fractions(inputs):
    with pytest.raises(ValueError, match="beta and gamma"):
        weaving.merge(*inputs, "breadcrumbs", beta=1.5)
