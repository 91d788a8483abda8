"""`weaving demo`: the whole pipeline, offline, on the embedded digits tasks, in a few minutes on a CPU.

0. Pre-train: a real CLIP has seen images before anyone fine-tunes it; the random-init tiny CLIP has not,
   and task vectors fine-tuned from random weights share so little that no method merges them. So the
   demo first trains the tiny image encoder briefly on the pre-training tasks (sequentially, text tower and
   heads untouched) and saves the whole model as a local open_clip checkpoint,
   <output>/pretrained/<model>.safetensors; that checkpoint is theta_pre for everything after.
1. Fine-tune the tiny CLIP's image encoder (Lightning, in-process) on the digits domain tasks, each from
   theta_pre, and on a sequential class-incremental stream of digits (5 parts); task vectors are written
   to <output>/runs/{domains,continual}/task_vectors/.
2. Merge with every method at lam = 1 and with Weight Weaving, in the three setups (multi-task,
   continual, domain generalization); write results.json/csv/md per setup, the lambda analysis (uses
   evaluation data) with its plots, and summary.md across setups; print the tables. Each setup is one
   `ComparisonModule` validation job, whose resolved config is kept as <output>/<setup>/config.yaml:
   `weaving validate --config <output>/<setup>/config.yaml --model.init_args.output_dir DIR` recomputes it.

`--fast` is a reduced run (fewer tasks, steps, methods, lambdas, test images) used by the tests.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from collections.abc import Sequence
from typing import Any

DOMAIN_TASKS = ("digits", "digits_rot90", "digits_inverted", "digits_mirrored")
CONTINUAL_TASK = "digits"


@dataclass
class DemoConfig:
    """Everything the demo does; `fast()` gives the reduced variant. Every field is a `weaving demo` option.

    Args:
        output: The output folder (created if missing).
        model: The open_clip model (the tiny offline CLIP by default).
        seed: Seed of pre-training, fine-tuning, methods and splits.
        domains: The digits domain tasks of the multi-task and domain-generalization setups.
        splits: Parts of the class-incremental continual stream.
        epochs_per_task: Fine-tuning epochs per task.
        pretrain_tasks: Step 0's pre-training tasks (an empty list starts from the random initialization).
        pretrain_epochs: Pre-training epochs per task.
        pretrain_max_batches: Pre-training batches per epoch (default: the whole training split).
        max_batches: Fine-tuning batches per epoch (default: the whole training split).
        batch_size: Batch size of fine-tuning and pre-training.
        lr: Learning rate of fine-tuning.
        warmup_steps: Warmup steps of the learning-rate schedule, per task.
        methods: Merge methods (default: every registered method but the mergekit_* ones, which reproduce
            mergekit's rules for mergekit files).
        analysis_methods: Methods whose lambda curves are computed (uses evaluation data); 'all' for every method.
        poolings: Weaving poolings (mean, random, magmax, or a method name).
        lambdas: One search space for every method, e.g. 0.1:1.0:0.1 (default: the paper's per method and setup).
        setups: The setups to evaluate.
        max_test_samples: Score only this many test images per task (default: all).
        device: cpu or cuda (default: cuda when available).
        threads: torch CPU threads (1 is fastest for the tiny model; null: torch's default).
        reuse: Reuse theta_pre and task vectors already in the output folder when they were made with the
            same seed, tasks and theta_pre (else train again).
        progress: Show progress bars.
    """

    output: str = "weaving_demo"
    model: str = "weaving-tiny-vit"
    seed: int = 0
    domains: tuple[str, ...] = DOMAIN_TASKS
    splits: int = 5
    epochs_per_task: int = 10
    pretrain_tasks: tuple[str, ...] = DOMAIN_TASKS  # step 0; () starts from the random initialization
    pretrain_epochs: int = 6  # per pre-training task; sequential, so the early tasks are partly forgotten
    pretrain_max_batches: int | None = None  # per epoch (None: the whole training split)
    max_batches: int | None = None  # per epoch (None: the whole training split)
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 10
    methods: tuple[str, ...] | None = None  # None: registry.compared_methods()
    analysis_methods: tuple[str, ...] | None = ("magmax", "iso_c")  # the paper's Figure 2 pair; None: all
    poolings: tuple[str, ...] = ("mean",)
    lambdas: str | None = None  # one search space for every method; None: the paper's per method and setup
    setups: tuple[str, ...] = ("multi_task", "continual", "domain_generalization")
    max_test_samples: int | None = None
    device: str | None = None
    threads: int | None = 1  # torch CPU threads: the tiny model is fastest on one (threads contend); None: torch's
    reuse: bool = False
    progress: bool = True

    def fast(self) -> "DemoConfig":
        """A reduced run: 3 domains, 3 parts, a few steps, 3 methods, 2 lambdas, 60 test images per task."""
        return replace(self, domains=DOMAIN_TASKS[:3], splits=3, epochs_per_task=1, max_batches=2, batch_size=32,
                       pretrain_tasks=DOMAIN_TASKS[:1], pretrain_max_batches=2,
                       methods=("task_arithmetic", "ties", "magmax"), analysis_methods=("magmax",),
                       lambdas="0.5:1.0:0.5", max_test_samples=60)


def finetune_run(run_dir: Path, tasks: list[str], *, stream: str, splits: int | None, config: DemoConfig,
                 pretrained: str | None = None, epochs_per_task: int | None = None,
                 max_batches: int | None = None) -> Path:
    """Fine-tune one task stream with FineTuner + TaskStreamDataModule; return its task_vectors folder."""
    import lightning.pytorch as pl

    from weaving.data.datamodule import TaskStreamDataModule
    from weaving.io.runs import read_index
    from weaving.training.callbacks import TaskVectorWriter
    from weaving.training.finetune import FineTuner

    epochs = epochs_per_task or config.epochs_per_task
    data = TaskStreamDataModule(tasks, model=config.model, pretrained=pretrained, splits=splits,
                                batch_size=config.batch_size, seed=config.seed)
    folder = run_dir / "task_vectors"
    if config.reuse and (folder / "index.json").is_file():
        reason = _why_not_reusable(read_index(folder), data.task_names, config, pretrained)
        if reason is None:
            print(f"reusing task vectors in {folder}")
            return folder
        print(f"not reusing {folder}: {reason}; fine-tuning again")
    module = FineTuner(model=config.model, pretrained=pretrained, seed=config.seed, stream=stream, epochs_per_task=epochs,
                       lr=config.lr, warmup_steps=config.warmup_steps, head_cache_dir=str(Path(config.output) / "heads"))
    trainer = pl.Trainer(
        max_epochs=epochs * data.num_tasks,
        limit_train_batches=max_batches or config.max_batches,
        limit_val_batches=0,
        accelerator="cpu" if config.device == "cpu" else "auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=config.progress,
        gradient_clip_val=1.0,
        default_root_dir=str(run_dir),
        callbacks=[TaskVectorWriter(str(run_dir), overwrite=True)],  # the demo owns its output folder
    )
    trainer.fit(module, data)
    return folder


def _why_not_reusable(index: dict[str, Any] | None, tasks: list[str], config: DemoConfig,
                      pretrained: str | None) -> str | None:
    """None when a run's task vectors are what this demo would train (tasks, seed, theta_pre); else why not."""
    from weaving.models import load_clip
    from weaving.io.runs import RunIdentity, check_same_base, state_dict_hash

    index = index or {}
    if [e.get("task") for e in index.get("task_vectors", [])] != tasks:
        return f"it holds tasks {[e.get('task') for e in index.get('task_vectors', [])]}, not {tasks}"
    if index.get("seed") != config.seed:
        return f"it was trained with seed {index.get('seed')}, not {config.seed}"
    base = state_dict_hash(load_clip(config.model, pretrained, seed=config.seed).model.state_dict())
    try:
        check_same_base([("the run", RunIdentity(pretrained_hash=index.get("pretrained_hash"))),
                         ("the demo", RunIdentity(pretrained_hash=base))], fields=("pretrained_hash",))
    except ValueError:
        return "it was fine-tuned from another theta_pre"
    return None


def pretrain(config: DemoConfig) -> str | None:
    """Step 0 (module docstring): the demo's theta_pre as a local checkpoint; None keeps the random init."""
    from weaving.io.runs import read_run
    from weaving.io.safetensors import read_metadata
    from weaving.io.writer import save_state_dict
    from weaving.merging.task_vectors import load_task_vector
    from weaving.models import load_clip

    if not config.pretrain_tasks:
        return None
    path = Path(config.output) / "pretrained" / f"{config.model}.safetensors"
    recipe = {"model": config.model, "seed": config.seed, "tasks": list(config.pretrain_tasks),
              "epochs_per_task": config.pretrain_epochs, "max_batches": config.pretrain_max_batches}
    if config.reuse and path.is_file():
        if read_metadata(path).get("weaving_pretrain") == json.dumps(recipe):
            print(f"reusing pre-trained weights {path}")
            return str(path.resolve())
        print(f"not reusing {path}: another pre-training recipe (seed, tasks or epochs); pre-training again")
    folder = finetune_run(Path(config.output) / "runs" / "pretrain", list(config.pretrain_tasks), stream="sequential",
                          splits=None, config=config, epochs_per_task=config.pretrain_epochs,
                          max_batches=config.pretrain_max_batches)
    last = list(read_run(folder).paths.values())[-1]  # sequential: the final weights minus the init
    bundle = load_clip(config.model, None, seed=config.seed)
    weights = bundle.model.state_dict()
    for key, delta in load_task_vector(last).items():
        weights[key] = weights[key] + delta
    save_state_dict(path, weights, {"weaving_pretrain": json.dumps(recipe)})
    return str(path.resolve())


def run_demo(config: DemoConfig) -> list[dict[str, Any]]:
    """Fine-tune, merge, evaluate and report (see the module docstring); returns the results per setup."""
    import lightning.pytorch as pl

    from weaving.evaluation import report
    from weaving.evaluation.comparison import run_comparison
    from weaving.io.runs import read_run
    from weaving.merging.registry import compared_methods

    import torch

    start = time.time()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    methods = list(config.methods or compared_methods())
    analysis_methods = [m for m in methods if config.analysis_methods is None or m in config.analysis_methods]
    pl.seed_everything(config.seed, verbose=False)

    if config.pretrain_tasks:
        print(f"[0/3] pre-training {config.model} briefly on {', '.join(config.pretrain_tasks)}: theta_pre")
    pretrained = pretrain(config)
    print(f"[1/3] fine-tuning {config.model} on {', '.join(config.domains)} (independent) "
          f"and on {CONTINUAL_TASK} in {config.splits} class-incremental parts (sequential)")
    domain_run = finetune_run(out / "runs" / "domains", list(config.domains), stream="independent", splits=None,
                              config=config, pretrained=pretrained)
    continual_run = finetune_run(out / "runs" / "continual", [CONTINUAL_TASK], stream="sequential",
                                 splits=config.splits, config=config, pretrained=pretrained)
    read_run(domain_run), read_run(continual_run)  # both runs are readable before any merge

    print(f"[2/3] merging with {len(methods)} methods at lam=1 and with weaving ({', '.join(config.poolings)} pooling)")
    runs = {"multi_task": (domain_run, list(config.domains)), "continual": (continual_run, [CONTINUAL_TASK]),
            "domain_generalization": (domain_run, list(config.domains))}
    all_results, all_analyses = [], []
    for name in config.setups:
        run, tasks = runs[name]
        # one ComparisonModule job per setup; it keeps its resolved config as <output>/<setup>/config.yaml
        results, analysis = run_comparison(
            str(Path(run).resolve()), accelerator="cpu" if config.device == "cpu" else
            ("gpu" if config.device and config.device.startswith("cuda") else "auto"),
            setup=name, tasks=tasks, methods=methods, lambdas=config.lambdas, poolings=list(config.poolings),
            analysis=analysis_methods, seed=config.seed, max_samples=config.max_test_samples, progress=config.progress,
            head_cache_dir=str((out / "heads").resolve()), output_dir=str((out / name).resolve()))
        all_results.append(results)
        all_analyses.append(analysis or {"setup": name, "methods": {}})

    print("[3/3] writing tables and plots")
    summary = report.format_summary(all_results)
    report.atomic_write_text(out / "summary.md", "# Weight Weaving demo (digits, data-free)\n\n"
                             "Mean accuracy (%) per setup; weaving uses mean pooling unless stated.\n\n" + summary)
    if any(a["methods"] for a in all_analyses):
        report.plot_best_lambda_histogram(all_analyses, out / "best_lambda.png", all_results)
    report.atomic_write_text(out / "demo_config.json", json.dumps(asdict(config), indent=2) + "\n")
    for results in all_results:
        print("\n" + report.format_markdown(results))
    print("Summary (mean accuracy %, the paper's Table 2 layout)\n\n" + summary)
    print(f"wrote {out}/ (results per setup, analysis plots, summary.md) in {time.time() - start:.0f} s")
    return all_results


LIST_OPTIONS = ("domains", "pretrain_tasks", "methods", "analysis_methods", "poolings", "setups")


def build_parser() -> Any:
    """`weaving demo`'s options: DemoConfig's fields, plus --fast (the reduced preset)."""
    import argparse

    from weaving.schema import command_parser

    class FastPreset(argparse.Action):
        """--fast: DemoConfig.fast()'s values for every option still at its default; an option given after
        --fast (or before it, with another value than the default) wins."""

        def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
            default, fast = asdict(DemoConfig()), asdict(DemoConfig().fast())
            for key, value in fast.items():
                current = namespace.get(key)
                if (tuple(current) if isinstance(current, list) else current) == default[key]:
                    namespace[key] = list(value) if isinstance(value, tuple) else value

    parser = command_parser("weaving demo", __doc__.split("\n\n")[0], DemoConfig, one_or_more=LIST_OPTIONS,
                            flags=("reuse", "progress"))
    parser.add_argument("--fast", action=FastPreset, nargs=0, default=argparse.SUPPRESS,
                        help="Reduced run (fewer tasks, steps, methods, lambdas): DemoConfig.fast()'s values for "
                        "the options left at their defaults (options after --fast still win).")
    return parser


def parse_args(argv: Sequence[str]) -> DemoConfig:
    """The demo's config from its command line (or a --config file of the same keys); `analysis_methods all`
    means every method."""
    from weaving.schema import parse_command

    cfg = parse_command(build_parser(), argv)
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in cfg.as_dict().items()
              if key in DemoConfig.__dataclass_fields__}
    if values.get("analysis_methods") == ("all",):
        values["analysis_methods"] = None
    return DemoConfig(**values)


def demo_main(argv: Sequence[str]) -> None:
    """Entry point of `weaving demo [--output DIR] [--fast] ...`."""
    config = parse_args(argv)  # errors propagate to weaving.cli.main: one line, exit status 2
    _check_config(config)
    run_demo(config)


def _check_config(config: DemoConfig) -> None:
    import weaving
    from weaving.errors import UserError
    from weaving.merging.registry import get_method, get_pooling

    for method in (config.methods or ()) + tuple(config.analysis_methods or ()):
        get_method(method)
    for pooling in config.poolings:
        get_pooling(pooling)
    if config.lambdas is not None:
        try:
            weaving.parse_lambdas(config.lambdas)
        except ValueError as error:
            raise UserError(f"--lambdas: {error}") from None
    if config.epochs_per_task < 1:
        raise UserError(f"--epochs_per_task must be at least 1, got {config.epochs_per_task}")
    if config.threads is not None and config.threads < 1:
        raise UserError(f"--threads must be at least 1, got {config.threads}")
    if config.max_test_samples is not None and config.max_test_samples < 1:
        raise UserError(f"--max_test_samples must be at least 1, got {config.max_test_samples}")
    _check_device(config.device)
    _check_output(Path(config.output))


def _check_device(device: str | None) -> None:
    """A device string torch knows, and a GPU when it names one (checked before any training)."""
    import torch

    from weaving.errors import UserError

    if device is None:
        return
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device; use cpu or cuda (or cuda:N)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA GPU is visible to torch; use --device cpu or leave it out")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif parsed.type != "cpu":
        raise UserError(f"--device {device!r}: the demo runs on cpu or cuda")


def _check_output(output: Path) -> None:
    """The output folder can be created and written (checked before any training)."""
    import os

    from weaving.errors import UserError

    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is an existing file; give a folder (it is created if missing)")
    parent = output
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--output {output}: {parent} is a file, so the folder cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--output {output}: {parent} is not writable")
