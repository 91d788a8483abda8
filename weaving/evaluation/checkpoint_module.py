"""CheckpointModule: `weaving validate` for one checkpoint as it is, without a merge.

Scores a fine-tuned model, a merged file (open_clip or Hugging Face format), theta_pre or a run folder on
any tasks, each with its zero-shot head, and logs `val/acc/<task>` and `val/acc/mean` like MergeModule.
This is how an import is checked against published numbers:

    weaving validate --model weaving.evaluation.CheckpointModule --model.checkpoint merged_hf/ \
        --data weaving.data.datamodule.MultiTaskDataModule --data.tasks '[mnist, svhn]' --data.model ViT-B-32-quickgelu
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from weaving.evaluation.evaluate import autocast_for, predict


class CheckpointModule(pl.LightningModule):
    """Validate one checkpoint per task.

    Args:
        checkpoint: a file, folder or hub id in any `weaving.formats` format, or a run folder (scores theta_pre).
        pretrained: where parts the checkpoint lacks come from (the text tower of a fine-tuned image encoder,
            the projection of a CLIPVisionModel): a run folder or any checkpoint; None for a full CLIP.
        model: open_clip model name (default: recorded in the checkpoint or found from its weights).
        format: force the checkpoint's format ("open_clip", "hf" or "lineage"; default: detected).
        head_cache_dir: where zero-shot heads are cached, and where imported heads are found (RUN/heads).
        output_dir: when set, also write results.json/csv/md there (one row, method "checkpoint").
        export: when set, also write the scored model there as a full checkpoint in `export_format`
            ("open_clip" file or "hf" folder).
        precision: "auto" (bf16 autocast on CUDA, float32 on the CPU, as MergeModule), "bf16" or "32".
    """

    def __init__(self, checkpoint: str, pretrained: str | None = None, model: str | None = None,
                 format: str | None = None, head_cache_dir: str | None = None, output_dir: str | None = None,
                 export: str | None = None, export_format: str = "open_clip", precision: str = "auto") -> None:
        super().__init__()
        from weaving.formats.checkpoint import full_state
        from weaving.formats.importer import state_dict_hash
        from weaving.models.clip import load_clip

        self.save_hyperparameters()
        autocast_for(torch.device("cpu"), precision)  # checks the name
        self.eval_precision = precision
        if export is not None:
            from weaving.formats.export import check_export

            check_export(export, export_format)
        name, state, self.label = full_state(checkpoint, pretrained, model=model, format=format)
        self.clip = load_clip(name, None)
        self.clip.model.load_state_dict(state)
        # the heads depend on the text tower only: key their cache by its hash, not by a tag or a seed
        self.clip.pretrained = state_dict_hash({k: v for k, v in state.items() if not k.startswith("visual.")})
        self.clip_model = self.clip.model.eval()
        if export is not None:
            from weaving.formats.export import export_checkpoint

            export_checkpoint(export, state, export_format, name, {"checkpoint": checkpoint, "pretrained": pretrained})
        self.head_cache_dir, self.output_dir = head_cache_dir, output_dir
        self.heads = nn.ModuleDict()
        self.metrics = nn.ModuleDict()

    def setup(self, stage: str) -> None:
        from weaving.data.tasks import get_task
        from weaving.models.heads import build_head

        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        self.loader_tasks = list(getattr(datamodule, "task_names", None) or [])
        if not self.loader_tasks:
            raise ValueError("CheckpointModule needs a datamodule with task_names, one dataloader per task "
                             "(e.g. data: class_path: weaving.data.datamodule.MultiTaskDataModule)")
        for task in self.loader_tasks:
            spec = get_task(task)
            self.heads[task] = build_head(self.clip, spec.classnames, spec.templates, cache_dir=self.head_cache_dir,
                                          task=spec.name)
            self.metrics[task] = MulticlassAccuracy(num_classes=spec.num_classes, average="micro")

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        images, labels = batch
        task = self.loader_tasks[dataloader_idx]
        with autocast_for(self.device, self.eval_precision):
            preds = predict(self.clip_model, self.heads[task], images)
        self.metrics[task].update(preds, labels)
        self.log(f"val/acc/{task}", self.metrics[task], on_step=False, on_epoch=True, add_dataloader_idx=False,
                 batch_size=len(labels))

    def on_validation_epoch_end(self) -> None:
        accuracy = {task: float(self.metrics[task].compute()) for task in self.loader_tasks}
        mean = sum(accuracy.values()) / len(accuracy)
        self.log("val/acc/mean", mean, add_dataloader_idx=False)
        self.last_accuracy = {"accuracy": accuracy, "mean": mean}
        if self.output_dir and self.trainer.is_global_zero:
            from weaving.evaluation.report import check_results, write_results

            row = {"method": "checkpoint", "weave": False, "lam": 1.0, "lambdas": None, "pooling": None,
                   "checkpoint": self.label, **self.last_accuracy}
            results = {"setup": "multi_task", "tasks": self.loader_tasks, "zeroshot": {}, "individual": {},
                       "rows": [row]}
            write_results(check_results(results), self.output_dir)

    def configure_optimizers(self) -> None:
        """Nothing is trained: CheckpointModule only validates."""
        return None
