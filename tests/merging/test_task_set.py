import pytest
import torch

import weaving
from weaving.merging import task_set

from .conftest import make_inputs


@pytest.mark.parametrize("method, args", [("ties", {"k": 0.3}), ("pcb", {"ratio": 0.2}), ("ties", {"k": 0.9})])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_streamed_selection_gives_the_in_memory_thresholds(monkeypatch, method, args, dtype):
    from weaving.merging import tensor_ops

    pretrained, tvs = make_inputs(num_tasks=4, dtype=dtype)
    sorts = []
    sort = torch.sort
    monkeypatch.setattr(tensor_ops, "RADIX_DEVICES", ())  # the GPU's in-memory sorting branch, on the CPU
    monkeypatch.setattr(torch, "sort", lambda *a, **k: sorts.append(1) or sort(*a, **k))
    in_memory = weaving.merge(pretrained, tvs, method, **args)
    assert sorts  # the branch ran
    monkeypatch.undo()
    monkeypatch.setattr(task_set, "IN_MEMORY_SELECTION", 0)  # every task vector counts as large: streamed
    streamed = weaving.merge(pretrained, tvs, method, **args)
    assert all(torch.equal(in_memory[k], streamed[k]) for k in pretrained)


def test_select_sorted_streams_in_passes(monkeypatch):
    pretrained, tvs = make_inputs(num_tasks=2, dtype=torch.float32)
    inputs = weaving.merging.engine.open_inputs(pretrained, tvs, None)
    reads = []

    def values_of(key):
        reads.append(key)
        return inputs.task_set.tensor(0, key)

    flat = torch.cat([tvs[0][k].reshape(-1) for k in inputs.task_set.keys])
    monkeypatch.setattr(task_set, "IN_MEMORY_SELECTION", 0)
    got = inputs.task_set.select_sorted(values_of, [0, 7, -1], absolute=True)
    ordered = torch.sort(flat.abs()).values
    assert [float(v) for v in got] == [float(ordered[i]) for i in (0, 7, -1)]
    assert len(reads) == 2 * len(inputs.task_set.keys)  # float32: two 16-bit passes, one tensor at a time
