"""DDP on CPU (gloo): `weaving fit --trainer.strategy ddp --trainer.devices 2` gives the task vectors of a
single-process run with the same effective batch (2 ranks x 8 = 1 x 16). Without shuffling and random crops
(`shuffle: false, augment: false`), rank r takes samples r, r + 2, ... of each 16-sample batch, and the
averaged gradients equal the single-process ones up to float rounding. AdamW divides by sqrt(v), so where
a gradient is zero up to rounding (the attention key bias: softmax ignores it) rounding noise becomes a
visible step; hence a tolerance on the whole vector's relative error and a loose elementwise bound."""

from __future__ import annotations

import os

import torch
import yaml

from weaving.merging.task_vectors import load_task_vector

from .conftest import fit_stream

TASKS = ["digits", "digits_rot90"]


def test_ddp_two_cpu_ranks_match_one_process(warm, tmp_path):
    run = tmp_path / "ddp"
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "strategy": "ddp", "devices": 2, "max_epochs": 2,
            "limit_train_batches": 2, "limit_val_batches": 0, "num_sanity_val_steps": 0,
            "gradient_clip_val": 1.0, "reload_dataloaders_every_n_epochs": 1, "logger": False,
            "enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False,
            "default_root_dir": str(run),
            "callbacks": [{"class_path": "weaving.training.TaskVectorWriter"}],
        },
        "model": {"class_path": "weaving.training.FineTuner",
                  "init_args": {"stream": "sequential", "lr": 1e-3, "warmup_steps": 1}},
        "data": {"class_path": "weaving.data.datamodule.TaskStreamDataModule",
                 "init_args": {"tasks": TASKS, "batch_size": 8, "shuffle": False, "augment": False}},
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    # rank 0 is a warm `python -m weaving fit ...`; Lightning starts rank 1 as a new interpreter
    result = warm.run(["fit", "--config", str(path)], cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    fit_stream(tmp_path / "single", tasks=TASKS, batch_size=16, batches=2, shuffle=False, augment=False)
    for task in TASKS:
        ddp = load_task_vector(run / "task_vectors" / f"{task}.safetensors")
        single = load_task_vector(tmp_path / "single" / "task_vectors" / f"{task}.safetensors")
        assert ddp.keys() == single.keys()
        difference = torch.cat([(ddp[key] - single[key]).flatten() for key in single])
        reference = torch.cat([single[key].flatten() for key in single])
        assert reference.abs().max() > 1e-3  # the run did move the weights (about lr x steps)
        assert difference.norm() / reference.norm() < 1e-3, task
        assert difference.abs().max() < 2e-4, task
