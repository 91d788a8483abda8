"""`weaving fit|validate|test|predict`: LightningCLI over any LightningModule / LightningDataModule.

Configs name the classes by `class_path` (e.g. `weaving.training.FineTuner`, `weaving.evaluation.MergeModule`)
and compose with several `--config`; `weaving.cli.main` dispatches here and turns user errors into one line.
The data's `model` and `pretrained` are linked to the module's (`link_model_name`, `link_pretrained`), and
before anything is built the module class the config names fills the trainer defaults it owns
(`fill_trainer_defaults`: the run folder of a fit, its max_epochs, log and checkpoint folders).
"""

from __future__ import annotations

import sys
from typing import Any

from weaving.errors import UserError

OWNED_BY_FINETUNER = ("--optimizer", "--lr_scheduler")


def _same_model(a: str, b: str) -> bool:
    return str(a).replace("/", "-") == str(b).replace("/", "-")


def link_model_name(model: str | None, data_model: str | None) -> str | None:
    """`data.init_args.model` := `model.init_args.model` (the link of `weaving fit|validate`). A data section
    that names the model too is accepted when it names the same one and refused otherwise; when the module
    names none (it reads its model from the task vectors), the data's own choice, or None: then the data
    module asks the module (`image_model()`) once it is loaded."""
    if model is None:
        return data_model
    if data_model is not None and not _same_model(model, data_model):
        raise UserError(f"data.init_args.model={data_model!r} but model.init_args.model={model!r}: name the model "
                        "once, in the model section (the data takes it from there)")
    return model


def link_pretrained(model: str | None, pretrained: str | None, data_pretrained: str | None) -> str | None:
    """`data.init_args.pretrained` := `model.init_args.pretrained` when the module names its model (None is
    a choice there: random init); as `link_model_name` for a data section that names it too."""
    if model is None:
        return data_pretrained
    if data_pretrained is not None and data_pretrained != pretrained:
        raise UserError(f"data.init_args.pretrained={data_pretrained!r} but model.init_args.pretrained="
                        f"{pretrained!r}: name the pretrained source once, in the model section")
    return pretrained


def import_class(class_path: str | None) -> type:
    """The class a config names by `class_path` (`object` when it cannot be imported: the parser says so)."""
    import importlib

    module_name, _, name = str(class_path or "").rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return object
    return found if isinstance(found, type) else object


def fill_trainer_defaults(config: Any) -> None:
    """What a config leaves out of the trainer and its callbacks, filled by the module class it names: the
    class's `fill_trainer_defaults(config)` when it has one (FineTuner: the run folder, max_epochs, the log
    and checkpoint folders; ComparisonModule: the output folder). Runs before anything is built."""
    module_class = import_class(config.get("model.class_path"))
    if callable(getattr(module_class, "fill_trainer_defaults", None)):
        module_class.fill_trainer_defaults(config)


def _check_has_test_loop(class_path: str | None) -> None:
    """`weaving test` needs a module that defines test_step; say so before anything is built."""
    import lightning.pytorch as pl

    cls = import_class(class_path)
    if issubclass(cls, pl.LightningModule) and cls.test_step is pl.LightningModule.test_step:
        raise ValueError(f"{cls.__name__} has no test loop; run `weaving validate` with the same config instead (a "
                         "MultiTaskDataModule scores the split named by --data.init_args.eval_split, e.g. test)")


def lightning_main(args: list[str] | None = None) -> None:
    """Run LightningCLI in subclass mode so YAML configs pick the module and data classes."""
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    import weaving.models  # noqa: F401  (registers the tiny offline CLIP configs)

    argv = list(sys.argv[1:] if args is None else args)
    for option in OWNED_BY_FINETUNER:
        if any(a == option or a.startswith(option + "=") or a.startswith(option + ".") for a in argv):
            raise ValueError(f"{option} is not supported: FineTuner owns its optimizer (AdamW restarted per task, "
                             "warmup + cosine); set --model.init_args.lr, weight_decay and warmup_steps instead")

    requested = argv[0] if argv else None

    class WeavingCLI(LightningCLI):
        @staticmethod
        def subcommands() -> dict[str, set[str]]:
            """Only the subcommand being run gets a parser (LightningCLI builds one per subcommand, each
            introspecting the Trainer and the classes: about a quarter of the cost of a parse each)."""
            known = LightningCLI.subcommands()
            return {requested: known[requested]} if requested in known else known

        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.add_argument("--overwrite", type=bool, default=False,
                                help="fit: replace another run found in the run folder (default: refuse).")
            parser.add_argument("--allow_mixed", type=bool, default=False,
                                help="validate/test: merge task vectors whose base model or run ids disagree.")
            # The data's images get the module's model transforms: a config names the model once, in the
            # model section (see link_model_name).
            parser.link_arguments(("model.init_args.model", "data.init_args.model"), "data.init_args.model",
                                  compute_fn=link_model_name, apply_on="parse")
            parser.link_arguments(("model.init_args.model", "model.init_args.pretrained", "data.init_args.pretrained"),
                                  "data.init_args.pretrained", compute_fn=link_pretrained, apply_on="parse")

        def parse_arguments(self, parser: Any, args: Any) -> None:
            super().parse_arguments(parser, args)
            subcommand = self.config.get("subcommand")
            ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
            if ckpt and str(ckpt) not in ("last", "best", "hpc") and not str(ckpt).startswith("registry"):
                from weaving.io.torch_pickle import check_lightning_checkpoint

                check_lightning_checkpoint(ckpt)  # before Lightning unpickles it (for its hyper-parameters)

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand]
            if self.subcommand == "test":
                _check_has_test_loop(config.get("model.class_path"))
            fill_trainer_defaults(config)
            if config.get("allow_mixed") and "allow_mixed" in (config.get("model.init_args") or {}):
                config.model.init_args.allow_mixed = True

        def before_fit(self) -> None:
            from weaving.training.callbacks import TaskVectorWriter

            if self.config[self.subcommand].get("overwrite"):
                writers = [c for c in self.trainer.callbacks if isinstance(c, TaskVectorWriter)]
                if not writers:
                    self.trainer.callbacks.append(TaskVectorWriter())
                for writer in self.trainer.callbacks:
                    if isinstance(writer, TaskVectorWriter):
                        writer.overwrite = True

    WeavingCLI(
        pl.LightningModule,
        None,  # the data section is optional: a ComparisonModule reads its test sets itself
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_callback=_save_config_callback(),
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_kwargs={"exit_on_error": False, "default_env": True, "env_prefix": "PL"},
    )


def _save_config_callback() -> type:
    """Lightning's SaveConfigCallback, except for a comparison job with an output folder: its resolved config
    goes to the module, which writes it as config.yaml beside its results (so a later job, which writes its
    own output folder, never overwrites it)."""
    from lightning.pytorch.cli import SaveConfigCallback

    class OutputConfig(SaveConfigCallback):
        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            from weaving.evaluation.comparison import ComparisonModule

            if isinstance(pl_module, ComparisonModule) and pl_module.output_dir:
                pl_module.resolved_config = self.parser.dump(self.config, skip_none=False)
                return
            super().setup(trainer, pl_module, stage)

    return OutputConfig
