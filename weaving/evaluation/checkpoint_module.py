"""CheckpointModule: `weaving validate` for one checkpoint as it is, without a merge (a one-row preset of
`ComparisonModule`).

Scores a fine-tuned model, a merged file (open_clip or Hugging Face format), theta_pre or a run folder on
any tasks, each with its zero-shot head, and logs `val/acc/<task>` and `val/acc/mean` like MergeModule.
This is how an import is checked against published numbers:

    weaving validate --model weaving.evaluation.CheckpointModule --model.checkpoint merged_hf/ \
        --data weaving.data.datamodule.MultiTaskDataModule --data.tasks '[mnist, svhn]' --data.model ViT-B-32-quickgelu
"""

from __future__ import annotations

from weaving.evaluation.comparison import ComparisonModule, Request, Row
from weaving.evaluation.evaluate import WeightSet


class CheckpointModule(ComparisonModule):
    """Validate one checkpoint per task.

    Args:
        checkpoint: a file, folder or hub id in any `weaving.formats` format, or a run folder (scores theta_pre).
        pretrained: where parts the checkpoint lacks come from (the text tower of a fine-tuned image encoder,
            the projection of a CLIPVisionModel): a run folder or any checkpoint; None for a full CLIP.
        model: open_clip model name (default: recorded in the checkpoint or found from its weights).
        format: force the checkpoint's format ("open_clip", "hf" or "lineage"; default: detected).
        tasks: the evaluated tasks when the config has no datamodule (one column each).
        head_cache_dir: where zero-shot heads are cached, and where imported heads are found (RUN/heads).
        output_dir: when set, also write results.json/csv/md and config.yaml there (one row, method "checkpoint").
        export: when set, also write the scored model there as a full checkpoint in `export_format`
            ("open_clip" file or "hf" folder).
        precision: "auto" (bf16 autocast on CUDA, float32 on the CPU, as MergeModule), "bf16" or "32".
    """

    def __init__(self, checkpoint: str, pretrained: str | None = None, model: str | None = None,
                 format: str | None = None, tasks: list[str] | None = None, head_cache_dir: str | None = None,
                 output_dir: str | None = None, export: str | None = None, export_format: str = "open_clip",
                 precision: str = "auto") -> None:
        from weaving.formats.checkpoint import full_state

        if export is not None:
            from weaving.formats.export import check_export

            check_export(export, export_format)
        name, state, label = full_state(checkpoint, pretrained, model=model, format=format)
        object.__setattr__(self, "_checkpoint_state", state)  # read by _load_clip during the base's __init__
        super().__init__(None, setup="multi_task", tasks=tasks, methods=[], rows=[], analysis=[], model=name,
                         head_cache_dir=head_cache_dir, output_dir=output_dir, plots=False, precision=precision)
        self.label = label
        if export is not None:
            from weaving.formats.export import export_checkpoint

            export_checkpoint(export, state, export_format, name, {"checkpoint": checkpoint, "pretrained": pretrained})
        del self._checkpoint_state

    def _load_clip(self, model, pretrained, init_seed):
        from weaving.formats.importer import state_dict_hash
        from weaving.models.clip import load_clip

        state = self._checkpoint_state
        clip = load_clip(model, None)
        clip.model.load_state_dict(state)
        # the heads depend on the text tower only: key their cache by its hash, not by a tag or a seed
        clip.pretrained = state_dict_hash({k: v for k, v in state.items() if not k.startswith("visual.")})
        return clip

    def plan_setup(self, tasks):
        from weaving.evaluation.setups import multi_task

        return multi_task(tasks)

    def extra_rows(self) -> list[Row]:
        fields = {"method": "checkpoint", "weave": False, "lam": 1.0, "lambdas": None, "pooling": None,
                  "variant": "lam", "checkpoint": self.label}
        return [Row(fields, (Request(WeightSet(), self.plan.columns),), ("checkpoint",))]

    def log_results(self, results) -> None:
        row = results["rows"][0]
        for name, value in row["accuracy"].items():
            self.log(f"val/acc/{name}", value, add_dataloader_idx=False, rank_zero_only=True)
        self.log("val/acc/mean", row["mean"], add_dataloader_idx=False, rank_zero_only=True)
        self.last_accuracy = {"accuracy": row["accuracy"], "mean": row["mean"]}
