"""CheckpointModule: `weaving validate` scores one checkpoint, in any format, without a merge."""

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import save_file

from weaving.data.datamodule import MultiTaskDataModule
from weaving.evaluation import report, setups
from weaving.evaluation.checkpoint_module import CheckpointModule
from weaving.models import load_clip

from .direct import direct_accuracies

TASKS = ["digits", "digits_rot90"]


def validate(module):
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.validate(module, MultiTaskDataModule(TASKS, batch_size=256), verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """theta_pre (full open_clip file) and a fine-tuned image encoder alone (visual.* only)."""
    root = tmp_path_factory.mktemp("checkpoints")
    state = load_clip("weaving-tiny-vit", None, seed=3).model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, root / "pre.safetensors", {"model": "weaving-tiny-vit"})
    generator = torch.Generator().manual_seed(0)
    tuned = {k: v + 0.2 * torch.randn(v.shape, generator=generator) for k, v in state.items() if k.startswith("visual.")}
    save_file(tuned, root / "visual_ft.safetensors")
    return root, state, tuned


def expected_accuracy(state, head_cache):
    clip = load_clip("weaving-tiny-vit", None, seed=3)
    clip.model.load_state_dict(state)
    return direct_accuracies(clip, None, [setups.Column(t, t) for t in TASKS], head_cache=head_cache)


def test_fine_tuned_encoder_with_its_pretrained_and_the_exports_agree(files, tmp_path):
    root, state, tuned = files
    full = {**state, **tuned}
    want = expected_accuracy(full, str(tmp_path / "eval_heads"))
    assert len(set(want.values())) > 1 or 0 < want["digits"] < 1  # a score that can be wrong
    module = CheckpointModule(str(root / "visual_ft.safetensors"), pretrained=str(root / "pre.safetensors"),
                              head_cache_dir=str(tmp_path / "heads"), output_dir=str(tmp_path / "out"),
                              export=str(tmp_path / "hf"), export_format="hf")
    metrics = validate(module)
    for task in TASKS:
        assert metrics[f"val/acc/{task}"] == pytest.approx(want[task])
    assert metrics["val/acc/mean"] == pytest.approx(sum(want.values()) / len(want))
    assert report.load_results(tmp_path / "out")["rows"][0]["method"] == "checkpoint"
    # the exported Hugging Face folder scores the same
    again = validate(CheckpointModule(str(tmp_path / "hf"), model="weaving-tiny-vit", head_cache_dir=str(tmp_path / "heads2")))
    for task in TASKS:
        assert again[f"val/acc/{task}"] == pytest.approx(want[task], abs=1e-3)


def test_theta_pre_alone_and_missing_parts(files, tmp_path):
    root, state, _ = files
    want = expected_accuracy(state, str(tmp_path / "eval_heads"))
    metrics = validate(CheckpointModule(str(root / "pre.safetensors"), head_cache_dir=str(tmp_path / "heads")))
    assert metrics["val/acc/digits"] == pytest.approx(want["digits"])
    with pytest.raises(ValueError, match="lacks a text tower.*pretrained"):
        CheckpointModule(str(root / "visual_ft.safetensors"), model="weaving-tiny-vit")


def test_merge_module_export_scores_the_same_as_a_checkpoint(domain_run, tmp_path):
    from weaving.evaluation.merge_module import MergeModule
    from weaving.io.safetensors import read_metadata

    out = tmp_path / "merged.safetensors"
    module = MergeModule(str(domain_run), method="ties", lam=0.8, tasks=["digits", "digits_rot90"],
                         head_cache_dir=str(tmp_path / "heads"), export=str(out))
    merged = validate(module)
    assert read_metadata(out)["model"] == "weaving-tiny-vit" and '"method": "ties"' in read_metadata(out)["weaving_recipe"]
    scored = validate(CheckpointModule(str(out), head_cache_dir=str(tmp_path / "heads2")))
    for task in TASKS:
        assert scored[f"val/acc/{task}"] == pytest.approx(merged[f"val/acc/{task}"])
    with pytest.raises(ValueError, match="one merged model"):
        MergeModule(str(domain_run), setup="domain_generalization", export=str(tmp_path / "x.safetensors"))
