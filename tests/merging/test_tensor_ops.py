import pytest
import torch

from weaving.merging.tensor_ops import kth_smallest, sorted_value, sorted_values


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
