"""Which open_clip model a state dict is: its architecture read from tensor shapes, matched to a config.

A checkpoint names no model, so the open_clip name is found by comparing the architecture (widths, depths,
patch and image size, embedding size, and when known the attention heads and the activation) with every
registered open_clip config. Unknown facts (heads, QuickGELU) match anything; when that leaves several
names the caller must choose with `--model`, never a silent guess.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
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
    if not names:  # a size open_clip does not ship: its config, when the checkpoint tells every fact
        return register_architecture(arch, label)
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


def register_model_config(name: str, config: Mapping[str, Any]) -> str:
    """Register an open_clip model config under `name` for this process (open_clip reads configs from files:
    this writes one into a private temporary folder)."""
    folder = Path(tempfile.gettempdir()) / f"weaving-model-configs-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(dict(config), indent=2))
    open_clip.add_model_config(path)
    return name


def register_config_file(path: str | os.PathLike) -> str:
    """Register an open_clip model-config JSON file (`--model FILE.json`) under its file name; returns the name.
    It also reads open_clip's hub format (`{"model_cfg": {...}}`, e.g. a folder's open_clip_config.json)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--model {path}: no such file (expected an open_clip model-config JSON)")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"--model {path}: not a readable JSON file ({error})") from None
    if isinstance(config, dict) and isinstance(config.get("model_cfg"), dict):
        config = config["model_cfg"]
    if not isinstance(config, dict) or not all(isinstance(config.get(k), dict) for k in ("vision_cfg", "text_cfg")) \
            or "embed_dim" not in config:
        raise ValueError(f"--model {path}: not an open_clip model config (it needs embed_dim, vision_cfg and text_cfg, "
                         "as open_clip's model_configs/*.json)")
    name = path.stem if path.name != "open_clip_config.json" else path.parent.name
    return register_model_config(name, config)


def config_of(arch: Mapping[str, Any]) -> dict[str, Any] | None:
    """An open_clip model config for a complete architecture (text tower included); None when a fact is
    unknown (attention heads, activation, MLP ratio)."""
    vision, text = arch.get("vision_cfg") or {}, arch.get("text_cfg")
    facts = [arch.get("embed_dim"), arch.get("quick_gelu"), *vision.values(), *((text or {}).values())]
    if text is None or any(value is None for value in facts):
        return None
    return {"embed_dim": arch["embed_dim"], "quick_gelu": bool(arch["quick_gelu"]),
            "vision_cfg": {k: vision[k] for k in ("image_size", "layers", "width", "patch_size", "mlp_ratio", "head_width")},
            "text_cfg": {k: text[k] for k in ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio")}}


def register_architecture(arch: Mapping[str, Any], label: str) -> str:
    """Register the open_clip config of `arch` (read from a checkpoint's config.json, which names every fact)
    under a name made of its facts, e.g. `ViT-w64-l2-p8-i32-e16-quickgelu-3f9a0c`; returns the name."""
    config = config_of(arch)
    if config is None:
        raise ValueError(f"{label}: no open_clip model config matches its architecture ({describe(arch)}) and the "
                         "checkpoint does not tell every fact needed to register one; pass --model FILE.json "
                         "(an open_clip model config) or a registered --model NAME")
    v = config["vision_cfg"]
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:6]
    name = (f"ViT-w{v['width']}-l{v['layers']}-p{v['patch_size']}-i{v['image_size']}-e{config['embed_dim']}"
            f"{'-quickgelu' if config['quick_gelu'] else ''}-{digest}")
    return register_model_config(name, config)


def model_option(model: str | None) -> str | None:
    """The open_clip model name of `--model`: a registered name (checked: an unknown one lists the known
    ones), or an open_clip model-config JSON file, registered on the fly under its file name."""
    if model is None:
        return None
    from weaving.models.clip import _canonical_name

    if str(model).endswith(".json"):
        return register_config_file(model)
    return _canonical_name(model)


RUN_MODEL_CONFIG = "model_config.json"


def register_run_config(folder: str | os.PathLike, name: str | None) -> None:
    """Register the model config a run folder carries (RUN/model_config.json, written by `weaving import`)
    under the run's model `name`, when open_clip does not know that name (a size registered on the fly)."""
    path = Path(folder) / RUN_MODEL_CONFIG
    if name is None or name in open_clip.list_models() or not path.is_file():
        return
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(content, dict) and content.get("model") == name and isinstance(content.get("model_cfg"), dict):
        register_model_config(name, content["model_cfg"])
