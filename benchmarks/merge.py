"""Speed and memory of the merge engine on real CLIP visual-encoder shapes (random weights, no download).

For each method: one merge (lambda = 1), Weight Weaving over 30 lambdas with our engine, and the naive
procedure (recompute the merge for every lambda, stack the augmented set, pool). On the CPU every case runs in a
fresh subprocess, so its peak memory is its own; on CUDA the cases share one process and one set of inputs
(torch's peak counter is reset per case) after an untimed warm-up merge of a few tensors per method.

    python benchmarks/merge.py --models ViT-B-32 --device cpu                 # all methods, all modes
    python benchmarks/merge.py --models ViT-L-14 --device cuda --modes merge weave
    python benchmarks/merge.py --case ViT-B-32 ties weave cpu                 # one case, prints JSON
    python benchmarks/merge.py --methods iso_c --modes merge weave --repeats 3  # keep the fastest of 3
    git worktree add /tmp/weaving-before <commit>                              # today's path, side by side:
    python benchmarks/merge.py --methods ties tsv --modes merge --baseline /tmp/weaving-before
    python benchmarks/merge.py --methods ties --from-files --staging 0 1       # plain vs staged reads

With --baseline DIR every case also runs with the `weaving` package found in DIR (another checkout), in
the same alternation, and a second table gives both times and their ratio. With --staging the cases run
once per WEAVING_STAGING value (see weaving/merging/staging.py); --from-files writes the inputs as
safetensors files first, so reading them is part of the time (as with real runs).

Peak memory is the process's peak resident memory above its baseline on the CPU (inputs, pretrained and
output included), or torch's peak allocated memory on CUDA (inputs stay on the CPU and stream in).
It is reported as a multiple of the size of the T task vectors.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

LAMBDAS = [round(0.1 * i, 10) for i in range(1, 31)]  # 30 lambdas: 0.1 .. 3.0
METHODS = ["task_arithmetic", "dare", "ties", "breadcrumbs", "magmax", "pcb", "tsv", "iso_c", "iso_cts"]
NUM_TASKS = 8


def rss_bytes(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def visual_shapes(model: str) -> dict[str, tuple[int, ...]]:
    import open_clip

    with torch.device("meta"):
        clip = open_clip.create_model(model, device="meta")
    return {k: tuple(v.shape) for k, v in clip.state_dict().items() if k.startswith("visual.") and v.is_floating_point()}


def make_inputs(model: str, seed: int = 0, device: str = "cpu"):
    """Random pretrained weights and T task vectors, on the CPU (drawn on `device`, which is faster on a GPU)."""
    generator = torch.Generator(device).manual_seed(seed)
    shapes = visual_shapes(model)

    def draw(shape, scale):
        return (scale * torch.randn(shape, generator=generator, device=device)).cpu()

    pretrained = {k: draw(s, 0.02) for k, s in shapes.items()}
    task_vectors = [{k: draw(s, 1e-3) for k, s in shapes.items()} for _ in range(NUM_TASKS)]
    return pretrained, task_vectors


def naive_weave(pretrained, task_vectors, method, lambdas, device):
    """Recompute the merge per lambda and stack the whole augmented set, then average it."""
    import weaving

    members = list(task_vectors)
    for lam in lambdas:
        merged = weaving.merge(pretrained, task_vectors, method, lam=lam, device=device)
        members.append({k: merged[k] - pretrained[k] for k in merged})
    return {k: pretrained[k] + torch.stack([m[k] for m in members]).mean(dim=0) for k in pretrained}


def write_inputs(model: str, folder: str) -> tuple[str, list[str]]:
    """The random inputs as safetensors files in `folder` (written once, reused by every case)."""
    import os

    from safetensors.torch import save_file

    paths = [os.path.join(folder, f"{model}-pretrained.safetensors")] + [
        os.path.join(folder, f"{model}-task{t}.safetensors") for t in range(NUM_TASKS)]
    if not all(os.path.exists(p) for p in paths):
        pretrained, task_vectors = make_inputs(model)
        for path, tensors in zip(paths, [pretrained] + task_vectors):
            save_file(tensors, path + ".tmp")
            os.replace(path + ".tmp", path)
    return paths[0], paths[1:]


def run_case(model: str, method: str, mode: str, device: str, inputs=None) -> dict:
    """Time one case. On the CPU it must run in a fresh process (the peak is the process's); on CUDA the
    peak is torch's, so cases can share one process and one set of `inputs`."""
    import weaving

    import os

    baseline = rss_bytes("VmRSS")
    files = os.environ.get("WEAVING_BENCH_FILES")
    if files:
        pretrained, task_vectors = write_inputs(model, files)
        from safetensors import safe_open

        tv_bytes = 0
        for path in task_vectors:
            with safe_open(path, framework="pt") as handle:
                for key in handle.keys():
                    shape = handle.get_slice(key).get_shape()
                    tv_bytes += 4 * int(torch.tensor(shape).prod()) if shape else 4
    else:
        pretrained, task_vectors = inputs if inputs is not None else make_inputs(model)
        tv_bytes = sum(t.numel() * t.element_size() for tv in task_vectors for t in tv.values())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if mode == "merge":
        weaving.merge(pretrained, task_vectors, method, lam=1.0, device=device)
    elif mode == "weave":
        weaving.weave(pretrained, task_vectors, method, LAMBDAS, device=device)
    else:
        naive_weave(pretrained, task_vectors, method, LAMBDAS, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = rss_bytes("VmHWM") - baseline
    params = tv_bytes // 4 // NUM_TASKS
    return {"model": model, "method": method, "mode": mode, "device": device, "seconds": seconds,
            "peak_gib": peak / 2**30, "peak_over_task_vectors": peak / tv_bytes, "params": params,
            "task_vectors_gib": tv_bytes / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", nargs=4, metavar=("MODEL", "METHOD", "MODE", "DEVICE"))
    parser.add_argument("--models", nargs="+", default=["ViT-B-32"])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--modes", nargs="+", default=["merge", "weave", "naive"], choices=["merge", "weave", "naive"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per case: the fastest time and the largest peak are kept")
    parser.add_argument("--output", help="append the Markdown table to this file")
    parser.add_argument("--baseline", help="a checkout of weaving to time side by side with this one (ratio table)")
    parser.add_argument("--staging", nargs="+", choices=["auto", "0", "1"], help="WEAVING_STAGING values to compare")
    parser.add_argument("--from-files", action="store_true", help="read the inputs from safetensors files")
    args = parser.parse_args()
    if args.baseline or args.staging or args.from_files:
        compare(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(run_case(*args.case)))
        return
    cuda = args.device.startswith("cuda")
    if cuda:
        print(f"device: {torch.cuda.get_device_name(args.device)}; torch {torch.__version__}", flush=True)
    rows = []
    for model in args.models:
        inputs = make_inputs(model, device=args.device) if cuda else None
        for method in args.methods:
            if cuda:
                warm_up(inputs, method, args.device)
            runs: dict[str, list[dict]] = {mode: [] for mode in args.modes}
            for _ in range(args.repeats):  # modes alternate, so slow drifts of the machine hit them alike
                for mode in args.modes:
                    row = run_in_process(model, method, mode, args.device, inputs) if cuda else run_in_subprocess(
                        model, method, mode, args.device, args.threads)
                    if row is None:
                        continue
                    runs[mode].append(row)
                    print(f"{model:9s} {method:16s} {mode:6s} {row['seconds']:8.2f} s  peak {row['peak_gib']:6.2f} GiB "
                          f"({row['peak_over_task_vectors']:.2f}x task vectors)", flush=True)
            for mode, results in runs.items():
                if results:  # the fastest run's time, the largest peak seen
                    best = dict(min(results, key=lambda r: r["seconds"]))
                    for field in ("peak_gib", "peak_over_task_vectors"):
                        best[field] = max(r[field] for r in results)
                    rows.append(best)
    table = format_table(rows)
    print(table)
    if args.output:
        with open(args.output, "a") as handle:
            handle.write(table + "\n")


def compare(args) -> None:
    """CPU cases in fresh processes, once per variant (this tree, --baseline's tree, each --staging value),
    alternating variants within each repeat; the fastest run of each is kept."""
    import os
    import tempfile

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = [("now", here)] + ([("baseline", os.path.abspath(args.baseline))] if args.baseline else [])
    stagings = args.staging or [None]
    variants = [(name, tree, staging) for name, tree in trees for staging in stagings]
    folder = tempfile.mkdtemp(prefix="weaving-bench-") if args.from_files else None
    rows = []
    for model in args.models:
        if folder:
            write_inputs(model, folder)
        for method in args.methods:
            for mode in args.modes:
                best: dict[tuple, dict] = {}
                for _ in range(args.repeats):
                    for name, tree, staging in variants:
                        env = dict(os.environ, PYTHONPATH=tree)
                        if staging is not None:
                            env["WEAVING_STAGING"] = staging
                        if folder:
                            env["WEAVING_BENCH_FILES"] = folder
                        row = run_in_subprocess(model, method, mode, args.device, args.threads, env)
                        if row is None:
                            continue
                        label = name + (f", staging={staging}" if staging is not None else "")
                        print(f"{model:9s} {method:16s} {mode:6s} {label:22s} {row['seconds']:8.2f} s  peak "
                              f"{row['peak_over_task_vectors']:.2f}x task vectors", flush=True)
                        key = (name, staging)
                        if key not in best or row["seconds"] < best[key]["seconds"]:
                            best[key] = row
                rows.append((model, method, mode, best))
    lines = ["| model | method | mode | " + " | ".join(
        f"{n}{f', staging={s}' if s is not None else ''} (s)" for n, _, s in variants) + " | ratio (first / others) |",
        "|---|---|---|" + "---|" * (len(variants) + 1)]
    for model, method, mode, best in rows:
        times = [best.get((n, s), {}).get("seconds") for n, _, s in variants]
        cells = " | ".join("-" if t is None else f"{t:.2f}" for t in times)
        ratios = ", ".join("-" if t is None or times[0] is None else f"{t / times[0]:.2f}x" for t in times[1:])
        lines.append(f"| {model} | {method} | {mode} | {cells} | {ratios} |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        with open(args.output, "a") as handle:
            handle.write(table + "\n")


def run_in_subprocess(model: str, method: str, mode: str, device: str, threads: int, env=None) -> dict | None:
    command = [sys.executable, __file__, "--case", model, method, mode, device]
    if threads:
        command += ["--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        print(f"{model} {method} {mode}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_in_process(model: str, method: str, mode: str, device: str, inputs) -> dict | None:
    import gc

    try:
        return run_case(model, method, mode, device, inputs)
    except Exception as error:  # one failing case must not end the whole table
        print(f"{model} {method} {mode}: failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return None
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def warm_up(inputs, method: str, device: str) -> None:
    """One untimed merge of a few tensors, so CUDA's lazy start-up (kernels, solver handles) is not timed."""
    import weaving

    pretrained, task_vectors = inputs
    keys = [k for k, v in pretrained.items() if v.ndim == 2][:2] + [k for k, v in pretrained.items() if v.ndim == 1][:2]
    try:
        weaving.merge({k: pretrained[k] for k in keys}, [{k: tv[k] for k in keys} for tv in task_vectors], method,
                      device=device)
    except Exception as error:
        print(f"warm-up {method}: failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)


def format_table(rows: list[dict]) -> str:
    lines = ["| model | device | method | merge (s) | weave, 30 lambdas (s) | weave / merge | naive weave (s) "
             "| peak merge (x TVs) | peak weave (x TVs) | peak naive (x TVs) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    keyed = {(r["model"], r["device"], r["method"], r["mode"]): r for r in rows}
    for model, device, method in dict.fromkeys((r["model"], r["device"], r["method"]) for r in rows):
        cell = lambda mode, field, fmt: (format(keyed[(model, device, method, mode)][field], fmt)
                                         if (model, device, method, mode) in keyed else "-")
        ratio = "-"
        if (model, device, method, "merge") in keyed and (model, device, method, "weave") in keyed:
            ratio = f"{keyed[(model, device, method, 'weave')]['seconds'] / keyed[(model, device, method, 'merge')]['seconds']:.2f}"
        lines.append(f"| {model} | {device} | {method} | {cell('merge', 'seconds', '.2f')} | {cell('weave', 'seconds', '.2f')} "
                     f"| {ratio} | {cell('naive', 'seconds', '.1f')} | {cell('merge', 'peak_over_task_vectors', '.2f')} "
                     f"| {cell('weave', 'peak_over_task_vectors', '.2f')} | {cell('naive', 'peak_over_task_vectors', '.2f')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
