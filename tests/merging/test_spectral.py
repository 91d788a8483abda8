"""The batched, truncated SVD path of tsv and iso_cts against full-SVD references built here (the
definitions computed one task matrix at a time with torch.linalg.svd)."""

import pytest
import torch

import weaving
from weaving.merging.methods.iso_cts import iso_cts, subspace_sizes
from weaving.merging.methods.tsv import tsv
from weaving.merging.spectral import polar_factors, top_singular_triplets


def polar(matrix):
    p, _, q = torch.linalg.svd(matrix, full_matrices=False)
    return p @ q


def tsv_reference(taus):
    num_tasks, (m, n) = len(taus), taus[0].shape
    k = min(m, n)
    r = int(k * (1 / num_tasks))
    u_cat, s_cat, v_cat = taus[0].new_zeros(m, k), taus[0].new_zeros(k), taus[0].new_zeros(k, n)
    for i, tau in enumerate(taus):
        u, s, vh = torch.linalg.svd(tau, full_matrices=False)
        u_cat[:, i * r:(i + 1) * r], s_cat[i * r:(i + 1) * r], v_cat[i * r:(i + 1) * r] = u[:, :r], s[:r], vh[:r]
    return (polar(u_cat) * s_cat) @ polar(v_cat)


def iso_cts_reference(taus, fraction):
    num_tasks, (m, n) = len(taus), taus[0].shape
    k = min(m, n)
    common, r = subspace_sizes(k, num_tasks, fraction)
    u, s, vh = torch.linalg.svd(sum(taus), full_matrices=False)
    uc = u[:, :common]
    us, ss, vs = [], [], []
    for tau in taus:
        ut, st, vht = torch.linalg.svd(tau - uc @ (uc.T @ tau), full_matrices=False)
        us.append(ut[:, :r]), ss.append(st[:r]), vs.append(vht[:r])
    u_cat = torch.cat(us + [uc], dim=1)
    s_cat = torch.cat(ss + [s[:common]])
    v_cat = torch.cat(vs + [vh[:common]], dim=0)
    return (polar(u_cat) * s_cat.mean()) @ polar(v_cat)


def task_matrices(num_tasks, m, n, decay, seed=0, scale=1e-2):
    """Task matrices of norm ~scale with singular values decaying like exp(-decay * i / k) (real task
    vectors' spectra decay; decay 0 gives the near-flat spectrum of a random Gaussian matrix)."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    out = []
    for _ in range(num_tasks):
        left, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
        right, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
        s = scale * torch.exp(-decay * torch.arange(k, dtype=torch.float64) / k) * (1 + 0.1 * torch.rand(k, generator=g, dtype=torch.float64))
        out.append((left * s) @ right.T)
    return out


SHAPES = [(8, 48, 48, 0.0), (8, 96, 24, 0.0), (8, 24, 96, 3.0), (3, 50, 37, 3.0), (5, 40, 40, 6.0), (2, 7, 5, 0.0)]


@pytest.mark.parametrize("num_tasks, m, n, decay", SHAPES)
def test_tsv_float64_matches_the_full_svd_reference(num_tasks, m, n, decay):
    taus = task_matrices(num_tasks, m, n, decay)
    assert (tsv(taus, key="w", stats=None) - tsv_reference(taus)).abs().max().item() <= 1e-9


@pytest.mark.parametrize("num_tasks, m, n, decay", SHAPES)
@pytest.mark.parametrize("fraction", [0.8, 0.5, 0.0])
def test_iso_cts_float64_matches_the_full_svd_reference(num_tasks, m, n, decay, fraction):
    taus = task_matrices(num_tasks, m, n, decay)
    got = iso_cts(taus, key="w", stats=None, common_fraction=fraction)
    assert (got - iso_cts_reference(taus, fraction)).abs().max().item() <= 1e-9


@pytest.mark.parametrize("method", ["tsv", "iso_cts"])
@pytest.mark.parametrize("num_tasks, m, n", [(8, 64, 64), (8, 128, 32), (8, 32, 128), (4, 40, 30)])
def test_float32_within_1e_4_relative_of_the_full_svd_reference(method, num_tasks, m, n):
    taus = [t.float() for t in task_matrices(num_tasks, m, n, decay=4.0, seed=1)]
    if method == "tsv":
        got, expected = tsv(taus, key="w", stats=None), tsv_reference(taus)
    else:
        got, expected = iso_cts(taus, key="w", stats=None), iso_cts_reference(taus, 0.8)
    assert got.dtype == torch.float32
    assert ((got - expected).norm() / expected.norm()).item() <= 1e-4


def test_engine_merges_with_the_batched_path_in_float64():
    g = torch.Generator().manual_seed(2)
    shapes = {"visual.a.weight": (24, 24), "visual.b.weight": (40, 16), "visual.b.bias": (40,)}
    taus = [{k: 1e-2 * torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()} for _ in range(4)]
    pre = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    for method, reference in (("tsv", tsv_reference), ("iso_cts", lambda t: iso_cts_reference(t, 0.8))):
        merged = weaving.merge(pre, taus, method, lam=0.5)
        for key in ("visual.a.weight", "visual.b.weight"):
            expected = pre[key] + 0.5 * reference([tv[key] for tv in taus])
            assert (merged[key] - expected).abs().max().item() <= 1e-9


def test_top_singular_triplets_are_the_svds_top_triplets():
    stack = torch.stack(task_matrices(3, 30, 20, 3.0) + [torch.zeros(30, 20, dtype=torch.float64)])
    for matrices in (stack, stack.mT):
        u, s, vh = top_singular_triplets(matrices, 5)
        ref_u, ref_s, ref_vh = torch.linalg.svd(matrices, full_matrices=False)
        torch.testing.assert_close(s, ref_s[:, :5])
        torch.testing.assert_close(u @ torch.diag_embed(s) @ vh, ref_u[..., :5] @ torch.diag_embed(ref_s[:, :5]) @ ref_vh[:, :5])
        nonzero = u[:3]
        torch.testing.assert_close(nonzero.mT @ nonzero, torch.eye(5, dtype=torch.float64).expand(3, 5, 5))
        assert torch.all(s[3] == 0) and torch.isfinite(u).all() and torch.isfinite(vh).all()  # a zero matrix: no NaN


def test_polar_factors_batch_same_shapes_and_keep_order():
    a, b, c = task_matrices(3, 12, 8, 1.0)
    got = polar_factors(a, b.T, c)
    for matrix, factor in zip((a, b.T, c), got):
        torch.testing.assert_close(factor, polar(matrix))
