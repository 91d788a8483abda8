"""Write a merged (or any) open_clip state dict as a full checkpoint its own ecosystem loads without help.

- "open_clip": a folder as open_clip's hub format (`open_clip_model.safetensors` + `open_clip_config.json`),
  loadable with `open_clip.create_model_and_transforms("local-dir:FOLDER")`; an output ending in
  `.safetensors` is one file instead, loadable with `open_clip.create_model(model, pretrained=FILE)`;
- "hf": a folder with config.json (in the weights' dtype) + model.safetensors, loadable with
  `transformers.CLIPModel.from_pretrained` (and `CLIPVisionModel.from_pretrained`); a state dict without
  text tower becomes a CLIPVisionModelWithProjection folder.

Every folder also carries the recipe (`weaving_recipe.yaml`, which `weaving merge --config` re-runs) and a
README.md model card (written by the caller's `extra_files`); the recipe also goes into the weights'
metadata. Both exporters register with `weaving.merging.exporters`, so `weaving merge --format` finds them.
`--model` is a registered open_clip name or an open_clip model-config JSON file (registered on the fly).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from weaving.io.loader import file_sha256
from weaving.io.publish import check_output, publish_folder
from weaving.io.writer import save_state_dict, weights_dtype
from weaving.merging.exporters import Exporter, register_exporter

EXPORT_FORMATS = ("open_clip", "hf")
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"


def input_hashes(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """{path: sha256} of every input file (folders and missing paths are skipped)."""
    return {str(p): file_sha256(p) for p in paths if Path(p).is_file()}


def is_file_export(path: str | os.PathLike, format: str) -> bool:
    return format == "open_clip" and Path(path).suffix == ".safetensors"


def check_export(path: str | os.PathLike, format: str, model: str | None = None, *, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike] = ()) -> str | None:
    """Check everything before any work: a known format, the model (a registered name or a config JSON;
    None when not known yet), a free output (file or folder, see `check_output`); returns the model name."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of: {', '.join(EXPORT_FORMATS)}")
    from weaving.formats.architecture import model_option

    name = model_option(model)
    if format == "hf":
        from weaving.formats.hf_clip import transformers_module

        transformers_module()
        if name is not None:
            model_architecture(name)
    check_output(path, folder=not is_file_export(path, format), overwrite=overwrite, inputs=inputs)
    return name


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


def _checked_full_state(state: Mapping[str, torch.Tensor], model: str) -> tuple[dict[str, torch.Tensor], Any]:
    """`state` as open_clip `model` loads it strictly (so create_model(model, pretrained=FILE) works), and
    the model (for its preprocessing)."""
    from weaving.models.clip import load_clip

    clip_model = load_clip(model, None).model
    try:
        clip_model.load_state_dict(dict(state), strict=True)
    except RuntimeError as error:
        first = " ".join(str(error).split())[:240]
        raise ValueError(f"the merged weights are not a full {model} checkpoint ({first}); merge with the full "
                         "theta_pre (e.g. --pretrained RUN) to export a loadable model") from None
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}, clip_model


def open_clip_config(model: str, clip_model: Any) -> dict[str, Any]:
    """open_clip_config.json as open_clip's own hub format writes it (`save_config_for_hf`)."""
    import open_clip

    visual = clip_model.visual
    preprocess = {"mean": list(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN),
                  "std": list(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)}
    for key in ("interpolation", "resize_mode"):
        if key in (getattr(visual, "preprocess_cfg", None) or {}):
            preprocess[key] = visual.preprocess_cfg[key]
    return {"model_cfg": open_clip.get_model_config(model), "preprocess_cfg": preprocess}


def export_checkpoint(path: str | os.PathLike, state: Mapping[str, torch.Tensor], format: str, model: str,
                      recipe: Mapping[str, Any] | None = None, *, overwrite: bool = False,
                      extra_files: Callable[[Path], None] | None = None) -> Path:
    """Write `state` (open_clip names, full model) in `format`; returns the file or folder written.
    `extra_files(folder)` adds files to a folder output before it is published (the recipe, a model card)."""
    model = check_export(path, format, model, overwrite=overwrite)
    metadata = {"model": model, "weaving_recipe": json.dumps(dict(recipe or {}), sort_keys=True, default=str)}
    if format == "open_clip":
        full, clip_model = _checked_full_state(state, model)
        if is_file_export(path, format):
            return save_state_dict(path, full, {**metadata, "format": "pt"})
        with publish_folder(path, overwrite=overwrite) as tmp:
            save_state_dict(tmp / OPEN_CLIP_WEIGHTS, full, {**metadata, "format": "pt"})
            (tmp / OPEN_CLIP_CONFIG).write_text(json.dumps(open_clip_config(model, clip_model), indent=2))
            if extra_files is not None:
                extra_files(tmp)
        return Path(path)
    from weaving.formats.hf_clip import write_folder

    arch = model_architecture(model)
    with publish_folder(path, overwrite=overwrite) as tmp:
        write_folder(tmp, state, arch, metadata, dtype=weights_dtype(state))
        if extra_files is not None:
            extra_files(tmp)
    return Path(path)


def _check(output: str | os.PathLike, model: str | None, *, overwrite: bool = False,
           inputs: Iterable[str | os.PathLike] = (), format: str) -> str:
    from weaving.formats.architecture import register_run_config

    inputs = list(inputs)
    for source in inputs:  # a model a run registered on the fly (`weaving import`) is known again here
        folder = Path(source) if Path(source).is_dir() else Path(source).parent
        for candidate in (folder, folder.parent):
            register_run_config(candidate, model)
    name = check_export(output, format, model, overwrite=overwrite, inputs=inputs)
    if name is None:
        raise ValueError(f"--format {format} needs the open_clip model name: pass --model NAME (or an open_clip "
                         "model-config JSON file)")
    return name


def _write(format: str):
    def write(output, state, model, recipe, *, overwrite=False, extra_files=None):
        return export_checkpoint(output, state, format, model, recipe, overwrite=overwrite, extra_files=extra_files)
    return write


for _format in EXPORT_FORMATS:
    register_exporter(Exporter(_format, lambda output, model, _format=_format, **kw: _check(output, model, format=_format, **kw),
                               _write(_format)))
