import pytest
import torch

import weaving
from weaving.merging.methods.iso_c import iso_c
from weaving.merging.methods.iso_cts import iso_cts, subspace_sizes


@pytest.mark.parametrize(
    "k, tasks, fraction, expected",
    [(768, 8, 0.8, (616, 19)), (1024, 8, 0.8, (816, 26)), (768, 14, 0.8, (614, 11)), (10, 3, 0.8, (7, 1)), (10, 8, 0.8, (10, 0)),
     (12, 8, 0.0, (4, 1))],
)
def test_subspace_sizes(k, tasks, fraction, expected):
    common, rank = subspace_sizes(k, tasks, fraction)
    assert (common, rank) == expected
    assert common + tasks * rank == k


def test_isotropic_spectrum_and_task_directions():
    g = torch.Generator().manual_seed(0)
    taus = [torch.randn(12, 10, generator=g, dtype=torch.float64) for _ in range(2)]
    out = iso_cts(taus, key="w", stats=None, common_fraction=0.6)
    values = torch.linalg.svdvals(out)
    torch.testing.assert_close(values, values.mean().expand_as(values))


def test_full_common_fraction_is_iso_c():
    g = torch.Generator().manual_seed(0)
    taus = [torch.randn(9, 7, generator=g, dtype=torch.float64) for _ in range(3)]
    torch.testing.assert_close(iso_cts(taus, key="w", stats=None, common_fraction=1.0), iso_c(taus, key="w", stats=None))


def test_bad_fraction(inputs):
    with pytest.raises(ValueError, match="common_fraction"):
        weaving.merge(*inputs, "iso_cts", common_fraction=1.5)
