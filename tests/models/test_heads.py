"""Zero-shot heads: the formula (per class: normalize, average, normalize, scale), freezing, the on-disk cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weaving.models import ClassificationHead, build_head, load_clip
from weaving.models.heads import head_cache_path

CLASSNAMES = ["zero", "one", "two"]
TEMPLATES = ["a photo of the digit {}.", "a drawing of a {}.", "{}"]


@pytest.fixture(scope="module")
def clip():
    return load_clip("weaving-tiny-vit", seed=0)


def test_head_shape_scale_and_frozen(clip):
    head = build_head(clip, CLASSNAMES, TEMPLATES)
    assert isinstance(head, ClassificationHead)
    dim = clip.model.text_projection.shape[1]
    assert head.weight.shape == (3, dim) and head.num_classes == 3
    scale = clip.model.logit_scale.exp().item()
    torch.testing.assert_close(head.weight.norm(dim=1), torch.full((3,), scale))
    assert not head.weight.requires_grad
    assert all(not p.requires_grad for p in head.parameters())


def test_head_averages_normalized_template_embeddings(clip):
    head = build_head(clip, CLASSNAMES, TEMPLATES)
    rows = []
    with torch.no_grad():
        for name in CLASSNAMES:
            tokens = clip.tokenizer([template.format(name) for template in TEMPLATES])
            embeddings = clip.model.encode_text(tokens)
            embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
            mean = embeddings.mean(dim=0)
            rows.append(mean / mean.norm())
        expected = torch.stack(rows) * clip.model.logit_scale.exp()
    torch.testing.assert_close(head.weight, expected)
    # not just the first template: a single-template head differs
    assert not torch.allclose(build_head(clip, CLASSNAMES, TEMPLATES[:1]).weight, expected)


def test_head_normalizes_image_features(clip):
    head = build_head(clip, CLASSNAMES, TEMPLATES)
    features = torch.randn(4, head.weight.shape[1])
    logits = head(features)
    assert logits.shape == (4, 3)
    torch.testing.assert_close(head(features * 10.0), logits)
    torch.testing.assert_close(logits, F.normalize(features, dim=-1) @ head.weight.T)


def test_head_building_restores_training_mode_and_leaves_no_grad(clip):
    clip.model.train()
    head = build_head(clip, CLASSNAMES, TEMPLATES)
    assert clip.model.training
    assert head.weight.grad_fn is None


def test_cache_written_and_reused(clip, tmp_path, monkeypatch):
    head = build_head(clip, CLASSNAMES, TEMPLATES, cache_dir=tmp_path, task="digits")
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [head_cache_path(tmp_path, clip, CLASSNAMES, TEMPLATES, "digits").name]
    assert files[0].name.startswith("digits-weaving-tiny-vit-") and files[0].suffix == ".safetensors"

    def fail(*args, **kwargs):
        raise AssertionError("the text tower must not run when the head is cached")

    monkeypatch.setattr(clip.model, "encode_text", fail)
    cached = build_head(clip, CLASSNAMES, TEMPLATES, cache_dir=tmp_path, task="digits")
    assert torch.equal(cached.weight, head.weight)
    assert not cached.weight.requires_grad
    with pytest.raises(AssertionError, match="must not run"):
        build_head(clip, CLASSNAMES, TEMPLATES[:2], cache_dir=tmp_path, task="digits")


def test_cache_key_depends_on_every_input(clip, tmp_path):
    base = head_cache_path(tmp_path, clip, CLASSNAMES, TEMPLATES, "digits")
    assert head_cache_path(tmp_path, clip, CLASSNAMES, TEMPLATES, "digits") == base
    variants = [
        head_cache_path(tmp_path, clip, CLASSNAMES, TEMPLATES[:2], "digits"),
        head_cache_path(tmp_path, clip, CLASSNAMES, ["a {}"] + TEMPLATES[1:], "digits"),
        head_cache_path(tmp_path, clip, CLASSNAMES[::-1], TEMPLATES, "digits"),
        head_cache_path(tmp_path, clip, CLASSNAMES, TEMPLATES, "digits_rot90"),
        head_cache_path(tmp_path, load_clip("weaving-tiny-vit", seed=1), CLASSNAMES, TEMPLATES, "digits"),
        head_cache_path(tmp_path, load_clip("weaving-tiny-vit-b", seed=0), CLASSNAMES, TEMPLATES, "digits"),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_cache_from_another_seed_is_not_reused(clip, tmp_path):
    other = load_clip("weaving-tiny-vit", seed=1)
    first = build_head(clip, CLASSNAMES, TEMPLATES, cache_dir=tmp_path, task="digits")
    second = build_head(other, CLASSNAMES, TEMPLATES, cache_dir=tmp_path, task="digits")
    assert not torch.allclose(first.weight, second.weight)
    assert len(list(tmp_path.iterdir())) == 2


def test_corrupt_cache_file_is_a_clear_error(clip, tmp_path):
    path = head_cache_path(tmp_path, clip, CLASSNAMES, TEMPLATES, "digits")
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="delete it to recompute"):
        build_head(clip, CLASSNAMES, TEMPLATES, cache_dir=tmp_path, task="digits")


@pytest.mark.parametrize(
    "classnames, templates, match",
    [
        ([], TEMPLATES, "classnames"),
        ("zero", TEMPLATES, "classnames"),
        (CLASSNAMES, [], "templates"),
        (CLASSNAMES, ["no placeholder"], "exactly one"),
        (CLASSNAMES, ["{} and {}"], "exactly one"),
    ],
)
def test_bad_prompts_are_rejected(clip, classnames, templates, match):
    with pytest.raises(ValueError, match=match):
        build_head(clip, classnames, templates)


def test_many_classes_are_batched_like_one_pass(clip):
    """More classes than one text batch holds: every row still equals its own per-class computation."""
    import weaving.models.heads as heads

    names = [f"class {i}" for i in range(12)]
    templates = TEMPLATES[:2]
    small_batches = heads.TEXT_BATCH_SIZE
    try:
        heads.TEXT_BATCH_SIZE = 4  # 2 classes per forward pass
        batched = build_head(clip, names, templates).weight
    finally:
        heads.TEXT_BATCH_SIZE = small_batches
    one_pass = build_head(clip, names, templates).weight
    torch.testing.assert_close(batched, one_pass)
    row = build_head(clip, names[7:8], templates).weight[0]
    torch.testing.assert_close(batched[7], row)


def test_template_with_stray_braces_is_a_clear_error(clip):
    with pytest.raises(ValueError, match="braces other than"):
        build_head(clip, CLASSNAMES, ["a {} of {kind}"])
