"""Small tensor helpers shared by merge methods (pure functions, any device and dtype)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from weaving.merging.selection import radix_select


def sequential_sum(tensors: list[torch.Tensor]) -> torch.Tensor:
    """tau_1 + tau_2 + ... in list order (the order the original implementations add in)."""
    total = tensors[0].clone()
    for value in tensors[1:]:
        total += value
    return total


def running_mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Mean over tasks, accumulated as m += (x - m) / (i + 1) like the TSV and ISO reference code."""
    mean = tensors[0].clone()
    for i, value in enumerate(tensors[1:], start=1):
        mean += (value - mean) / (i + 1)
    return mean


def is_svd_matrix(key: str, value: torch.Tensor) -> bool:
    """Tensors merged through their SVD by tsv / iso_c / iso_cts: 2-D, and not a text projection."""
    return value.dim() == 2 and "text_projection" not in key


def polar_factor(matrix: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor P Q^T of matrix = P S Q^T."""
    left, _, right = torch.linalg.svd(matrix, full_matrices=False)
    return left @ right


def sorted_values(values: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
    """[sorted(values)[i] for i in indices] for a 1-D tensor (Python index rules, negative wraps)."""
    return select_sorted([values], indices)


# Device types where selections stream (radix selection, weaving.merging.selection); elsewhere (GPUs) one
# device-wide sort is faster. Tests empty it to run the sorting path on the CPU.
RADIX_DEVICES = ("cpu",)


def select_sorted(parts: Sequence[torch.Tensor], indices: list[int], absolute: bool = False,
                  zeros: int = 0) -> list[torch.Tensor]:
    """[sorted(v)[i] for i in indices], v = all entries of `parts` flattened together (abs values when
    `absolute`) plus `zeros` entries equal to 0.0 that no part holds, without concatenating them on the
    CPU. Python index rules (negative wraps).

    On the CPU: the streamed radix selection of `weaving.merging.selection`. On a GPU, one device-wide sort
    takes milliseconds and serves every index (`kthvalue` works on one slice with one thread block and
    takes seconds for a whole task vector). Both return exactly the value a full sort puts at that index.
    """
    d = sum(p.numel() for p in parts)
    if d + zeros == 0:
        raise ValueError("cannot select from an empty tensor")
    dtype = parts[0].dtype
    if parts[0].device.type in RADIX_DEVICES and dtype in (torch.float32, torch.float64):
        return radix_select(lambda: iter(parts), indices, d, dtype, absolute=absolute, zeros=zeros)
    flat = torch.cat([p.reshape(-1) for p in parts])
    ordered = torch.sort(flat.abs() if absolute else flat).values
    below = int((ordered < 0).sum())  # the extra zeros sort after the negative entries
    zero = torch.zeros((), dtype=ordered.dtype, device=ordered.device)

    def at(i: int) -> torch.Tensor:
        i %= d + zeros
        return ordered[i] if i < below else zero if i < below + zeros else ordered[i - zeros]

    return [at(i) for i in indices]


def sorted_value(values: torch.Tensor, index: int) -> torch.Tensor:
    """sorted(values)[index] for a 1-D tensor (Python index rules, negative wraps)."""
    return sorted_values(values, [index])[0]


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest entry (1-based) of a 1-D tensor."""
    return sorted_value(values, k - 1)


def magnitude_rank_mask(values: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Along the last dimension (length n), True for the entries ranked start .. stop - 1 by descending abs
    value (rank 0 the largest); equal abs values rank in index order, the earlier entry first (as a stable
    sort). Ranks are clipped to [0, n]. On the CPU a k-th value and a running count, not a sort."""
    magnitudes = values.abs()
    if magnitudes.dtype in (torch.float16, torch.bfloat16):
        magnitudes = magnitudes.float()  # exact; kthvalue and sort have no half-precision CPU kernels everywhere
    n = magnitudes.shape[-1] if magnitudes.dim() else 1

    def top(count: int) -> torch.Tensor:  # the `count` entries of highest rank
        if count <= 0:
            return torch.zeros_like(magnitudes, dtype=torch.bool)
        if count >= n:
            return torch.ones_like(magnitudes, dtype=torch.bool)
        if magnitudes.device.type in RADIX_DEVICES:  # the count-th largest
            kth = torch.kthvalue(magnitudes, n - count + 1, dim=-1, keepdim=True).values
        else:  # a GPU's kthvalue works on one row with one thread block: one sort is faster
            kth = torch.sort(magnitudes, dim=-1).values[..., n - count: n - count + 1]
        above = magnitudes > kth
        at = magnitudes == kth
        room = count - above.sum(dim=-1, keepdim=True)  # how many of the equal ones still rank in
        return above | (at & (at.cumsum(dim=-1) <= room))

    return top(stop) & ~top(start)


def sign_consensus(deltas: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
                   normalize: bool = True) -> torch.Tensor:
    """TIES' elect and mean over already sparsified task tensors x_t, with per-task weights w_t (default 1),
    as mergekit's sign consensus computes it: y_t = w_t * x_t; the elected sign is +1 where sum_t y_t >= 0,
    else -1; agreeing entries are the y_t whose sign is the elected one (zeros never agree). The result is
    the sum of the agreeing y_t, divided, with `normalize`, by the sum of the w_t of the agreeing entries
    (by 1 where there are none). With unit weights: TIES' disjoint mean."""
    stacked = torch.stack(list(deltas))
    column = None if weights is None else torch.tensor(
        [float(w) for w in weights], dtype=stacked.dtype, device=stacked.device).view((-1,) + (1,) * (stacked.dim() - 1))
    if column is not None:
        stacked = stacked * column
    elected = torch.where(stacked.sum(dim=0) >= 0, 1.0, -1.0).to(stacked.dtype)
    agree = torch.sign(stacked) == elected
    mixed = torch.where(agree, stacked, 0.0).sum(dim=0)
    if not normalize:
        return mixed
    divisor = agree.sum(dim=0).to(stacked.dtype) if column is None else torch.where(agree, column, 0.0).sum(dim=0)
    return mixed / torch.where(divisor == 0, 1.0, divisor)


def task_column(values: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Per-task scalars as a (T, 1) column on `like`'s device and dtype (broadcasts over (T, n) blocks)."""
    return torch.stack([v.to("cpu", like.dtype) for v in values]).to(like.device).unsqueeze(1)


# Entries per task in one block of a blocked elementwise pass: T blocks of float32 stay within a core's L2
# cache, so the pass's dozen operations run in cache instead of streaming the T tensors through memory once
# per operation (and allocating T-sized temporaries). On a GPU one block is the whole tensor.
CPU_BLOCK = 1 << 15


def blocks(numel: int, device: torch.device, size: int | None = None) -> list[slice]:
    """Consecutive slices covering range(numel), each `size` long (the last may be shorter) on any device;
    without `size`, CPU_BLOCK long on the CPU and one slice on a GPU."""
    if size is None:
        size = CPU_BLOCK if device.type == "cpu" else max(numel, 1)
    return [slice(start, min(start + size, numel)) for start in range(0, numel, size)]


class StackedBlocks:
    """One parameter's T tensors, flattened, walked in blocks (`blocks`) of the entries start..stop; each
    block is stacked (T, n) into a reused buffer, and `scratch(i)` gives reused (T, n) temporaries for the
    current block: a blocked pass neither allocates per block nor, on the CPU, leaves the cache."""

    def __init__(self, tensors: Sequence[torch.Tensor], scratch: int = 0, start: int = 0, stop: int | None = None):
        self.flat = [value.reshape(-1) for value in tensors]
        like = self.flat[0]
        self.start, self.stop = start, like.numel() if stop is None else stop
        self.blocks = blocks(self.stop - self.start, like.device)
        size = len(self.flat) * (self.blocks[0].stop if self.blocks else 0)
        self._buffers = [torch.empty(size, dtype=like.dtype, device=like.device) for _ in range(scratch + 1)]
        self._width = 0

    def _view(self, buffer: torch.Tensor) -> torch.Tensor:
        return buffer[: len(self.flat) * self._width].view(len(self.flat), self._width)

    def __iter__(self) -> Iterator[tuple[slice, torch.Tensor]]:
        """(block, the T tensors' entries in it stacked (T, n)); `block` indexes the flattened tensors."""
        for block in self.blocks:
            block = slice(block.start + self.start, block.stop + self.start)
            self._width = block.stop - block.start
            yield block, torch.stack([value[block] for value in self.flat], out=self._view(self._buffers[0]))

    def scratch(self, index: int) -> torch.Tensor:
        """The index-th (T, n) temporary of the current block (contents undefined)."""
        return self._view(self._buffers[1 + index])


def max_magnitude(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Elementwise value with the largest abs value; on equal abs values the later tensor wins."""
    best = tensors[0]
    for value in tensors[1:]:
        best = torch.where(value.abs() >= best.abs(), value, best)
    return best
