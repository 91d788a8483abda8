"""Shared inputs: tiny random Hugging Face CLIPs whose open_clip twin is registered for the test session."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

TEXT = {"context_length": 77, "vocab_size": 1000, "width": 64, "heads": 2, "layers": 1}


def register_config(folder: Path, name: str, width: int, layers: int, patch: int, image: int, heads: int,
                    embed: int, quick_gelu: bool = True, text: dict | None = None) -> str:
    """Register an open_clip config (the real model's widths, fewer layers) and return its name."""
    cfg = {"embed_dim": embed, "quick_gelu": quick_gelu,
           "vision_cfg": {"image_size": image, "layers": layers, "width": width, "patch_size": patch,
                          "head_width": width // heads},
           "text_cfg": dict(text or TEXT)}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return name


def hf_configs(width: int, layers: int, patch: int, image: int, heads: int, embed: int, act: str = "quick_gelu",
               text: dict | None = None):
    import transformers

    text = dict(text or TEXT)
    vision = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                  num_attention_heads=heads, patch_size=patch, image_size=image, hidden_act=act, projection_dim=embed)
    text_cfg = dict(hidden_size=text["width"], intermediate_size=4 * text["width"], num_hidden_layers=text["layers"],
                    num_attention_heads=text["heads"], vocab_size=text["vocab_size"],
                    max_position_embeddings=text["context_length"], hidden_act=act, projection_dim=embed,
                    bos_token_id=0, pad_token_id=1, eos_token_id=2)  # eos 2: pool at the highest id (argmax)
    full = transformers.CLIPConfig(text_config=text_cfg, vision_config=vision, projection_dim=embed)
    return full, transformers.CLIPVisionConfig(**vision)


TINY = dict(width=64, layers=2, patch=8, image=32, heads=2, embed=16)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """(folder of a random CLIPModel, folder of a fine-tuned CLIPVisionModel, both models, open_clip name)."""
    import transformers

    root = tmp_path_factory.mktemp("tiny_hf")
    name = register_config(root, "test-tiny-hf-quickgelu", **TINY)
    full_cfg, vision_cfg = hf_configs(**TINY)
    torch.manual_seed(0)
    pre = transformers.CLIPModel(full_cfg).eval()
    pre.save_pretrained(root / "pre")
    tuned = transformers.CLIPVisionModel(vision_cfg).eval()
    tuned.load_state_dict(pre.vision_model.state_dict())
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.01 * torch.randn_like(p))
    tuned.save_pretrained(root / "ft")
    return root, pre, tuned, name
