"""Write a merged (or any) open_clip state dict as a full checkpoint others can load.

- "open_clip": one safetensors file, loadable with `open_clip.create_model(model, pretrained=FILE)`;
- "hf": a folder with config.json + model.safetensors, loadable with `transformers.CLIPModel.from_pretrained`
  (and `CLIPVisionModel.from_pretrained`); a state dict without text tower becomes a
  CLIPVisionModelWithProjection folder.
The recipe (method, hyper-parameters, lambdas, pooling, inputs and their sha256) goes into the metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

EXPORT_FORMATS = ("open_clip", "hf")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def input_hashes(paths: Sequence[str | os.PathLike]) -> dict[str, str]:
    """{path: sha256} of every input file (folders and missing paths are skipped)."""
    return {str(p): file_sha256(p) for p in paths if Path(p).is_file()}


def check_export(path: str | os.PathLike, format: str) -> None:
    """Check the output before any work: a known format, and a free file (open_clip) or folder (hf)."""
    from weaving.formats.folders import check_new_folder

    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of: {', '.join(EXPORT_FORMATS)}")
    if format == "hf":
        check_new_folder(path, "--output")
        from weaving.formats.hf_clip import transformers_module

        transformers_module()
    elif Path(path).is_dir():
        raise ValueError(f"output {path} is a folder; the open_clip format writes one file, e.g. {Path(path) / 'merged.safetensors'}")


def model_architecture(model: str) -> dict[str, Any]:
    """The normalized open_clip architecture of a registered model name."""
    import open_clip

    from weaving.formats.architecture import _normalized
    from weaving.models.clip import _canonical_name

    name = _canonical_name(model)
    arch = _normalized(open_clip.get_model_config(name) or {})
    if arch is None:
        raise ValueError(f"model {name}: only plain CLIP ViT models can be exported to Hugging Face format")
    return arch


def _checked_full_state(state: Mapping[str, torch.Tensor], model: str) -> dict[str, torch.Tensor]:
    """`state` as open_clip `model` loads it strictly (so create_model(model, pretrained=FILE) works)."""
    from weaving.models.clip import load_clip

    clip_model = load_clip(model, None).model
    try:
        clip_model.load_state_dict(dict(state), strict=True)
    except RuntimeError as error:
        first = " ".join(str(error).split())[:240]
        raise ValueError(f"the merged weights are not a full {model} checkpoint ({first}); merge with the full "
                         "theta_pre (e.g. --pretrained RUN) to export a loadable model") from None
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def export_checkpoint(path: str | os.PathLike, state: Mapping[str, torch.Tensor], format: str, model: str,
                      recipe: Mapping[str, Any] | None = None) -> Path:
    """Write `state` (open_clip names, full model) in `format`; returns the file or folder written."""
    from weaving.merging.task_vectors import save_state_dict

    check_export(path, format)
    metadata = {"model": model, "weaving_recipe": json.dumps(dict(recipe or {}), sort_keys=True, default=str)}
    if format == "open_clip":
        full = _checked_full_state(state, model)
        return save_state_dict(path, full, {**metadata, "format": "pt"})
    from weaving.formats.folders import atomic_folder
    from weaving.formats.hf_clip import write_folder

    arch = model_architecture(model)
    with atomic_folder(path) as tmp:
        write_folder(tmp, state, arch, metadata)
        (tmp / "weaving_recipe.json").write_text(json.dumps({"model": model, **dict(recipe or {})}, indent=2,
                                                            sort_keys=True, default=str))
    return Path(path)
