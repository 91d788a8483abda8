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
import sys

from weaving.errors import UserError, error_line, user_error_types

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
    except user_error_types() as error:
        if os.environ.get("WEAVING_DEBUG"):
            raise
        print(f"{name}: error: {error_line(error)}", file=sys.stderr)
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
        from weaving.lightning_cli import lightning_main
        from weaving.schema import use_in_jsonargparse

        use_in_jsonargparse()  # YAML numbers as every command reads them: '1:3:1' is a range, '1e-3' a number

        lightning_main(None if from_sys_argv else argv)
    else:
        raise UserError(f"unknown command {command!r}; expected one of: {', '.join(COMMANDS)} (or --version)")


if __name__ == "__main__":
    main()
