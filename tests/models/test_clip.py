"""Building tiny CLIP models offline: determinism, visual state dicts, transforms, checkpoints, errors."""

from __future__ import annotations


import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import weaving.models.clip as clip_module
from weaving.models import (
    TINY_MODELS,
    encode_images,
    image_transforms,
    load_clip,
    load_visual_state_dict,
    visual_state_dict,
)


def _image(size: int = 8, mode: str = "L") -> Image.Image:
    rng = np.random.default_rng(0)
    shape = (size, size) if mode == "L" else (size, size, 3)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_models_are_registered_with_open_clip():
    assert TINY_MODELS == ("weaving-tiny-vit", "weaving-tiny-vit-b")
    for name in TINY_MODELS:
        assert name in open_clip.list_models()


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_model_builds_and_trains(name):
    bundle = load_clip(name, seed=0)
    assert bundle.name == name and bundle.pretrained is None and bundle.seed == 0
    images = torch.randn(32, 3, 32, 32)
    features = encode_images(bundle.model, images)
    assert features.shape == (32, bundle.model.text_projection.shape[1])
    features.square().mean().backward()
    assert all(p.grad is not None for p in bundle.model.visual.parameters())
    # small enough for CPU tests and the demo (speed itself is measured in benchmarks/, not in tests)
    assert sum(p.numel() for p in bundle.model.visual.parameters()) < 1_000_000


def test_same_seed_gives_identical_weights_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    a = load_clip("weaving-tiny-vit", seed=7).model.state_dict()
    assert torch.equal(torch.rand(3), expected_draw)  # load_clip used its own generator state
    torch.manual_seed(999)  # and the global state does not leak into the weights
    b = load_clip("weaving-tiny-vit", seed=7).model.state_dict()
    c = load_clip("weaving-tiny-vit", seed=8).model.state_dict()
    assert _same(a, b)
    assert not torch.equal(a["visual.conv1.weight"], c["visual.conv1.weight"])


def test_visual_state_dict_keys_and_round_trip():
    model = load_clip(seed=0).model
    state = visual_state_dict(model)
    assert state and all(key.startswith("visual.") for key in state)
    assert {k for k in model.state_dict() if k.startswith("visual.")} == set(state)
    assert all(not t.requires_grad and t.device.type == "cpu" for t in state.values())
    # copies, not views of the live weights
    state["visual.conv1.weight"].add_(1.0)
    assert not torch.equal(state["visual.conv1.weight"], model.visual.conv1.weight)

    other = load_clip(seed=1).model
    load_visual_state_dict(other, visual_state_dict(model))
    assert _same(visual_state_dict(other), visual_state_dict(model))
    # the text tower is not touched
    assert not torch.equal(other.token_embedding.weight, model.token_embedding.weight)


def test_load_visual_state_dict_is_strict():
    model = load_clip(seed=0).model
    state = visual_state_dict(model)
    missing = dict(state)
    missing.pop("visual.conv1.weight")
    with pytest.raises(ValueError, match="1 missing keys"):
        load_visual_state_dict(model, missing)
    with pytest.raises(ValueError, match="unexpected keys"):
        load_visual_state_dict(model, {**state, "visual.extra": torch.zeros(1)})
    bigger = visual_state_dict(load_clip("weaving-tiny-vit-b", seed=0).model)
    with pytest.raises(ValueError, match="another model"):
        load_visual_state_dict(model, {k: bigger[k] for k in state if k in bigger} | {
            k: state[k] for k in state if k not in bigger})


def test_transforms_produce_normalized_tensors_of_model_size():
    bundle = load_clip(seed=0)
    train, evaluate = image_transforms("weaving-tiny-vit")
    for mode in ("L", "RGB"):
        for transform in (bundle.train_transform, bundle.eval_transform, train, evaluate):
            out = transform(_image(8, mode))
            assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    # image_transforms (no model built) matches the bundle's transforms
    assert torch.equal(evaluate(_image(8)), bundle.eval_transform(_image(8)))
    # normalization applied: a white image is not all ones
    white = evaluate(Image.new("RGB", (8, 8), (255, 255, 255)))
    assert not torch.allclose(white, torch.ones_like(white))


def test_image_transforms_accept_openai_slash_names_and_tags_without_downloading():
    _, evaluate = image_transforms("ViT-B/32", pretrained="openai")
    assert evaluate(_image(8)).shape == (3, 224, 224)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_load_from_local_checkpoint(tmp_path, suffix):
    source = load_clip(seed=3).model
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file(state, path)
    bundle = load_clip("weaving-tiny-vit", pretrained=str(path), seed=0)
    assert bundle.pretrained == str(path)
    assert _same(bundle.model.state_dict(), source.state_dict())


def test_checkpoint_of_another_model_is_one_line_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(load_clip("weaving-tiny-vit-b", seed=0).model.state_dict(), path)
    with pytest.raises(ValueError, match="could not build model 'weaving-tiny-vit'") as info:
        load_clip("weaving-tiny-vit", pretrained=str(path))
    assert "\n" not in str(info.value)


def test_unknown_model_lists_available_names():
    with pytest.raises(ValueError, match="unknown model 'weaving-tiny-vt'") as info:
        load_clip("weaving-tiny-vt")
    message = str(info.value)
    assert "did you mean weaving-tiny-vit" in message
    assert "ViT-B-32" in message and "\n" not in message
    with pytest.raises(ValueError, match="unknown model"):
        image_transforms("no-such-model")


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_clip("weaving-tiny-vit", pretrained=str(tmp_path / "missing.pt"))


def test_bad_pretrained_tag_lists_tags_without_downloading(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("tests must never download")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_download)
    with pytest.raises(ValueError, match="unknown pretrained tag 'opneai'") as info:
        load_clip("ViT-B-32", pretrained="opneai")
    for tag in open_clip.list_pretrained_tags_by_model("ViT-B-32"):
        assert tag in str(info.value)
    with pytest.raises(ValueError, match="has no pretrained tags"):
        load_clip("weaving-tiny-vit", pretrained="openai")


def test_known_tag_is_accepted_and_passed_to_open_clip(monkeypatch):
    calls = []
    real_create_model = open_clip.create_model

    def fake_create_model(name, pretrained=None, **kwargs):
        calls.append((name, pretrained))
        return real_create_model("weaving-tiny-vit")

    monkeypatch.setattr(clip_module.open_clip, "create_model", fake_create_model)
    bundle = load_clip("ViT-B/32", pretrained="LAION2B-S34B-B79K")
    assert calls == [("ViT-B-32", "laion2b_s34b_b79k")]
    assert bundle.name == "ViT-B-32" and bundle.pretrained == "laion2b_s34b_b79k"


def test_hf_hub_models_go_to_open_clip_and_refuse_a_tag(monkeypatch):
    calls = []
    real_create_model = open_clip.create_model

    def fake_create_model(name, pretrained=None, **kwargs):
        calls.append((name, pretrained))
        return real_create_model("weaving-tiny-vit")

    monkeypatch.setattr(clip_module.open_clip, "create_model", fake_create_model)
    tiny_tokenizer = open_clip.get_tokenizer("weaving-tiny-vit")
    monkeypatch.setattr(clip_module.open_clip, "get_tokenizer", lambda name: tiny_tokenizer)
    bundle = load_clip("hf-hub:org/some-clip")
    assert calls == [("hf-hub:org/some-clip", None)] and bundle.name == "hf-hub:org/some-clip"
    with pytest.raises(ValueError, match="pass pretrained=None"):
        load_clip("hf-hub:org/some-clip", pretrained="openai")
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        load_clip("local-dir:/no/such/folder")


@pytest.mark.parametrize("name,expected", [("ViT-B-32", 25_599_489), ("ViT-B-16", 25_599_489), ("ViT-L-14", 38_595_841)])
def test_harness_zero_entries_of_the_paper_models(name, expected):
    """The official harnesses' ImageEncoder drops only the text transformer; what stays beside the visual
    tower (token and positional embeddings, ln_final, text_projection, logit_scale) is counted from the
    open_clip model itself (built on the meta device: shapes, no weights). 113,448,705 entries in all for
    ViT-B-32, the `d` that PCB's vision code notes."""
    from open_clip.factory import get_model_config
    from open_clip.model import CLIP

    with torch.device("meta"):
        model = CLIP(**get_model_config(name))
    state = model.state_dict()
    assert clip_module.harness_zero_entries(state) == expected
    if name == "ViT-B-32":
        assert sum(t.numel() for k, t in state.items() if not k.startswith("transformer.")) == 113_448_705


def test_harness_zero_entries_of_a_tiny_model():
    state = load_clip("weaving-tiny-vit", seed=0).model.state_dict()
    text_side = ["positional_embedding", "text_projection", "logit_scale", "token_embedding.weight",
                 "ln_final.weight", "ln_final.bias"]
    assert sorted(k for k in state if not k.startswith(("visual.", "transformer."))) == sorted(text_side)
    assert clip_module.harness_zero_entries(state) == sum(state[k].numel() for k in text_side) > 0
