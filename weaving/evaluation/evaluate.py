"""Scoring a CLIP image encoder with zero-shot heads: plain functions plus an `Evaluator` that builds the
model, heads and test loaders once and then scores many merged weights (the comparison runner's hot loop).

`MergeModule` (Lightning) and the `Evaluator` share `predict` and `column_tally`, so `weaving validate`
and the comparison tables give the same numbers for the same merged weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from weaving.evaluation.setups import Column


@dataclass(frozen=True)
class Tally:
    """Correct predictions and number of samples of one column."""

    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")


def predict(clip_model: nn.Module, head: nn.Module, images: Tensor) -> Tensor:
    """Predicted class indices for a batch: argmax of head(image features)."""
    from weaving.models.clip import encode_images

    return head(encode_images(clip_model, images)).argmax(dim=-1)


def column_mask(labels: Tensor, column: Column) -> Tensor:
    """Boolean mask of the samples a column scores (all of them, or those whose label is in column.classes)."""
    if column.classes is None:
        return torch.ones_like(labels, dtype=torch.bool)
    classes = torch.as_tensor(column.classes, device=labels.device, dtype=labels.dtype)
    return torch.isin(labels, classes)


def column_tally(preds: Tensor, labels: Tensor, column: Column) -> Tally:
    """Correct/total of one column over a whole test set's predictions."""
    mask = column_mask(labels, column)
    return Tally(int((preds[mask] == labels[mask]).sum()), int(mask.sum()))


def mean_accuracy(tallies: Mapping[str, Tally], rule: str = "columns") -> float:
    """Mean over columns ("columns") or correct over total across columns ("samples")."""
    if not tallies:
        raise ValueError("no columns to average")
    if rule == "samples":
        total = sum(t.total for t in tallies.values())
        return sum(t.correct for t in tallies.values()) / total if total else float("nan")
    if rule != "columns":
        raise ValueError(f"unknown mean rule {rule!r}; expected 'columns' or 'samples'")
    return sum(t.accuracy for t in tallies.values()) / len(tallies)


def evenly_spaced(n: int, k: int) -> list[int]:
    """k distinct indices spread evenly over range(n) (deterministic subsets of a test set)."""
    if k < 1:
        raise ValueError(f"max_samples must be at least 1, got {k}")
    return sorted({int(i) for i in torch.linspace(0, n - 1, min(k, n)).round().long()})


@torch.inference_mode()
def predict_loader(
    clip_model: nn.Module, head: nn.Module, loader: Iterable, device: torch.device | str, desc: str = "", progress: bool = True
) -> tuple[Tensor, Tensor]:
    """Predictions and labels (CPU) for every batch of `loader`."""
    preds, labels = [], []
    for images, targets in tqdm(loader, desc=desc, leave=False, disable=not progress):
        preds.append(predict(clip_model, head, images.to(device)).cpu())
        labels.append(torch.as_tensor(targets).cpu())
    if not preds:
        raise ValueError(f"the test set of {desc!r} is empty; check the dataset root and split")
    return torch.cat(preds), torch.cat(labels)


class Evaluator:
    """Holds one CLIP model, the heads and test loaders of `tasks`; scores any visual weights on columns.

    Built once per comparison so rows only pay for loading weights and the forward passes.
    `max_samples` scores a fixed, evenly spaced subset of each test set (quick runs only; None: all).
    """

    def __init__(
        self,
        clip,
        tasks: Sequence[str],
        *,
        root: str = "data",
        split: str = "test",
        batch_size: int = 256,
        num_workers: int = 0,
        device: torch.device | str | None = None,
        head_cache_dir: str | None = None,
        download: bool = False,
        max_samples: int | None = None,
        progress: bool = True,
    ) -> None:
        from weaving.data.tasks import get_task
        from weaving.models.clip import visual_state_dict
        from weaving.models.heads import build_head

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.clip = clip
        self.model = clip.model.to(self.device).eval()
        self.pretrained = visual_state_dict(self.model)
        self.progress = progress
        self.heads: dict[str, nn.Module] = {}
        self.loaders: dict[str, DataLoader] = {}
        for name in dict.fromkeys(tasks):
            task = get_task(name)
            head = build_head(clip, task.classnames, task.templates, cache_dir=head_cache_dir, task=task.name)
            self.heads[name] = head.to(self.device).eval()
            dataset = task.dataset(root, split, clip.eval_transform, download=download)
            if max_samples is not None and len(dataset) > max_samples:
                dataset = Subset(dataset, evenly_spaced(len(dataset), max_samples))
            self.loaders[name] = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)

    def load(self, state: Mapping[str, Tensor] | None) -> None:
        """Load visual weights ("visual.*"); None restores the pretrained ones."""
        from weaving.models.clip import load_visual_state_dict

        load_visual_state_dict(self.model, self.pretrained if state is None else state)

    def evaluate(self, columns: Sequence[Column], state: Mapping[str, Tensor] | None = None) -> dict[str, Tally]:
        """Tally of every column for the given visual weights (one pass per distinct test set)."""
        self.load(state)
        tallies: dict[str, Tally] = {}
        for task in dict.fromkeys(column.task for column in columns):
            if task not in self.loaders:
                raise ValueError(f"task {task!r} was not loaded by this Evaluator; it has {list(self.loaders)}")
            preds, labels = predict_loader(self.model, self.heads[task], self.loaders[task], self.device, task, self.progress)
            for column in columns:
                if column.task == task:
                    tallies[column.name] = column_tally(preds, labels, column)
        return tallies
