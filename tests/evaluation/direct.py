"""A direct evaluation, independent of the project's scoring path: load full weights into the model, predict
every test image of a task with its head in a plain loop, and count per column in Python."""

from __future__ import annotations

import torch


def add_scaled(pretrained, delta, scale=1.0):
    """theta_pre + scale * delta, key by key."""
    return {key: value + scale * delta[key].to(value.dtype) for key, value in pretrained.items()}


@torch.no_grad()
def direct_accuracies(clip, visual, columns, *, max_samples=None, head_cache=None):
    """{column name: accuracy} of the model `clip` with image-encoder weights `visual` (None: as it is)."""
    from weaving.data.tasks import get_task
    from weaving.evaluation.evaluate import evenly_spaced
    from weaving.models import build_head
    from weaving.models.clip import load_visual_state_dict, visual_state_dict

    saved = visual_state_dict(clip.model)
    if visual is not None:
        load_visual_state_dict(clip.model, visual)
    clip.model.eval()
    out = {}
    try:
        for task in dict.fromkeys(c.task for c in columns):
            spec = get_task(task)
            head = build_head(clip, spec.classnames, spec.templates, cache_dir=head_cache, task=spec.name)
            data = spec.dataset("data", "test", clip.eval_transform)
            index = range(len(data)) if max_samples is None or len(data) <= max_samples else evenly_spaced(len(data), max_samples)
            items = [data[i] for i in index]
            labels = [int(label) for _, label in items]
            preds = []
            for start in range(0, len(items), 256):  # the module's CPU batch size
                images = torch.stack([image for image, _ in items[start: start + 256]])
                preds += head(clip.model.visual(images)).argmax(dim=-1).tolist()
            for column in columns:
                if column.task != task:
                    continue
                keep = [k for k, label in enumerate(labels) if column.classes is None or label in column.classes]
                out[column.name] = sum(preds[k] == labels[k] for k in keep) / len(keep)
    finally:
        load_visual_state_dict(clip.model, saved)
    return out
