import torch

import weaving
from weaving.merging.methods.task_arithmetic import task_arithmetic

from .conftest import assert_float64_close


def test_sum_of_task_vectors():
    a, b = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 4.0])
    assert torch.equal(task_arithmetic([a, b], key="w", stats=None), torch.tensor([1.5, 2.0]))


def test_merge_adds_lam_times_sum_in_float64(inputs):
    pretrained, tvs = inputs
    merged = weaving.merge(pretrained, tvs, "task_arithmetic", lam=0.3)
    for key in pretrained:
        assert_float64_close(merged[key], pretrained[key] + 0.3 * (tvs[0][key] + tvs[1][key] + tvs[2][key]))
