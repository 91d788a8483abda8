import pytest
import torch

import weaving

from .conftest import assert_float64_close


def dense_pcb(dense: torch.Tensor, ratio: float) -> torch.Tensor:
    """The reference formulation on a dense T x d matrix (sorted-index clamps, row-wise min-max)."""
    n, d = dense.shape

    def clamp(x, lo, hi):
        s = x.sort(dim=1).values
        return torch.clamp(x, s[:, int(d * lo)].unsqueeze(1), s[:, int(d * (1 - hi) - 1)].unsqueeze(1))

    def normalize(x):
        lo, hi = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
        return (x - lo) / (hi - lo)

    a = clamp(dense.abs(), 1e-4, 1e-4)
    c = torch.sign(dense) * a
    intra = torch.exp(n * normalize(a) ** 2)
    inter = torch.tanh(dense * dense.sum(dim=0))
    s = normalize(clamp(intra * inter, 1 - ratio, 0))
    return (c * s).sum(0) / s.sum(0).clamp(min=1e-12)


@pytest.mark.parametrize("ratio", [0.1, 0.5])
def test_matches_dense_reference(ratio):
    g = torch.Generator().manual_seed(0)
    shapes = {"a": (40, 30), "b": (30,), "c": (7, 3, 5)}
    tvs = [{k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()} for _ in range(4)]
    pre = {k: torch.zeros(s, dtype=torch.float64) for k, s in shapes.items()}
    merged = weaving.merge(pre, tvs, "pcb", ratio=ratio)
    dense = torch.stack([torch.cat([tv[k].reshape(-1) for k in shapes]) for tv in tvs])
    got = torch.cat([merged[k].reshape(-1) for k in shapes])
    assert_float64_close(got, dense_pcb(dense, ratio))


def test_only_top_ratio_scores_contribute():
    g = torch.Generator().manual_seed(1)
    tvs = [{"w": torch.randn(1000, generator=g, dtype=torch.float64)} for _ in range(3)]
    merged = weaving.merge({"w": torch.zeros(1000, dtype=torch.float64)}, tvs, "pcb", ratio=0.1)["w"]
    # an element is non-zero only where some task's score is in its top 10%
    assert 0 < (merged != 0).float().mean().item() <= 0.3 + 1e-6


def test_bad_ratio(inputs):
    with pytest.raises(ValueError, match="ratio"):
        weaving.merge(*inputs, "pcb", ratio=0.0)
