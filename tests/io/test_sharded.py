import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from weaving.io.loader import INDEX_FILE, ShardedSource, open_checkpoint
from weaving.io.sizes import parse_size, plan_shards
from weaving.io.writer import save_streamed

from ..formats.llm import llama_like, write_hf_folder


def read_all(source):
    return {key: source.get(key) for key in source.keys()}


def test_a_sharded_folder_reads_as_the_same_tensors_as_one_file(tmp_path):
    tensors = llama_like(dtype=torch.bfloat16)
    folder = write_hf_folder(tmp_path / "model", tensors, shards=3)
    save_file(tensors, str(tmp_path / "one.safetensors"))
    sharded, single = open_checkpoint(folder), open_checkpoint(tmp_path / "one.safetensors")
    assert isinstance(sharded, ShardedSource) and len(sharded.shards) == 3
    assert sorted(sharded.keys()) == sorted(single.keys())
    for key in tensors:
        assert sharded.shape(key) == tuple(tensors[key].shape) and sharded.dtype(key) == torch.bfloat16
        assert torch.equal(sharded.get(key), single.get(key))
    assert torch.equal(open_checkpoint(folder / INDEX_FILE).get("lm_head.weight"), tensors["lm_head.weight"])


def test_pytorch_model_bin_is_read_with_the_safe_loader(tmp_path):
    tensors = llama_like()
    (tmp_path / "bin").mkdir()
    torch.save(tensors, tmp_path / "bin" / "pytorch_model.bin")
    source = open_checkpoint(tmp_path / "bin")
    assert all(torch.equal(source.get(k), tensors[k]) for k in tensors)
    torch.save({"weights": tensors, "hook": print}, tmp_path / "evil.bin")  # a pickle that would reference code
    with pytest.raises(ValueError, match="not a loadable torch state dict"):
        open_checkpoint(tmp_path / "evil.bin")


def test_a_shard_without_a_listed_tensor_is_a_one_line_error(tmp_path):
    folder = write_hf_folder(tmp_path / "model", llama_like(), shards=2)
    index = json.loads((folder / INDEX_FILE).read_text())
    index["weight_map"]["model.extra.weight"] = "model-00001-of-00002.safetensors"
    (folder / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"has no tensor 'model.extra.weight'.*incomplete"):
        open_checkpoint(folder)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="shard model-00002-of-00002.safetensors is missing"):
        open_checkpoint(folder)
    with pytest.raises(FileNotFoundError, match="without weights"):
        open_checkpoint(tmp_path)


def test_shard_plan_respects_the_size_and_keeps_the_order():
    layout = [(f"t{i}", (10,), torch.float32) for i in range(7)]  # 40 bytes each
    shards = plan_shards(layout, 100)
    assert [[k for k, _, _ in s] for s in shards] == [["t0", "t1"], ["t2", "t3"], ["t4", "t5"], ["t6"]]
    assert plan_shards([("big", (100,), torch.float32)] + layout[:1], 100) == [[("big", (100,), torch.float32)], layout[:1]]
    # exact fit: tensors that fill a shard to the byte share it (40 + 40 = 80), the next one starts a new shard
    assert [[k for k, _, _ in s] for s in plan_shards(layout[:5], 80)] == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    assert [[k for k, _, _ in s] for s in plan_shards(layout[:2], 40)] == [["t0"], ["t1"]]
    assert parse_size("2GiB") == 2**31 and parse_size("1.5MB") == 1_500_000 and parse_size(512) == 512
    with pytest.raises(ValueError, match="expected bytes or a size"):
        parse_size("lots")


@pytest.mark.parametrize("shard_size", [None, 300])
def test_streamed_folder_output_round_trips(tmp_path, shard_size):
    tensors = llama_like(dtype=torch.bfloat16)
    base = write_hf_folder(tmp_path / "base", tensors, shards=1)
    layout = [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    out = save_streamed(tmp_path / "out", layout, iter(tensors.items()), shard_size=shard_size,
                        metadata={"note": "x"}, copy_from=base)
    assert (out / "config.json").read_text() == (base / "config.json").read_text() and (out / "tokenizer.json").exists()
    if shard_size is None:
        assert not (out / INDEX_FILE).exists()
        with safe_open(str(out / "model.safetensors"), "pt") as handle:
            assert handle.metadata() == {"note": "x"}
    else:
        index = json.loads((out / INDEX_FILE).read_text())
        files = sorted(set(index["weight_map"].values()))
        assert len(files) > 2 and all((out / f).stat().st_size <= 300 + 2000 for f in files)  # data + header
        assert index["metadata"]["total_size"] == sum(v.numel() * 2 for v in tensors.values())
    back = read_all(open_checkpoint(out))
    assert list(back) == list(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    single = save_streamed(tmp_path / "one.safetensors", layout, iter(tensors.items()))
    assert all(torch.equal(load_file(str(single))[k], tensors[k]) for k in tensors)


def test_a_failed_stream_leaves_nothing(tmp_path):
    tensors = llama_like()
    layout = [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]

    def failing():
        yield from list(tensors.items())[:4]
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        save_streamed(tmp_path / "out", layout, failing(), shard_size=200)
    with pytest.raises(ValueError, match="boom"):
        save_streamed(tmp_path / "out.safetensors", layout, failing())
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        save_streamed(tmp_path / "full", layout, iter(tensors.items()))
    with pytest.raises(ValueError, match="needs a folder"):
        save_streamed(tmp_path / "a.safetensors", layout, iter(tensors.items()), shard_size=100)


@pytest.mark.parametrize("output, shard_size", [("out", 200), ("out", None), ("out.safetensors", None)])
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, output, shard_size):
    import errno

    from weaving.io import safetensors as sharded

    tensors = llama_like()
    layout = [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    original = sharded.SafetensorsStream.write
    written = []

    def write(self, key, tensor):
        if len(written) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(key)
        original(self, key, tensor)

    monkeypatch.setattr(sharded.SafetensorsStream, "write", write)
    with pytest.raises(ValueError) as info:
        save_streamed(tmp_path / output, layout, iter(tensors.items()), shard_size=shard_size)
    assert str(info.value) == f"output {tmp_path / output}: write failed, the disk is full; nothing was written"
    assert list(tmp_path.iterdir()) == []


def test_plain_reads_match_safetensors_and_catch_damaged_files(tmp_path):
    from weaving.io.safetensors import SafetensorsFile

    tensors = {**llama_like(dtype=torch.bfloat16), "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5, dtype=torch.float64)}
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata={"a": "b"})
    source = SafetensorsFile(tmp_path / "m.safetensors")
    assert source.metadata == {"a": "b"} and sorted(source.keys()) == sorted(tensors)
    assert all(torch.equal(source.get(k), tensors[k]) and source.get(k).dtype == tensors[k].dtype for k in tensors)
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="inconsistent offsets"):
        SafetensorsFile(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"not json at all!")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        SafetensorsFile(tmp_path / "junk.safetensors")


def test_views_map_the_stored_bytes_and_outlive_the_source(tmp_path):
    import gc

    from weaving.io.safetensors import SafetensorsFile

    tensors = {**llama_like(dtype=torch.bfloat16), "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5, dtype=torch.float64)}
    save_file(tensors, str(tmp_path / "m.safetensors"))
    source = SafetensorsFile(tmp_path / "m.safetensors")
    views = {k: source.view(k) for k in tensors}
    assert all(views[k].dtype == tensors[k].dtype and torch.equal(views[k], tensors[k]) for k in tensors)
    views["lm_head.weight"].add_(1)  # a private mapping: the file keeps its bytes
    assert torch.equal(SafetensorsFile(tmp_path / "m.safetensors").get("lm_head.weight"), tensors["lm_head.weight"])
    del source
    gc.collect()
    assert torch.equal(views["model.norm.weight"], tensors["model.norm.weight"])
    folder = write_hf_folder(tmp_path / "model", tensors, shards=2)
    assert torch.equal(open_checkpoint(folder).view("model.norm.weight"), tensors["model.norm.weight"])
    source = SafetensorsFile(tmp_path / "m.safetensors")
    (tmp_path / "m.safetensors").write_bytes(b"")  # shrunk after opening
    with pytest.raises(ValueError, match=r"cannot read tensor '.*' \(the file is truncated\)"):
        source.view("lm_head.weight")
