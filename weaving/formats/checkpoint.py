"""Read a CLIP checkpoint in any supported format into open_clip names: `read_checkpoint`.

Formats (`FORMATS`), detected from the file or folder content, never from the name alone:
- "open_clip": an open_clip state dict (safetensors, or a torch.save file, with or without `state_dict` /
  `module.` wrappers), a `local-dir` folder with open_clip_config.json, or an open_clip tag with `--model`;
- "hf": a transformers CLIP folder (config.json + model.safetensors / pytorch_model.bin, single or sharded
  with an index) or a hub id (`org/name` or `hf-hub:org/name`) of CLIPModel, CLIPVisionModel or
  CLIPVisionModelWithProjection;
- "lineage": the task_vectors lineage's torch.save of a whole `ImageEncoder` (its CLIP under `model.`).
Files are read by `weaving.io` (pickles by its restricted unpickler: nothing from the file runs). Content that fits
no format, or several, is a one-line error that names `--format`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from weaving.formats import architecture as arch_lib
from weaving.formats import hf_clip, lineage
from weaving.io.hub import is_hub_id, resolve_location
from weaving.io.runs import PRETRAINED_FILE, pretrained_source
from weaving.io.safetensors import load_state_dict, read_metadata
from weaving.io.torch_pickle import is_legacy_torch, is_torch_zip, read_torch_file

FORMATS = ("open_clip", "hf", "lineage")
FORMAT_HINT = f"pass --format ({' | '.join(FORMATS)}) to say which it is"


@dataclass
class Checkpoint:
    """A CLIP checkpoint in open_clip names, with what is known of its architecture and origin."""

    state: dict[str, torch.Tensor]
    source: str
    format: str
    arch: dict[str, Any] | None = None
    model: str | None = None  # open_clip model name when the source records it
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def has_image_encoder(self) -> bool:
        return arch_lib.has_image_encoder(self.state)

    @property
    def has_text_tower(self) -> bool:
        return arch_lib.has_text_tower(self.state)

    @property
    def has_projection(self) -> bool:
        return "visual.proj" in self.state


def _strip_wrappers(state: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("state_dict", "model_state_dict", "model"):
        inner = state.get(key) if isinstance(state, Mapping) else None
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            state = inner
            break
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _key_style(keys: list[str]) -> str | None:
    """Which naming the keys use: "open_clip", "hf", "hf_vision_bare", "lineage", or None when mixed/unknown."""
    styles = set()
    for key in keys:
        if key == "logit_scale":
            continue  # both namings have it
        if key.startswith(("visual.", "transformer.", "token_embedding.", "ln_final.")) or key in (
                "positional_embedding", "text_projection", "attn_mask"):
            styles.add("open_clip")
        elif key.startswith(("vision_model.", "text_model.", "visual_projection.", "text_projection.")):
            styles.add("hf")
        elif key.startswith("model."):
            styles.add("lineage")
        elif key.startswith(("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")):
            styles.add("hf_vision_bare")
        else:
            styles.add("other")
    return styles.pop() if len(styles) == 1 else None


def _read_file(path: Path) -> Any:
    """The raw object of a weights file: a dict of tensors, or a pickled record tree."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:4] == b"PK\x03\x04":
        if not is_torch_zip(path):
            raise ValueError(f"{path}: a zip archive, but not a torch.save file; {FORMAT_HINT}")
        return read_torch_file(path)
    if len(head) >= 9 and head[8:9] == b"{":
        try:
            return load_state_dict(path)
        except ValueError as error:
            raise ValueError(f"{path}: a corrupt safetensors file ({str(error).removeprefix(f'{path}: ')})") from None
    if is_legacy_torch(head):
        raise ValueError(f"{path}: saved in the legacy (pre-1.6) torch format, which weaving does not read; "
                         "re-save it with a current torch.save or use the safetensors / zip version")
    raise ValueError(f"{path}: unknown format (not a safetensors file, a torch.save archive nor a folder); "
                     f"{FORMAT_HINT}")


def _metadata(path: Path) -> dict[str, str]:
    if path.suffix != ".safetensors":
        return {}
    try:
        return read_metadata(path)
    except ValueError:
        return {}


def _from_lineage(obj: Any, source: str) -> Checkpoint:
    tree = lineage.read_module(obj)
    state = {k[len("model."):]: v for k, v in tree.state_dict.items() if k.startswith("model.")}
    if not state:
        raise ValueError(f"{source}: a pickled {tree.root_class} without a CLIP under 'model.'; {FORMAT_HINT}")
    heads = {k[len("model."):]: v for k, v in tree.num_heads.items() if k.startswith("model.")}
    quick = lineage.uses_quick_gelu(tree)
    arch = arch_lib.architecture(state, heads, quick) if arch_lib.has_image_encoder(state) else None
    return Checkpoint(state, source, "lineage", arch, notes={"class": tree.root_class})


def _from_state_dict(state: Mapping[str, Any], source: str, forced: str | None, meta: Mapping[str, str]) -> Checkpoint:
    state = _strip_wrappers(state)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad or not state:
        raise ValueError(f"{source}: not a state dict of tensors (e.g. {bad[0]!r})" if bad else f"{source}: holds no tensors")
    style = _key_style(list(state))
    if forced == "lineage" or (forced is None and style == "lineage"):
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        style = "open_clip" if _key_style(list(state)) == "open_clip" else None
        fmt = "lineage"
    else:
        fmt = forced or style
    if forced == "hf" or style in ("hf", "hf_vision_bare"):
        raise ValueError(f"{source}: Hugging Face CLIP weights without their config.json; pass the folder "
                         "(or hub id) that holds config.json and the weights")
    if style != "open_clip":
        raise ValueError(f"{source}: its tensor names fit no CLIP format weaving knows (e.g. {sorted(state)[0]!r}); "
                         f"{FORMAT_HINT}")
    arch = arch_lib.architecture(state) if arch_lib.has_image_encoder(state) else None
    return Checkpoint(dict(state), source, fmt or "open_clip", arch, model=meta.get("model") or None)


def _from_hf_folder(folder: Path, source: str) -> Checkpoint:
    config = hf_clip.read_config(folder)
    if not hf_clip.is_clip_config(config):
        raise ValueError(f"{source}: a Hugging Face {config.get('model_type') or 'model'} folder, not CLIP")
    if config.get("model_type") == "clip_text_model":
        raise ValueError(f"{source}: a text-only CLIP model (CLIPTextModel): it has no image encoder to import")
    arch = hf_clip.architecture_from_config(config)
    weights = hf_clip.read_weights(folder)
    if config.get("model_type") == "clip_vision_model" and not any(k.startswith("vision_model.") for k in weights):
        weights = {(k if k.startswith("visual_projection.") else f"vision_model.{k}"): v for k, v in weights.items()}
    try:
        state = hf_clip.to_open_clip(weights)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    if not arch_lib.has_text_tower(state):
        arch["text_cfg"] = None
    return Checkpoint(state, source, "hf", arch, notes={"architectures": ",".join(config.get("architectures") or [])})


def _open_clip_local_dir(folder: Path, source: str) -> Checkpoint:
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if (folder / name).is_file():
            return _from_state_dict(_read_file(folder / name), source, "open_clip", {})
    raise FileNotFoundError(f"{source}: open_clip_config.json but no open_clip_model.safetensors / "
                            "open_clip_pytorch_model.bin next to it")


def detect_folder(folder: Path) -> str:
    has_hf = (folder / "config.json").is_file()
    has_oc = (folder / "open_clip_config.json").is_file()
    if has_hf and has_oc:
        raise ValueError(f"{folder}: holds both a Hugging Face config.json and an open_clip_config.json; {FORMAT_HINT}")
    if has_hf:
        return "hf"
    if has_oc:
        return "open_clip"
    raise ValueError(f"{folder}: unknown format: a folder without config.json (Hugging Face) or "
                     f"open_clip_config.json; pass a weights file, or {FORMAT_HINT}")


def read_checkpoint(source: str, format: str | None = None, model: str | None = None) -> Checkpoint:
    """Read `source` (file, folder, hub id, or an open_clip tag of `model`) into open_clip names."""
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown --format {format!r}; expected one of: {', '.join(FORMATS)}")
    source = str(source)
    path = Path(source).expanduser()
    if path.is_dir():
        kind = format or detect_folder(path)
        if kind == "hf":
            return _from_hf_folder(path, source)
        if kind == "open_clip":
            return _open_clip_local_dir(path, source)
        raise ValueError(f"{source}: a folder cannot be a {kind} checkpoint (those are single .pt files)")
    if path.is_file():
        obj = _read_file(path)
        if lineage.is_module_record(obj):
            if format not in (None, "lineage"):
                raise ValueError(f"{source}: a pickled module (task_vectors lineage), not {format}")
            return _from_lineage(obj, source)
        if not isinstance(obj, Mapping):
            raise ValueError(f"{source}: holds a {type(obj).__name__}, not a CLIP model or state dict; {FORMAT_HINT}")
        return _from_state_dict(obj, source, format, _metadata(path))
    if model is not None and "/" not in source and source and format in (None, "open_clip"):
        return _from_tag(model, source)
    if is_hub_id(source) and format in (None, "hf"):
        return _from_hf_folder(resolve_location(source), source)
    raise FileNotFoundError(f"{source}: no such file or folder (nor a hub id 'org/name', nor an open_clip tag "
                            "with --model)")


def _from_tag(model: str, tag: str) -> Checkpoint:
    from weaving.models.clip import load_clip

    bundle = load_clip(model, tag)
    state = {k: v.detach().clone() for k, v in bundle.model.state_dict().items()}
    return Checkpoint(state, f"{bundle.name}:{tag}", "open_clip", arch_lib.architecture(state), model=bundle.name)


def resolve_model(checkpoint: Checkpoint, model: str | None) -> str:
    """The open_clip model name of a full checkpoint: `model` (checked), the recorded one, or the one match."""
    if checkpoint.arch is None:
        raise ValueError(f"{checkpoint.source}: has no image encoder (a text-only checkpoint?); nothing to import")
    label = checkpoint.source
    if model is not None:
        model = arch_lib.model_option(model)
        arch_lib.check_model(model, checkpoint.arch, label)
        return model
    if checkpoint.model:
        arch_lib.check_model(checkpoint.model, checkpoint.arch, label)
        return checkpoint.model
    return arch_lib.model_name(checkpoint.arch, label)


def describe_source(checkpoint: Checkpoint) -> str:
    return json.dumps({"source": checkpoint.source, "format": checkpoint.format, **checkpoint.notes})


def full_state(checkpoint: str, pretrained: str | None = None, *, model: str | None = None,
               format: str | None = None) -> tuple[str, dict[str, torch.Tensor], str]:
    """A whole open_clip model from one checkpoint: (model name, state dict, label).

    `checkpoint` is any readable source, or a run folder (its theta_pre). Parts it lacks (the text tower of a
    fine-tuned image encoder, the projection of a CLIPVisionModel) come from `pretrained` (a run folder or
    any checkpoint); without it they are a one-line error. The result loads strictly into the model.
    """
    from weaving.models.clip import load_clip

    def read(source: str, fmt: str | None) -> Checkpoint:
        is_run = Path(source).is_dir() and (Path(source) / PRETRAINED_FILE).is_file()
        return read_checkpoint(str(pretrained_source(source)) if is_run else source, None if is_run else fmt, model)

    main = read(checkpoint, format)
    if not main.has_image_encoder:
        raise ValueError(f"{checkpoint}: has no image encoder (a text-only checkpoint?); nothing to score")
    state = dict(main.state)
    base = read(pretrained, None) if pretrained else None
    if base is not None:
        state = {**{k: v for k, v in base.state.items() if not k.startswith("visual.")}, **state}
        state.setdefault("visual.proj", base.state.get("visual.proj"))
        if state["visual.proj"] is None:
            del state["visual.proj"]
    if "visual.proj" not in state or not arch_lib.has_text_tower(state):
        lacks = "its projection" if "visual.proj" not in state else "a text tower (needed for the zero-shot heads)"
        raise ValueError(f"{checkpoint}: lacks {lacks}; pass the pretrained model it came from as `pretrained`")
    whole = Checkpoint(state, checkpoint, main.format, arch_lib.architecture(state), model=main.model or (base.model if base else None))
    if whole.arch.get("quick_gelu") is None:
        whole.arch["quick_gelu"] = (main.arch or {}).get("quick_gelu", (base.arch or {}).get("quick_gelu") if base else None)
    name = resolve_model(whole, model)
    clip_model = load_clip(name, None).model
    try:
        clip_model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{checkpoint}: does not load into open_clip {name} ({' '.join(str(error).split())[:240]})") from None
    return name, {k: v.detach().clone() for k, v in clip_model.state_dict().items()}, checkpoint
