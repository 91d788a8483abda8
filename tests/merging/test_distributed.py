"""Distributed merging: exact selection, the partition, and 2 gloo processes against one process."""

import json
import resource
import signal

import pytest
import torch
import yaml

import weaving
from weaving.io.loader import open_checkpoint
from weaving.io.sizes import nbytes
from weaving.merging.distributed import partition
from weaving.merging.recipe import run_recipe
from weaving.merging.selection import radix_select

from ..formats.llm import finetunes, llama_like, write_hf_folder
from ..processes import free_port, rank_env

CASES = {name: {"method": name} for name in sorted(weaving.METHODS)}
CASES["ties_k"] = {"method": "ties", "method_args": {"k": 0.35}}
CASES["dare_seeded"] = {"method": "dare", "method_args": {"p": 0.4}, "seed": 9}
CASES["weave_grid"] = {"method": "ties", "lambdas": [0.5, 1.0], "grid": {"k": [0.2, 0.5]}}
CASES["weave_random_pool"] = {"method": "pcb", "lambdas": "0.5:1.5:0.5", "pooling": "random"}
CASES["weave_ties_pool"] = {"method": "task_arithmetic", "lambdas": [0.3, 1.0], "pooling": "ties"}
# extra zero entries count once over the ranks (856 entries per task vector here)
CASES["ties_zero_entries"] = {"method": "ties", "method_args": {"k": 0.2, "zero_entries": 300}}
CASES["pcb_vision_zero_entries"] = {"method": "pcb", "method_args": {"variant": "vision", "zero_entries": 300},
                                    "lambdas": [0.5, 1.0], "pooling": "pcb"}


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


RANK_WORKER = """
import json, os, sys
import torch.distributed as dist
from weaving.merging.recipe import run_recipe

root, recipes = sys.argv[1], json.loads(sys.argv[2])
try:
    for name, recipe in recipes.items():
        run_recipe({**recipe, "output": os.path.join(root, "two", name)})
finally:
    if dist.is_initialized():
        dist.destroy_process_group()
"""


def test_two_gloo_processes_write_the_same_tensors_as_one(warm, tmp_path):
    base = llama_like(layers=4)
    base_dir = write_hf_folder(tmp_path / "base", base, shards=2)
    paths = [str(write_hf_folder(tmp_path / f"ft{i}", t, shards=2, config=False)) for i, t in enumerate(finetunes(base))]
    inputs = {"pretrained": str(base_dir), "finetuned": paths, "out_shard_size": 600}
    recipes = {name: {**inputs, **case} for name, case in CASES.items()}
    for rank in warm.run_ranks([str(tmp_path), json.dumps(recipes)], code=RANK_WORKER):
        assert rank.returncode == 0, rank.stderr[-3000:]
    for name, recipe in recipes.items():
        single = run_recipe({**recipe, "output": str(tmp_path / "one" / name)})
        one, two = open_checkpoint(single), open_checkpoint(tmp_path / "two" / name)
        assert sorted(one.keys()) == sorted(two.keys()), name
        for key in one.keys():
            assert torch.equal(one.get(key), two.get(key)), (name, key)
        shards = {p.name for p in (tmp_path / "two" / name).iterdir()}
        assert "config.json" in shards and len([s for s in shards if s.endswith(".safetensors")]) >= 2


def owned_by_rank_1(folder) -> list[str]:
    """The tensors that rank 1 of 2 merges (the partition every rank computes from the pretrained)."""
    base = open_checkpoint(folder)
    names = base.keys()
    owners = partition([nbytes(base.shape(k), base.dtype(k)) for k in names], 2)
    return [name for name, rank in zip(names, owners) if rank == 1]


def limit_file_size() -> None:
    """Rank 1 of the write-failure test: any file it writes beyond 64 bytes fails with EFBIG (a full disk)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))


def run_two_ranks(warm, tmp_path, recipe: dict, rank_1_setup=None) -> list[tuple[int, list[str]]]:
    """`weaving merge --config recipe.yaml` as ranks 0 and 1 of a 2-process gloo group (what torchrun sets
    up); (exit code, stderr lines without progress bars) per rank. Neither may hang."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    ranks = warm.run_ranks(["merge", "--config", str(path)], timeout=120, setups={1: rank_1_setup})
    return [(rank.returncode, [line for line in rank.stderr.replace("\r", "\n").splitlines()
                               if line.strip() and not line.startswith("merge[")]) for rank in ranks]


def distributed_inputs(tmp_path, nan_in: str | None = None):
    base = llama_like(layers=2)
    base_dir = write_hf_folder(tmp_path / "base", base, shards=2)
    tuned = finetunes(base, count=2)
    if nan_in is not None:
        tuned[1][nan_in][0] = float("nan")
    paths = [str(write_hf_folder(tmp_path / f"ft{i}", t, shards=2, config=False)) for i, t in enumerate(tuned)]
    return {"pretrained": str(base_dir), "finetuned": paths, "output": str(tmp_path / "out"),
            "out_shard_size": 600}


def test_nan_on_one_rank_during_ties_statistics_stops_both_ranks(warm, tmp_path):
    key = owned_by_rank_1(write_hf_folder(tmp_path / "probe", llama_like(layers=2), shards=2))[0]
    recipe = {**distributed_inputs(tmp_path, nan_in=key), "method": "ties", "method_args": {"k": 0.3}}
    (code_0, err_0), (code_1, err_1) = run_two_ranks(warm, tmp_path, recipe)
    assert (code_0, code_1) == (2, 2), (err_0, err_1)
    cause = f"tensor {key!r} contains NaN or Inf values"
    assert len(err_1) == 1 and err_1[0].startswith("weaving merge: error: ") and cause in err_1[0], err_1
    assert len(err_0) == 1 and err_0[0].startswith("weaving merge: error: rank 1 failed: ") and cause in err_0[0], err_0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ft0", "ft1", "probe", "recipe.yaml"]


def test_write_failure_on_one_rank_removes_every_shard(warm, tmp_path):
    recipe = {**distributed_inputs(tmp_path), "method": "task_arithmetic"}
    (code_0, err_0), (code_1, err_1) = run_two_ranks(warm, tmp_path, recipe, rank_1_setup=limit_file_size)
    assert (code_0, code_1) == (2, 2), (err_0, err_1)
    cause = f"output {tmp_path / 'out'}: write failed, File too large; nothing was written"
    assert err_1 == [f"weaving merge: error: {cause}"]
    assert err_0 == [f"weaving merge: error: rank 1 failed: {cause}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ft0", "ft1", "recipe.yaml"]


SILENT_DEATH = """
import os
import torch.distributed as dist
from weaving.merging.distributed import RankFailed, agree_on_failures
dist.init_process_group("gloo")
if dist.get_rank() == 1:
    os._exit(1)  # killed: no error to report
try:
    agree_on_failures()
except RankFailed as error:
    print(error)
"""


def test_a_rank_that_dies_silently_ends_the_others_with_one_line(warm):
    port = free_port()
    processes = [warm.WarmProcess([], code=SILENT_DEATH, env=rank_env(port, rank)) for rank in range(2)]
    try:
        out = processes[0].communicate(timeout=120)[0]
    finally:
        for process in processes:
            process.kill()
    assert out.startswith("rank 0 lost contact with another rank, which stopped without reporting an error"), out
    assert len(out.splitlines()) == 1
