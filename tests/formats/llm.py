"""Tiny language-model-shaped checkpoints as Hugging Face folders (sharded), for the sharded I/O tests."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def llama_like(seed: int = 0, dtype=torch.float32, layers: int = 3, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A tiny decoder-shaped state dict: embeddings, numbered layers, a final norm and a head."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (11, 8), "model.norm.weight": (8,), "lm_head.weight": (11, 8)}
    for i in range(layers):
        shapes |= {f"model.layers.{i}.self_attn.q_proj.weight": (8, 8), f"model.layers.{i}.mlp.up_proj.weight": (12, 8),
                   f"model.layers.{i}.input_layernorm.weight": (8,)}
    return {k: (scale * torch.randn(s, generator=g)).to(dtype) for k, s in sorted(shapes.items())}


def write_hf_folder(folder: Path, tensors: dict[str, torch.Tensor], shards: int = 3, config: bool = True) -> Path:
    """A Hugging Face-style folder: tensors spread over `shards` safetensors files plus the index."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(tensors)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[i::shards]}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if config:
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
        (folder / "tokenizer.json").write_text("{}")
    return folder


def finetunes(base: dict[str, torch.Tensor], count: int = 3) -> list[dict[str, torch.Tensor]]:
    """`count` small perturbations of `base` (each its own seed)."""
    tuned = []
    for t in range(count):
        g = torch.Generator().manual_seed(10 + t)
        tuned.append({k: v + (0.05 * torch.randn(v.shape, generator=g)).to(v.dtype) for k, v in base.items()})
    return tuned
