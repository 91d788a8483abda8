import torch

import weaving
from weaving.merging.methods.iso_c import iso_c

from .conftest import assert_float64_close


def test_flat_spectrum_with_the_sum_s_singular_vectors():
    g = torch.Generator().manual_seed(0)
    taus = [torch.randn(8, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    out = iso_c(taus, key="w", stats=None)
    u, s, vh = torch.linalg.svd(sum(taus), full_matrices=False)
    assert_float64_close(out, s.mean() * u @ vh)
    torch.testing.assert_close(torch.linalg.svdvals(out), torch.full((6,), s.mean().item(), dtype=torch.float64))


def test_non_matrices_are_averaged(inputs):
    pretrained, tvs = inputs
    merged = weaving.merge(pretrained, tvs, "iso_c")
    key = "visual.proj.bias"
    assert_float64_close(merged[key], pretrained[key] + (tvs[0][key] + tvs[1][key] + tvs[2][key]) / 3)
