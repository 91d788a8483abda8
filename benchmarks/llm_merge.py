"""Merging a language-model-shaped checkpoint: weaving against mergekit and against the I/O limit.

    python benchmarks/llm_merge.py generate --root /work/bench-data/llama   # once: base + 4 fine-tunes
    nice -n 10 python benchmarks/llm_merge.py compare --root /work/bench-data/llama \
        --mergekit /work/venv-mergekit/bin/mergekit-yaml
    nice -n 10 python benchmarks/llm_merge.py grid --root /work/bench-data/llama

`generate` writes a random-init Llama-architecture model (transformers' LlamaForCausalLM, bf16) as a
Hugging Face folder in shards, and 4 "fine-tunes" (the base plus small seeded perturbations). `compare`
runs, each in its own process measured with /usr/bin/time (wall time, peak resident memory): the I/O
limit (a plain loop that reads every input tensor once and writes the output once), weaving's recipe
(`weaving merge --config`), and mergekit's `mergekit-yaml`, for task arithmetic and ties. `grid` times
Weight Weaving over a grid of G ties settings x N lambdas against G x N separate merges and against the
goal's bound (G merges plus one read of the inputs). `compare` also measures the process floor (python
with torch and weaving imported) and prints each peak above it, beside the goal's memory bound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

TASKS = 4
RECIPE_SHARD = "1GB"


def generate(root: Path, hidden: int, layers: int, intermediate: int, vocab: int, scale: float) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, vocab_size=vocab,
                         tie_word_embeddings=False, torch_dtype="bfloat16")
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(root / "base", max_shard_size="100MB", safe_serialization=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for task in range(TASKS):
        g = torch.Generator().manual_seed(100 + task)
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=g) * scale * state[name].float().std().clamp(min=1e-3)
            param.data = (state[name].float() + noise).to(torch.bfloat16)
        model.save_pretrained(root / f"ft{task}", max_shard_size="100MB", safe_serialization=True)
    print(json.dumps({"parameters": params, "root": str(root)}))


def measure(command: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall seconds and peak resident memory (GB) of one command, from /usr/bin/time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        result = subprocess.run(["/usr/bin/time", "-o", report.name, "-f", "%e %M", *command],
                                env={**os.environ, **(env or {})}, capture_output=True, text=True)
        if result.returncode != 0 and not (result.stdout + result.stderr).count("model card"):
            tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
            print(f"command failed ({result.returncode}): {' '.join(command)}\n" + "\n".join(tail), file=sys.stderr)
        seconds, kilobytes = report.read().strip().splitlines()[-1].split()
    return {"seconds": float(seconds), "peak_gb": int(kilobytes) / 1e6, "returncode": result.returncode}


def io_limit(root: Path, out: Path) -> None:
    """Read every input tensor once and write one output tensor per name: the floor for any merge."""
    from weaving.io import open_checkpoint, save_streamed

    sources = [open_checkpoint(root / "base")] + [open_checkpoint(root / f"ft{t}") for t in range(TASKS)]
    base = sources[0]
    layout = [(k, base.shape(k), base.dtype(k)) for k in base.keys()]

    def items():
        for key in base.keys():
            values = [source.get(key) for source in sources]
            yield key, values[-1]

    save_streamed(out, layout, items(), shard_size=RECIPE_SHARD)


def weaving_recipe(root: Path, method: str, out: Path, weaving: dict | None = None, **method_args: float) -> dict:
    """A weaving recipe (the flat keys of `weaving merge`); `weaving` adds the search space keys."""
    recipe = {"pretrained": str(root / "base"), "finetuned": [str(root / f"ft{t}") for t in range(TASKS)],
              "method": method, "method_args": method_args, "dtype": "bfloat16", "output": str(out),
              "out_shard_size": RECIPE_SHARD}
    return {**recipe, **(weaving or {})}


def mergekit_config(root: Path, method: str) -> dict:
    models = [{"model": str(root / f"ft{t}"), "parameters": {"weight": 1.0, **({"density": 0.2} if method == "ties" else {})}}
              for t in range(TASKS)]
    parameters = {"normalize": False} if method == "task_arithmetic" else {}
    return {"merge_method": method, "base_model": str(root / "base"), "models": models, "dtype": "bfloat16",
            "parameters": parameters}


def memory_goal(root: Path) -> int:
    """Issue 14's bound on the merge's resident memory: 1.5 x the largest tensor (float32, the compute
    dtype) x (T + 3), in bytes (statistics not included: a few numbers for ties)."""
    from weaving.io import open_checkpoint

    base = open_checkpoint(root / "base")
    largest = max(_numel(base.shape(key)) for key in base.keys())
    return int(1.5 * largest * 4 * (TASKS + 3))


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def run_case(name: str, command: list[str], out: Path, env=None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    result = measure(command, env)
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"case": name, **result}), flush=True)
    return {"case": name, **result}


def compare(root: Path, mergekit: str | None, work: Path) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    rows = [run_case("process floor (python with torch and weaving imported, nothing read)",
                     [python, "-c", "import torch, weaving.merging.recipe, weaving.io"], work / "floor"),
            run_case("I/O limit (read all inputs once, write once)",
                     [python, __file__, "io-limit", "--root", str(root), "--out", str(work / "io")], work / "io")]
    for method, method_args in (("task_arithmetic", {}), ("ties", {"k": 0.2})):
        recipe = work / f"{method}.yaml"
        recipe.write_text(yaml.safe_dump(weaving_recipe(root, method, work / f"w-{method}", **method_args)))
        rows.append(run_case(f"weaving {method}", [python, "-m", "weaving", "merge", "--config", str(recipe)],
                             work / f"w-{method}"))
        if mergekit:
            config = work / f"mk-{method}.yaml"
            config.write_text(yaml.safe_dump(mergekit_config(root, method)))
            rows.append(run_case(f"mergekit {method}", [mergekit, str(config), str(work / f"mk-{method}"), "--quiet"],
                                 work / f"mk-{method}", env={"HF_HUB_OFFLINE": "1"}))
    return rows


def grid(root: Path, work: Path, ks: list[float], lambdas: list[float]) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    recipe = work / "grid.yaml"
    recipe.write_text(yaml.safe_dump(weaving_recipe(root, "ties", work / "grid", {"lambdas": lambdas, "grid": {"k": ks}})))
    rows = [run_case(f"weave ties, grid k x lambdas = {len(ks)} x {len(lambdas)} (one run)",
                     [python, "-m", "weaving", "merge", "--config", str(recipe)], work / "grid")]
    total = {"seconds": 0.0, "peak_gb": 0.0}
    one = None
    for k in ks:
        path = work / f"one-{k}.yaml"
        path.write_text(yaml.safe_dump({**weaving_recipe(root, "ties", work / f"one-{k}", k=k), "lam": 1.0}))
        one = run_case(f"one ties merge, k={k}", [python, "-m", "weaving", "merge", "--config", str(path)], work / f"one-{k}")
        total["seconds"] += one["seconds"] * len(lambdas)
        total["peak_gb"] = max(total["peak_gb"], one["peak_gb"])
    rows.append({"case": f"one merge per point: {len(ks) * len(lambdas)} merges (sum of the above x {len(lambdas)})", **total})
    print(json.dumps(rows[-1]))
    io = run_case("I/O limit (read all inputs once, write once)",
                  [python, __file__, "io-limit", "--root", str(root), "--out", str(work / "io")], work / "io")
    merges = total["seconds"] / len(lambdas)
    rows.append(io)
    rows.append({"case": f"the goal's bound: {len(ks)} merges + one read of the inputs (I/O limit)",
                 "seconds": merges + io["seconds"], "peak_gb": total["peak_gb"]})
    print(json.dumps(rows[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--root", type=Path, required=True)
    g.add_argument("--hidden", type=int, default=768)
    g.add_argument("--layers", type=int, default=17)
    g.add_argument("--intermediate", type=int, default=2048)
    g.add_argument("--vocab", type=int, default=32000)
    g.add_argument("--scale", type=float, default=0.01, help="perturbation, relative to each tensor's std")
    c = sub.add_parser("compare")
    c.add_argument("--root", type=Path, required=True)
    c.add_argument("--mergekit", type=str, default=None, help="path of mergekit-yaml (its own venv)")
    c.add_argument("--work", type=Path, default=Path("/work/bench-data/llm-merge-work"))
    r = sub.add_parser("grid")
    r.add_argument("--root", type=Path, required=True)
    r.add_argument("--work", type=Path, default=Path("/work/bench-data/llm-merge-work"))
    r.add_argument("--k", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    r.add_argument("--lambdas", type=float, nargs="+", default=[round(0.1 * i, 1) for i in range(1, 11)])
    i = sub.add_parser("io-limit")
    i.add_argument("--root", type=Path, required=True)
    i.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "generate":
        generate(args.root, args.hidden, args.layers, args.intermediate, args.vocab, args.scale)
    elif args.command == "io-limit":
        io_limit(args.root, args.out)
    else:
        print(json.dumps({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                          "load_average": os.getloadavg()}))
        rows = compare(args.root, args.mergekit, args.work) if args.command == "compare" else \
            grid(args.root, args.work, args.k, args.lambdas)
        floor = rows[0]["peak_gb"] if rows[0]["case"].startswith("process floor") else 0.0
        print(json.dumps({"memory_goal_gb_above_floor": memory_goal(args.root) / 1e9}))
        print("| case | seconds | peak GB | peak above the process floor, GB |\n|---|---|---|---|")
        for row in rows:
            print(f"| {row['case']} | {row['seconds']:.1f} | {row['peak_gb']:.2f} | {row['peak_gb'] - floor:.2f} |")


if __name__ == "__main__":
    main()
