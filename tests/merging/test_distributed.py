"""Distributed merging: exact selection, the partition, and 2 gloo processes against one process."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import weaving
from weaving.formats.sharded import open_checkpoint
from weaving.merging.distributed import partition
from weaving.merging.recipe import run_recipe
from weaving.merging.selection import radix_select

from ..formats.llm import finetunes, llama_like, write_hf_folder

CASES = {name: {"method": name} for name in sorted(weaving.METHODS)}
CASES["ties_k"] = {"method": {"ties": {"k": 0.35}}}
CASES["dare_seeded"] = {"method": {"dare": {"p": 0.4}}, "seed": 9}
CASES["weave_grid"] = {"method": "ties", "weaving": {"lambdas": [0.5, 1.0], "grid": {"k": [0.2, 0.5]}}}
CASES["weave_random_pool"] = {"method": "pcb", "weaving": {"lambdas": "0.5:1.5:0.5", "pooling": "random"}}
CASES["weave_ties_pool"] = {"method": "task_arithmetic", "weaving": {"lambdas": [0.3, 1.0], "pooling": "ties"}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_radix_selection_is_exact(dtype):
    g = torch.Generator().manual_seed(1)
    parts = [torch.randn(3000, generator=g, dtype=dtype), torch.randn(5, 7, generator=g, dtype=dtype) * 1e-20,
             torch.zeros(40, dtype=dtype), -torch.zeros(3, dtype=dtype), torch.full((50,), 0.25, dtype=dtype),
             torch.tensor([3e38, -3e38, 1e-45], dtype=torch.float32).to(dtype)]
    flat = torch.cat([p.reshape(-1) for p in parts])
    for values, absolute in ((flat, False), (flat.abs(), True)):
        ordered = torch.sort(values).values
        indices = [0, 1, 2, 100, 1500, 3000, 3050, 3060, -1, -2, -40]
        chosen = radix_select(lambda: (p.abs() if absolute else p for p in parts), indices, flat.numel(), dtype)
        assert [float(v) for v in chosen] == [float(ordered[i]) for i in indices]
        assert all(v.dtype == dtype for v in chosen)


def test_partition_balances_sizes_and_is_deterministic():
    sizes = [100, 1, 50, 50, 2, 97]
    owner = partition(sizes, 2)
    assert owner == partition(sizes, 2)
    loads = [sum(s for s, r in zip(sizes, owner) if r == rank) for rank in range(2)]
    assert sorted(loads) == [150, 150]
    assert partition(sizes, 1) == [0] * 6


def _worker(rank: int, port: int, root: str, recipes: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    import torch.distributed as dist

    try:
        for name, recipe in recipes.items():
            run_recipe({**recipe, "output": os.path.join(root, "two", name)})
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_write_the_same_tensors_as_one(tmp_path):
    base = llama_like(layers=4)
    base_dir = write_hf_folder(tmp_path / "base", base, shards=2)
    paths = [str(write_hf_folder(tmp_path / f"ft{i}", t, shards=2, config=False)) for i, t in enumerate(finetunes(base))]
    inputs = {"inputs": {"pretrained": str(base_dir), "finetuned": paths}, "out_shard_size": 600}
    recipes = {name: {**inputs, **case} for name, case in CASES.items()}
    mp.spawn(_worker, args=(free_port(), str(tmp_path), recipes), nprocs=2, join=True)
    for name, recipe in recipes.items():
        single = run_recipe({**recipe, "output": str(tmp_path / "one" / name)})
        one, two = open_checkpoint(single), open_checkpoint(tmp_path / "two" / name)
        assert sorted(one.keys()) == sorted(two.keys()), name
        for key in one.keys():
            assert torch.equal(one.get(key), two.get(key)), (name, key)
        shards = {p.name for p in (tmp_path / "two" / name).iterdir()}
        assert "config.json" in shards and len([s for s in shards if s.endswith(".safetensors")]) >= 2
