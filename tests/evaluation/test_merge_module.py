import lightning.pytorch as pl
import pytest
import torch

from weaving.data.datamodule import MultiTaskDataModule
from weaving.evaluation import report, setups
from weaving.evaluation.comparison import run_comparison
from weaving.evaluation.merge_module import MergeModule
from weaving.io.runs import read_run
from weaving.merging.task_vectors import load_task_vector
from weaving.models import load_clip, visual_state_dict

from .direct import add_scaled, direct_accuracies

DOMAINS = ["digits", "digits_rot90", "digits_inverted"]


def validate(module, tasks):
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    data = MultiTaskDataModule(tasks, batch_size=128)
    trainer.validate(module, data, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_one_task_at_lam_1_reproduces_the_fine_tuned_model(domain_run, head_cache):
    module = MergeModule(str(domain_run), method="task_arithmetic", lam=1.0, tasks=["digits"], head_cache_dir=head_cache)
    metrics = validate(module, ["digits"])
    tau = load_task_vector(domain_run / "task_vectors" / "digits.safetensors")
    clip = load_clip("weaving-tiny-vit", None, seed=0)
    finetuned = add_scaled(visual_state_dict(clip.model), tau)
    merged = visual_state_dict(module.clip_model)
    assert all(torch.allclose(merged[k], finetuned[k], atol=1e-6) for k in finetuned)
    expected = direct_accuracies(clip, finetuned, [setups.Column("digits", "digits")], head_cache=head_cache)["digits"]
    assert metrics["val/acc/digits"] == pytest.approx(expected)
    assert metrics["val/acc/mean"] == pytest.approx(expected)


@pytest.mark.parametrize("weave", [False, True])
def test_domain_generalization_agrees_with_the_comparison(domain_run, head_cache, weave):
    module = MergeModule(str(domain_run), method="ties", weave=weave, lambdas="0.5:1.0:0.5",
                         setup="domain_generalization", head_cache_dir=head_cache)
    metrics = validate(module, DOMAINS)
    results, _ = run_comparison(domain_run, setup="domain_generalization", methods=["ties"], lambdas="0.5:1.0:0.5",
                                rows=["lam", "weave"], analysis=[], head_cache_dir=head_cache)
    row = results["rows"][int(weave)]
    assert row["weave"] is weave
    for task in DOMAINS:
        assert metrics[f"val/acc/{task}"] == pytest.approx(row["accuracy"][task])
    assert metrics["val/acc/mean"] == pytest.approx(row["mean"])


def test_continual_reports_the_full_test_set_and_each_part(continual_run, head_cache, tmp_path):
    module = MergeModule(str(continual_run), method="magmax", setup="continual", head_cache_dir=head_cache,
                         output_dir=str(tmp_path))
    metrics = validate(module, ["digits"])
    parts = [f"digits_part{i}of3" for i in (1, 2, 3)]
    assert {f"val/acc/{p}" for p in parts} <= set(metrics)
    assert metrics["val/acc/mean"] == pytest.approx(metrics["val/acc/digits"])  # over samples = full test set
    results, _ = run_comparison(continual_run, setup="continual", methods=["magmax"], rows=["lam"], analysis=[],
                                head_cache_dir=head_cache)
    assert metrics["val/acc/mean"] == pytest.approx(results["rows"][0]["mean"])
    written = report.load_results(tmp_path)
    assert written["tasks"] == parts and written["rows"][0]["method"] == "magmax"
    assert written["rows"][0]["mean"] == pytest.approx(metrics["val/acc/mean"])


def test_configuration_errors_are_one_line(domain_run, head_cache, tmp_path):
    with pytest.raises(ValueError, match="unknown merge method 'tie'"):
        MergeModule(str(domain_run), method="tie")
    with pytest.raises(FileNotFoundError, match="weaving fit"):
        MergeModule(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="no task vectors for"):
        MergeModule(str(domain_run), tasks=["digits_mirrored"])
    with pytest.raises(ValueError, match="unknown setup"):
        MergeModule(str(domain_run), setup="multitask")
    module = MergeModule(str(domain_run), tasks=["digits", "digits_rot90"], setup="domain_generalization",
                         head_cache_dir=head_cache)
    with pytest.raises(ValueError, match="no task vectors for \\['digits_inverted'\\]"):
        validate(module, DOMAINS)
    module = MergeModule(str(domain_run), setup="continual", head_cache_dir=head_cache)
    with pytest.raises(ValueError, match="digits_part<i>of<n>"):
        validate(module, ["digits"])


def test_each_column_and_the_mean_are_logged_once(domain_run, head_cache):
    module = MergeModule(str(domain_run), method="task_arithmetic", lam=0.5, head_cache_dir=head_cache)
    metrics = validate(module, DOMAINS)
    assert sorted(metrics) == sorted([f"val/acc/{t}" for t in DOMAINS] + ["val/acc/mean"])
    assert metrics["val/acc/mean"] == pytest.approx(sum(metrics[f"val/acc/{t}"] for t in DOMAINS) / 3)
    assert module.last_accuracy["mean"] == pytest.approx(metrics["val/acc/mean"])


def test_without_a_datamodule_it_reads_the_test_sets_itself(domain_run, head_cache):
    with_data = validate(MergeModule(str(domain_run), method="ties", lam=0.8, head_cache_dir=head_cache), DOMAINS)
    module = MergeModule(str(domain_run), method="ties", lam=0.8, head_cache_dir=head_cache)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.validate(module, verbose=False)
    assert {k: float(v) for k, v in trainer.callback_metrics.items()} == with_data


def test_validate_from_the_decoded_cache_gives_the_same_numbers(domain_run, head_cache, tmp_path):
    module = MergeModule(str(domain_run), method="ties", lam=0.8, head_cache_dir=head_cache)
    plain = validate(module, DOMAINS)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    data = MultiTaskDataModule(DOMAINS, batch_size=128, decoded_cache=True, cache_dir=str(tmp_path))
    trainer.validate(module, data, verbose=False)
    assert {k: float(v) for k, v in trainer.callback_metrics.items()} == plain
    assert len(list(tmp_path.iterdir())) == len(DOMAINS)


def test_weaving_over_a_grid_of_hyper_parameters(domain_run, head_cache):
    import weaving

    module = MergeModule(str(domain_run), method="ties", weave=True, lambdas=[0.5, 1.0], grid={"k": [0.3, 0.6]},
                         head_cache_dir=head_cache)
    validate(module, ["digits"])
    members = list(read_run(domain_run).paths.values())
    zeros = read_run(domain_run).zero_entries  # the run's population, which the module uses by default
    expected = weaving.weave(module.theta_pre, members, "ties", [0.5, 1.0], grid={"k": [0.3, 0.6]}, zero_entries=zeros)
    single = weaving.weave(module.theta_pre, members, "ties", [0.5, 1.0], k=0.3, zero_entries=zeros)
    merged = visual_state_dict(module.clip_model)
    assert all(torch.allclose(merged[k], expected[k], atol=1e-6) for k in expected)
    assert not all(torch.allclose(merged[k], single[k], atol=1e-6) for k in expected)
    assert module.lambdas == [0.5, 1.0]
    with pytest.raises(ValueError, match="has no hyper-parameter 'beta'"):
        MergeModule(str(domain_run), method="ties", weave=True, grid={"beta": [0.1]}, head_cache_dir=head_cache)


def test_a_run_records_the_population_ties_and_pcb_count_by_default(domain_run, head_cache):
    """`weaving fit` records the official harness's zero-delta entries in index.json; the run's merges pass
    them to ties and pcb unless the config sets zero_entries (as `weaving merge` does)."""
    recorded = read_run(str(domain_run)).zero_entries
    assert recorded > 0
    module = MergeModule(str(domain_run), method="ties", head_cache_dir=head_cache)
    assert module.method_args["ties"] == {"zero_entries": recorded}
    assert module.hyperparameters["ties"] == {"k": 0.2, "zero_entries": recorded, "per_tensor": False}
    module = MergeModule(str(domain_run), method="pcb", method_args={"zero_entries": 0}, head_cache_dir=head_cache)
    assert module.hyperparameters["pcb"]["zero_entries"] == 0
    module = MergeModule(str(domain_run), method="magmax", head_cache_dir=head_cache)
    assert module.method_args["magmax"] == {}
