"""The task_vectors lineage's pickled ImageEncoder / ClassificationHead, from classes the importer cannot import."""

from __future__ import annotations

import sys
import types

import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file

from weaving.formats import read_checkpoint
from weaving.formats.importer import import_run

MODULE = "standin_task_vectors.modeling"


def _standin_classes():
    """ImageEncoder / ClassificationHead as the task_vectors code defines them, in a module that is then removed."""
    module = types.ModuleType(MODULE)

    class ImageEncoder(torch.nn.Module):
        def __init__(self, model_name: str, seed: int):
            super().__init__()
            torch.manual_seed(seed)
            self.model, self.train_preprocess, self.val_preprocess = open_clip.create_model_and_transforms(model_name)
            self.cache_dir = "/nonexistent"
            delattr(self.model, "transformer")  # keep_lang=False, as in task_vectors

        def forward(self, images):
            return self.model.encode_image(images)

    class ClassificationHead(torch.nn.Linear):
        def __init__(self, normalize, weights):
            output_size, input_size = weights.shape
            super().__init__(input_size, output_size)
            self.normalize = normalize
            self.weight = torch.nn.Parameter(weights.clone())
            self.bias = torch.nn.Parameter(torch.zeros_like(self.bias))

    for cls in (ImageEncoder, ClassificationHead):
        cls.__module__ = MODULE
        cls.__qualname__ = cls.__name__
        setattr(module, cls.__name__, cls)
    return module, ImageEncoder, ClassificationHead


@pytest.fixture(scope="module")
def lineage_files(tmp_path_factory):
    import weaving.models  # noqa: F401  (registers weaving-tiny-vit)

    root = tmp_path_factory.mktemp("lineage")
    module, ImageEncoder, ClassificationHead = _standin_classes()
    parent = types.ModuleType(MODULE.split(".")[0])
    parent.modeling = module
    sys.modules[parent.__name__], sys.modules[MODULE] = parent, module
    try:
        zeroshot = ImageEncoder("weaving-tiny-vit", seed=0)
        finetuned = ImageEncoder("weaving-tiny-vit", seed=0)
        with torch.no_grad():
            for p in finetuned.model.visual.parameters():
                p.add_(0.05 * torch.randn_like(p))
        torch.save(zeroshot, root / "zeroshot.pt")
        torch.save(finetuned, root / "finetuned.pt")
        head = ClassificationHead(True, torch.randn(10, zeroshot.model.visual.proj.shape[1]))
        torch.save(head, root / "head_mnist.pt")
    finally:
        del sys.modules[MODULE], sys.modules[parent.__name__]
    full = open_clip.create_model("weaving-tiny-vit")
    full.load_state_dict({**full.state_dict(), **{k: v for k, v in zeroshot.model.state_dict().items()}})
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, root / "full.safetensors")
    return root, zeroshot.eval(), finetuned.eval(), head


def test_pickled_image_encoder_reads_as_open_clip_state(lineage_files):
    root, zeroshot, _, _ = lineage_files
    checkpoint = read_checkpoint(str(root / "finetuned.pt"))
    assert checkpoint.format == "lineage" and checkpoint.notes["class"] == f"{MODULE}.ImageEncoder"
    assert checkpoint.arch["quick_gelu"] is False  # torch's GELU modules, read from the records
    assert checkpoint.has_image_encoder and not checkpoint.has_text_tower  # the text transformer was deleted
    assert MODULE not in sys.modules and MODULE.split(".")[0] not in sys.modules


def test_lineage_round_trip_gives_the_fine_tuned_features(lineage_files, tmp_path):
    root, zeroshot, finetuned, head = lineage_files
    run = import_run(str(root / "zeroshot.pt"), {"mnist": str(root / "finetuned.pt")}, tmp_path / "run",
                     text_from=str(root / "full.safetensors"), heads={"mnist": str(root / "head_mnist.pt")},
                     progress=False)
    model = open_clip.create_model("weaving-tiny-vit", pretrained=str(run / "pretrained.safetensors")).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), zeroshot(images), rtol=0, atol=0)
        delta = load_file(run / "task_vectors" / "mnist.safetensors")
        state = model.state_dict()
        model.load_state_dict({k: state[k] + delta[k] if k in delta else state[k] for k in state})
        torch.testing.assert_close(model.encode_image(images), finetuned(images), rtol=1e-5, atol=1e-6)
    imported = load_file(run / "heads" / "mnist.imported.safetensors")["weight"]
    assert torch.equal(imported, head.weight.detach())


def test_imported_head_is_what_build_head_returns(lineage_files, tmp_path):
    from weaving.data.tasks import get_task
    from weaving.models import build_head, load_clip

    root, _, _, head = lineage_files
    run = import_run(str(root / "zeroshot.pt"), {"mnist": str(root / "finetuned.pt")}, tmp_path / "run",
                     text_from=str(root / "full.safetensors"), heads={"mnist": str(root / "head_mnist.pt")},
                     progress=False)
    clip = load_clip("weaving-tiny-vit", str(run / "pretrained.safetensors"))
    task = get_task("mnist")
    built = build_head(clip, task.classnames, task.templates, cache_dir=run / "heads", task="mnist")
    assert torch.equal(built.weight, head.weight.detach())
    features = torch.randn(3, head.weight.shape[1])
    want = torch.nn.functional.normalize(features, dim=-1) @ head.weight.detach().T  # lineage head, zero bias
    torch.testing.assert_close(built(features), want)


def test_zeroshot_without_text_tower_needs_text_from(lineage_files, tmp_path):
    root, *_ = lineage_files
    with pytest.raises(ValueError, match="no text tower.*--text_from"):
        import_run(str(root / "zeroshot.pt"), {"mnist": str(root / "finetuned.pt")}, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
