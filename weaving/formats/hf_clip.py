"""Hugging Face CLIP <-> open_clip: exact weight-name mapping, folder and hub reading, folder export.

transformers' `CLIPModel` keeps separate q/k/v projections per attention block; open_clip fuses them into
one `in_proj` ([q; k; v] stacked on the output axis). The projections are `nn.Linear` without bias in
transformers (weight [embed, width]) and a plain matrix in open_clip (`visual.proj` [width, embed]): one is
the other's transpose. `CLIPVisionModel` holds only `vision_model.*` (no projection);
`CLIPVisionModelWithProjection` adds `visual_projection`. transformers is imported only here, when needed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from weaving.io.loader import open_checkpoint

HF_INSTALL_HINT = 'Hugging Face CLIP support needs transformers: pip install "weaving[hf]"'
CLIP_MODEL_TYPES = ("clip", "clip_vision_model", "clip_text_model")

# per block: transformers name -> open_clip name (q/k/v handled apart)
_BLOCK = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
          "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_VISION = {"embeddings.class_embedding": "class_embedding", "embeddings.patch_embedding.weight": "conv1.weight",
           "embeddings.position_embedding.weight": "positional_embedding", "pre_layrnorm.weight": "ln_pre.weight",
           "pre_layrnorm.bias": "ln_pre.bias", "post_layernorm.weight": "ln_post.weight",
           "post_layernorm.bias": "ln_post.bias"}
_TEXT = {"embeddings.token_embedding.weight": "token_embedding.weight",
         "embeddings.position_embedding.weight": "positional_embedding", "final_layer_norm.weight": "ln_final.weight",
         "final_layer_norm.bias": "ln_final.bias"}
_IGNORED = re.compile(r"^(vision_model|text_model)\.embeddings\.position_ids$")


def transformers_module():
    try:
        import transformers
    except ImportError:
        raise ValueError(HF_INSTALL_HINT) from None
    return transformers


# ------------------------------------------------------------------------------------------- reading
def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable config.json ({error})") from None


def is_clip_config(config: Mapping[str, Any]) -> bool:
    architectures = config.get("architectures") or []
    return config.get("model_type") in CLIP_MODEL_TYPES or any(str(a).startswith("CLIP") for a in architectures)


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a transformers folder (single file or shards with an index), read by weaving.io."""
    source = open_checkpoint(folder)
    return {key: source.get(key) for key in source.keys()}


# ------------------------------------------------------------------------------------------ mapping
def _vision_config(config: Mapping[str, Any]):
    transformers = transformers_module()
    if config.get("model_type") == "clip":
        return transformers.CLIPConfig.from_dict(dict(config))
    if config.get("model_type") == "clip_vision_model":
        return transformers.CLIPVisionConfig.from_dict(dict(config))
    if config.get("model_type") == "clip_text_model":
        return transformers.CLIPTextConfig.from_dict(dict(config))
    raise ValueError(f"model_type {config.get('model_type')!r} is not a CLIP model")


def architecture_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """open_clip architecture (see weaving.formats.architecture) of a transformers CLIP config."""
    parsed = _vision_config(config)
    vision = getattr(parsed, "vision_config", parsed if config.get("model_type") == "clip_vision_model" else None)
    text = getattr(parsed, "text_config", None)
    if vision is None:
        raise ValueError("is a text-only CLIP model (CLIPTextModel): it has no image encoder to import")
    acts = {vision.hidden_act} | ({text.hidden_act} if text is not None else set())
    if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
        raise ValueError(f"activation {sorted(acts)} has no open_clip equivalent (quick_gelu or gelu, same in both towers)")
    arch: dict[str, Any] = {
        "embed_dim": getattr(parsed, "projection_dim", None), "quick_gelu": acts == {"quick_gelu"},
        "vision_cfg": {"layers": vision.num_hidden_layers, "width": vision.hidden_size,
                       "patch_size": vision.patch_size, "image_size": vision.image_size,
                       "mlp_ratio": vision.intermediate_size / vision.hidden_size,
                       "head_width": vision.hidden_size // vision.num_attention_heads},
        "text_cfg": None,
    }
    if text is not None:
        arch["text_cfg"] = {"context_length": text.max_position_embeddings, "vocab_size": text.vocab_size,
                            "width": text.hidden_size, "layers": text.num_hidden_layers,
                            "heads": text.num_attention_heads, "mlp_ratio": text.intermediate_size / text.hidden_size}
    return arch


def _layers(state: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for key in state for m in [pattern.match(key)] if m}
    return max(found) + 1 if found else 0


def _tower_to_open_clip(hf: Mapping[str, torch.Tensor], hf_prefix: str, oc_prefix: str, fixed: Mapping[str, str],
                        out: dict[str, torch.Tensor], used: set[str]) -> None:
    def take(name: str) -> torch.Tensor:
        key = hf_prefix + name
        if key not in hf:
            raise ValueError(f"missing tensor {key!r}")
        used.add(key)
        return hf[key]

    for hf_name, oc_name in fixed.items():
        out[oc_prefix + oc_name] = take(hf_name)
    for i in range(_layers(hf, f"{hf_prefix}encoder.layers.")):
        block, target = f"encoder.layers.{i}.", f"{oc_prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{target}attn.in_proj_{kind}"] = torch.cat(
                [take(f"{block}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")])
            for hf_name, oc_name in _BLOCK.items():
                out[f"{target}{oc_name}.{kind}"] = take(f"{block}{hf_name}.{kind}")


def to_open_clip(hf: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIP weights -> open_clip names (towers and projections that are present)."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    if any(k.startswith("vision_model.") for k in hf):
        _tower_to_open_clip(hf, "vision_model.", "visual.", _VISION, out, used)
    if any(k.startswith("text_model.") for k in hf):
        _tower_to_open_clip(hf, "text_model.", "", _TEXT, out, used)
    if "visual_projection.weight" in hf:
        out["visual.proj"] = hf["visual_projection.weight"].T.contiguous()
        used.add("visual_projection.weight")
    if "text_projection.weight" in hf:
        out["text_projection"] = hf["text_projection.weight"].T.contiguous()
        used.add("text_projection.weight")
    if "logit_scale" in hf:
        out["logit_scale"] = hf["logit_scale"].reshape(())
        used.add("logit_scale")
    unknown = sorted(k for k in set(hf) - used if not _IGNORED.match(k))
    if unknown:
        raise ValueError(f"has {len(unknown)} tensors a CLIP model does not, e.g. {unknown[0]!r}")
    return out


def _tower_to_hf(state: Mapping[str, torch.Tensor], oc_prefix: str, hf_prefix: str, fixed: Mapping[str, str],
                 out: dict[str, torch.Tensor]) -> None:
    for hf_name, oc_name in fixed.items():
        out[hf_prefix + hf_name] = state[oc_prefix + oc_name]
    for i in range(_layers(state, f"{oc_prefix}transformer.resblocks.")):
        block, source = f"{hf_prefix}encoder.layers.{i}.", f"{oc_prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[f"{source}attn.in_proj_{kind}"].chunk(3)
            out[f"{block}self_attn.q_proj.{kind}"] = q
            out[f"{block}self_attn.k_proj.{kind}"] = k
            out[f"{block}self_attn.v_proj.{kind}"] = v
            for hf_name, oc_name in _BLOCK.items():
                out[f"{block}{hf_name}.{kind}"] = state[f"{source}{oc_name}.{kind}"]


def from_open_clip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip weights -> transformers CLIP names (the text tower only when `state` has it)."""
    from weaving.formats.architecture import has_text_tower

    out: dict[str, torch.Tensor] = {}
    _tower_to_hf(state, "visual.", "vision_model.", _VISION, out)
    out["visual_projection.weight"] = state["visual.proj"].T
    if has_text_tower(state):
        _tower_to_hf(state, "", "text_model.", _TEXT, out)
        out["text_projection.weight"] = state["text_projection"].T
        out["logit_scale"] = state["logit_scale"].reshape(())
    return {k: v.detach().cpu().contiguous().clone() for k, v in out.items()}


def hf_config(arch: Mapping[str, Any], logit_scale: float | None = None) -> dict[str, Any]:
    """config.json of a CLIPModel (arch has a text tower) or CLIPVisionModelWithProjection."""
    transformers = transformers_module()
    act = "quick_gelu" if arch["quick_gelu"] else "gelu"
    v = arch["vision_cfg"]
    vision = dict(hidden_size=v["width"], intermediate_size=int(round(v["width"] * v["mlp_ratio"])),
                  num_hidden_layers=v["layers"], num_attention_heads=v["width"] // v["head_width"],
                  patch_size=v["patch_size"], image_size=v["image_size"], hidden_act=act,
                  projection_dim=arch["embed_dim"], layer_norm_eps=1e-5)
    if arch.get("text_cfg") is None:
        config = transformers.CLIPVisionConfig(**vision)
        config.architectures = ["CLIPVisionModelWithProjection"]
        return config.to_dict()
    t = arch["text_cfg"]
    text = dict(hidden_size=t["width"], intermediate_size=int(round(t["width"] * t["mlp_ratio"])),
                num_hidden_layers=t["layers"], num_attention_heads=t["heads"], vocab_size=t["vocab_size"],
                max_position_embeddings=t["context_length"], hidden_act=act, projection_dim=arch["embed_dim"],
                layer_norm_eps=1e-5, eos_token_id=2)  # eos 2: pool at the highest token id, as open_clip does
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=arch["embed_dim"],
                                     logit_scale_init_value=2.6592 if logit_scale is None else logit_scale)
    config.architectures = ["CLIPModel"]
    return config.to_dict()


def write_folder(folder: Path, state: Mapping[str, torch.Tensor], arch: Mapping[str, Any],
                 metadata: Mapping[str, str], dtype: torch.dtype | None = None) -> None:
    """Write config.json (saying the weights' `dtype`) + model.safetensors of `state` (open_clip names) into
    an existing folder."""
    from weaving.formats.architecture import has_text_tower
    from weaving.io.writer import save_state_dict, set_config_dtype

    if not has_text_tower(state):
        arch = {**arch, "text_cfg": None}
    hf = from_open_clip(state)
    scale = float(state["logit_scale"]) if "logit_scale" in state else None
    config = hf_config(arch, scale)
    config.setdefault("torch_dtype", "float32")
    set_config_dtype(config, dtype)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    save_state_dict(folder / "model.safetensors", hf, {"format": "pt", **dict(metadata)})
