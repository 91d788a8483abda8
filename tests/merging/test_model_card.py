"""Merged folders describe themselves: weaving_recipe.yaml re-runs to the same tensors, README.md names the
recipe and the hashes of every input, and config.json says the output's dtype."""

from __future__ import annotations

import json

import torch
import yaml
from safetensors.torch import load_file, save_file

from weaving.cli import main
from weaving.io.loader import file_sha256, open_checkpoint

from ..formats.llm import finetunes, llama_like, write_hf_folder


def test_a_language_model_folder_carries_its_recipe_card_and_dtype(tmp_path, capsys):
    base = llama_like()
    base_dir = write_hf_folder(tmp_path / "base", base, shards=2)
    (base_dir / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "float32",
                                                      "text_config": {"torch_dtype": "float32"}}))
    tuned = [write_hf_folder(tmp_path / f"ft{i}", t, shards=2) for i, t in enumerate(finetunes(base, 2))]
    out, again = tmp_path / "out", tmp_path / "again"
    main(["merge", "--pretrained", str(base_dir), "--finetuned", *map(str, tuned), "--method", "ties", "--method_args",
          "{k: 0.5}", "--lambdas", "0.5,1.0", "--dtype", "bfloat16", "--out_shard_size", "600", "--output", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["text_config"]["torch_dtype"] == "bfloat16"
    recipe = yaml.safe_load((out / "weaving_recipe.yaml").read_text())
    assert recipe["method"] == "ties" and recipe["method_args"] == {"k": 0.5} and recipe["lambdas"] == "0.5,1.0"
    assert recipe["dtype"] == "bfloat16" and recipe["pretrained"] == str(base_dir.resolve())
    card = (out / "README.md").read_text()
    shard = base_dir / "model-00001-of-00002.safetensors"
    assert card.startswith("---\nbase_model:") and file_sha256(shard).removeprefix("sha256:") in card
    main(["merge", "--config", str(out / "weaving_recipe.yaml"), "--output", str(again)])
    first, second = open_checkpoint(out), open_checkpoint(again)
    assert first.keys() == second.keys() and all(first.dtype(k) == torch.bfloat16 for k in first.keys())
    assert all(torch.equal(first.get(k), second.get(k)) for k in first.keys())
    assert (again / "weaving_recipe.yaml").read_text().replace(str(again), str(out)) == (out / "weaving_recipe.yaml").read_text()


def test_flags_after_a_recipe_override_its_keys(tmp_path, capsys):
    base = llama_like()
    base_dir = write_hf_folder(tmp_path / "base", base, shards=1)
    save_file({k: 0.01 * torch.ones_like(v) for k, v in base.items()}, tmp_path / "tv.safetensors")  # theta_pre itself is refused
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"pretrained": str(base_dir), "task_vectors": [str(tmp_path / "tv.safetensors")],
                                      "method": "task_arithmetic", "output": str(tmp_path / "o.safetensors")}))
    main(["merge", "--config", str(recipe), "--output", str(tmp_path / "p.safetensors")])
    assert (tmp_path / "p.safetensors").is_file() and not (tmp_path / "o.safetensors").exists()
    main(["merge", "--config", str(recipe), "--output", str(tmp_path / "p.safetensors"), "--overwrite"])
    assert set(load_file(tmp_path / "p.safetensors")) == set(base)
    main(["merge", "--config", str(recipe), "--lam", "2", "--output", str(tmp_path / "q.safetensors")])
    doubled = load_file(tmp_path / "q.safetensors")
    assert all(torch.allclose(doubled[k], base[k] + 0.02) for k in base)
    code = None
    try:
        main(["merge", "--config", str(recipe), "--lam", "2", "--lambdas", "0.5,1.0"])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2 and "not both" in capsys.readouterr().err and not (tmp_path / "o.safetensors").exists()
