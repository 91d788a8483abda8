import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from weaving.evaluation.evaluate import (EvalSet, ShardSampler, Tally, class_counts, column_tally, evenly_spaced,
                                         padding_mask)
from weaving.evaluation.setups import Column, mean_accuracy
from weaving.models import load_clip


def test_class_counts_and_the_columns_that_follow_from_them():
    preds, labels = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([0, 1, 3, 3, 1])
    counts = class_counts(preds, labels, 5)
    assert counts.tolist() == [[1, 1], [1, 2], [0, 0], [1, 2], [0, 0]]  # per class: [correct, total]
    assert column_tally(counts, Column("all", "t")) == Tally(3, 5)
    assert column_tally(counts, Column("part", "t", (1,))) == Tally(1, 2)
    assert column_tally(counts, Column("none", "t", (4,))).total == 0
    valid = torch.tensor([True, True, True, False, False])  # a rank's padding is not counted
    assert column_tally(class_counts(preds, labels, 5, valid), Column("all", "t")) == Tally(2, 3)
    with pytest.raises(ValueError, match="outside the head's 3 classes"):
        class_counts(preds, labels, 3)
    # the same numbers as torchmetrics' per-class stat scores (true positives, support)
    from torchmetrics.classification import MulticlassStatScores

    scores = MulticlassStatScores(num_classes=5, average=None)(preds, labels)
    assert counts[:, 0].tolist() == scores[:, 0].tolist() and counts[:, 1].tolist() == scores[:, 4].tolist()


def test_mean_rules():
    tallies = {"a": Tally(1, 1), "b": Tally(0, 3)}
    assert mean_accuracy(tallies, "columns") == pytest.approx(0.5)
    assert mean_accuracy(tallies, "samples") == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown mean rule"):
        mean_accuracy(tallies, "median")


def test_evenly_spaced_is_deterministic_and_distinct():
    assert evenly_spaced(10, 3) == [0, 4, 9]  # linspace gives 4.5, rounded half to even
    assert evenly_spaced(11, 3) == [0, 5, 10]
    assert evenly_spaced(4, 10) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="max_samples"):
        evenly_spaced(4, 0)


@pytest.mark.parametrize("n, ranks, batch", [(10, 3, 2), (7, 2, 4), (2, 3, 1), (8, 4, 8)])
def test_shards_cover_every_sample_once_in_equal_batch_counts(n, ranks, batch):
    seen, batches = [], set()
    for rank in range(ranks):
        sampler = ShardSampler(n, batch, ranks, rank)
        shard = list(sampler)
        batches.add(len(shard))
        assert len(shard) == len(sampler)
        seen += [i for b in shard for i in b if i >= 0]
    assert sorted(seen) == list(range(n)) and len(batches) == 1  # no sample twice; every rank as many batches


def test_padding_of_lightnings_distributed_sampler_is_masked():
    n, ranks = 7, 3
    counted = []
    for rank in range(ranks):
        sampler = DistributedSampler(range(n), num_replicas=ranks, rank=rank, shuffle=False)
        indices = list(sampler)
        mask = torch.cat([padding_mask(sampler, start, 2, n)[: len(indices[start: start + 2])]
                          for start in range(0, len(indices), 2)])
        counted += [i for i, keep in zip(indices, mask.tolist()) if keep]
    assert sorted(counted) == list(range(n))
    with pytest.raises(ValueError, match="must not be shuffled"):
        padding_mask(DistributedSampler(range(n), num_replicas=2, rank=0, shuffle=True), 0, 2, n)


def test_eval_set_marks_padding():
    class Streamed:
        dataset = [(torch.full((1,), float(i)), i % 2) for i in range(3)]

        def __len__(self):
            return 3

    images, labels, valid = EvalSet(Streamed())[[0, 2, -1 - 1]]
    assert images[:, 0].tolist() == [0.0, 2.0, 1.0] and labels.tolist() == [0, 0, 1]
    assert valid.tolist() == [True, True, False]


def test_weight_bank_builds_weights_in_place():
    from weaving.evaluation.evaluate import WeightBank, WeightSet
    from weaving.models.clip import visual_state_dict

    model = load_clip("weaving-tiny-vit", None, seed=0).model
    bank = WeightBank(model)
    pre = visual_state_dict(model)
    g = {k: torch.randn_like(v) for k, v in pre.items()}
    bank.add("g", g)
    pointers = {k: v.data_ptr() for k, v in model.visual.state_dict().items()}
    bank.load(WeightSet("g", 0.7))
    loaded = visual_state_dict(model)
    assert all(torch.equal(loaded[k], torch.add(pre[k], g[k], alpha=0.7)) for k in pre)
    assert all(v.data_ptr() == pointers[k] for k, v in model.visual.state_dict().items())
    bank.add("full", g, full=True)
    bank.load(WeightSet("full"))
    assert all(torch.equal(visual_state_dict(model)[k], g[k]) for k in pre)
    bank.load(WeightSet())
    assert all(torch.equal(visual_state_dict(model)[k], pre[k]) for k in pre)
    with pytest.raises(ValueError, match="no weights stored under 'h'"):
        bank.load(WeightSet("h"))
    key = next(iter(g))
    with pytest.raises(ValueError, match="shape"):
        bank.add("bad", {**g, key: g[key].reshape(-1)[:1]})
    with pytest.raises(ValueError, match="another model"):
        bank.add("bad", {key: g[key]})
