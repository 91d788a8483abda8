"""The `weaving` command.

- `weaving fit|validate|test|predict ...`: LightningCLI over any LightningModule / LightningDataModule
  (configs name them by `class_path`, e.g. `weaving.training.FineTuner`, `weaving.evaluation.MergeModule`).
- `weaving merge ...`: merge safetensors files from the command line (no Lightning involved).
- `weaving demo ...`: the offline end-to-end demo on the embedded digits tasks.
- `weaving import ...`: public CLIP checkpoints (Hugging Face, open_clip, task_vectors .pt) -> a run folder.

One exit-code policy for every command: 0 on success, 2 for a user error (bad option, config, path or
input; one line `weaving COMMAND: error: ...` on stderr, no traceback; `WEAVING_DEBUG=1` re-raises),
130 when interrupted by Ctrl-C (one line `weaving COMMAND: interrupted`; temporary files are removed),
143 when `weaving fit` (or validate) is stopped by SIGTERM (one line; resume with --ckpt_path last),
1 for anything else (a bug or a crash: the traceback is printed).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
USER_ERROR = 2
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command ended by Ctrl-C
TERMINATED = 143  # 128 + SIGTERM

USAGE = """usage: weaving COMMAND [options]   (weaving COMMAND --help for a command's options)

commands:
  demo       fine-tune, merge and evaluate offline on the embedded digits tasks (CPU, minutes)
  merge      merge safetensors checkpoints or task vectors (a method at one lambda, or Weight Weaving)
  import     import public CLIP checkpoints (Hugging Face, open_clip, task_vectors .pt) as a run folder
  fit        fine-tune with a LightningCLI config (writes a run folder), e.g. configs/finetune/*.yaml
  validate   evaluate merged models with a LightningCLI config, e.g. configs/merge/*.yaml
  test       like validate, on the test loop (modules that define test_step)

options:
  --version  print weaving's version
Environment: WEAVING_DEBUG=1 shows tracebacks; PL_FIT__TRAINER__MAX_EPOCHS=3 (and so on) overrides config
keys of `weaving fit` (PL_<COMMAND>__<KEY>, dots as double underscores).
"""

OWNED_BY_FINETUNER = ("--optimizer", "--lr_scheduler")


def run_dir_name(model: str, tasks: list[str], splits: int | None) -> str:
    """The derived run folder of a fit: `checkpoints/<model>/<tasks>` (tasks joined by '+', then `_<n>splits`)."""
    model_part = str(model).replace("/", "-").replace(":", "-")
    task_part = "+".join(tasks) if len("+".join(tasks)) <= 80 else f"{tasks[0]}+{len(tasks) - 1}_more"
    if splits:
        task_part += f"_{splits}splits"
    return str(Path("checkpoints") / model_part / task_part)


def _get(namespace: Any, key: str, default: Any = None) -> Any:
    for part in key.split("."):
        if namespace is None:
            return default
        namespace = namespace.get(part) if hasattr(namespace, "get") else getattr(namespace, part, None)
    return default if namespace is None else namespace


def _class_name(node: Any) -> str:
    return str(_get(node, "class_path", "")).rsplit(".", 1)[-1]


def derive_run_paths(config: Any) -> None:
    """Fill the run folder, logger folder and checkpoint folder of a FineTuner fit where the config leaves them
    out: `trainer.default_root_dir` derives from the model and the tasks (`run_dir_name`), the logger's
    `save_dir` is that folder and ModelCheckpoint's `dirpath` is `<that folder>/ckpt`, so
    `--trainer.default_root_dir DIR` moves task vectors, logs and checkpoints together."""
    if _class_name(config.get("model")) != "FineTuner":
        return
    trainer = config.trainer
    if trainer.get("default_root_dir") is None:
        model = _get(config, "model.init_args.model", "weaving-tiny-vit")
        tasks = list(_get(config, "data.init_args.tasks", []) or [])
        trainer.default_root_dir = run_dir_name(model, tasks, _get(config, "data.init_args.splits"))
    root = trainer.default_root_dir
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = _get(logger, "init_args")
        if init_args is not None and "save_dir" in init_args and init_args.get("save_dir") in (None, "", "."):
            init_args.save_dir = root
    for callback in trainer.get("callbacks") or []:
        init_args = _get(callback, "init_args")
        if _class_name(callback) == "ModelCheckpoint" and init_args is not None and init_args.get("dirpath") is None:
            init_args.dirpath = str(Path(root) / "ckpt")


def _check_has_test_loop(class_path: str | None) -> None:
    """`weaving test` needs a module that defines test_step; say so before anything is built."""
    import importlib

    import lightning.pytorch as pl

    if not class_path or "." not in class_path:
        return
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return  # LightningCLI reports an unknown class itself
    if isinstance(cls, type) and getattr(cls, "test_step", None) is pl.LightningModule.test_step:
        raise ValueError(f"{name} has no test loop; run `weaving validate` with the same config instead (a "
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

    class WeavingCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.add_argument("--overwrite", type=bool, default=False,
                                help="fit: replace another run found in the run folder (default: refuse).")
            parser.add_argument("--allow_mixed", type=bool, default=False,
                                help="validate/test: merge task vectors whose base model or run ids disagree.")

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
                _check_has_test_loop(_get(config, "model.class_path"))
            derive_run_paths(config)
            if config.get("allow_mixed") and _class_name(config.get("model")) == "MergeModule":
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


def user_error_line(error: BaseException) -> str:
    """One line for a user mistake. jsonargparse wraps errors in a multi-line report ("Parser key "model":
    Does not validate against any of the Union subtypes ... Problem with given class_path 'X': <cause>
    ... - Expected a ..."): keep the key, the class and the first cause that is not jsonargparse's noise."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    key = next((m.group(1) for line in lines if (m := re.match(r'(?:error: )?Parser key "([^"]+)"', line))), None)
    prefix = f"{key}: " if key else ""
    for i, line in enumerate(lines):
        text = line.removeprefix("- ")
        if text.startswith("Problem with given class_path") and i + 1 < len(lines):
            keys, j = [], i + 1
            while j + 1 < len(lines) and (m := re.fullmatch(r'Parser key "([^"]+)":', lines[j])):
                keys.append(m.group(1))
                j += 1
            cause = lines[j].removeprefix("- ")
            if keys or not cause.startswith(("Problem with given class_path", "Expected a", "Given value")):
                name = re.search(r"'([^']+)'", text)
                where = "".join(f"{k}: " for k in keys)
                return f"{prefix}{name.group(1) + ': ' if name else ''}{where}{cause}"
    reasons = [line[2:] for line in lines if line.startswith("- ") and not line.startswith("- Expected a")]
    if reasons:
        return prefix + reasons[0]
    noise = ("usage:", "tip:", "Does not validate", "Subtypes:", "Errors:", "Given value")
    kept = [re.sub(r'^Parser key "([^"]+)":\s*', r"\1: ", line.removeprefix("error: "))
            for line in lines if not line.startswith(noise)]
    return (kept or lines or [type(error).__name__])[0]


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                         PermissionError]
    try:
        from jsonargparse import ArgumentError

        errors.append(ArgumentError)
    except ImportError:  # pragma: no cover - jsonargparse is a dependency
        pass
    try:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        errors.append(MisconfigurationException)
    except ImportError:  # pragma: no cover - lightning is a dependency
        pass
    return tuple(errors)


_WARNING_PREFIX: list[str] = []  # the running command's name; the formatter below is installed once


def _one_line_warnings(name: str) -> None:
    """weaving's own warnings about inputs (weaving.io.runs.InputWarning) as `weaving COMMAND: warning: ...`."""
    import warnings

    from weaving.io.runs import InputWarning

    if not _WARNING_PREFIX:
        original = warnings.formatwarning

        def formatwarning(message, category, *args, **kwargs):  # noqa: ANN001
            if issubclass(category, InputWarning):
                return f"{_WARNING_PREFIX[0]}: warning: {message}\n"
            return original(message, category, *args, **kwargs)

        warnings.formatwarning = formatwarning
        _WARNING_PREFIX.append(name)
    _WARNING_PREFIX[0] = name


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `weaving` command (see the module docstring for the exit-code policy)."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else ""
    name = f"weaving {command}" if command in COMMANDS else "weaving"
    if command in COMMANDS:
        _one_line_warnings(name)
    try:
        dispatch(argv)
    except (KeyboardInterrupt, SystemExit) as stop:  # Ctrl-C; atomic writes have removed their temporaries
        # Inside trainer.fit/validate/test (`weaving fit`, the demo) Lightning catches Ctrl-C itself: it runs
        # the on_exception hooks and its teardown, then calls sys.exit(1), whose context is the interrupt.
        interrupted = isinstance(stop, KeyboardInterrupt) or isinstance(stop.__context__, KeyboardInterrupt)
        if type(stop).__name__ == "SIGTERMException" and not os.environ.get("WEAVING_DEBUG"):
            # Lightning ends fit/validate with SIGTERMException, a SystemExit of code 0, on SIGTERM (what a
            # cluster's time limit sends): the run did not finish, so say so and fail like a killed process.
            hint = "; resume with --ckpt_path last" if name == "weaving fit" else ""
            print(f"{name}: terminated by SIGTERM before the end{hint}", file=sys.stderr)
            sys.exit(TERMINATED)
        if not interrupted or os.environ.get("WEAVING_DEBUG"):
            raise
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except _user_errors() as error:
        if os.environ.get("WEAVING_DEBUG"):
            raise
        print(f"{name}: error: {user_error_line(error)}", file=sys.stderr)
        sys.exit(USER_ERROR)
    except BrokenPipeError:  # `weaving --help | head`: the reader left; end quietly, like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


COMMANDS = ("merge", "import", "demo") + LIGHTNING_SUBCOMMANDS


def dispatch(argv: list[str] | None = None) -> None:
    from_sys_argv = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    if command in ("", "-h", "--help"):
        print(USAGE)
        return
    if command in ("--version", "-V"):
        import weaving

        print(f"weaving {weaving.__version__}")
        return
    from weaving.merging.search_space import use_in_jsonargparse

    use_in_jsonargparse()  # YAML numbers as every command reads them: '1:3:1' is a range, '1e-3' a number
    if command == "merge":
        import weaving.formats  # noqa: F401  (registers the whole-model formats of --format)
        from weaving.merging.cli import merge_main

        merge_main(argv[1:])
    elif command == "import":
        from weaving.formats.importer import import_main

        import_main(argv[1:])
    elif command == "demo":
        from weaving.evaluation.demo import demo_main

        demo_main(argv[1:])
    elif command in LIGHTNING_SUBCOMMANDS:
        lightning_main(None if from_sys_argv else argv)
    else:
        raise ValueError(f"unknown command {command!r}; expected one of: {', '.join(COMMANDS)} (or --version)")


if __name__ == "__main__":
    main()
