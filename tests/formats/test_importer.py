"""`weaving import` as a user types it: the run layout, and one line with nothing written for bad inputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from weaving.cli import main
from weaving.io.runs import read_run
from weaving.formats.importer import state_dict_hash
from weaving.io.safetensors import read_metadata

from .conftest import hf_configs


def run_cli(args, capsys):
    """`weaving ...` in-process: (exit code, last stderr line; progress bars come before it)."""
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    lines = capsys.readouterr().err.strip().replace("\r", "\n").splitlines()
    return code, lines[-1] if lines else ""


def test_import_writes_the_run_layout(tiny_hf, tmp_path, capsys):
    root, pre, tuned, name = tiny_hf
    run = tmp_path / "run"
    shutil.copytree(root / "ft", tmp_path / "ft_copy")  # one source twice is refused: a copy stands for task B
    code, err = run_cli(["import", "--pretrained", str(root / "pre"), "--finetuned", f"taskA={root / 'ft'}",
                         f"taskB={tmp_path / 'ft_copy'}", "--output", str(run)], capsys)
    assert code == 0, err
    index = json.loads((run / "task_vectors" / "index.json").read_text())
    theta_pre = load_file(run / "pretrained.safetensors")
    assert index["model"] == name and index["tasks"] == ["taskA", "taskB"]
    assert index["pretrained_file"] == "pretrained.safetensors" and index["pretrained_hash"] == state_dict_hash(theta_pre)
    assert [e["source"] for e in index["task_vectors"]] == [str(root / "ft"), str(tmp_path / "ft_copy")]
    delta = load_file(run / "task_vectors" / "taskA.safetensors")
    assert set(delta) == {k for k in theta_pre if k.startswith("visual.")}
    assert torch.count_nonzero(delta["visual.proj"]) == 0  # a CLIPVisionModel: projection taken from theta_pre
    conv = tuned.state_dict()["embeddings.patch_embedding.weight"]
    torch.testing.assert_close(delta["visual.conv1.weight"], conv - theta_pre["visual.conv1.weight"])
    files = read_run(str(run))  # what `weaving validate` / MergeModule reads
    assert list(files.paths) == ["taskA", "taskB"] and files.model == name
    from weaving.models.clip import harness_zero_entries

    assert index["zero_entries"] == files.zero_entries == harness_zero_entries(theta_pre) > 0
    assert files.pretrained == str((run / "pretrained.safetensors").resolve())
    assert state_dict_hash(theta_pre) != state_dict_hash({**theta_pre, "logit_scale": theta_pre["logit_scale"] + 1})


@pytest.fixture(scope="module")
def bad_inputs(tiny_hf, tmp_path_factory):
    import transformers

    root = tmp_path_factory.mktemp("bad")
    other_full, other_vision = hf_configs(width=32, layers=1, patch=8, image=32, heads=2, embed=16)
    transformers.CLIPVisionModel(other_vision).save_pretrained(root / "other_arch")
    _, tiny_vision = hf_configs(width=64, layers=2, patch=8, image=32, heads=2, embed=16)
    transformers.CLIPVisionModel(tiny_vision).save_pretrained(root / "vision_only")
    transformers.CLIPTextModel(other_full.text_config).save_pretrained(root / "text_only")
    save_file({"text_model.embeddings.token_embedding.weight": torch.zeros(4, 2)}, root / "text_only.safetensors")
    (root / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": {\"dtype\"")
    (root / "mystery.bin").write_bytes(b"not a checkpoint at all")
    (root / "empty_folder").mkdir()
    save_file({"visual.conv1.weight": torch.zeros(1)}, root / "run_task_vector.safetensors",
              metadata={"format": "weaving.task_vector/1", "task": "t"})
    save_file({"visual.conv1.weight": torch.zeros(1), "vision_model.pre_layrnorm.weight": torch.zeros(1)},
              root / "mixed.safetensors")
    return root


@pytest.mark.parametrize("case, pretrained, finetuned, message", [
    ("wrong architecture", "pre", "other_arch", "architecture .* differs from the pretrained"),
    ("vision model without projection as theta_pre", "vision_only", "ft", "without its projection"),
    ("text-only fine-tuned folder", "pre", "text_only", "text-only"),
    ("text-only fine-tuned file", "pre", "text_only.safetensors", "without their config.json|no image encoder"),
    ("corrupt file", "pre", "corrupt.safetensors", "corrupt safetensors"),
    ("unknown format", "pre", "mystery.bin", "unknown format.*--format"),
    ("unknown folder", "pre", "empty_folder", "unknown format.*--format"),
    ("ambiguous names", "pre", "mixed.safetensors", "--format"),
    ("missing file", "pre", "nowhere.pt", "no such file"),
    ("a run's task vector as fine-tuned", "pre", "run_task_vector.safetensors",
     "its metadata says it is a task vector .*, not fine-tuned weights; give it with --task_vectors"),
])
def test_bad_input_is_one_line_and_writes_nothing(case, pretrained, finetuned, message, tiny_hf, bad_inputs,
                                                   tmp_path, capsys):
    root = tiny_hf[0]
    where = {"pre": root / "pre", "ft": root / "ft"}
    source = lambda key: str(where.get(key, bad_inputs / key))  # noqa: E731
    run = tmp_path / "run"
    code, err = run_cli(["import", "--pretrained", source(pretrained), "--finetuned", f"t={source(finetuned)}",
                         "--output", str(run)], capsys)
    assert code == 2 and err.startswith("weaving import: error: "), (case, err)
    assert __import__("re").search(message, err), (case, err)
    assert not run.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]  # no temporary folder left


def test_existing_output_is_refused_before_work(tiny_hf, tmp_path, capsys):
    root = tiny_hf[0]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    code, err = run_cli(["import", "--pretrained", "/nonexistent", "--finetuned", "t=/nonexistent",
                         "--output", str(tmp_path / "run")], capsys)
    assert code == 2 and "already exists" in err
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


def test_forced_format_must_fit(tiny_hf, tmp_path, capsys):
    root = tiny_hf[0]
    code, err = run_cli(["import", "--pretrained", str(root / "pre"), "--finetuned", f"t={root / 'ft'}",
                         "--format", "lineage", "--output", str(tmp_path / "run")], capsys)
    assert code == 2 and "lineage" in err and not (tmp_path / "run").exists()


def test_validate_takes_an_imported_run_directly(tmp_path):
    """MergeModule reads the run (model and theta_pre from it) and scores what merge writes."""
    import lightning.pytorch as pl

    import weaving
    from weaving.data.datamodule import MultiTaskDataModule
    from weaving.evaluation.merge_module import MergeModule
    from weaving.merging.task_vectors import load_task_vector
    from weaving.models import visual_state_dict

    import transformers

    from .conftest import TINY, register_config

    text = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}  # CLIP's tokenizer
    register_config(tmp_path, "test-tiny-hf-fullvocab-quickgelu", **TINY, text=text)
    full_cfg, vision_cfg = hf_configs(**TINY, text=text)
    torch.manual_seed(2)
    transformers.CLIPModel(full_cfg).save_pretrained(tmp_path / "pre")
    transformers.CLIPVisionModel(vision_cfg).save_pretrained(tmp_path / "ft")
    run = tmp_path / "run"
    main(["import", "--pretrained", str(tmp_path / "pre"), "--finetuned", f"a={tmp_path / 'ft'}", "--output", str(run)])
    module = MergeModule(str(run), method="task_arithmetic", lam=0.5)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, MultiTaskDataModule(["digits"], batch_size=256), verbose=False)
    want = weaving.merge(load_task_vector(run / "pretrained.safetensors"), [run / "task_vectors" / "a.safetensors"],
                         "task_arithmetic", lam=0.5)
    got = visual_state_dict(module.clip_model)
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in got)
    assert 0.0 <= float(trainer.callback_metrics["val/acc/mean"]) <= 1.0


def test_one_source_twice_is_refused_before_work(tiny_hf, tmp_path, capsys):
    root = tiny_hf[0]
    code, err = run_cli(["import", "--pretrained", str(root / "pre"), "--finetuned", f"a={root / 'ft'}",
                         f"b={root / 'ft'}/", "--output", str(tmp_path / "run")], capsys)
    assert code == 2 and err.endswith("the same checkpoint as a; give each once") and not (tmp_path / "run").exists()


def test_a_clip_size_open_clip_does_not_ship_imports_and_exports_without_python(tmp_path, capsys):
    """A CLIP whose widths open_clip has no config for is registered from its config.json on the fly; the
    run carries that config, so a later `weaving merge --format open_clip` (a new process) knows the model,
    and the merged folder loads with `local-dir:`."""
    import subprocess
    import sys

    import open_clip
    import transformers

    full, vision = hf_configs(width=48, layers=1, patch=8, image=32, heads=2, embed=24,
                              text={"context_length": 77, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1})
    torch.manual_seed(1)
    pre = transformers.CLIPModel(full).eval()
    pre.save_pretrained(tmp_path / "pre")
    tuned = transformers.CLIPVisionModel(vision).eval()
    tuned.load_state_dict(pre.vision_model.state_dict())
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.01 * torch.randn_like(p))
    tuned.save_pretrained(tmp_path / "ft")
    code, err = run_cli(["import", "--pretrained", str(tmp_path / "pre"), "--finetuned", f"a={tmp_path / 'ft'}",
                         "--output", str(tmp_path / "run")], capsys)
    assert code == 0, err
    name = json.loads((tmp_path / "run" / "task_vectors" / "index.json").read_text())["model"]
    assert name.startswith("ViT-w48-l1-p8-i32-e24-quickgelu-")
    merged = subprocess.run([sys.executable, "-m", "weaving", "merge", "--pretrained", str(tmp_path / "run"),
                             "--task_vectors", str(tmp_path / "run"), "--method", "task_arithmetic", "--format",
                             "open_clip", "--output", str(tmp_path / "merged")], capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    model = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'merged'}")[0].eval()
    theta = load_file(tmp_path / "run" / "pretrained.safetensors")
    delta = load_file(tmp_path / "run" / "task_vectors" / "a.safetensors")
    state = model.state_dict()
    assert all(torch.equal(state[k], theta[k] + delta[k]) for k in delta)
    # the scoring job (`weaving validate`) in a new process builds the same model from the run alone
    code = ("import sys; from weaving.evaluation import ComparisonModule; "
            "m = ComparisonModule(task_vectors=sys.argv[1], methods=['task_arithmetic'], rows=['lam'], tasks=['digits'], "
            "plots=False); print(m.clip_model.visual.conv1.weight.shape[0], m.hyperparameters)")
    scored = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True)
    assert scored.returncode == 0, scored.stderr
    assert scored.stdout.split()[0] == "48"
