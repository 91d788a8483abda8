"""weaving against mergekit itself: the same mergekit YAML merged by `mergekit-yaml` and by `weaving merge
--config`, and the largest difference between the two outputs, per method.

    /work/venv/bin/python -m venv --system-site-packages /work/venv-mergekit       # once, NOT weaving's venv
    /work/venv-mergekit/bin/pip install mergekit "torch==2.14.1"
    python benchmarks/mergekit_parity.py --mergekit /work/venv-mergekit/bin/mergekit-yaml --work /tmp/parity

Installs nothing: mergekit runs from its own venv (the `--mergekit` path), weaving from this Python. The
models are a tiny random-init transformers `LlamaForCausalLM` (float32, so both tools compute in the same
precision) and three "fine-tunes" (the base plus seeded noise), written with `save_pretrained`. Each
method gets one mergekit file with per-model weights and densities (and gammas), merged by both tools, each
in its own process (wall seconds include the process start). `dare_ties` draws random masks, from
`torch.bernoulli` in mergekit and from weaving's seeded streams, so it is compared twice: at density 1
(no drop: the sign consensus and weights must agree to rounding) and at density 0.5, where the outputs
differ by the draws and the row gives the L1 norms of both merged deltas instead (they agree in
expectation). The `bfloat16 models` cases store the four models in bfloat16 (no `dtype`): both tools then
compute in bfloat16. `ties dtype bfloat16` asks mergekit to compute float32 models in bfloat16: mergekit
rounds the models before subtracting, weaving rounds the float32 deltas, so some kept entries differ.
Prints a markdown table and writes `parity.json` in the work folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

MODELS = ("ft0", "ft1", "ft2")
WEIGHTS = (0.5, 0.3, 0.8)
DENSITIES = (0.5, 0.3, 0.7)
GAMMAS = (0.05, 0.01, 0.1)


def generate(root: Path) -> None:
    """A tiny float32 LlamaForCausalLM and three perturbed copies (transformers' own save_pretrained), and
    the same four models stored in bfloat16 under root/bf16."""
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=128, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(torch.float32)
    def save(name: str) -> None:
        model.save_pretrained(root / name, safe_serialization=True)
        copy.deepcopy(model).to(torch.bfloat16).save_pretrained(root / "bf16" / name, safe_serialization=True)

    save("base")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for task, name in enumerate(MODELS):
        g = torch.Generator().manual_seed(100 + task)
        for key, param in model.named_parameters():
            param.data = state[key] + 0.05 * torch.randn(param.shape, generator=g) * state[key].std().clamp(min=1e-2)
        save(name)


def configs(root: Path) -> dict[str, dict]:
    """One mergekit file per case (the base listed among the models, as mergekit configs often do)."""
    def models(with_gamma: bool = False, density: tuple[float, ...] | None = DENSITIES) -> list[dict]:
        entries = [{"model": str(root / "base")}]
        for i, name in enumerate(MODELS):
            parameters = {"weight": WEIGHTS[i]}
            if density is not None:
                parameters["density"] = density[i]
            if with_gamma:
                parameters["gamma"] = GAMMAS[i]
            entries.append({"model": str(root / name), "parameters": parameters})
        return entries

    def case(method: str, entries: list[dict], parameters: dict | None = None) -> dict:
        config = {"merge_method": method, "base_model": str(root / "base"), "models": entries, "dtype": "float32"}
        return {**config, "parameters": parameters} if parameters else config

    def in_bf16(config: dict) -> dict:
        """The same file over the bfloat16 copies, without dtype: both tools compute in bfloat16."""
        moved = lambda path: str(root / "bf16" / Path(path).name)  # noqa: E731
        config = {k: v for k, v in config.items() if k != "dtype"}
        return {**config, "base_model": moved(config["base_model"]),
                "models": [{**entry, "model": moved(entry["model"])} for entry in config["models"]]}

    return {
        "task_arithmetic": case("task_arithmetic", models(density=None), {"lambda": 0.9}),
        "task_arithmetic normalize": case("task_arithmetic", models(density=None), {"normalize": True}),
        "ties": case("ties", models()),
        "ties rescale, normalize false": case("ties", models(), {"rescale": True, "normalize": False}),
        "ties dtype bfloat16": {**case("ties", models()), "dtype": "bfloat16"},
        "dare_ties density 1": case("dare_ties", models(density=(1.0, 1.0, 1.0))),
        "dare_ties density 0.5": case("dare_ties", models(density=(0.5, 0.5, 0.5))),
        "breadcrumbs": case("breadcrumbs", models(with_gamma=True)),
        "breadcrumbs_ties": case("breadcrumbs_ties", models(with_gamma=True), {"normalize": True, "rescale": True}),
        "task_arithmetic, bfloat16 models": in_bf16(case("task_arithmetic", models(density=None), {"lambda": 0.9})),
        "ties, bfloat16 models": in_bf16(case("ties", models())),
        "breadcrumbs_ties, bfloat16 models": in_bf16(case("breadcrumbs_ties", models(with_gamma=True),
                                                          {"normalize": True, "rescale": True})),
    }


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def load_folder(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def ulps(ours, theirs) -> float:
    """The largest difference in units in the last place of mergekit's value (its dtype's spacing there)."""
    import torch

    eps = torch.finfo(theirs.dtype).eps
    _, exponent = torch.frexp(theirs.double().abs())
    spacing = (eps * torch.pow(2.0, exponent.double() - 1)).clamp(min=torch.finfo(theirs.dtype).tiny)
    return float(((ours.double() - theirs.double()).abs() / spacing).max())


def compare(base: dict, ours: dict, theirs: dict) -> dict:
    """Max abs difference of the two outputs (also in units in the last place), the largest merged delta
    and the L1 norms of both merged deltas (output - base)."""
    if ours.keys() != theirs.keys():
        raise SystemExit(f"the outputs hold different tensors: {sorted(ours.keys() ^ theirs.keys())[:5]}")
    if any(ours[k].dtype != theirs[k].dtype for k in ours):
        raise SystemExit("the outputs have different dtypes")
    diff = max(float((ours[k].double() - theirs[k].double()).abs().max()) for k in ours)
    in_ulps = max(ulps(ours[k], theirs[k]) for k in ours)
    ours_l1 = sum(float((ours[k].double() - base[k].double()).abs().sum()) for k in ours)
    theirs_l1 = sum(float((theirs[k].double() - base[k].double()).abs().sum()) for k in ours)
    scale = max(float((theirs[k].double() - base[k].double()).abs().max()) for k in ours)
    return {"max_abs_diff": diff, "max_ulps": in_ulps, "largest_delta": scale, "weaving_l1": ours_l1, "mergekit_l1": theirs_l1,
            "tensors": len(ours), "dtype": str(next(iter(ours.values())).dtype).removeprefix("torch.")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mergekit", required=True, help="the mergekit-yaml of mergekit's own venv")
    parser.add_argument("--work", type=Path, required=True, help="a folder for the models and outputs")
    args = parser.parse_args()
    work = args.work.resolve()
    if not (work / "models" / "base").is_dir():
        generate(work / "models")
    base = load_folder(work / "models" / "base")
    rows = []
    for name, config in configs(work / "models").items():
        slug = name.replace(" ", "-").replace(",", "")
        file = work / f"{slug}.yml"
        file.write_text(yaml.safe_dump(config, sort_keys=False))
        mk_out, w_out = work / f"mergekit-{slug}", work / f"weaving-{slug}"
        mk_seconds = timed([args.mergekit, str(file), str(mk_out), "--no-copy-tokenizer", "--quiet", "--random-seed", "0"])
        w_seconds = timed([sys.executable, "-m", "weaving", "merge", "--config", str(file), "--output", str(w_out),
                           "--overwrite", "true"])
        row = {"case": name, "mergekit_seconds": round(mk_seconds, 2), "weaving_seconds": round(w_seconds, 2),
               **compare(base, load_folder(w_out), load_folder(mk_out))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    (work / "parity.json").write_text(json.dumps(rows, indent=1))
    print("\n| case | output dtype | max abs difference | in ulps | largest merged delta | L1 of the merged delta, "
          "weaving / mergekit | weaving s | mergekit s |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['dtype']} | {r['max_abs_diff']:.3g} | {r['max_ulps']:.3g} | {r['largest_delta']:.3g} | "
              f"{r['weaving_l1']:.6g} / {r['mergekit_l1']:.6g} | {r['weaving_seconds']} | {r['mergekit_seconds']} |")


if __name__ == "__main__":
    main()
