"""Exact k-th value selection over tensors streamed in passes, without holding them together.

Radix selection over the floats' bit patterns, 16 bits per pass: the first pass histograms the top 16
bits of every entry (sign, exponent and the leading mantissa bits, mapped to integers in the floats'
order); each further pass histograms the next 16 bits of only the entries whose higher bits equal the
prefix found so far. After 2 passes (float32) or 4 (float64) every bit of the wanted entry is known, so the
value is exactly the one a sort of all entries puts at that rank. The bits are read through an int16 view
of each tensor: no copy of the values, no 64-bit keys. The histograms can be summed over processes (an
all-reduce), which makes the selection exact across ranks that each hold part of the entries.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence

import torch

DIGIT_BITS = 16
DIGITS = 1 << DIGIT_BITS
HALF = DIGITS // 2


def halves_of(part: torch.Tensor) -> torch.Tensor:
    """The entries' bits as (n, m) int16, column m - 1 the most significant (little-endian machines)."""
    flat = part.detach().contiguous().reshape(-1)
    return flat.view(torch.int16).view(-1, flat.element_size() // 2)


def ordered_counts(raw: torch.Tensor) -> torch.Tensor:
    """Counts of the top 16 bits indexed by their raw pattern + 32768 (sign-bit-set patterns first),
    rearranged into digit order: non-negative floats keep their order above 32768; negative floats order
    by reversed magnitude below it, -0.0 just below +0.0 (equal values, an order a sort may give)."""
    return torch.cat([raw[:HALF].flip(0), raw[HALF:]])


def raw_top(digit: int) -> int:
    """The int16 pattern of the top 16 bits whose digit (signed order) is `digit`."""
    return digit - HALF if digit >= HALF else -1 - digit


def raw_half(digit: int, negative: bool) -> int:
    """The int16 bit pattern of a lower 16-bit half whose digit is `digit`: its bits as an unsigned number,
    reversed for negative values (a larger magnitude is a smaller value)."""
    unsigned = (DIGITS - 1) - digit if negative else digit
    return unsigned - DIGITS if unsigned >= HALF else unsigned


def value_of(digits: Sequence[int], absolute: bool, dtype: torch.dtype) -> torch.Tensor:
    """The float whose digits (most significant first) are `digits`."""
    negative = not absolute and digits[0] < HALF
    top = digits[0] if absolute else raw_top(digits[0])  # absolute: the sign bit is clear
    halves = [raw_half(d, negative) for d in reversed(digits[1:])] + [top]
    return torch.tensor(halves, dtype=torch.int16).view(dtype)[0]


def radix_select(parts: Callable[[], Iterable[torch.Tensor]], indices: Sequence[int], count: int, dtype: torch.dtype,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda counts: counts,
                 absolute: bool = False, zeros: int = 0) -> list[torch.Tensor]:
    """[sorted(v)[i] for i in indices] over all entries v that `parts()` yields on every process together
    (their abs values when `absolute`); Python index rules (negative wraps).

    `parts` is called once per pass and yields this process's tensors (any shapes); `count` is the global
    number of entries. See `select_rows` for the rest.
    """
    return select_rows(lambda: ([part] for part in parts()), [indices], count, dtype, all_reduce,
                       absolute, zeros)[0]


def select_rows(parts: Callable[[], Iterable[Sequence[torch.Tensor]]], indices: Sequence[Sequence[int]], count: int,
                dtype: torch.dtype, all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda counts: counts,
                absolute: bool = False, zeros: int = 0) -> list[list[torch.Tensor]]:
    """Several selections in the same passes: `parts()` yields blocks of R tensors (a list, or an (R, ...)
    tensor), the r-th holding entries of stream r (R = len(indices)); the result's row r is
    [sorted(v_r)[i] for i in indices[r]] over all of stream r's entries (each stream has `count` entries in
    total, over every process) and `zeros` more entries equal to 0.0 that no part holds: they are counted
    into the histograms once, after the reduction, so v_r holds count + zeros entries.

    Tensors may be float32 or float64 (widened to `dtype`) on any device; `all_reduce` sums a CPU int64
    tensor over processes (identity for one process).
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"radix selection works on float32 or float64 values, got {dtype}")
    if sys.byteorder != "little":
        raise RuntimeError("radix selection reads the floats' bits and needs a little-endian machine")
    if count + zeros == 0:
        raise ValueError("cannot select from an empty tensor")
    positions = [[i % (count + zeros) for i in row] for row in indices]
    zero_digits = [0 if absolute else HALF] + [0] * (torch.finfo(dtype).bits // DIGIT_BITS - 1)  # 0.0's digits
    # Per stream: position -> (digits found so far, rank of the wanted entry among those with that prefix).
    state = [{p: ((), p) for p in dict.fromkeys(row)} for row in positions]
    for level in range(torch.finfo(dtype).bits // DIGIT_BITS):
        prefixes = [sorted({prefix for prefix, _ in stream.values()}) for stream in state]
        histograms = torch.zeros(len(state), max(map(len, prefixes)), DIGITS, dtype=torch.int64)
        for block in parts():
            for r, values in enumerate(block):
                if values.numel():
                    histograms = histograms.to(values.device)  # counted where the values are; one copy back
                    _count(histograms[r], values.to(dtype), prefixes[r], level, absolute)
        histograms = all_reduce(histograms.cpu())
        if zeros:
            zero_prefix = tuple(zero_digits[:level])
            for r in range(len(state)):
                if zero_prefix in prefixes[r]:
                    histograms[r, prefixes[r].index(zero_prefix), zero_digits[level]] += zeros
        for r, stream in enumerate(state):
            for position, (prefix, rank) in list(stream.items()):
                ends = histograms[r, prefixes[r].index(prefix)].cumsum(0)
                digit = int(torch.searchsorted(ends, torch.tensor([rank]), right=True))
                before = int(ends[digit - 1]) if digit else 0
                stream[position] = (prefix + (digit,), rank - before)
    return [[value_of(stream[p][0], absolute, dtype) for p in row] for stream, row in zip(state, positions)]


def _count(histograms: torch.Tensor, values: torch.Tensor, prefixes: list[tuple[int, ...]], level: int,
           absolute: bool) -> None:
    """Add the digits at `level` of the entries of `values` under each prefix to that prefix's histogram."""
    halves = halves_of(values)  # (n, m)
    top = halves[:, -1]
    if level == 0:
        # Histogram the raw bit patterns (one pass), then put the bins in digit order (65536 values).
        if absolute:
            histograms[0] += torch.bincount(top & 0x7FFF, minlength=DIGITS)
        else:
            histograms[0] += ordered_counts(torch.bincount(top.to(torch.int32).add_(HALF), minlength=DIGITS))
        return
    if absolute:
        top = top & 0x7FFF  # the sign bit ignored
    for slot, prefix in enumerate(prefixes):
        negative = not absolute and prefix[0] < HALF
        mask = top == (prefix[0] if absolute else raw_top(prefix[0]))
        for depth in range(1, level):
            mask &= halves[:, -1 - depth] == raw_half(prefix[depth], negative)
        digits = halves[:, -1 - level][mask].to(torch.int32) & (DIGITS - 1)
        if negative:
            digits = (DIGITS - 1) - digits
        histograms[slot] += torch.bincount(digits, minlength=DIGITS)
