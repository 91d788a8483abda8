"""Build open_clip models: pretrained tags, local checkpoints, `hf-hub:` ids, and tiny offline configs.

The image encoder (`model.visual`) is what fine-tuning trains and what task vectors describe; the text tower
only builds the frozen zero-shot heads (see `weaving.models.heads`). Random initialization is seeded so that
theta_pre can be rebuilt bit-identically from `(model, pretrained=None, seed)` by every run that needs it.
"""

from __future__ import annotations

import contextlib
import logging

import difflib
import functools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from torch import Tensor, nn

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_MODELS: tuple[str, ...] = tuple(sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json")))
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".npz")

Transform = Callable[[Any], Tensor]


def register_tiny_configs() -> None:
    """Register the project's tiny offline configs with open_clip (idempotent)."""
    if not all(name in open_clip.list_models() for name in TINY_MODELS):
        open_clip.add_model_config(MODEL_CONFIG_DIR)


register_tiny_configs()


@dataclass
class CLIPBundle:
    """An open_clip model with what is needed to feed it: transforms and tokenizer.

    `name`, `pretrained` and `seed` are the recipe that rebuilds the same weights with `load_clip`.
    """

    model: nn.Module
    name: str
    pretrained: str | None
    train_transform: Transform
    eval_transform: Transform
    tokenizer: Callable[..., Tensor]
    seed: int = 0


def _has_schema(model: str) -> bool:
    return model.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX))


def _canonical_name(model: str) -> str:
    """open_clip spells "ViT-B/32" as "ViT-B-32"; accept both, and check the name exists."""
    if _has_schema(model):
        if model.startswith(LOCAL_DIR_PREFIX):
            folder = Path(model[len(LOCAL_DIR_PREFIX):])
            if not (folder / "open_clip_config.json").is_file():
                raise FileNotFoundError(
                    f"model {model!r}: {folder / 'open_clip_config.json'} not found; a local-dir model needs "
                    "a folder with open_clip_config.json and its weights"
                )
        return model
    name = model.replace("/", "-")
    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model {model!r}{hint}; available models: {', '.join(known)}")
    return name


def _resolve_pretrained(name: str, pretrained: str | None) -> str | None:
    """Check `pretrained` without downloading: None, a known tag of `name`, or an existing file."""
    if pretrained is None or pretrained == "":
        return None
    if _has_schema(name):
        raise ValueError(
            f"pretrained={pretrained!r} cannot be combined with model {name!r}: weights come from that "
            "location; pass pretrained=None"
        )
    if open_clip.get_pretrained_cfg(name, pretrained):
        return pretrained.lower().replace("-", "_")  # open_clip's spelling of a tag
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path)
    tags = open_clip.list_pretrained_tags_by_model(name)
    looks_like_path = os.sep in pretrained or "/" in pretrained or path.suffix in CHECKPOINT_SUFFIXES
    if looks_like_path:
        raise FileNotFoundError(
            f"pretrained checkpoint {pretrained!r} not found; pass an existing file, a tag of {name!r} "
            f"({', '.join(tags) or 'none'}), or None for random init"
        )
    if not tags:
        raise ValueError(
            f"model {name!r} has no pretrained tags (got {pretrained!r}); pass pretrained=None for random "
            "init from `seed`, or a local checkpoint file"
        )
    raise ValueError(f"unknown pretrained tag {pretrained!r} for model {name!r}; available tags: {', '.join(tags)}")


def _one_line(error: Exception, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_schema_config(model: str) -> dict[str, Any]:
    """The full open_clip_config.json (model_cfg + preprocess_cfg) of a local-dir or hf-hub model."""
    if model.startswith(LOCAL_DIR_PREFIX):
        path = Path(model[len(LOCAL_DIR_PREFIX):]) / "open_clip_config.json"
    else:
        from open_clip.pretrained import download_pretrained_from_hf

        try:
            path = Path(download_pretrained_from_hf(model[len(HF_HUB_PREFIX):], filename="open_clip_config.json"))
        except Exception as error:  # network, auth or missing repo: say which model and why, in one line
            raise ValueError(f"could not fetch the config of {model!r} from the Hugging Face Hub: "
                             f"{_one_line(error)}") from None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def input_size(model: str, pretrained: str | None = None) -> tuple[int, int]:
    """The (height, width) of `model`'s input images, as its vision tower's `image_size` says, without
    building the model."""
    return tuple(_preprocess_cfg(model, pretrained)["size"])


def _preprocess_cfg(model: str, pretrained: str | None = None) -> dict[str, Any]:
    """open_clip's preprocessing config for a model, as `create_model` would attach it, without building it."""
    name = _canonical_name(model)
    pp = dict(vars(PreprocessCfg()))
    if _has_schema(name):
        config = _read_schema_config(name)
        pp = merge_preprocess_dict(pp, config.get("preprocess_cfg", {}))
        vision_cfg = config.get("model_cfg", config).get("vision_cfg", {})
    else:
        vision_cfg = open_clip.get_model_config(name)["vision_cfg"]
        tag = _resolve_pretrained(name, pretrained)
        if tag is not None:  # a tag brings its own mean/std; a checkpoint file ({} here) keeps the defaults
            pp = merge_preprocess_dict(pp, open_clip.get_pretrained_cfg(name, tag))
    size = vision_cfg.get("image_size", pp["size"])
    pp["size"] = (size, size) if isinstance(size, int) else tuple(size)
    return pp


def _transforms(pp: Mapping[str, Any]) -> tuple[Transform, Transform]:
    cfg = PreprocessCfg(**pp)
    return image_transform_v2(cfg, is_train=True), image_transform_v2(cfg, is_train=False)


def image_transforms(model: str = "weaving-tiny-vit", pretrained: str | None = None) -> tuple[Transform, Transform]:
    """(train, eval) transforms for `model`: PIL image -> normalized float tensor [3, H, W].

    Read from the model config (image size) and the pretrained tag (mean/std), without building the model,
    so data modules can get them cheaply. Train adds open_clip's light random resized crop.
    """
    return _transforms(_preprocess_cfg(model, pretrained))


@contextlib.contextmanager
def _quiet_random_init(active: bool):
    """Silence open_clip's 'No pretrained weights loaded ... initialized randomly' warning when random
    initialization is what the caller asked for (pretrained=None)."""
    if not active:
        yield
        return

    def keep(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _tokenizer(name: str) -> Callable:
    """open_clip's tokenizer for `name`. For a name in open_clip's local registry it is built once per process
    and model config (building the BPE tokenizer reads and parses its vocabulary: about 0.3 s, most of a tiny
    model's load_clip; tokenizing only reads it); hf-hub: and local-dir: names are asked each time."""
    if name not in open_clip.list_models():
        return open_clip.get_tokenizer(name)
    return _registered_tokenizer(name, json.dumps(open_clip.get_model_config(name), sort_keys=True, default=str))


@functools.lru_cache(maxsize=8)
def _registered_tokenizer(name: str, config: str) -> Callable:
    return open_clip.get_tokenizer(name)


def load_clip(model: str = "weaving-tiny-vit", pretrained: str | None = None, *, seed: int = 0) -> CLIPBundle:
    """Build an open_clip model with its transforms and tokenizer.

    `pretrained` is an open_clip tag ("openai", "laion2b_s34b_b79k"; downloaded on first use), a local
    checkpoint file, or None: random initialization drawn from `seed` (same seed -> bit-identical weights),
    which is how the tiny offline configs are used. `model` may also be "hf-hub:org/name" or
    "local-dir:/path" (weights come from there; `pretrained` must be None).
    """
    name = _canonical_name(model)
    source = _resolve_pretrained(name, pretrained)
    # Seed a private copy of the CPU generator: weights are drawn on CPU, and the caller's RNG stays untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            with _quiet_random_init(source is None):
                clip_model = open_clip.create_model(name, pretrained=source)
        except RuntimeError as error:
            where = f" from pretrained={source!r}" if source else ""
            raise ValueError(f"could not build model {name!r}{where}: {_one_line(error)}") from None
    tokenizer = _tokenizer(name)
    train_transform, eval_transform = _transforms(open_clip.get_model_preprocess_cfg(clip_model))
    return CLIPBundle(
        model=clip_model,
        name=name,
        pretrained=source,
        train_transform=train_transform,
        eval_transform=eval_transform,
        tokenizer=tokenizer,
        seed=seed,
    )


def _visual_tensors(clip_model: nn.Module) -> dict[str, Tensor]:
    """The image encoder's floating parameters and buffers, live (not copies), keyed "visual.*"."""
    visual = clip_model.visual
    named = list(visual.named_parameters()) + list(visual.named_buffers())
    return {f"visual.{key}": tensor for key, tensor in named if tensor.is_floating_point()}


def visual_state_dict(clip_model: nn.Module) -> dict[str, Tensor]:
    """Detached CPU copies of the image encoder's weights, keyed as in open_clip's full state dict."""
    return {key: tensor.detach().cpu().clone() for key, tensor in _visual_tensors(clip_model).items()}


def load_visual_state_dict(clip_model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy `state` (keys "visual.*", as from `visual_state_dict`) into the image encoder, strictly.

    Values are cast to each weight's dtype and device; missing or unexpected keys and shape mismatches are
    errors, so a task vector of another architecture can never be loaded silently.
    """
    targets = _visual_tensors(clip_model)
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    if missing or unexpected:
        raise ValueError(
            f"visual state dict does not match the model's image encoder: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}; was it made for another model?"
        )
    for key, target in targets.items():
        value = state[key]
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(
                f"visual state dict key {key!r} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(target.shape)}; was it made for another model?"
            )
        if not value.is_floating_point():
            raise ValueError(f"visual state dict key {key!r} has non-floating dtype {value.dtype}")
    with torch.no_grad():
        for key, target in targets.items():
            target.copy_(state[key])


def harness_zero_entries(state: Mapping[str, Tensor]) -> int:
    """Entries the official CLIP merging harnesses count beyond our task vectors, all with zero deltas.

    The task_vectors lineage (task_vectors, TIES' and PCB's vision code, TSV, ISO) flattens the state dict
    of its `ImageEncoder`: the whole open_clip model with only the text `transformer` deleted, so the token
    and positional embeddings, ln_final, text_projection and logit_scale stay in every task vector (never
    trained: zero deltas). `state` is the open_clip model's full state dict; the count is its entries
    outside `visual.*` and `transformer.*` (25,599,489 for ViT-B-32). TIES' and PCB's `zero_entries`.
    """
    return sum(tensor.numel() for key, tensor in state.items()
               if not key.startswith(("visual.", "transformer.")))


def encode_images(clip_model: nn.Module, images: Tensor) -> Tensor:
    """Unnormalized image features of a batch [B, 3, H, W] -> [B, D] (the head normalizes them)."""
    return clip_model.visual(images)
