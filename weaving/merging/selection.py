"""Exact k-th value selection over tensors streamed in passes, without holding them together.

Radix selection over the floats' bit patterns, mapped to integers of the same order: each pass
histograms the next 16 bits of the entries that share the prefix found so far and picks the bucket that
holds the wanted rank; after 2 passes (float32) or 4 (float64) every bit is known, so the value is exactly
the one a sort of all entries puts there. The histograms can be summed over processes (an all-reduce),
which makes the selection exact across ranks that each hold part of the entries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

DIGIT_BITS = 16
DIGITS = 1 << DIGIT_BITS


def order_keys(values: torch.Tensor) -> torch.Tensor:
    """Integers (int64) whose order is the floats' order: sign-magnitude bits turned into two's complement.

    float32 maps into [0, 2^32); float64 into the signed int64 range. -0.0 sorts just below +0.0 (both are
    zero, so any selected value is still the value a sort gives).
    """
    if values.dtype == torch.float64:
        bits = values.contiguous().view(torch.int64)
        return bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)
    bits = values.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)) + 2**31


def from_order_key(key: int, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.float64:
        bits = key ^ ((key >> 63) & 0x7FFFFFFFFFFFFFFF)
        return torch.tensor([bits], dtype=torch.int64).view(torch.float64)[0]
    bits = key - 2**31
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return torch.tensor([bits], dtype=torch.int32).view(torch.float32)[0]


def digit_of(keys: torch.Tensor, shift: int, signed_top: bool) -> torch.Tensor:
    digit = keys >> shift
    return digit + DIGITS // 2 if signed_top else digit & (DIGITS - 1)


def radix_select(parts: Callable[[], Iterable[torch.Tensor]], indices: Sequence[int], count: int, dtype: torch.dtype,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda counts: counts) -> list[torch.Tensor]:
    """[sorted(v)[i] for i in indices] over all entries v that `parts()` yields on every process together.

    `parts` is called once per pass and yields this process's tensors (any shapes); `count` is the global
    number of entries; `all_reduce` sums a tensor over processes (identity for one process).
    """
    total_bits = 64 if dtype == torch.float64 else 32
    positions = [i % count for i in indices]
    state = {p: (0, p) for p in dict.fromkeys(positions)}  # position -> (prefix found so far, rank inside it)
    for level in range(total_bits // DIGIT_BITS):
        shift = total_bits - DIGIT_BITS * (level + 1)
        signed_top = level == 0 and dtype == torch.float64
        prefixes = sorted({prefix for prefix, _ in state.values()})
        histograms = torch.zeros(len(prefixes), DIGITS, dtype=torch.int64)
        for part in parts():
            keys = order_keys(part.detach().reshape(-1).to("cpu"))
            high = keys >> (shift + DIGIT_BITS) if level else None
            for row, prefix in enumerate(prefixes):
                chosen = keys if level == 0 else keys[high == prefix]
                histograms[row] += torch.bincount(digit_of(chosen, shift, signed_top), minlength=DIGITS)
        histograms = all_reduce(histograms)
        ends = histograms.cumsum(dim=1)
        for position, (prefix, rank) in list(state.items()):
            row = prefixes.index(prefix)
            digit = int(torch.searchsorted(ends[row], torch.tensor([rank]), right=True))
            before = int(ends[row, digit - 1]) if digit else 0
            value = digit - DIGITS // 2 if signed_top else digit
            state[position] = ((prefix << DIGIT_BITS) | value if level else value, rank - before)
    return [from_order_key(state[p][0], dtype) for p in positions]
