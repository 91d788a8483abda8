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
    assert evenly_spaced(10, 3) == [0, 4, 9]  # linspace gives 4.5, rounded half to even
    assert evenly_spaced(11, 3) == [0, 5, 10]
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
    dataset = task.dataset("data", "test", reference.eval_transform)
    subset = evenly_spaced(len(dataset), 50)
    images = torch.stack([dataset[i][0] for i in subset])
    labels = torch.tensor([dataset[i][1] for i in subset])
    with torch.no_grad():
        correct = int((head(reference.model.visual(images)).argmax(-1) == labels).sum())
    assert before == Tally(correct, 50)

    noisy = {k: v + 0.5 * torch.randn_like(v) for k, v in evaluator.pretrained.items()}
    evaluator.evaluate([column], noisy)
    assert evaluator.evaluate([column], None)["digits"] == before


def test_evaluator_rejects_a_task_it_did_not_load(head_cache):
    evaluator = Evaluator(load_clip("weaving-tiny-vit", None, seed=0), ["digits"], head_cache_dir=head_cache,
                          max_samples=8, progress=False)
    with pytest.raises(ValueError, match="not loaded"):
        evaluator.evaluate([Column("digits_rot90", "digits_rot90")])


def _separately(weights, columns, head_cache):
    """Reference: a fresh model per weight set, the test set decoded again through a plain DataLoader."""
    from torch.utils.data import DataLoader

    from weaving.models.clip import load_visual_state_dict

    clip = load_clip("weaving-tiny-vit", None, seed=0)
    if weights is not None:
        load_visual_state_dict(clip.model, weights)
    clip.model.eval()
    tallies = {}
    for task in dict.fromkeys(c.task for c in columns):
        spec = get_task(task)
        head = build_head(clip, spec.classnames, spec.templates, cache_dir=head_cache, task=spec.name)
        preds, labels = [], []
        with torch.no_grad():
            for images, targets in DataLoader(spec.dataset("data", "test", clip.eval_transform), batch_size=100):
                preds.append(head(clip.model.visual(images)).argmax(-1))
                labels.append(targets)
        preds, labels = torch.cat(preds), torch.cat(labels)
        for column in columns:
            if column.task == task:
                tallies[column.name] = column_tally(preds, labels, column)
    return tallies


def test_one_pass_gives_the_accuracies_of_evaluating_each_merged_model_separately(domain_run, head_cache):
    import weaving
    from weaving.evaluation.compare import add_scaled
    from weaving.evaluation.evaluate import Request, WeightSet
    from weaving.io.runs import read_run

    paths = list(read_run(domain_run).paths.values())
    evaluator = Evaluator(load_clip("weaving-tiny-vit", None, seed=0), ["digits", "digits_rot90"], batch_size=64,
                          head_cache_dir=head_cache, progress=False)
    pre = evaluator.pretrained
    merged = weaving.merge(pre, paths, "ties", lam=1.0)
    g = {k: merged[k] - pre[k] for k in pre}
    woven = weaving.weave(pre, paths, "magmax", "0.5:1.5:0.5")
    evaluator.bank.add("g", g)
    evaluator.bank.add("woven", woven, full=True)
    columns = (Column("digits", "digits"), Column("low", "digits", (0, 1, 2, 3, 4)), Column("digits_rot90", "digits_rot90"))
    lambdas = [0.3, 0.8, 1.0, 1.7]
    requests = [Request(WeightSet("g", lam), columns) for lam in lambdas]
    requests += [Request(WeightSet(), columns), Request(WeightSet("woven"), columns[1:])]
    one_pass = evaluator.score(requests)
    references = [add_scaled(pre, g, lam) for lam in lambdas] + [None, woven]
    for request, weights, tallies in zip(requests, references, one_pass):
        assert tallies == _separately(weights, request.columns, head_cache)
    assert len({tuple(t.values()) for t in one_pass}) > 3  # the weight sets really differ
    assert all(t["digits"].total == len(get_task("digits").dataset("data", "test")) for t in one_pass[:5])


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
