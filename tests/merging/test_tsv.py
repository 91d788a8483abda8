import torch

import weaving
from weaving.merging.methods.tsv import tsv

from .conftest import assert_float64_close


def test_single_task_reconstructs_the_matrix():
    g = torch.Generator().manual_seed(0)
    tau = torch.randn(8, 5, generator=g, dtype=torch.float64)
    assert_float64_close(tsv([tau], key="w", stats=None), tau)


def test_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    taus = [torch.randn(9, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    r = 6 // 3
    us, ss, vs = zip(*[torch.linalg.svd(t, full_matrices=False) for t in taus])
    u_cat = torch.cat([u[:, :r] for u in us], dim=1)
    s_cat = torch.cat([s[:r] for s in ss])
    v_cat = torch.cat([v[:r] for v in vs], dim=0)

    def polar(m):
        p, _, q = torch.linalg.svd(m, full_matrices=False)
        return p @ q

    expected = polar(u_cat) @ torch.diag(s_cat) @ polar(v_cat)
    assert_float64_close(tsv(taus, key="w", stats=None), expected)


def test_unused_slots_stay_zero_when_rank_does_not_divide():
    g = torch.Generator().manual_seed(0)
    taus = [torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(2)]  # r = int(5/2) = 2, slot 5 unused
    out = tsv(taus, key="w", stats=None)
    assert torch.linalg.matrix_rank(out).item() == 4


def test_vectors_and_text_projection_are_averaged(inputs):
    pretrained, tvs = inputs
    merged = weaving.merge(pretrained, tvs, "tsv")
    for key in ("visual.proj.bias", "visual.text_projection", "visual.conv.weight", "visual.scale"):
        assert_float64_close(merged[key], pretrained[key] + (tvs[0][key] + tvs[1][key] + tvs[2][key]) / 3)
