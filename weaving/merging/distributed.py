"""Merging across processes with torch.distributed (launched by torchrun, Lightning or SLURM).

Ranks own disjoint tensors (a size-balanced partition every rank computes alike), read and merge only
those, and write them to their own shard files; rank 0 writes the index. Statistics that are global over
a task vector stay exact through collectives:

- sums and counts: one all-reduce;
- the k-th smallest value over all ranks' entries (TIES' trim threshold, PCB's quantiles): radix
  selection (`weaving.merging.selection`) with each pass's histogram all-reduced.

One process is the special case with no collectives; the output tensors are bit-identical either way.

A failure on one rank (a NaN in its tensors, a missing shard, a full disk) never leaves the others waiting
in a collective: every collective is preceded by a one-number failure check (`agree_on_failures`), a rank
that fails announces its error there (`stop_together`), and the other ranks stop with `RankFailed`
naming it. A failed run leaves no output and no partial shards.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from weaving.io.publish import folder_write_failure, publish_folder, remove_stale_temporaries, temporary_path, unwinding
from weaving.io.sizes import nbytes, parse_size, plan_shards
from weaving.io.source import TensorSource
from weaving.io.writer import (check_streamed_output, copy_side_files, is_file_output, shard_names, weights_dtype,
                               write_index, write_shard)
from weaving.merging.task_set import TaskVectorSet


# ------------------------------------------------------------------------------------- the process group
def world_from_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's or SLURM's environment; (0, 1) when launched alone."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
    if "SLURM_NTASKS" in os.environ and "SLURM_PROCID" in os.environ and "SLURM_JOB_NAME" in os.environ \
            and os.environ["SLURM_JOB_NAME"] not in ("bash", "interactive"):
        return int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
    return 0, 1


def init_process_group(device: torch.device) -> bool:
    """Join the process group the launcher describes (once); False when this is a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    rank, world = world_from_env()
    if world <= 1:
        return False
    if "MASTER_ADDR" not in os.environ:  # SLURM without torchrun: Lightning knows how to derive the address
        from lightning.fabric.plugins.environments import SLURMEnvironment

        env = SLURMEnvironment()
        os.environ.setdefault("MASTER_ADDR", env.main_address)
        os.environ.setdefault("MASTER_PORT", str(env.main_port))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device if device.index is not None else int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, rank=rank, world_size=world)
    return True


def partition(sizes: Sequence[int], world: int) -> list[int]:
    """The rank owning each item: largest first, each to the least-loaded rank (ties to the lowest rank)."""
    owner = [0] * len(sizes)
    load = [0] * world
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owner[index] = rank
        load[rank] += max(int(sizes[index]), 1)
    return owner


# ------------------------------------------------------------------------------------------- failures
class RankFailed(ValueError):
    """Another rank of a distributed merge failed; raised on every healthy rank (the message names it)."""


def error_line(error: BaseException) -> str:
    """An error as one line; its type is kept where it is not a user error (a bug or a crash)."""
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    if isinstance(error, (ValueError, OSError)) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def agree_on_failures(failure: BaseException | None = None) -> None:
    """The check that precedes every collective of a distributed merge: a MAX all-reduce of a failure flag.

    A rank that failed calls it with its error (through `stop_together`); the other ranks meet that call at
    their next collective, all ranks exchange one line per failed rank, and the healthy ones raise
    RankFailed. A rank that died without a word (killed, crashed) also ends in RankFailed, not a hang."""
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([0 if failure is None else 1], device=device)
    try:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    except RuntimeError as error:  # gloo: "[.../pair.cc:561] Connection closed by peer [host]:port. This is ..."
        cause = re.sub(r"^\[\S+\]\s*", "", error_line(error).removeprefix("RuntimeError: ")).split(". ")[0]
        raise RankFailed(f"rank {dist.get_rank()} lost contact with another rank, which stopped without reporting "
                         f"an error (killed, crashed or interrupted): {cause}") from None
    if not int(flag.item()):
        return
    lines: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(lines, None if failure is None else error_line(failure))
    if failure is None:
        rank, line = next((rank, line) for rank, line in enumerate(lines) if line is not None)
        raise RankFailed(f"rank {rank} failed: {line}")


@contextmanager
def stop_together() -> Iterator[None]:
    """Run one phase of a distributed merge so that an error on this rank reaches every rank (at its next
    collective) before it propagates here: all ranks stop, none waits for this one."""
    try:
        yield
    except RankFailed:  # every rank knows already
        raise
    except Exception as error:
        try:
            agree_on_failures(error)
        except RankFailed:  # the others are gone too; this rank's own error is what to report
            pass
        raise


# --------------------------------------------------------------------------------- the rank's tensors
class DistributedTaskVectorSet(TaskVectorSet):
    """The task vectors' tensors this rank owns; statistics hooks reduce over every rank."""

    partial = True

    def __init__(self, sources: Sequence[TensorSource], keys: Sequence[str], device: torch.device,
                 all_keys: Sequence[str]):
        super().__init__(sources, keys, device)
        self.all_keys = list(all_keys)

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        moved = tensor.to(self.device if self.device.type == "cuda" else "cpu")
        agree_on_failures()
        dist.all_reduce(moved)
        return moved.to(tensor.device)

    def numel(self) -> int:
        return int(self.all_sum(super().numel()))

    def all_sum(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self._all_reduce(value.clone())
        if isinstance(value, int):
            return int(self._all_reduce(torch.tensor([value], dtype=torch.int64))[0])
        return float(self._all_reduce(torch.tensor([float(value)], dtype=torch.float64))[0])

    def selection_dtype(self) -> torch.dtype:
        return torch.float64 if any(self.dtype(key) == torch.float64 for key in self.all_keys) else torch.float32

    def reduce_counts(self, counts: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(counts)


def local_task_set(base: TensorSource, sources: Sequence[TensorSource], keys: Sequence[str], device: torch.device
                   ) -> tuple[DistributedTaskVectorSet, dict[str, int], int]:
    """This rank's share of a merge (its task-vector set, the owner of every output tensor, its rank): a
    size-balanced partition of the output tensors over the ranks."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    names = base.keys()
    owner = dict(zip(names, partition([nbytes(base.shape(k), base.dtype(k)) for k in names], world)))
    local = [key for key in keys if owner[key] == rank]
    return DistributedTaskVectorSet(sources, local, device, keys), owner, rank


def save_distributed(output: str | os.PathLike, inputs, layout, items, *, shard_size=None, metadata=None,
                     copy_from=None, overwrite: bool = False, extra_files=None) -> Path:
    """Each rank writes its own tensors as its own shards; rank 0 writes the index and publishes the folder.

    The output folder must be on a file system every rank sees (it is, on one node). When any rank fails,
    every rank raises (see `stop_together`) and rank 0 removes the partial folder: nothing is published. A
    termination signal ends every rank the same way (`weaving.io.publish`); a temporary folder left by a
    rank 0 killed outright is removed by the next write of that output.
    """
    import torch.distributed as dist

    shard_size = parse_size(shard_size)
    if is_file_output(output):
        raise ValueError(f"output {output}: a distributed merge writes a folder (shards per rank); give a folder name")
    output = check_streamed_output(output, shard_size, overwrite=overwrite)
    rank, world = inputs.rank, dist.get_world_size()
    plans = [plan_shards([entry for entry in layout if inputs.owner[entry[0]] == r], shard_size) for r in range(world)]
    plans = [[shard for shard in plan if shard] for plan in plans]
    count = sum(len(plan) for plan in plans)
    names = shard_names(count) if count > 1 else ["model-00001-of-00001.safetensors"]
    first = sum(len(plan) for plan in plans[:rank])
    shared: list[Path | None] = [None]
    try:
        with stop_together():
            if rank == 0:
                output.parent.mkdir(parents=True, exist_ok=True)
                remove_stale_temporaries(output)
                shared[0] = temporary_path(output)
                shared[0].mkdir()
            agree_on_failures()  # the folder exists
            dist.broadcast_object_list(shared, src=0)
        tmp = Path(shared[0])
        # rank 0 publishes (or removes) the folder; every rank unwinds on a termination signal
        with publish_folder(output, overwrite=overwrite, tmp=tmp) if rank == 0 else unwinding(None, output):
            with stop_together():
                items = iter(items)
                for i, shard in enumerate(plans[rank]):
                    try:
                        write_shard(tmp / names[first + i], shard, items, metadata)
                    except OSError as error:
                        raise folder_write_failure(error, output, tmp) from None
                agree_on_failures()  # every rank wrote its shards: rank 0 may publish them
                if rank == 0:
                    weight_map = {key: names[index] for index, shard in enumerate(s for plan in plans for s in plan)
                                  for key, _, _ in shard}
                    write_index(tmp, layout, weight_map, metadata)
                    copy_side_files(copy_from, tmp, weights_dtype(layout))
                    if extra_files is not None:
                        extra_files(tmp)
        agree_on_failures()
    except BaseException as error:
        if rank == 0 and shared[0] is not None:  # failed before the folder was handed to publish_folder
            shutil.rmtree(shared[0], ignore_errors=True)
        if isinstance(error, Exception):  # every rank knows: none exits (and torchrun ends the rest) before that
            try:
                dist.barrier()
            except RuntimeError:  # a rank is gone already
                pass
        raise
    return output
