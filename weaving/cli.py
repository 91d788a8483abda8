"""The `weaving` command.

- `weaving fit|validate|test|predict ...`: LightningCLI over any LightningModule / LightningDataModule
  (configs name them by `class_path`, e.g. `weaving.training.FineTuner`, `weaving.evaluation.MergeModule`).
- `weaving merge ...`: merge safetensors files from the command line (no Lightning involved).
- `weaving demo ...`: the offline end-to-end demo on the embedded digits tasks.
- `weaving import ...`: public CLIP checkpoints (Hugging Face, open_clip, task_vectors .pt) -> a run folder.
"""

from __future__ import annotations

import os
import sys

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

USAGE = """usage: weaving COMMAND [options]   (weaving COMMAND --help for a command's options)

commands:
  demo       fine-tune, merge and evaluate offline on the embedded digits tasks (CPU, minutes)
  merge      merge safetensors checkpoints or task vectors (a method at one lambda, or Weight Weaving)
  import     import public CLIP checkpoints (Hugging Face, open_clip, task_vectors .pt) as a run folder
  fit        fine-tune with a LightningCLI config (writes task vectors), e.g. configs/finetune/*.yaml
  validate   evaluate merged models with a LightningCLI config, e.g. configs/merge/*.yaml
  test       like validate, on the test loop
"""


def lightning_main(args: list[str] | None = None) -> None:
    """Run LightningCLI in subclass mode so YAML configs pick the module and data classes."""
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    import weaving.models  # noqa: F401  (registers the tiny offline CLIP configs)

    LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


def user_error_line(error: BaseException) -> str:
    """One line for a user mistake. jsonargparse wraps errors raised in a class's __init__ in a multi-line
    report ("Does not validate against any of the Union subtypes ... Errors: - <ours> - Expected ..."):
    keep the first reason that is not jsonargparse's own type noise."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [line[2:] for line in lines if line.startswith("- ") and not line.startswith("- Expected a")]
    return (reasons or lines or [type(error).__name__])[0]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `weaving` command; user errors end as one line on stderr (WEAVING_DEBUG=1 re-raises)."""
    try:
        dispatch(argv)
    except (ValueError, FileNotFoundError) as error:
        if os.environ.get("WEAVING_DEBUG"):
            raise
        print(f"weaving: error: {user_error_line(error)}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # `weaving --help | head`: the reader left; end quietly, like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def dispatch(argv: list[str] | None = None) -> None:
    from_sys_argv = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    if command in ("", "-h", "--help"):
        print(USAGE)
        return
    if command == "merge":
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
        known = ", ".join(("merge", "import", "demo") + LIGHTNING_SUBCOMMANDS)
        print(f"weaving: unknown command {command!r}; expected one of: {known}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
