"""TIES-Merging (Yadav et al., 2023) against a reference written from the definition, in float64."""

import pytest
import torch

import weaving

from .conftest import assert_float64_close


def ties_reference(task_vectors: list[dict[str, torch.Tensor]], k: float) -> dict[str, torch.Tensor]:
    """Trim (per task, over all its tensors: keep |x| >= the (d - int(d*k))-th smallest |x|), elect the
    sign of the sum (0 -> the sign of the sum of all elected signs), disjoint mean. Plain Python loops."""
    keys = list(task_vectors[0])
    flat = [torch.cat([tv[key].reshape(-1) for key in keys]).tolist() for tv in task_vectors]
    d = len(flat[0])
    trimmed = []
    for values in flat:
        kth = d - int(d * k)
        threshold = sorted(abs(v) for v in values)[kth - 1] if kth >= 1 else None
        trimmed.append([v if threshold is None or abs(v) >= threshold else 0.0 for v in values])
    sign = lambda x: (x > 0) - (x < 0)  # noqa: E731
    elected = [sign(sum(column)) for column in zip(*trimmed)]
    majority = sign(sum(elected))
    merged = []
    for i, column in enumerate(zip(*trimmed)):
        s = elected[i] if elected[i] != 0 else majority
        chosen = [v for v in column if v != 0 and sign(v) == s]
        merged.append(sum(chosen) / len(chosen) if chosen else 0.0)
    out, start = {}, 0
    for key in keys:
        n = task_vectors[0][key].numel()
        out[key] = torch.tensor(merged[start:start + n], dtype=torch.float64).reshape(task_vectors[0][key].shape)
        start += n
    return out


@pytest.mark.parametrize("k", [0.2, 0.5, 1.0])
def test_matches_the_reference_in_float64(inputs, k):
    pretrained, tvs = inputs
    merged = weaving.merge(pretrained, tvs, "ties", k=k)
    expected = ties_reference(tvs, k)
    for key in pretrained:
        assert_float64_close(merged[key] - pretrained[key], expected[key])


def test_hand_computed_case():
    # tau1 = [1, -2, 0.5, 0], tau2 = [-3, 1, 0.2, 0.1], k = 0.5: keep abs >= the 2nd smallest abs of each task
    # trimmed: [1, -2, .5, 0] and [-3, 1, .2, 0]; elected sign [-1, -1, 1, 0]
    pre = {"w": torch.zeros(4, dtype=torch.float64)}
    tvs = [{"w": torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)},
           {"w": torch.tensor([-3.0, 1.0, 0.2, 0.1], dtype=torch.float64)}]
    merged = weaving.merge(pre, tvs, "ties", k=0.5)
    assert_float64_close(merged["w"], torch.tensor([-3.0, -2.0, 0.35, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("majority", [1.0, -1.0])
def test_zero_elected_sign_uses_the_majority_of_all_elected_signs(majority):
    # element 2 cancels (+1, -1): its sign comes from the other elected signs, here in another tensor
    tvs = [{"a": torch.tensor([1.0, 2.0]) * majority, "b": torch.tensor([1.0])},
           {"a": torch.tensor([1.0, 2.0]) * majority, "b": torch.tensor([-1.0])}]
    tvs = [{k: v.double() for k, v in tv.items()} for tv in tvs]
    pre = {"a": torch.zeros(2, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)}
    merged = weaving.merge(pre, tvs, "ties", k=1.0)
    assert merged["a"].tolist() == [majority, 2 * majority]
    assert merged["b"].tolist() == [majority]  # the value whose sign is the majority's is kept


def test_threshold_is_global_over_all_tensors_of_a_task():
    flat = [{"w": torch.tensor([1.0, -2.0, 0.5, 0.0])}, {"w": torch.tensor([-3.0, 1.0, 0.2, 0.1])}]
    split = [{"a": tv["w"][:1], "b": tv["w"][1:]} for tv in flat]
    whole = weaving.merge({"w": torch.zeros(4)}, flat, "ties", k=0.5)["w"]
    parts = weaving.merge({"a": torch.zeros(1), "b": torch.zeros(3)}, split, "ties", k=0.5)
    torch.testing.assert_close(torch.cat([parts["a"], parts["b"]]), whole)


@pytest.mark.parametrize("k", [0.0, -0.1, 1.5])
def test_bad_k(inputs, k):
    with pytest.raises(ValueError, match="k is the kept fraction"):
        weaving.merge(*inputs, "ties", k=k)


@pytest.mark.parametrize("method", ["ties", "pcb"])
def test_blocked_passes_do_not_depend_on_the_block_size(method, monkeypatch):
    """The elementwise passes run over blocks of the stacked tensors; blocks of 7 entries (tails, one
    block across several rows of a matrix) give the same bits as one block per tensor (pcb, ties)."""
    from weaving.merging import tensor_ops
    from weaving.merging.methods import pcb as pcb_module

    g = torch.Generator().manual_seed(5)
    shapes = {"w": (13, 11), "b": (11,), "s": ()}
    pre = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    tvs = [{k: torch.randn(s, generator=g) for k, s in shapes.items()} for _ in range(3)]
    monkeypatch.setattr(tensor_ops, "CPU_BLOCK", 10**6)
    whole = weaving.merge(pre, tvs, method)
    monkeypatch.setattr(tensor_ops, "CPU_BLOCK", 7)
    monkeypatch.setattr(pcb_module, "SELECTION_BLOCK", 10)  # pcb's score selection: blocks of blocks
    blocked = weaving.merge(pre, tvs, method)
    for key in shapes:
        assert torch.equal(whole[key], blocked[key]), key


def with_zeros(task_vectors: list[dict[str, torch.Tensor]], count: int) -> list[dict[str, torch.Tensor]]:
    """Each task vector with `count` zero entries appended (as the official harnesses' text-side tensors)."""
    return [{**tv, "appended": torch.zeros(count, dtype=torch.float64)} for tv in task_vectors]


@pytest.mark.parametrize("k,zeros", [(0.2, 0), (0.2, 10), (0.2, 50), (0.2, 64), (0.5, 30), (0.5, 200), (1.0, 40)])
def test_zero_entries_equal_the_reference_on_task_vectors_with_appended_zeros(inputs, k, zeros):
    """zero_entries=Z is the official rule on the task vectors with Z zeros appended (81 entries each here:
    Z=50 moves the threshold down the sorted values, Z=64 and Z=200 take it into the zeros: keep everything)."""
    pretrained, tvs = inputs
    merged = weaving.merge(pretrained, tvs, "ties", k=k, zero_entries=zeros)
    expected = ties_reference(with_zeros(tvs, zeros), k)
    assert expected["appended"].abs().sum() == 0
    for key in pretrained:
        assert_float64_close(merged[key] - pretrained[key], expected[key])


def test_zero_entries_shift_the_threshold_index():
    # |x| = 1 2 3 4 5 (d=5), k=0.2: the threshold is the (5 - int(5*0.2)) = 4th smallest, 4. With 5 zeros
    # appended (d=10) it is the (10 - int(10*0.2)) = 8th smallest of 0 0 0 0 0 1 2 3 4 5, 3.
    pre = {"w": torch.zeros(5, dtype=torch.float64)}
    tvs = [{"w": torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0], dtype=torch.float64)}]
    assert weaving.merge(pre, tvs, "ties", k=0.2)["w"].tolist() == [0.0, 0.0, 0.0, -4.0, 5.0]
    assert weaving.merge(pre, tvs, "ties", k=0.2, zero_entries=5)["w"].tolist() == [0.0, 0.0, 3.0, -4.0, 5.0]


@pytest.mark.parametrize("zeros,message", [(-1, "whole number >= 0"), (2.5, "whole number"), (True, "whole number")])
def test_bad_zero_entries(inputs, zeros, message):
    with pytest.raises(ValueError, match=message):
        weaving.merge(*inputs, "ties", zero_entries=zeros)


def ties_per_tensor_reference(task_vectors: list[dict[str, torch.Tensor]], k: float) -> dict[str, torch.Tensor]:
    """mergekit's trim (per task and tensor of n entries: keep the max(1, int(n*k)) largest |x|, equal |x| in index
    order, from a stable sort), then the same elect (0 -> sign of the sum of all elected signs) and disjoint
    mean as the global rule. Plain Python."""
    sign = lambda x: (x > 0) - (x < 0)  # noqa: E731
    keys = list(task_vectors[0])
    trimmed = {}
    for key in keys:
        rows = []
        for tv in task_vectors:
            values = tv[key].reshape(-1).tolist()
            order = sorted(range(len(values)), key=lambda i: (-abs(values[i]), i))
            kept = set(order[:max(1, int(len(values) * k))])
            rows.append([v if i in kept else 0.0 for i, v in enumerate(values)])
        trimmed[key] = rows
    elected = {key: [sign(sum(column)) for column in zip(*rows)] for key, rows in trimmed.items()}
    majority = sign(sum(sum(signs) for signs in elected.values()))
    out = {}
    for key, rows in trimmed.items():
        merged = []
        for column, s in zip(zip(*rows), elected[key]):
            s = s if s != 0 else majority
            chosen = [v for v in column if v != 0 and sign(v) == s]
            merged.append(sum(chosen) / len(chosen) if chosen else 0.0)
        out[key] = torch.tensor(merged, dtype=torch.float64).reshape(task_vectors[0][key].shape)
    return out


@pytest.mark.parametrize("k", [0.2, 0.5, 1.0])
def test_per_tensor_matches_the_reference_in_float64(inputs, k):
    pretrained, tvs = inputs
    merged = weaving.merge(pretrained, tvs, "ties", k=k, per_tensor=True)
    expected = ties_per_tensor_reference(tvs, k)
    for key in pretrained:
        assert_float64_close(merged[key] - pretrained[key], expected[key])
    if k < 1.0:  # the two rules keep different entries on these inputs
        global_rule = weaving.merge(pretrained, tvs, "ties", k=k)
        assert any(not torch.equal(global_rule[key], merged[key]) for key in pretrained)


def test_per_tensor_keeps_exactly_int_n_k_entries_of_each_tensor_and_ties_go_by_index():
    """The threshold's ties: |x| = 2 2 2 1 (n=4), k=0.5 keeps int(2.0) = 2 entries: the first two 2s. The
    global rule keeps every |x| >= its threshold, here all three 2s. A tensor with int(n*k) = 0 keeps one."""
    pre = {"w": torch.zeros(4, dtype=torch.float64), "b": torch.zeros(3, dtype=torch.float64)}
    tvs = [{"w": torch.tensor([2.0, -2.0, 2.0, 1.0], dtype=torch.float64),
            "b": torch.tensor([1.0, -5.0, 5.0], dtype=torch.float64)}]
    assert weaving.merge(pre, tvs, "ties", k=0.5, per_tensor=True)["w"].tolist() == [2.0, -2.0, 0.0, 0.0]
    assert weaving.merge(pre, tvs, "ties", k=0.2, per_tensor=True)["b"].tolist() == [0.0, -5.0, 0.0]
    only_w = [{"w": tvs[0]["w"]}]
    assert weaving.merge({"w": pre["w"]}, only_w, "ties", k=0.5)["w"].tolist() == [2.0, -2.0, 2.0, 0.0]


def test_per_tensor_refuses_zero_entries_and_a_run_s_count_is_not_added(inputs):
    from weaving.merging.registry import with_recorded_zero_entries

    with pytest.raises(ValueError, match="with per_tensor each tensor is its own population"):
        weaving.merge(*inputs, "ties", per_tensor=True, zero_entries=5)
    assert with_recorded_zero_entries("ties", {"per_tensor": True}, 7) == {"per_tensor": True}
    assert with_recorded_zero_entries("ties", {}, 7) == {"zero_entries": 7}
