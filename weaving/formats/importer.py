"""`weaving import`: public CLIP checkpoints -> a weaving run folder, the layout `weaving fit` writes.

    weaving import --pretrained openai/clip-vit-base-patch32 \
        --finetuned sun397=tanganke/clip-vit-base-patch32_sun397 dtd=ckpt/dtd/finetuned.pt --output runs/b32

RUN/pretrained.safetensors holds theta_pre's full open_clip state dict (loadable with
`open_clip.create_model(model, pretrained=that_file)`), RUN/task_vectors/<name>.safetensors each
fine-tuned image encoder minus theta_pre (`visual.*`), RUN/task_vectors/index.json the model name, the
source of every file and theta_pre's hash; RUN/model_config.json the open_clip config of the model (so a
size open_clip does not ship, registered from the checkpoint's config.json on the fly, is known to later
commands); RUN/heads/ the imported classification heads (`--heads`). `--model` is an open_clip name or
model-config JSON file. Every input is read and checked before RUN appears: a bad input leaves nothing
behind. An existing RUN (or one that holds an input) is replaced only with `--overwrite true`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import torch
from tqdm.auto import tqdm

from weaving.errors import UserError
from weaving.formats import architecture as arch_lib
from weaving.formats.checkpoint import FORMATS, Checkpoint, read_checkpoint, resolve_model
from weaving.io.publish import check_output, publish_folder
from weaving.io.runs import RUN_FORMAT, state_dict_hash, write_index
from weaving.io.source import check_finite
from weaving.io.writer import save_state_dict

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_named(values: Sequence[str] | None, option: str) -> dict[str, str]:
    """["name=src", ...] -> {name: src}; one line for a malformed or repeated name."""
    named: dict[str, str] = {}
    for value in values or []:
        name, sep, source = value.partition("=")
        if not sep or not source or not NAME.match(name):
            raise UserError(f"{option} {value!r}: expected NAME=SOURCE with NAME made of letters, digits, '_', '-', '.'")
        if name in named:
            raise UserError(f"{option}: {name!r} is given twice")
        named[name] = source
    return named


def _check_sources(pretrained: str, finetuned: Mapping[str, str]) -> None:
    """Before any reading: each fine-tuned source once, and no local safetensors file whose metadata says it
    is another kind (a run's task vector or theta_pre given as fine-tuned weights; weaving.io.runs.check_kind)."""
    from weaving.io.runs import check_kind

    seen: dict[str, str] = {}
    for name, source in finetuned.items():
        key = os.path.realpath(source) if os.path.exists(source) else source
        if key in seen:
            raise ValueError(f"--finetuned {name}={source}: the same checkpoint as {seen[key]}; give each once")
        seen[key] = name
        check_kind(_metadata_if_readable(source), f"--finetuned {name}={source}", "finetuned")
    check_kind(_metadata_if_readable(pretrained), f"--pretrained {pretrained}", "pretrained")


def _metadata_if_readable(source: str) -> dict[str, str]:
    """A local safetensors file's metadata; {} for anything else (the reader reports a bad file itself)."""
    from weaving.io.safetensors import read_metadata

    if not (str(source).endswith(".safetensors") and os.path.isfile(source)):
        return {}
    try:
        return read_metadata(source)
    except (ValueError, OSError):
        return {}


def _pretrained(source: str, model: str | None, fmt: str | None, text_from: str | None) -> tuple[Checkpoint, str, dict]:
    """theta_pre as a full open_clip state dict, checked by loading it into the named open_clip model."""
    from weaving.models.clip import load_clip

    checkpoint = read_checkpoint(source, fmt, model)
    if not checkpoint.has_image_encoder:
        raise ValueError(f"pretrained {source}: has no image encoder (a text-only checkpoint?); nothing to import")
    if not checkpoint.has_projection:
        raise ValueError(f"pretrained {source}: a vision model without its projection (CLIPVisionModel); theta_pre "
                         "must hold it: use the full CLIP (CLIPModel) or CLIPVisionModelWithProjection")
    if text_from is not None:
        text = read_checkpoint(text_from, None, resolve_model(checkpoint, model))
        if not text.has_text_tower:
            raise ValueError(f"--text_from {text_from}: has no text tower")
        checkpoint.state.update({k: v for k, v in text.state.items() if not k.startswith("visual.")})
        checkpoint.arch = {**checkpoint.arch, "text_cfg": (text.arch or {}).get("text_cfg")}
    if not checkpoint.has_text_tower:
        raise ValueError(f"pretrained {source}: has no text tower (the task_vectors code deletes it from "
                         "zeroshot.pt), and zero-shot heads need it; add --text_from with the full model "
                         "(e.g. --text_from openai for OpenAI CLIP) or pass the full CLIP as --pretrained")
    name = resolve_model(checkpoint, model)
    clip_model = load_clip(name, None).model
    try:
        clip_model.load_state_dict(checkpoint.state, strict=True)
    except RuntimeError as error:
        first = " ".join(str(error).split())[:240]
        raise ValueError(f"pretrained {source}: does not load into open_clip {name} ({first})") from None
    state = {k: v.detach().clone() for k, v in clip_model.state_dict().items()}
    return checkpoint, name, state


def _task_vector(name: str, source: str, fmt: str | None, pre: Checkpoint, theta_pre: Mapping[str, torch.Tensor],
                 model: str) -> tuple[dict[str, torch.Tensor], Checkpoint, list[str]]:
    checkpoint = read_checkpoint(source, fmt, None)
    label = f"fine-tuned {name}={source}"
    if not checkpoint.has_image_encoder:
        raise ValueError(f"{label}: has no image encoder (a text-only checkpoint?); nothing to import")
    notes = []
    if checkpoint.arch is not None and pre.arch is not None:
        wanted = {"vision_cfg": pre.arch["vision_cfg"], "quick_gelu": pre.arch.get("quick_gelu")}
        mine = {"vision_cfg": checkpoint.arch["vision_cfg"], "quick_gelu": checkpoint.arch.get("quick_gelu")}
        if not (arch_lib._agrees(mine, wanted) or arch_lib._agrees(wanted, mine)):
            raise ValueError(f"{label}: its architecture ({arch_lib.describe(checkpoint.arch)}) differs from the "
                             f"pretrained model's ({arch_lib.describe(pre.arch)})")
    visual = {k: v for k, v in checkpoint.state.items() if k.startswith("visual.")}
    if "visual.proj" not in visual:
        visual["visual.proj"] = theta_pre["visual.proj"]
        notes.append("visual.proj from theta_pre (a vision model without projection)")
    expected = {k for k in theta_pre if k.startswith("visual.") and theta_pre[k].is_floating_point()}
    missing, extra = sorted(expected - set(visual)), sorted(set(visual) - expected)
    if missing or extra:
        detail = f"lacks {missing[0]!r}" if missing else f"has {extra[0]!r}, which {model} does not"
        raise ValueError(f"{label}: does not fit the pretrained {model} ({detail}); a different architecture?")
    delta = {}
    for key in sorted(expected):
        tuned, base = visual[key], theta_pre[key]
        if tuple(tuned.shape) != tuple(base.shape):
            raise ValueError(f"{label}: tensor {key!r} has shape {list(tuned.shape)} but the pretrained {model} "
                             f"has {list(base.shape)}; a different architecture?")
        delta[key] = check_finite(tuned.float(), label, key) - base.float()
    return delta, checkpoint, notes


def _head(name: str, source: str, embed_dim: int) -> torch.Tensor:
    from weaving.data.tasks import get_task
    from weaving.formats.lineage import read_head
    from weaving.io.torch_pickle import read_torch_file

    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"--heads {name}={source}: no such file")
    weight = read_head(read_torch_file(path), f"head {source}")
    task = get_task(name)
    if weight.shape != (task.num_classes, embed_dim):
        raise ValueError(f"head {source}: shape {list(weight.shape)}, but task {name} has {task.num_classes} classes "
                         f"and the model {embed_dim}-dim features")
    return weight


def model_config(name: str) -> dict[str, Any]:
    import open_clip

    return open_clip.get_model_config(name)


def import_run(pretrained: str, finetuned: Mapping[str, str], output: str | os.PathLike, *, model: str | None = None,
               format: str | None = None, heads: Mapping[str, str] | None = None, text_from: str | None = None,
               progress: bool = True, overwrite: bool = False) -> Path:
    """Import theta_pre and fine-tuned checkpoints into a run folder (see the module doc); returns RUN.
    An existing RUN (or one that is an input) is replaced only with `overwrite`."""
    from weaving.models.clip import harness_zero_entries
    from weaving.models.heads import imported_head_path

    inputs = [pretrained, *finetuned.values(), *(heads or {}).values(), *([text_from] if text_from else [])]
    output = check_output(output, folder=True, overwrite=overwrite, inputs=inputs, what="--output")
    if not finetuned:
        raise ValueError("give at least one --finetuned NAME=SOURCE")
    _check_sources(pretrained, finetuned)
    final = output.resolve()
    pre, name, theta_pre = _pretrained(pretrained, model, format, text_from)
    pre_hash = state_dict_hash(theta_pre)
    identity = json.dumps([pre_hash, sorted(finetuned.items())], sort_keys=True).encode()
    run_id = f"import-{hashlib.sha256(identity).hexdigest()[:16]}"
    common = {"run_id": run_id, "model": name, "pretrained": str(final / "pretrained.safetensors"),
              "pretrained_hash": pre_hash, "format": RUN_FORMAT}
    head_weights = {task: _head(task, src, theta_pre["visual.proj"].shape[1]) for task, src in (heads or {}).items()}
    entries = []
    with publish_folder(output, overwrite=overwrite) as tmp:
        save_state_dict(tmp / "pretrained.safetensors", theta_pre,
                        {**common, "kind": "pretrained", "source": pre.source, "source_format": pre.format})
        (tmp / "task_vectors").mkdir()
        for task, source in tqdm(finetuned.items(), desc="import", disable=not progress):
            delta, checkpoint, notes = _task_vector(task, source, format, pre, theta_pre, name)
            file = f"{task}.safetensors"
            meta = {**common, "kind": "task_vector", "task": task, "source": source,
                    "source_format": checkpoint.format, "notes": "; ".join(notes)}
            save_state_dict(tmp / "task_vectors" / file, delta, meta)
            entries.append({"task": task, "file": file, "source": source, "source_format": checkpoint.format,
                            **({"notes": notes} if notes else {})})
            del delta
        for task, weight in head_weights.items():
            save_state_dict(imported_head_path(tmp / "heads", task), {"weight": weight.contiguous()},
                            {"model": name, "pretrained_hash": pre_hash, "task": task, "source": heads[task]})
        index = {"format": RUN_FORMAT, "run_id": run_id, "model": name, "pretrained": common["pretrained"],
                 "pretrained_file": "pretrained.safetensors", "pretrained_hash": pre_hash, "seed": None,
                 "stream": "independent", "tasks": list(finetuned), "zero_entries": harness_zero_entries(theta_pre),
                 "task_vectors": entries,
                 "imported_from": {"pretrained": pre.source, "pretrained_format": pre.format,
                                   "heads": dict(heads or {})}}
        write_index(tmp, index)
        (tmp / arch_lib.RUN_MODEL_CONFIG).write_text(json.dumps({"model": name, "model_cfg": model_config(name)}, indent=2))
    return output


@dataclass
class ImportOptions:
    """Import public CLIP checkpoints (Hugging Face, open_clip, task_vectors .pt) into a weaving run folder:
    theta_pre + task vectors. Every key is also a flag of `weaving import`.

    Args:
        pretrained: theta_pre: a file, a folder, a hub id (org/name) or, with model, an open_clip tag.
        finetuned: NAME=SOURCE per fine-tuned model; NAME becomes the task vector's name.
        output: The run folder to create (new or empty).
        model: open_clip model name or model-config JSON file (default: found from the weights; e.g.
            ViT-B-32-quickgelu).
        format: Force the format of every source (default: detected).
        heads: TASK=head_<task>.pt per task_vectors classification head, saved into RUN/heads.
        text_from: Take the text tower from this source when pretrained lacks it (zeroshot.pt).
        overwrite: Replace an existing output folder (default: refuse).
    """

    pretrained: str
    finetuned: Union[str, list[str]]
    output: str
    model: Optional[str] = None
    format: Optional[Literal[FORMATS]] = None  # type: ignore[valid-type]
    heads: Optional[Union[str, list[str]]] = None
    text_from: Optional[str] = None
    overwrite: bool = False


def import_main(argv: Sequence[str]) -> None:
    """Entry point of `weaving import`: parse the options (ImportOptions), import, say what was written."""
    from weaving.schema import command_parser, parse_command

    parser = command_parser("weaving import", ImportOptions.__doc__.split("\n\n")[0].replace("\n", " "), ImportOptions,
                            one_or_more=("finetuned", "heads"), flags=("overwrite",))
    cfg = parse_command(parser, argv)
    output = import_run(cfg.pretrained, parse_named(cfg.finetuned, "--finetuned"), cfg.output, model=cfg.model,
                        format=cfg.format, heads=parse_named(cfg.heads, "--heads"), text_from=cfg.text_from,
                        overwrite=cfg.overwrite)
    index = json.loads((output / "task_vectors" / "index.json").read_text())
    print(f"wrote {output}: model {index['model']}, {len(index['tasks'])} task vectors "
          f"({', '.join(index['tasks'])}){', heads in ' + str(output / 'heads') if cfg.heads else ''}", file=sys.stdout)
