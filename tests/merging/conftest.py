import pytest
import torch


def make_inputs(num_tasks: int = 3, seed: int = 0, dtype=torch.float32):
    """A small 'model': a matrix, a bias, a text projection, a 4-D conv weight and a scalar."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"visual.proj.weight": (6, 5), "visual.proj.bias": (6,), "visual.text_projection": (5, 4),
              "visual.conv.weight": (2, 3, 2, 2), "visual.scale": ()}
    pretrained = {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}
    task_vectors = [{k: (0.1 * torch.randn(s, generator=g)).to(dtype) for k, s in shapes.items()}
                    for _ in range(num_tasks)]
    return pretrained, task_vectors


@pytest.fixture
def inputs():
    return make_inputs()


def delta(merged, pretrained):
    return {k: merged[k] - pretrained[k] for k in pretrained}
