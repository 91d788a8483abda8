"""Iso-CTS (Marczak et al., 2025) against a reference written from the definition, in float64."""

import pytest
import torch

import weaving
from weaving.merging.methods.iso_c import iso_c
from weaving.merging.methods.iso_cts import iso_cts, subspace_sizes

from .conftest import assert_float64_close


def polar(matrix: torch.Tensor) -> torch.Tensor:
    p, _, q = torch.linalg.svd(matrix, full_matrices=False)
    return p @ q


def iso_cts_reference(taus: list[torch.Tensor], common: int, rank: int, project: bool = True) -> torch.Tensor:
    """Common subspace: top `common` left singular vectors of sum(taus). Each task: top `rank` singular
    triplets of (I - U_c U_c^T) tau_t. Concatenate, orthogonalize U and V, flat spectrum at the mean."""
    u, s, vh = torch.linalg.svd(sum(taus), full_matrices=False)
    u_c = u[:, :common]
    projector = torch.eye(taus[0].shape[0], dtype=taus[0].dtype) - (u_c @ u_c.T if project else 0)
    us, ss, vs = [], [], []
    for tau in taus:
        u_t, s_t, vh_t = torch.linalg.svd(projector @ tau, full_matrices=False)
        us.append(u_t[:, :rank]), ss.append(s_t[:rank]), vs.append(vh_t[:rank])
    u_cat = torch.cat(us + [u_c], dim=1)
    s_cat = torch.cat(ss + [s[:common]])
    v_cat = torch.cat(vs + [vh[:common]], dim=0)
    return s_cat.mean() * polar(u_cat) @ polar(v_cat)


@pytest.mark.parametrize(
    "k, tasks, fraction, expected",
    [(768, 8, 0.8, (616, 19)), (1024, 8, 0.8, (816, 26)), (768, 14, 0.8, (614, 11)), (10, 3, 0.8, (7, 1)), (10, 8, 0.8, (10, 0)),
     (12, 8, 0.0, (4, 1)), (10, 2, 0.6, (6, 2))],
)
def test_subspace_sizes(k, tasks, fraction, expected):
    common, rank = subspace_sizes(k, tasks, fraction)
    assert (common, rank) == expected
    assert common + tasks * rank == k


@pytest.mark.parametrize("shape, tasks, fraction, sizes", [((12, 10), 2, 0.6, (6, 2)), ((9, 14), 3, 0.5, (3, 2)),
                                                            ((16, 16), 4, 0.8, (12, 1))])
def test_matches_the_reference_in_float64(shape, tasks, fraction, sizes):
    g = torch.Generator().manual_seed(1)
    taus = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(tasks)]
    assert subspace_sizes(min(shape), tasks, fraction) == sizes
    out = iso_cts(taus, key="w", stats=None, common_fraction=fraction)
    assert_float64_close(out, iso_cts_reference(taus, *sizes))
    # the data tells the parts apart: without the task-specific directions, or without projecting the
    # common subspace out of each task first, g is clearly different
    common, rank = sizes
    assert (out - iso_cts_reference(taus, common, 0)).abs().max() > 1e-3
    assert (out - iso_cts_reference(taus, common, rank, project=False)).abs().max() > 1e-3


def test_isotropic_spectrum():
    g = torch.Generator().manual_seed(0)
    taus = [torch.randn(12, 10, generator=g, dtype=torch.float64) for _ in range(2)]
    out = iso_cts(taus, key="w", stats=None, common_fraction=0.6)
    values = torch.linalg.svdvals(out)
    torch.testing.assert_close(values, values.mean().expand_as(values))


def test_full_common_fraction_is_iso_c():
    g = torch.Generator().manual_seed(0)
    taus = [torch.randn(9, 7, generator=g, dtype=torch.float64) for _ in range(3)]
    torch.testing.assert_close(iso_cts(taus, key="w", stats=None, common_fraction=1.0), iso_c(taus, key="w", stats=None))


def test_non_matrices_are_averaged(inputs):
    pretrained, tvs = inputs
    merged = weaving.merge(pretrained, tvs, "iso_cts")
    for key in ("visual.proj.bias", "visual.text_projection", "visual.conv.weight", "visual.scale"):
        assert_float64_close(merged[key], pretrained[key] + (tvs[0][key] + tvs[1][key] + tvs[2][key]) / 3)


def test_bad_fraction(inputs):
    with pytest.raises(ValueError, match="common_fraction"):
        weaving.merge(*inputs, "iso_cts", common_fraction=1.5)
