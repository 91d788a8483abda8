"""Exact streamed selection: several streams and several ranks per stream in the same passes."""

import threading

import pytest
import torch

from weaving.merging.selection import select_rows, value_of


def _blocks(dtype):
    g = torch.Generator().manual_seed(3)
    rows = 5
    parts = [torch.randn(rows, n, generator=g, dtype=dtype) * scale for n, scale in ((100, 1.0), (37, 1e-3), (1, 5.0))]
    parts += [torch.zeros(rows, 10, dtype=dtype), -torch.zeros(rows, 3, dtype=dtype),
              torch.full((rows, 9), -0.25, dtype=dtype), torch.tensor([[1e-45, -3e38]] * rows, dtype=torch.float32).to(dtype)]
    return parts


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("absolute", [False, True])
def test_every_stream_gets_the_values_a_sort_gives(dtype, absolute):
    parts = _blocks(dtype)
    full = torch.cat(parts, dim=1)
    count = full.shape[1]
    ordered = (full.abs() if absolute else full).sort(dim=1).values
    indices = [[0, count - 1], [5, 6, 7], list(range(count)), [-1], [3, 100, -2, 50, 3]]
    # blocks as (R, n) tensors and as lists of R tensors of any shapes
    for blocks in (parts, [[row.reshape(1, -1, 1) for row in part] for part in parts]):
        chosen = select_rows(lambda: iter(blocks), indices, count, dtype, absolute=absolute)
        for r, (wanted, values) in enumerate(zip(indices, chosen)):
            assert [float(v) for v in values] == [float(ordered[r, i]) for i in wanted]
            assert all(v.dtype == dtype for v in values)


def in_two_processes(work):
    """Run `work(rank, all_reduce)` for ranks 0 and 1 as threads in lockstep; `all_reduce` sums what both post,
    as torch.distributed's would. Returns both results."""
    barrier = threading.Barrier(2)
    posted: list = [None, None]
    results: list = [None, None]

    def process(rank):
        def all_reduce(counts):
            posted[rank] = counts
            barrier.wait()
            total = posted[0] + posted[1]
            barrier.wait()
            return total

        results[rank] = work(rank, all_reduce)

    threads = [threading.Thread(target=process, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_histograms_summed_over_processes_select_over_the_union():
    """Two 'processes' (threads in lockstep) each hold part of every stream; summing their histograms at
    each pass, as an all-reduce does, gives both the values a sort of the union gives."""
    g = torch.Generator().manual_seed(4)
    shares = [torch.randn(2, 300, generator=g), torch.randn(2, 200, generator=g) * 3]
    union = torch.cat(shares, dim=1).abs().sort(dim=1).values
    indices = [[17, 250], [499, 0]]
    results = in_two_processes(lambda rank, all_reduce: select_rows(
        lambda: iter([shares[rank]]), indices, 500, torch.float32, all_reduce, absolute=True))
    expected = [[float(union[r, i]) for i in wanted] for r, wanted in enumerate(indices)]
    assert [[float(v) for v in row] for row in results[0]] == expected
    assert [[float(v) for v in row] for row in results[1]] == expected


def test_value_of_inverts_the_digit_order():
    for value in [0.0, -0.0, 1.5, -1.5, 3e38, -1e-45, 0.1]:
        value = torch.tensor(value, dtype=torch.float32).item()  # as stored in float32
        bits = torch.tensor([value], dtype=torch.float32).view(torch.int16)
        low, top = int(bits[0]), int(bits[1])
        negative = top < 0
        top_digit = (top ^ 0x7FFF) + 32768 if negative else top + 32768
        low_digit = 0xFFFF - (low & 0xFFFF) if negative else low & 0xFFFF
        assert value_of((top_digit, low_digit), False, torch.float32).item() == value


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("absolute", [False, True])
def test_extra_zeros_select_as_if_appended(dtype, absolute):
    """`zeros` entries equal to 0.0 that no block holds sort among the others as appended zeros would."""
    parts = _blocks(dtype)
    full = torch.cat(parts, dim=1)
    count, zeros = full.shape[1], 25
    ordered = torch.cat([full, torch.zeros(full.shape[0], zeros, dtype=dtype)], dim=1)
    ordered = (ordered.abs() if absolute else ordered).sort(dim=1).values
    total = count + zeros
    indices = [list(range(total))] * 2 + [[0, -1], [70, 80, 90, 100], [-zeros, total - 1]]
    chosen = select_rows(lambda: iter(parts), indices, count, dtype, absolute=absolute, zeros=zeros)
    for r, (wanted, values) in enumerate(zip(indices, chosen)):
        assert [float(v) for v in values] == [float(ordered[r, i]) for i in wanted]


def test_extra_zeros_are_counted_once_over_processes():
    """Two 'processes' summing their histograms, with 50 extra zeros: the zeros count once, not per process."""
    g = torch.Generator().manual_seed(6)
    shares = [torch.randn(1, 300, generator=g), torch.randn(1, 200, generator=g)]
    union = torch.cat(shares + [torch.zeros(1, 50)], dim=1).sort(dim=1).values
    indices = [list(range(0, 550, 7)) + [549]]
    results = in_two_processes(lambda rank, all_reduce: select_rows(
        lambda: iter([shares[rank]]), indices, 500, torch.float32, all_reduce, zeros=50))
    expected = [float(union[0, i]) for i in indices[0]]
    assert [float(v) for v in results[0][0]] == expected == [float(v) for v in results[1][0]]
