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


# ------------------------------------------------------------------------- rank-deficient task vectors
from weaving.merging.methods.iso_c import iso_c  # noqa: E402

SVD_METHODS = {"tsv": tsv, "iso_c": iso_c, "iso_cts": iso_cts}


def low_rank(m, n, rank, seed, singular_values=None):
    """An m x n float64 matrix of exactly `rank` (orthonormal factors; singular values given or drawn)."""
    g = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(m, max(rank, 1), generator=g, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(n, max(rank, 1), generator=g, dtype=torch.float64))
    s = torch.rand(rank, generator=g, dtype=torch.float64) + 0.5 if singular_values is None else singular_values
    return (left[:, :rank] * s) @ right[:, :rank].T


def reduced_polar(matrix, rank):
    p, _, q = torch.linalg.svd(matrix, full_matrices=False)
    return p[:, :rank] @ q[:rank]


def tsv_low_rank_reference(taus, ranks):
    """TSV-M with each task's triplets cut at its known rank (no null-space completion), polar factors over
    the rank of the concatenation: the rule on the directions the tasks have."""
    num_tasks, (m, n) = len(taus), taus[0].shape
    r = int(min(m, n) / num_tasks)
    u_cat, s_cat, v_cat = taus[0].new_zeros(m, num_tasks * r), taus[0].new_zeros(num_tasks * r), taus[0].new_zeros(num_tasks * r, n)
    for i, (tau, rank) in enumerate(zip(taus, ranks)):
        kept = min(r, rank)
        u, s, vh = torch.linalg.svd(tau, full_matrices=False)
        u_cat[:, i * r:i * r + kept], s_cat[i * r:i * r + kept], v_cat[i * r:i * r + kept] = u[:, :kept], s[:kept], vh[:kept]
    rank = torch.linalg.matrix_rank(u_cat).item()
    return (reduced_polar(u_cat, rank) * s_cat) @ reduced_polar(v_cat.T, rank).T


@pytest.mark.parametrize("rank", [0, 1, 2, 8, 64])
@pytest.mark.parametrize("num_tasks", [2, 4])
def test_tsv_on_rank_deficient_task_vectors_matches_the_rule_on_their_directions(rank, num_tasks):
    taus = [low_rank(64, 64, rank, seed) for seed in range(num_tasks)]
    expected = tsv_low_rank_reference(taus, [rank] * num_tasks)
    if rank == 64:  # full rank: still the official rule (torch.linalg.svd, full polar factors)
        torch.testing.assert_close(expected, tsv_reference(taus), rtol=1e-10, atol=1e-12)
    got = tsv(taus, key="w", stats=None)
    assert (got - expected).abs().max().item() <= 1e-10 * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("method", sorted(SVD_METHODS))
@pytest.mark.parametrize("shape", [(64, 48), (48, 64)])
def test_one_rank_one_task_merges_to_itself(method, shape):
    tau = low_rank(*shape, 1, seed=3)
    for taus in ([tau], [tau, torch.zeros_like(tau)]):  # alone, or with a zero task vector beside it
        got = SVD_METHODS[method](taus, key="w", stats=None)
        torch.testing.assert_close(got, tau, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", sorted(SVD_METHODS))
def test_zero_task_vectors_merge_to_zero(method):
    taus = [torch.zeros(32, 24, dtype=torch.float64) for _ in range(3)]
    got = SVD_METHODS[method](taus, key="w", stats=None)
    assert torch.equal(got, torch.zeros_like(got))


@pytest.mark.parametrize("method", sorted(SVD_METHODS))
@pytest.mark.parametrize("rank", [1, 2, 8])
def test_low_rank_tasks_on_orthogonal_subspaces_merge_to_their_sum(method, rank):
    """Tasks on disjoint column and row spaces: nothing to resolve, so theta_pre + sum_t tau_t. Iso-C and
    Iso-CTS flatten the spectrum, so their tasks share one singular value."""
    g = torch.Generator().manual_seed(rank)
    left, _ = torch.linalg.qr(torch.randn(64, 4 * rank, generator=g, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(64, 4 * rank, generator=g, dtype=torch.float64))
    flat = method != "tsv"
    taus = []
    for t in range(4):
        s = torch.full((rank,), 0.7, dtype=torch.float64) if flat else torch.rand(rank, generator=g, dtype=torch.float64) + 0.5
        block = slice(t * rank, (t + 1) * rank)
        taus.append({"visual.w": (left[:, block] * s) @ right[:, block].T})
    pre = {"visual.w": torch.randn(64, 64, generator=g, dtype=torch.float64)}
    merged = weaving.merge(pre, taus, method, lam=1.0)
    torch.testing.assert_close(merged["visual.w"], pre["visual.w"] + sum(t["visual.w"] for t in taus), rtol=1e-12, atol=1e-12)


def test_truncated_svd_drops_null_directions_instead_of_normalising_them():
    u, s, vh = top_singular_triplets(torch.stack([low_rank(40, 30, 2, seed=0), low_rank(30, 40, 0, seed=1).T]), 5)
    assert torch.all(s[0, 2:] == 0) and torch.all(s[1] == 0) and torch.all(s[0, :2] > 0.5)
    assert torch.all(u[0, :, 2:] == 0) and torch.all(vh[0, 2:] == 0) and torch.all(u[1] == 0) and torch.all(vh[1] == 0)


def test_polar_factor_of_dependent_columns_adds_no_direction():
    column = torch.nn.functional.normalize(torch.arange(1.0, 7.0, dtype=torch.float64), dim=0).unsqueeze(1)
    (factor,) = polar_factors(torch.cat([column, column, torch.zeros_like(column)], dim=1))
    torch.testing.assert_close(factor, torch.cat([column, column, torch.zeros_like(column)], dim=1) / 2 ** 0.5)
