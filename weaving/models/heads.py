"""Zero-shot classification heads: class names x prompt templates through the CLIP text tower.

For each class every template is embedded and L2-normalized, the embeddings are averaged and normalized
again (open_clip's `build_zero_shot_classifier`); the rows are stacked and multiplied by
`logit_scale.exp()`, as in the task-vectors code of Ilharco et al. The head is frozen: only the image
encoder is fine-tuned, and every task keeps its own head for evaluation. Heads are cached on disk so
training and evaluation reuse one computation.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weaving.io.publish import atomic_save_safetensors
from weaving.io.safetensors import load_state_dict
from weaving.models.clip import CLIPBundle

HEAD_FORMAT_VERSION = "1"  # bump when the head formula changes, so old cache files are not reused
TEXT_BATCH_SIZE = 256


class ClassificationHead(nn.Module):
    """Frozen linear head over L2-normalized image features: logits = normalize(features) @ weight.T."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        if weight.ndim != 2:
            raise ValueError(f"head weight must be 2-D [classes, dim], got shape {tuple(weight.shape)}")
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, features: Tensor) -> Tensor:
        features = F.normalize(features, dim=-1)
        return features @ self.weight.to(features.dtype).T


def _check_prompts(classnames: Sequence[str], templates: Sequence[str]) -> None:
    if isinstance(classnames, str) or len(classnames) == 0:
        raise ValueError(f"classnames must be a non-empty list of strings, got {classnames!r}")
    if isinstance(templates, str) or len(templates) == 0:
        raise ValueError(f"templates must be a non-empty list of format strings with one '{{}}', got {templates!r}")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(f"template {template!r} must be a string with exactly one '{{}}' for the class name")
        try:
            template.format("x")
        except (IndexError, KeyError, ValueError):
            raise ValueError(f"template {template!r}: braces other than the one '{{}}' must be doubled ('{{{{')") from None


def _weights_source(clip: CLIPBundle) -> dict[str, str]:
    """What determines the text tower's weights: the tag, the checkpoint file's identity, or the seed."""
    source = {"model": clip.name, "pretrained": clip.pretrained or ""}
    if clip.pretrained is None:
        source["seed"] = str(clip.seed)
    elif Path(clip.pretrained).is_file():
        stat = Path(clip.pretrained).stat()
        source["pretrained"] = str(Path(clip.pretrained).resolve())
        source["file"] = f"{stat.st_size}:{stat.st_mtime_ns}"
    return source


def head_cache_key(clip: CLIPBundle, classnames: Sequence[str], templates: Sequence[str], task: str = "") -> str:
    """A hex digest identifying the head: model, weights source, task, class names and templates."""
    record = {
        "version": HEAD_FORMAT_VERSION,
        **_weights_source(clip),
        "task": task,
        "classnames": list(classnames),
        "templates": list(templates),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def head_cache_path(cache_dir: str | os.PathLike, clip: CLIPBundle, classnames: Sequence[str],
                    templates: Sequence[str], task: str = "") -> Path:
    """Where `build_head` stores this head: <cache_dir>/<task>-<model>-<key>.safetensors."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{task or 'head'}-{clip.name}")
    return Path(cache_dir) / f"{readable}-{head_cache_key(clip, classnames, templates, task)[:20]}.safetensors"


@torch.no_grad()
def zero_shot_weights(clip: CLIPBundle, classnames: Sequence[str], templates: Sequence[str]) -> Tensor:
    """The head's weight [C, D]: open_clip's zero-shot classifier (per class, mean of normalized template
    embeddings, normalized), transposed to rows per class and multiplied by the logit scale."""
    _check_prompts(classnames, templates)
    model = clip.model
    device = model.logit_scale.device
    classes_per_batch = max(1, TEXT_BATCH_SIZE // len(templates))
    was_training = model.training
    model.eval()
    try:
        weight = open_clip.build_zero_shot_classifier(
            model, clip.tokenizer, list(classnames), list(templates), num_classes_per_batch=classes_per_batch,
            device=device, use_tqdm=len(classnames) > classes_per_batch,
        )
    finally:
        model.train(was_training)
    return weight.float().T.contiguous() * model.logit_scale.float().exp()


def _save_atomic(path: Path, weight: Tensor, metadata: dict[str, str]) -> None:
    tensors = {"weight": weight.detach().cpu().contiguous()}
    atomic_save_safetensors(path, tensors, metadata)


def imported_head_path(cache_dir: str | os.PathLike, task: str) -> Path:
    """Where `weaving import --heads` puts a published head; `build_head` prefers it to computing one."""
    return Path(cache_dir) / f"{task}.imported.safetensors"


def _load_cached(path: Path, num_classes: int) -> Tensor:
    try:
        weight = load_state_dict(path)["weight"]
    except (ValueError, KeyError, OSError) as error:
        raise ValueError(f"cached head {path} is unreadable ({error}); delete it to recompute") from None
    if weight.ndim != 2 or weight.shape[0] != num_classes:
        raise ValueError(f"cached head {path} has shape {tuple(weight.shape)}, expected {num_classes} rows; "
                         "delete it to recompute")
    return weight


def build_head(clip: CLIPBundle, classnames: Sequence[str], templates: Sequence[str], *,
               cache_dir: str | os.PathLike | None = None, task: str = "") -> ClassificationHead:
    """The frozen zero-shot head of a task for `clip`, on the model's device.

    `templates` are format strings with one "{}" (e.g. "a photo of a {}."). With `cache_dir`, the weight is
    read from / written to a safetensors file keyed by model, weights source (tag, checkpoint file or seed),
    task, class names and templates, so fine-tuning and every merge evaluation share one computation.
    """
    _check_prompts(classnames, templates)
    device = clip.model.logit_scale.device
    path = None if cache_dir is None else head_cache_path(cache_dir, clip, classnames, templates, task)
    imported = None if cache_dir is None or not task else imported_head_path(cache_dir, task)
    if imported is not None and imported.is_file():
        weight = _load_cached(imported, len(classnames))
    elif path is not None and path.is_file():
        weight = _load_cached(path, len(classnames))
    else:
        weight = zero_shot_weights(clip, classnames, templates)
        if path is not None:
            metadata = {**_weights_source(clip), "task": task, "num_classes": str(len(classnames)),
                        "num_templates": str(len(templates)), "version": HEAD_FORMAT_VERSION}
            _save_atomic(path, weight, metadata)
    return ClassificationHead(weight.to(device))
