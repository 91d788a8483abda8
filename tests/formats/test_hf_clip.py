"""Hugging Face CLIP -> open_clip equivalence on the real ViT-B-32 / B-16 / L-14 vision configs, and back.

The models are random-init with the real widths, heads, patch and image sizes but 1 vision layer and a
1-layer 64-wide text tower (vocabulary 1000), registered as open_clip configs of the same shape, to stay fast.
"""

from __future__ import annotations

import pytest
import torch

from weaving.formats import hf_clip
from weaving.formats.importer import import_run
from weaving.io.hub import resolve_location

from .conftest import hf_configs, register_config

REAL_VISION = {
    "ViT-B-32": dict(width=768, patch=32, image=224, heads=12, embed=512),
    "ViT-B-16": dict(width=768, patch=16, image=224, heads=12, embed=512),
    "ViT-L-14": dict(width=1024, patch=14, image=224, heads=16, embed=768),
}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("arch", sorted(REAL_VISION))
def test_imported_open_clip_gives_transformers_image_features(arch, tmp_path):
    import open_clip
    import transformers

    dims = REAL_VISION[arch]
    name = register_config(tmp_path, f"test-{arch}-depth1-quickgelu", layers=1, **dims)
    full_cfg, vision_cfg = hf_configs(layers=1, **dims)
    torch.manual_seed(1)
    pre = transformers.CLIPModel(full_cfg).eval()
    pre.save_pretrained(tmp_path / "pre")
    tuned = transformers.CLIPVisionModelWithProjection(vision_cfg).eval()  # an independent fine-tune stand-in
    tuned.save_pretrained(tmp_path / "ft")
    run = import_run(str(tmp_path / "pre"), {"task": str(tmp_path / "ft")}, tmp_path / "run", progress=False)

    model = open_clip.create_model(name, pretrained=str(run / "pretrained.safetensors")).eval()
    images = torch.randn(2, 3, dims["image"], dims["image"])
    with torch.no_grad():
        want = pre.get_image_features(pixel_values=images)
        want = getattr(want, "pooler_output", want)
        assert relative_error(model.encode_image(images), want) < 1e-5
        # theta_pre + task vector is the fine-tuned model
        from weaving.merging.task_vectors import load_task_vector

        delta = load_task_vector(run / "task_vectors" / "task.safetensors")
        state = model.state_dict()
        model.load_state_dict({k: state[k] + delta[k] if k in delta else state[k] for k in state})
        assert relative_error(model.encode_image(images), tuned(pixel_values=images).image_embeds) < 1e-5


def test_text_features_match_too(tiny_hf, tmp_path):
    import open_clip

    root, pre, _, name = tiny_hf
    run = import_run(str(root / "pre"), {"ft": str(root / "ft")}, tmp_path / "run", progress=False)
    model = open_clip.create_model(name, pretrained=str(run / "pretrained.safetensors")).eval()
    tokens = torch.randint(1, 998, (3, 77))
    tokens[:, 9] = 999  # the end-of-text token is the highest id, as in CLIP's tokenizer
    with torch.no_grad():
        want = pre.get_text_features(input_ids=tokens)
        want = getattr(want, "pooler_output", want)
        assert relative_error(model.encode_text(tokens), want) < 1e-5


def test_mapping_round_trip_is_exact(tiny_hf):
    _, pre, _, _ = tiny_hf
    hf_state = {k: v for k, v in pre.state_dict().items() if not k.endswith("position_ids")}
    back = hf_clip.from_open_clip(hf_clip.to_open_clip(hf_state))
    assert set(back) == set(hf_state)
    for key, value in hf_state.items():
        assert torch.equal(back[key], value), key


def test_sharded_safetensors_folder_reads_like_the_single_file(tiny_hf, tmp_path):
    _, pre, _, _ = tiny_hf
    pre.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    got = hf_clip.read_weights(tmp_path / "sharded")
    want = pre.state_dict()
    assert set(got) == {k for k in want if not k.endswith("position_ids")} | (set(got) & set(want))
    for key in got:
        assert torch.equal(got[key], want[key])


def test_pytorch_model_bin_is_read_without_unpickling_code(tiny_hf, tmp_path):
    import json
    import shutil

    root, pre, _, _ = tiny_hf
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(root / "pre" / "config.json", folder / "config.json")
    torch.save(pre.state_dict(), folder / "pytorch_model.bin")
    got = hf_clip.read_weights(folder)
    assert all(torch.equal(got[k], v) for k, v in pre.state_dict().items())
    assert json.loads((folder / "config.json").read_text())["model_type"] == "clip"


def test_offline_hub_id_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ValueError) as info:
        resolve_location("someone/clip-that-is-not-cached")
    message = str(info.value)
    assert "someone/clip-that-is-not-cached" in message and "\n" not in message


def test_conversion_with_random_layer_norm_parameters(tiny_hf, tmp_path):
    """Fresh models have layer norms at weight 1, bias 0, under which swapped or dropped norm names still
    give equal features; random ones do not."""
    import open_clip
    import transformers

    from .conftest import TINY

    name = tiny_hf[3]  # the open_clip config of this shape (a second one would make imports ambiguous)
    full_cfg, _ = hf_configs(**TINY)
    torch.manual_seed(3)
    pre = transformers.CLIPModel(full_cfg).eval()
    norms = [n for n, _ in pre.named_parameters() if "norm" in n or "layrnorm" in n]
    assert any("pre_layrnorm" in n for n in norms) and any("post_layernorm" in n for n in norms)
    with torch.no_grad():
        for param_name, param in pre.named_parameters():
            if param_name in norms:
                param.copy_(1.0 + 0.5 * torch.randn_like(param) if param_name.endswith("weight") else 0.5 * torch.randn_like(param))
    pre.save_pretrained(tmp_path / "pre")
    pre.vision_model.save_pretrained(tmp_path / "ft")  # CLIPVisionModel weights: the fine-tune is theta_pre
    run = import_run(str(tmp_path / "pre"), {"t": str(tmp_path / "ft")}, tmp_path / "run", progress=False)
    model = open_clip.create_model(name, pretrained=str(run / "pretrained.safetensors")).eval()
    images = torch.randn(2, 3, TINY["image"], TINY["image"])
    tokens = torch.randint(1, 998, (2, 77))
    tokens[:, 5] = 999
    with torch.no_grad():
        want_image = pre.get_image_features(pixel_values=images)
        want_text = pre.get_text_features(input_ids=tokens)
        assert relative_error(model.encode_image(images), getattr(want_image, "pooler_output", want_image)) < 1e-5
        assert relative_error(model.encode_text(tokens), getattr(want_text, "pooler_output", want_text)) < 1e-5
