"""Shared fixtures: tiny fine-tuning runs made once per session with the real training pipeline."""

from pathlib import Path

import pytest
import torch

from weaving.evaluation.demo import DemoConfig, finetune_run

DOMAINS = ["digits", "digits_rot90", "digits_inverted"]


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The tiny model runs fastest on one thread (two contend on a 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(root: Path) -> DemoConfig:
    return DemoConfig(output=str(root), epochs_per_task=1, max_batches=2, batch_size=32, lr=2e-3, warmup_steps=1,
                      progress=False)


@pytest.fixture(scope="session")
def domain_run(tmp_path_factory) -> Path:
    """Run dir with task vectors of three digits domains, each fine-tuned from theta_pre."""
    root = tmp_path_factory.mktemp("domains")
    finetune_run(root / "run", DOMAINS, stream="independent", splits=None, config=_config(root))
    return root / "run"


@pytest.fixture(scope="session")
def continual_run(tmp_path_factory) -> Path:
    """Run dir with task vectors of digits in 3 class-incremental parts, fine-tuned sequentially."""
    root = tmp_path_factory.mktemp("continual")
    finetune_run(root / "run", ["digits"], stream="sequential", splits=3, config=_config(root))
    return root / "run"


@pytest.fixture(scope="session")
def head_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("heads"))


@pytest.fixture(scope="session", autouse=True)
def decoded_cache(tmp_path_factory):
    """Decoded test sets go to a temporary folder, not the user's cache."""
    import os

    from weaving.data.cache import CACHE_ENV

    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("decoded"))
    yield os.environ[CACHE_ENV]
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old
