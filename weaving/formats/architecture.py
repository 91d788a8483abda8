"""Which open_clip model a state dict is: its architecture read from tensor shapes, matched to a config.

A checkpoint names no model, so the open_clip name is found by comparing the architecture (widths, depths,
patch and image size, embedding size, and when known the attention heads and the activation) with every
registered open_clip config. Unknown facts (heads, QuickGELU) match anything; when that leaves several
names the caller must choose with `--model`, never a silent guess.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

# top-level config keys that do not change the weights' names or shapes
NEUTRAL_KEYS = {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg", "init_logit_scale"}
UNKNOWN = None


def _layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for key in state for m in [pattern.match(key)] if m}
    return max(found) + 1 if found else 0


def has_image_encoder(state: Mapping[str, Any]) -> bool:
    return "visual.conv1.weight" in state


def has_text_tower(state: Mapping[str, Any]) -> bool:
    return "token_embedding.weight" in state and "transformer.resblocks.0.attn.in_proj_weight" in state


def architecture(state: Mapping[str, torch.Tensor], heads: dict[str, int] | None = None,
                 quick_gelu: bool | None = None) -> dict[str, Any]:
    """The open_clip architecture of an open_clip-named state dict (UNKNOWN where shapes cannot tell)."""
    if not has_image_encoder(state):
        raise ValueError("holds no image encoder (no visual.conv1.weight)")
    heads = heads or {}
    conv = state["visual.conv1.weight"]
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    tokens = int(state["visual.positional_embedding"].shape[0]) - 1
    grid = round(tokens ** 0.5)
    if grid * grid != tokens:
        raise ValueError(f"visual.positional_embedding has {tokens + 1} rows, not a square grid plus one class token")
    vision_layers = _layers(state, "visual.transformer.resblocks.")
    mlp = state.get("visual.transformer.resblocks.0.mlp.c_fc.weight")
    vision_heads = heads.get("visual.transformer.resblocks.0.attn")
    vision = {"layers": vision_layers, "width": width, "patch_size": patch, "image_size": grid * patch,
              "mlp_ratio": None if mlp is None else mlp.shape[0] / width,
              "head_width": None if vision_heads is None else width // vision_heads}
    proj = state.get("visual.proj")
    arch: dict[str, Any] = {"embed_dim": None if proj is None else int(proj.shape[1]), "quick_gelu": quick_gelu,
                            "vision_cfg": vision, "text_cfg": None}
    if has_text_tower(state):
        text_width = int(state["token_embedding.weight"].shape[1])
        text_mlp = state["transformer.resblocks.0.mlp.c_fc.weight"]
        text_heads = heads.get("transformer.resblocks.0.attn")
        arch["text_cfg"] = {"context_length": int(state["positional_embedding"].shape[0]),
                            "vocab_size": int(state["token_embedding.weight"].shape[0]), "width": text_width,
                            "layers": _layers(state, "transformer.resblocks."), "heads": text_heads,
                            "mlp_ratio": text_mlp.shape[0] / text_width}
        if arch["embed_dim"] is None and "text_projection" in state:
            arch["embed_dim"] = int(state["text_projection"].shape[1])
    return arch


def _normalized(cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """A registered config with every default filled in; None for configs whose weights differ in kind."""
    if set(cfg) - NEUTRAL_KEYS:
        return None
    try:
        vision = dataclasses.asdict(CLIPVisionCfg(**cfg["vision_cfg"]))
        text = dataclasses.asdict(CLIPTextCfg(**cfg["text_cfg"]))
    except (TypeError, KeyError):
        return None
    if vision["timm_model_name"] or text["hf_model_name"] or isinstance(vision["layers"], (list, tuple)):
        return None
    return {"embed_dim": cfg["embed_dim"], "quick_gelu": bool(cfg.get("quick_gelu", False)),
            "vision_cfg": vision, "text_cfg": text}


def _agrees(known: Any, candidate: Any) -> bool:
    if isinstance(known, Mapping):
        return isinstance(candidate, Mapping) and all(_agrees(v, candidate.get(k)) for k, v in known.items())
    if known is UNKNOWN:
        return True
    if isinstance(known, float) or isinstance(candidate, float):
        return candidate is not None and abs(float(known) - float(candidate)) < 1e-6
    return known == candidate


def _plain_defaults(normalized: Mapping[str, Any]) -> bool:
    """Only the plain CLIP ViT: no attentional pooling, layer scale, qk-norm and the like."""
    vision, text = normalized["vision_cfg"], normalized["text_cfg"]
    plain_v = dataclasses.asdict(CLIPVisionCfg())
    plain_t = dataclasses.asdict(CLIPTextCfg())
    same_v = {"ls_init_value", "attentional_pool", "no_ln_pre", "pos_embed_type", "final_ln_after_pool", "pool_type",
              "act_kwargs", "norm_kwargs", "block_type", "qk_norm", "scaled_cosine_attn", "scale_heads",
              "scale_attn_inner", "scale_attn", "scale_fc"}
    same_t = {"ls_init_value", "embed_cls", "no_causal_mask", "final_ln_after_pool", "pool_type", "proj_bias",
              "proj_type", "act_kwargs", "norm_kwargs", "block_type", "qk_norm", "scaled_cosine_attn", "scale_heads",
              "scale_attn_inner", "scale_attn", "scale_fc"}
    return all(vision[k] == plain_v[k] for k in same_v) and all(text[k] == plain_t[k] for k in same_t)


def describe(arch: Mapping[str, Any]) -> str:
    v = arch["vision_cfg"]
    text = "" if not arch.get("text_cfg") else f", text width {arch['text_cfg']['width']} x {arch['text_cfg']['layers']} layers"
    act = {True: ", QuickGELU", False: ", GELU", None: ""}[arch.get("quick_gelu")]
    return (f"ViT width {v['width']} x {v['layers']} layers, patch {v['patch_size']}, image {v['image_size']}, "
            f"embed {arch.get('embed_dim')}{text}{act}")


def matching_models(arch: Mapping[str, Any]) -> list[str]:
    """Every registered open_clip model whose config agrees with `arch` (text ignored when arch has none)."""
    import weaving.models  # noqa: F401  (registers the tiny configs)

    wanted = dict(arch)
    if wanted.get("text_cfg") is None:
        wanted.pop("text_cfg", None)
    names = []
    for name in open_clip.list_models():
        normalized = _normalized(open_clip.get_model_config(name) or {})
        if normalized and _plain_defaults(normalized) and _agrees(wanted, normalized):
            names.append(name)
    return names


def model_name(arch: Mapping[str, Any], label: str) -> str:
    """The one open_clip model `arch` is; a one-line error naming `--model` when none or several fit."""
    names = matching_models(arch)
    if len(names) == 1:
        return names[0]
    if not names:
        raise ValueError(f"{label}: no open_clip model config matches its architecture ({describe(arch)}); "
                         "register one (open_clip.add_model_config) or pass --model NAME")
    raise ValueError(f"{label}: its weights fit several open_clip models ({', '.join(names[:6])}); "
                     "pass --model NAME to choose (OpenAI CLIP weights use the -quickgelu names)")


def check_model(name: str, arch: Mapping[str, Any], label: str) -> None:
    """Raise a one-line error when the user's `--model` cannot hold weights of architecture `arch`."""
    import weaving.models  # noqa: F401

    normalized = _normalized(open_clip.get_model_config(name) or {})
    wanted = {k: v for k, v in arch.items() if not (k == "text_cfg" and v is None)}
    if normalized is None or not _agrees({**wanted, "quick_gelu": UNKNOWN}, normalized):
        raise ValueError(f"{label}: its weights ({describe(arch)}) do not fit --model {name}")
    if arch.get("quick_gelu") is not None and arch["quick_gelu"] != normalized["quick_gelu"]:
        act = "QuickGELU" if arch["quick_gelu"] else "GELU"
        raise ValueError(f"{label}: the checkpoint uses {act} but --model {name} does not; "
                         f"pick the {'-quickgelu ' if arch['quick_gelu'] else ''}variant")
