"""The GPU code paths give what the CPU gives (runs where a GPU is visible; CPU-only machines skip it)."""

import pytest
import torch

import weaving
from weaving.merging.tensor_ops import kth_smallest

from .conftest import make_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DETERMINISTIC = ["task_arithmetic", "ties", "breadcrumbs", "magmax", "pcb", "tsv", "iso_c", "iso_cts"]


def test_kth_smallest_on_the_gpu_matches_the_cpu_with_repeated_values():
    values = torch.randint(0, 50, (10_001,)).float()
    for k in (1, 17, 5_000, 10_001):
        assert kth_smallest(values.cuda(), k).item() == kth_smallest(values, k).item() == sorted(values.tolist())[k - 1]


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_merge_and_weave_on_cuda_match_the_cpu(method):
    pretrained, task_vectors = make_inputs()
    for run in (lambda d: weaving.merge(pretrained, task_vectors, method, lam=0.7, device=d),
                lambda d: weaving.weave(pretrained, task_vectors, method, [0.5, 1.0, 1.5], device=d)):
        on_cpu, on_gpu = run("cpu"), run("cuda")
        for key, value in on_cpu.items():
            assert on_gpu[key].device.type == "cpu" and on_gpu[key].dtype == value.dtype
            torch.testing.assert_close(on_gpu[key], value, rtol=1e-4, atol=1e-5)


def test_pcb_on_cuda_matches_the_cpu_on_tensors_larger_than_a_selection_block():
    from weaving.merging.methods.pcb import SELECTION_BLOCK

    g = torch.Generator().manual_seed(0)
    shapes = {"visual.in_proj_weight": (3 * 64, SELECTION_BLOCK // 64 + 7), "visual.bias": (11,)}
    pretrained = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    task_vectors = [{k: 0.1 * torch.randn(s, generator=g) for k, s in shapes.items()} for _ in range(3)]
    on_cpu = weaving.merge(pretrained, task_vectors, "pcb", lam=1.0, device="cpu")
    on_gpu = weaving.merge(pretrained, task_vectors, "pcb", lam=1.0, device="cuda")
    for key, value in on_cpu.items():
        torch.testing.assert_close(on_gpu[key], value, rtol=1e-4, atol=1e-5)
