import pytest
import torch

from weaving.data.tasks import get_task
from weaving.evaluation.evaluate import Evaluator, Tally, column_tally, evenly_spaced, mean_accuracy
from weaving.evaluation.setups import Column
from weaving.models import build_head, load_clip


def test_column_tally_counts_only_the_columns_classes():
    preds, labels = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([0, 1, 3, 3, 1])
    assert column_tally(preds, labels, Column("all", "t")) == Tally(3, 5)
    assert column_tally(preds, labels, Column("part", "t", (1,))) == Tally(1, 2)
    assert column_tally(preds, labels, Column("none", "t", (7,))).total == 0


def test_mean_rules():
    tallies = {"a": Tally(1, 1), "b": Tally(0, 3)}
    assert mean_accuracy(tallies, "columns") == pytest.approx(0.5)
    assert mean_accuracy(tallies, "samples") == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown mean rule"):
        mean_accuracy(tallies, "median")


def test_evenly_spaced_is_deterministic_and_distinct():
    assert evenly_spaced(10, 3) == [0, 4, 9] or evenly_spaced(10, 3) == [0, 5, 9]
    assert evenly_spaced(4, 10) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="max_samples"):
        evenly_spaced(4, 0)


def test_evaluator_matches_a_plain_loop_and_restores_pretrained(head_cache):
    clip = load_clip("weaving-tiny-vit", None, seed=0)
    evaluator = Evaluator(clip, ["digits"], head_cache_dir=head_cache, max_samples=50, progress=False)
    column = Column("digits", "digits")
    before = evaluator.evaluate([column])["digits"]

    reference = load_clip("weaving-tiny-vit", None, seed=0)
    task = get_task("digits")
    head = build_head(reference, task.classnames, task.templates)
    dataset = evaluator.loaders["digits"].dataset
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        correct = int((head(reference.model.visual(images)).argmax(-1) == labels).sum())
    assert before == Tally(correct, 50)

    noisy = {k: v + 0.5 * torch.randn_like(v) for k, v in evaluator.pretrained.items()}
    evaluator.evaluate([column], noisy)
    assert evaluator.evaluate([column], None)["digits"] == before


def test_evaluator_rejects_a_task_it_did_not_load(head_cache):
    evaluator = Evaluator(load_clip("weaving-tiny-vit", None, seed=0), ["digits"], head_cache_dir=head_cache,
                          max_samples=8, progress=False)
    with pytest.raises(ValueError, match="was not loaded"):
        evaluator.evaluate([Column("digits_rot90", "digits_rot90")])
