import pytest
import torch


def make_inputs(num_tasks: int = 3, seed: int = 0, dtype=torch.float64):
    """A small 'model': a matrix, a bias, a text projection, a 4-D conv weight and a scalar.

    Drawn in float64 (not float32 cast up), so float64 tests see values float32 cannot hold."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"visual.proj.weight": (6, 5), "visual.proj.bias": (6,), "visual.text_projection": (5, 4),
              "visual.conv.weight": (2, 3, 2, 2), "visual.scale": ()}
    pretrained = {k: torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for k, s in shapes.items()}
    task_vectors = [{k: (0.1 * torch.randn(s, generator=g, dtype=torch.float64)).to(dtype) for k, s in shapes.items()}
                    for _ in range(num_tasks)]
    return pretrained, task_vectors


@pytest.fixture
def inputs():
    return make_inputs()


def delta(merged, pretrained):
    return {k: merged[k] - pretrained[k] for k in pretrained}


def assert_float64_close(actual, expected):
    """Equal up to float64 rounding (float32 arithmetic anywhere would miss by ~1e-7)."""
    assert actual.dtype == expected.dtype == torch.float64
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def elected_disjoint_mean(kept: list[list[float]]) -> torch.Tensor:
    """Reference for the sparsify-then-TIES methods, element by element: the sign of the sum (+1 where it is
    0, as mergekit), then the mean of the non-zero values that agree with it (0 where none)."""
    expected = []
    for values in zip(*kept):
        sign = 1.0 if sum(values) >= 0 else -1.0
        agree = [v for v in values if v != 0 and (v > 0) == (sign > 0)]
        expected.append(sum(agree) / len(agree) if agree else 0.0)
    return torch.tensor(expected, dtype=torch.float64)
