import pytest
import torch

import weaving

from .conftest import assert_float64_close


def clamp(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Both references' `clamp(x, min_ratio, max_ratio)` on a T x d matrix: sorted-index bounds per row."""
    d = x.shape[1]
    s = x.sort(dim=1).values
    return torch.clamp(x, s[:, int(d * lo)].unsqueeze(1), s[:, int(d * (1 - hi) - 1)].unsqueeze(1))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Both references' `normalize(x, dim=1)`: row-wise min-max."""
    lo, hi = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    return (x - lo) / (hi - lo)


def dense_pcb(dense: torch.Tensor, ratio: float) -> torch.Tensor:
    """The generic reference (pcb-merging.py, `PCB_merge`) on a dense T x d matrix."""
    n, d = dense.shape
    a = clamp(dense.abs(), 1e-4, 1e-4)
    c = torch.sign(dense) * a
    intra = torch.exp(n * normalize(a) ** 2)
    inter = torch.tanh(dense * dense.sum(dim=0))
    s = normalize(clamp(intra * inter, 1 - ratio, 0))
    return (c * s).sum(0) / s.sum(0).clamp(min=1e-12)


def dense_pcb_vision(dense: torch.Tensor, ratio: float) -> torch.Tensor:
    """The vision reference (vision_source_code/pcb.py's main block, its `lams` left to lambda) on a dense
    T x d matrix: clip 0.01 at both ends, and the inter-score against the sum over tasks of the signed
    min-max normalised vectors instead of the raw sum."""
    n, d = dense.shape
    a = clamp(dense.abs(), 0.01, 0.01)
    c = torch.sign(dense) * a
    normalized = torch.sign(dense) * normalize(a)
    intra = torch.exp(n * normalize(a) ** 2)
    inter = torch.tanh(dense * normalized.sum(dim=0))
    s = normalize(clamp(intra * inter, 1 - ratio, 0))
    return (c * s).sum(0) / s.sum(0).clamp(min=1e-12)


REFERENCES = {"generic": dense_pcb, "vision": dense_pcb_vision}
SHAPES = {"a": (40, 30), "b": (30,), "c": (7, 3, 5)}  # 1,335 entries per task


def pcb_inputs(seed: int = 0, tasks: int = 4):
    g = torch.Generator().manual_seed(seed)
    tvs = [{k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in SHAPES.items()} for _ in range(tasks)]
    return {k: torch.zeros(s, dtype=torch.float64) for k, s in SHAPES.items()}, tvs


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state[k].reshape(-1) for k in SHAPES])


@pytest.mark.parametrize("variant", ["generic", "vision"])
@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.5])
def test_matches_dense_reference(variant, ratio):
    pre, tvs = pcb_inputs()
    merged = weaving.merge(pre, tvs, "pcb", ratio=ratio, variant=variant)
    dense = torch.stack([flat(tv) for tv in tvs])
    assert_float64_close(flat(merged), REFERENCES[variant](dense, ratio))


def test_the_variants_differ():
    pre, tvs = pcb_inputs()
    generic, vision = (flat(weaving.merge(pre, tvs, "pcb", variant=v)) for v in ("generic", "vision"))
    assert not torch.allclose(generic, vision)


@pytest.mark.parametrize("variant", ["generic", "vision"])
@pytest.mark.parametrize("ratio,zeros", [(0.1, 100), (0.1, 1335), (0.5, 700), (0.05, 20000)])
def test_zero_entries_equal_the_reference_on_task_vectors_with_appended_zeros(variant, ratio, zeros):
    """zero_entries=Z is the reference rule on each task vector with Z zeros appended: the clip quantiles
    move towards 0, and the score quantile moves past the Z zero scores, which sort among the others."""
    pre, tvs = pcb_inputs(seed=2)
    merged = weaving.merge(pre, tvs, "pcb", ratio=ratio, variant=variant, zero_entries=zeros)
    dense = torch.stack([torch.cat([flat(tv), torch.zeros(zeros, dtype=torch.float64)]) for tv in tvs])
    expected = REFERENCES[variant](dense, ratio)
    assert expected[-zeros:].abs().sum() == 0
    assert_float64_close(flat(merged), expected[:-zeros])
    assert not torch.allclose(flat(merged), flat(weaving.merge(pre, tvs, "pcb", ratio=ratio, variant=variant)))


def test_only_top_ratio_scores_contribute():
    g = torch.Generator().manual_seed(1)
    tvs = [{"w": torch.randn(1000, generator=g, dtype=torch.float64)} for _ in range(3)]
    merged = weaving.merge({"w": torch.zeros(1000, dtype=torch.float64)}, tvs, "pcb", ratio=0.1)["w"]
    # an element is non-zero only where some task's score is in its top 10%
    assert 0 < (merged != 0).float().mean().item() <= 0.3 + 1e-6


def test_bad_ratio(inputs):
    with pytest.raises(ValueError, match="ratio"):
        weaving.merge(*inputs, "pcb", ratio=0.0)


@pytest.mark.parametrize("args,message", [({"variant": "nlp"}, "unknown variant 'nlp'; known variants: generic, vision"),
                                          ({"variant": 1}, "variant must be a string"),
                                          ({"zero_entries": -3}, "whole number >= 0")])
def test_bad_variant_and_zero_entries(inputs, args, message):
    with pytest.raises(ValueError, match=message):
        weaving.merge(*inputs, "pcb", **args)


def test_the_in_memory_selection_path_gives_the_streamed_one_on_tensors_larger_than_a_selection_block(monkeypatch):
    # A GPU sorts task vectors in memory, keeping every score block until the sort: pcb refills one buffer
    # per block, so the blocks must be copied as they come (on an H200 4.9% of the entries differed)
    from weaving.merging import tensor_ops
    from weaving.merging.methods import pcb

    monkeypatch.setattr(pcb, "SELECTION_BLOCK", 64)  # several blocks per tensor, as 2**20 gives a ViT-L-14
    g = torch.Generator().manual_seed(0)
    shapes = {"visual.in_proj_weight": (9, 50), "visual.bias": (11,)}
    pretrained = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    task_vectors = [{k: 0.1 * torch.randn(s, generator=g) for k, s in shapes.items()} for _ in range(3)]
    streamed = weaving.merge(pretrained, task_vectors, "pcb", lam=1.0)
    monkeypatch.setattr(tensor_ops, "RADIX_DEVICES", ())  # the path a GPU takes, here on the CPU
    in_memory = weaving.merge(pretrained, task_vectors, "pcb", lam=1.0)
    for key, value in streamed.items():
        assert torch.equal(in_memory[key], value), key
