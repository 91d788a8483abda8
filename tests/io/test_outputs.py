"""Outputs as a user meets them: an output that exists or that is an input is refused unless --overwrite,
every writer removes its temporary on SIGTERM, SIGINT and SIGHUP, a later run removes the temporaries it can
prove are its own, and an input's own metadata never leads weaving outside the input's folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from weaving.cli import main
from weaving.io.loader import open_checkpoint
from weaving.io.publish import TEMP_SUFFIX, remove_stale_temporaries, temporary_path

from ..formats.llm import finetunes, llama_like, write_hf_folder
from ..processes import free_port, rank_env


def run_cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    lines = capsys.readouterr().err.strip().replace("\r", "\n").splitlines()
    return code, lines[-1] if lines else ""


@pytest.fixture
def files(tmp_path):
    base = llama_like()
    save_file(base, tmp_path / "pre.safetensors")
    for i, tuned in enumerate(finetunes(base, 2)):
        save_file(tuned, tmp_path / f"ft{i}.safetensors")
    return tmp_path, [str(tmp_path / "pre.safetensors")] + [str(tmp_path / f"ft{i}.safetensors") for i in range(2)]


def merge_args(paths, output, *extra):
    return ["merge", "--pretrained", paths[0], "--finetuned", *paths[1:], "--method", "task_arithmetic", "--lam", "0.5",
            "--output", str(output), *extra]


# ------------------------------------------------------------------------------------- --overwrite
def test_an_output_that_is_an_input_or_exists_is_refused_unless_overwrite(files, capsys):
    tmp, paths = files
    before = {p: Path(p).read_bytes() for p in paths}
    (tmp / "link.safetensors").symlink_to(tmp / "ft1.safetensors")
    for output, message in [(paths[0], "is the input"), (paths[1], "is the input"),
                            (tmp / "link.safetensors", "is the input"), (tmp, "already exists and is not empty")]:
        code, err = run_cli(capsys, *merge_args(paths, output))
        assert code == 2 and message in err and "--overwrite" in err, (output, err)
    assert {p: Path(p).read_bytes() for p in paths} == before
    code, _ = run_cli(capsys, *merge_args(paths, tmp / "m.safetensors"))
    first = (tmp / "m.safetensors").read_bytes()
    code, err = run_cli(capsys, *merge_args(paths, tmp / "m.safetensors", "--lam", "0.7"))
    assert code == 2 and "already exists" in err and (tmp / "m.safetensors").read_bytes() == first
    code, _ = run_cli(capsys, *merge_args(paths, tmp / "m.safetensors", "--lam", "0.7", "--overwrite", "true"))
    assert code == 0 and (tmp / "m.safetensors").read_bytes() != first
    code, _ = run_cli(capsys, *merge_args(paths, paths[0], "--overwrite", "true"))  # asked for: the input is replaced
    assert code == 0 and Path(paths[0]).read_bytes() != before[paths[0]]


def test_a_folder_output_is_replaced_only_with_overwrite(tmp_path, capsys):
    base = llama_like()
    base_dir = write_hf_folder(tmp_path / "base", base, shards=2)
    tuned = [write_hf_folder(tmp_path / f"ft{i}", t, shards=2) for i, t in enumerate(finetunes(base, 2))]
    args = ["merge", "--pretrained", str(base_dir), "--finetuned", *map(str, tuned), "--method", "task_arithmetic",
            "--output", str(tmp_path / "out")]
    assert run_cli(capsys, *args)[0] == 0
    (tmp_path / "out" / "mine.txt").write_text("keep")
    code, err = run_cli(capsys, *args, "--lam", "0.3")
    assert code == 2 and "already exists and is not empty" in err and (tmp_path / "out" / "mine.txt").exists()
    assert run_cli(capsys, *args, "--lam", "0.3", "--overwrite", "true")[0] == 0
    assert not (tmp_path / "out" / "mine.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ft0", "ft1", "out"]


# ------------------------------------------------------------------------------------ temporaries
def test_a_later_write_removes_only_the_temporaries_it_can_prove_are_its_own(files, capsys):
    tmp, paths = files
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    target = tmp / "m.safetensors"
    ours = temporary_path(target).name.split(".")
    host = ours[3]
    abandoned = tmp / f".m.safetensors.{host}.{int(dead.stdout)}-1.0123abcd{TEMP_SUFFIX}"
    abandoned_folder = tmp / f".m.safetensors.{host}.{int(dead.stdout)}-.89abcdef{TEMP_SUFFIX}"
    running = tmp / f".m.safetensors.{host}.{os.getppid()}-.0123abcd{TEMP_SUFFIX}"  # a live writer
    elsewhere = tmp / f".m.safetensors.otherhost.{int(dead.stdout)}-.0123abcd{TEMP_SUFFIX}"  # another machine's
    unrelated = tmp / ".m.safetensors.notes"
    for path in (abandoned, running, elsewhere, unrelated):
        path.write_text("x")
    abandoned_folder.mkdir()
    (abandoned_folder / "model.safetensors").write_text("x")
    assert run_cli(capsys, *merge_args(paths, target))[0] == 0
    left = {p.name for p in tmp.iterdir() if p.name.startswith(".")}
    assert left == {running.name, elsewhere.name, unrelated.name}
    assert remove_stale_temporaries(target) == []


SLOW_PUBLISH = """
import signal, sys, time
from pathlib import Path

signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal gives it (CI may pass SIG_IGN)
import weaving.io.publish as publish

def slow(folder):  # the temporary is complete: say so, then wait to be signalled before it is published
    Path(sys.argv[1]).write_text("writing")
    time.sleep(600)

publish.make_readable = slow
from weaving.cli import main
main(sys.argv[2:])
"""


def run_until_publishing(warm, tmp_path, args, signum) -> subprocess.CompletedProcess:
    marker = tmp_path / "marker"
    process = warm.WarmProcess([str(marker), *args], code=SLOW_PUBLISH)
    while not marker.exists():  # the writer is inside its temporary folder
        if process.poll() is not None:
            raise AssertionError(process.stderr.read())
        try:
            process.wait(0.2)
        except subprocess.TimeoutExpired:
            pass
    process.send_signal(signum)
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])  # SIGHUP: the export test
def test_a_signal_while_writing_a_sharded_folder_leaves_nothing(warm, tmp_path, signum):
    base = llama_like()
    base_dir = write_hf_folder(tmp_path / "base", base, shards=2)
    tuned = [write_hf_folder(tmp_path / f"ft{i}", t, shards=2) for i, t in enumerate(finetunes(base, 2))]
    result = run_until_publishing(warm, tmp_path, ["merge", "--pretrained", str(base_dir), "--finetuned", *map(str, tuned),
                                             "--method", "ties", "--out_shard_size", "400", "--output",
                                             str(tmp_path / "out")], signum)
    assert result.returncode == (130 if signum == signal.SIGINT else -signum), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ft0", "ft1", "marker"]


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """theta_pre and one fine-tune of the tiny offline CLIP, as open_clip state dicts."""
    from weaving.models import load_clip

    root = tmp_path_factory.mktemp("clip")
    pre = {k: v.detach().clone().contiguous() for k, v in load_clip("weaving-tiny-vit").model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    tuned = {k: v + 0.01 * torch.randn(v.shape, generator=g) if k.startswith("visual.") and v.is_floating_point() else v
             for k, v in pre.items()}
    save_file(pre, root / "pre.safetensors")
    save_file(tuned, root / "ft.safetensors")
    return root


@pytest.mark.parametrize("command, signum", [("import", signal.SIGTERM), ("export", signal.SIGHUP)])
def test_a_signal_during_an_import_or_an_export_leaves_nothing(warm, clip_files, tmp_path, command, signum):
    if command == "import":
        args = ["import", "--pretrained", str(clip_files / "pre.safetensors"), "--model", "weaving-tiny-vit",
                "--finetuned", f"a={clip_files / 'ft.safetensors'}", "--output", str(tmp_path / "run")]
    else:
        args = ["merge", "--pretrained", str(clip_files / "pre.safetensors"), "--finetuned",
                str(clip_files / "ft.safetensors"), "--method", "task_arithmetic", "--format", "hf", "--model",
                "weaving-tiny-vit", "--output", str(tmp_path / "hf")]
    result = run_until_publishing(warm, tmp_path, args, signum)
    assert result.returncode == -signum, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marker"]


# ------------------------------------------------------------------------- metadata stays inside
def test_a_shard_index_cannot_lead_outside_its_folder(tmp_path, capsys):
    base = llama_like()
    folder = write_hf_folder(tmp_path / "model", base, shards=2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    save_file({"secret": torch.ones(1)}, tmp_path / "outside.safetensors")
    for name in ("../outside.safetensors", str(tmp_path / "outside.safetensors"), "link.safetensors"):
        if name == "link.safetensors":
            (folder / name).symlink_to(tmp_path / "outside.safetensors")
        bad = {**index, "weight_map": {**index["weight_map"], "secret": name}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="outside|not a file inside"):
            open_checkpoint(folder)


def test_a_symlinked_side_file_is_not_copied_from_outside(tmp_path, capsys):
    base = llama_like()
    base_dir = write_hf_folder(tmp_path / "base", base, shards=2, config=False)
    (tmp_path / "private.json").write_text('{"token": "secret"}')
    (base_dir / "config.json").symlink_to(tmp_path / "private.json")
    tuned = [write_hf_folder(tmp_path / f"ft{i}", t, shards=2) for i, t in enumerate(finetunes(base, 2))]
    code, err = run_cli(capsys, "merge", "--pretrained", str(base_dir), "--finetuned", *map(str, tuned), "--method",
                        "task_arithmetic", "--output", str(tmp_path / "out"))
    assert code == 2 and "config.json" in err and "outside" in err
    assert not (tmp_path / "out").exists()


def test_a_run_index_cannot_lead_outside_the_run(tmp_path, capsys):
    from weaving.io.runs import pretrained_source, read_run

    run = tmp_path / "run"
    (run / "task_vectors").mkdir(parents=True)
    save_file({"w": torch.ones(2)}, tmp_path / "elsewhere.safetensors")
    save_file({"w": torch.ones(2)}, run / "task_vectors" / "a.safetensors")
    index = {"format": "weaving.run/1", "task_vectors": [{"task": "a", "file": "a.safetensors"},
                                                         {"task": "b", "file": "../../elsewhere.safetensors"}]}
    (run / "task_vectors" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not a file inside"):
        read_run(run)
    index = {"format": "weaving.run/1", "pretrained_file": "../elsewhere.safetensors",
             "task_vectors": [{"task": "a", "file": "a.safetensors"}]}
    (run / "task_vectors" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not a file inside"):
        pretrained_source(run)
    code, err = run_cli(capsys, "merge", "--pretrained", str(run), "--task_vectors", str(run), "--method",
                        "task_arithmetic", "--output", str(tmp_path / "m.safetensors"))
    assert code == 2 and "not a file inside" in err


def test_import_refuses_an_existing_run_unless_overwrite(clip_files, tmp_path, capsys):
    args = ["import", "--pretrained", str(clip_files / "pre.safetensors"), "--model", "weaving-tiny-vit",
            "--finetuned", f"a={clip_files / 'ft.safetensors'}", "--output", str(tmp_path / "run")]
    assert run_cli(capsys, *args)[0] == 0
    (tmp_path / "run" / "notes.txt").write_text("mine")
    code, err = run_cli(capsys, *args)
    assert code == 2 and "already exists and is not empty" in err and (tmp_path / "run" / "notes.txt").exists()
    code, err = run_cli(capsys, *args[:-1], str(clip_files))  # the folder that holds the inputs
    assert code == 2 and "already exists and is not empty" in err
    assert run_cli(capsys, *args, "--overwrite", "true")[0] == 0
    assert not (tmp_path / "run" / "notes.txt").exists() and (tmp_path / "run" / "task_vectors" / "a.safetensors").is_file()


def test_sigterm_to_a_distributed_merge_leaves_nothing(warm, tmp_path):
    """SIGTERM to both ranks of a 2-process merge (what torchrun forwards) while rank 0 holds the complete
    temporary folder: rank 0 removes it and ends as signalled, rank 1 stops too; nothing is published."""
    import yaml

    base = llama_like(layers=2)
    base_dir = write_hf_folder(tmp_path / "base", base, shards=2)
    paths = [str(write_hf_folder(tmp_path / f"ft{i}", t, shards=2)) for i, t in enumerate(finetunes(base, 2))]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"pretrained": str(base_dir), "finetuned": paths,
                                                          "method": "ties", "output": str(tmp_path / "out")}))
    marker, port, processes = tmp_path / "marker", free_port(), []
    for rank in range(2):
        processes.append(warm.WarmProcess([str(marker), "merge", "--config", str(tmp_path / "recipe.yaml")],
                                          code=SLOW_PUBLISH, env=rank_env(port, rank)))
    try:
        while not marker.exists():  # rank 0 is about to publish: every shard is in its temporary folder
            if processes[0].poll() is not None:
                raise AssertionError(processes[0].stderr.read())
            try:
                processes[0].wait(0.2)
            except subprocess.TimeoutExpired:
                pass
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=300) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert codes[0] == -signal.SIGTERM and codes[1] != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ft0", "ft1", "marker", "recipe.yaml"]
