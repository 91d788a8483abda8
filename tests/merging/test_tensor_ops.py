import pytest
import torch

from weaving.merging.tensor_ops import CPU_BLOCK, blocks, kth_smallest, select_sorted, sorted_value, sorted_values


@pytest.mark.parametrize("k", [1, 2, 9, 500, 1000])
def test_kth_smallest_is_the_kth_entry_of_the_sorted_values(k):
    values = torch.randint(0, 40, (1000,)).float()  # many repeated values
    assert kth_smallest(values, k).item() == sorted(values.tolist())[k - 1]


def test_sorted_value_follows_python_index_rules():
    values = torch.tensor([3.0, -1.0, 2.0, 7.0])
    assert sorted_value(values, 0).item() == -1.0
    assert sorted_value(values, -1).item() == 7.0
    assert sorted_value(values, 2).item() == 3.0


def test_sorted_values_gives_each_index_of_one_order():
    values = torch.tensor([5.0, 1.0, 4.0, 1.0, 9.0])
    assert [v.item() for v in sorted_values(values, [0, 1, 2, -1, -2])] == [1.0, 1.0, 4.0, 9.0, 5.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("absolute", [False, True])
def test_select_sorted_over_parts_equals_a_full_sort(dtype, absolute):
    g = torch.Generator().manual_seed(3)
    parts = [torch.randn(s, generator=g).to(dtype) * 10.0 ** e for s, e in (((40, 30), -3), ((30,), 0), ((7, 3, 5), 2), ((), -1))]
    parts[0][:5] = 0.0
    parts[1][:4] = -0.0
    parts[2][0] = parts[2][1]  # a repeated value
    parts.append(torch.full((50,), 0.25, dtype=dtype))  # one bucket holding many equal values
    flat = torch.cat([p.reshape(-1) for p in parts])
    ordered = torch.sort(flat.abs() if absolute else flat).values
    d = flat.numel()
    indices = [0, 1, 4, 5, 6, d // 3, d // 2, d - 60, d - 51, d - 2, -1, int(d * 1e-4), int(d * 0.9)]
    got = select_sorted(parts, indices, absolute=absolute)
    assert [v.item() for v in got] == [ordered[i].item() for i in indices]
    assert all(v.dtype == dtype and v.dim() == 0 for v in got)


def test_select_sorted_orders_negative_numbers_across_magnitudes():
    values = torch.tensor([-1e30, -3.0, -2.5, -1e-30, 0.0, 1e-30, 2.5, 3.0, 1e30])
    shuffled = values[torch.randperm(9, generator=torch.Generator().manual_seed(0))]
    assert [v.item() for v in select_sorted([shuffled[:4], shuffled[4:]], list(range(9)))] == values.tolist()
    assert [v.item() for v in select_sorted([shuffled], [0, 8], absolute=True)] == [0.0, values[-1].item()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("absolute", [False, True])
def test_select_sorted_with_extra_zeros_equals_a_sort_with_zeros_appended(dtype, absolute):
    """Radix selection (float32/64 on the CPU) and the sort path (here float16; CUDA) alike."""
    g = torch.Generator().manual_seed(8)
    parts = [torch.randn(60, generator=g).to(dtype), -torch.rand(3, 4, generator=g).to(dtype)]
    zeros = 30
    flat = torch.cat([p.reshape(-1) for p in parts] + [torch.zeros(zeros, dtype=dtype)])
    ordered = torch.sort(flat.abs() if absolute else flat).values
    indices = list(range(flat.numel())) + [-1, -zeros]
    got = select_sorted(parts, indices, absolute=absolute, zeros=zeros)
    assert [v.item() for v in got] == [ordered[i].item() for i in indices]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_blocks_of_an_explicit_size_are_that_size_on_every_device(device):
    # pcb's selection buffer is sized by the explicit size: on a GPU one whole-tensor block overran it
    # (a ViT-L-14 in_proj of 3 145 728 entries against a 1 048 576-entry buffer)
    numel, size = 3 * 1024 * 1024, 1 << 20
    chosen = blocks(numel, torch.device(device), size)
    assert [(b.start, b.stop) for b in chosen] == [(0, size), (size, 2 * size), (2 * size, numel)]


def test_blocks_without_a_size_are_cache_sized_on_the_cpu_and_whole_on_a_gpu():
    assert len(blocks(10 * CPU_BLOCK, torch.device("cpu"))) == 10
    assert blocks(10 * CPU_BLOCK, torch.device("cuda")) == [slice(0, 10 * CPU_BLOCK)]
