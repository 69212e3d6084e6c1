"""The launched steps as one process and as two, on the real model and data, on a CPU.

    OMP_NUM_THREADS=1 python benchmarks/distributed_cpu.py --data runs/data \
        --finetuned runs/bigrec-l15-32 --memory runs/memory-item-l15 --work runs/dist-cpu

Runs each step's real command twice into fresh folders under ``--work``: ``automr ...`` (one
process) and ``torchrun --standalone --nproc-per-node 2 -m automr ...`` (two), every process
with ``OMP_NUM_THREADS`` threads, then compares what the two wrote file by file (bytes, or the
tensors of a ``.safetensors`` file) and times both (wall seconds around the command, launcher
and model loads included; the run record's own ``seconds`` beside). The evaluations' per-sample
values (ranks, target log-likelihoods, keyed by sample id) go into the JSON. A step already
measured in ``--work`` is not run again (the file ``progress.json`` there), so a cut run
resumes at the next step (a step measured with another command or thread count is run again).

Writes ``distributed-cpu.json`` and ``distributed-cpu.md`` to ``--out``.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from automr.experiments.bench import machine
from automr.storage import RUNS_FILE


def steps(data: Path, finetuned: Path, memory: Path, samples: int,
          annotate_samples: int) -> dict[str, list[str]]:
    """Each launched step's command (without ``automr`` and ``--out``)."""
    common = ["--data", str(data), "--device", "cpu", "--quiet"]
    evaluate = ["evaluate", *common, "--finetuned", str(finetuned), "--layer", "15",
                "--batch-size", "8", "--samples", str(samples)]
    return {
        "evaluate-l2": [*evaluate, "--methods", "bigrec:l2", "--exclude-seen"],
        "evaluate-likelihood": [*evaluate, "--methods", "bigrec:likelihood",
                                "--measures", "likelihood"],
        "annotate": ["annotate", *common, "--memory", str(memory), "--finetuned",
                     str(finetuned), "--samples", str(annotate_samples), "--combiner", "concat",
                     "--element-subset", "4"],
        "memory-build": ["memory", "build", *common, "--encoder", "item", "--layer", "15",
                         "--no-store-token-states", "--shard-elements", "25000"],
    }


def same_files(one: Path, two: Path) -> dict[str, str]:
    """Per file either folder holds (run records aside): identical, tensors equal, or how not."""
    names = sorted({p.relative_to(root).as_posix() for root in (one, two)
                    for p in root.rglob("*") if p.is_file() and p.name != RUNS_FILE})
    verdicts = {}
    for name in names:
        a, b = one / name, two / name
        if not (a.is_file() and b.is_file()):
            verdicts[name] = "only in " + ("1 process" if a.is_file() else "2 processes")
        elif a.read_bytes() == b.read_bytes():
            verdicts[name] = "identical"
        elif name.endswith(".safetensors"):
            ta, tb = load_file(a), load_file(b)
            equal = ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
            verdicts[name] = "tensors equal, metadata differs" if equal else "tensors differ"
        else:
            verdicts[name] = "differs"
    return verdicts


def run(argv: list[str], out: Path, processes: int, threads: int) -> dict[str, object]:
    if out.exists():
        shutil.rmtree(out)
    launcher = ([] if processes == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc-per-node", str(processes), "-m"])
    # this interpreter's automr both ways (PATH's `automr` may be another install's, or none)
    command = [*(launcher or [sys.executable, "-m"]), "automr", *argv, "--out", str(out)]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.perf_counter() - start
    record = json.loads((out / RUNS_FILE).read_text(encoding="utf-8").splitlines()[-1])
    return {"processes": processes, "wall_seconds": round(wall, 1),
            "recorded_seconds": record.get("seconds"), "recorded_processes":
            record.get("processes", 1), "load_average_before": round(load, 2),
            "load_average_after": round(os.getloadavg()[0], 2)}


def per_sample(folder: Path) -> dict[str, object]:
    """An evaluation folder's per-sample values, by method file (not the settings files:
    they hold the machine's absolute artifact paths, and the files' equality is compared)."""
    return {f"{p.parent.name}/{p.name}": json.loads(p.read_text(encoding="utf-8"))
            for kind in ("ranks", "loglik") for p in sorted((folder / kind).glob("*.json"))
            if not p.name.endswith(".settings.json")}


def markdown(result: dict) -> str:
    lines = [f"One process against two (`torchrun --standalone --nproc-per-node 2`), every "
             f"process with {result['threads']} thread(s); wall seconds around the command "
             f"(the run record's `seconds` in parentheses); {result['cores']} cores "
             f"({result['machine']['platform']}, torch {result['machine']['torch']}), the load "
             "average before each run in the table.", "",
             "| step | command | 1 process | 2 processes | speed-up | the two outputs |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, step in result["steps"].items():
        one, two = step["runs"]
        verdicts = step["files"].values()
        same = ("all identical" if all(v == "identical" for v in verdicts) else
                "; ".join(sorted({v for v in verdicts})))
        lines.append(
            f"| {name} | `automr {' '.join(step['argv'])}` | {one['wall_seconds']:.0f} s "
            f"({one['recorded_seconds']:.0f}), load {one['load_average_before']:.1f} | "
            f"{two['wall_seconds']:.0f} s ({two['recorded_seconds']:.0f}), load "
            f"{two['load_average_before']:.1f} | {one['wall_seconds'] / two['wall_seconds']:.2f}x "
            f"| {len(step['files'])} files: {same} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--finetuned", type=Path, required=True)
    parser.add_argument("--memory", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("runs/dist-cpu"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--samples", type=int, default=256,
                        help="Evaluation samples (64 a shard: give each process several).")
    parser.add_argument("--annotate-samples", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="Threads per process.")
    parser.add_argument("--steps", default="evaluate-l2,evaluate-likelihood,annotate,"
                                           "memory-build")
    args = parser.parse_args()
    progress_file = args.work / "progress.json"
    progress = (json.loads(progress_file.read_text(encoding="utf-8"))
                if progress_file.is_file() else {})
    commands = steps(args.data, args.finetuned, args.memory, args.samples, args.annotate_samples)
    unknown = [name for name in args.steps.split(",") if name not in commands]
    if unknown:  # before any step runs, not after the ones before it
        parser.error(f"--steps: unknown {', '.join(unknown)}; choose from {', '.join(commands)}")
    for name in args.steps.split(","):
        done = progress.get(name, {})
        if done.get("argv") == commands[name] and done.get("threads", 1) == args.threads:
            continue  # measured with these settings (another command or thread count: again)
        folders = [args.work / name / f"{n}-process" for n in (1, 2)]
        runs = [run(commands[name], folder, n, args.threads)
                for folder, n in zip(folders, (1, 2), strict=True)]
        step = {"argv": commands[name], "threads": args.threads, "runs": runs,
                "files": same_files(*folders)}
        if name.startswith("evaluate"):
            step["per_sample"] = per_sample(folders[0])
        progress[name] = step
        args.work.mkdir(parents=True, exist_ok=True)
        progress_file.write_text(json.dumps(progress, indent=1) + "\n", encoding="utf-8")
        print(name, [r["wall_seconds"] for r in runs], flush=True)
    result = {"benchmark": "distributed-cpu", "threads": args.threads, "machine": machine(),
              "cores": os.cpu_count(),
              "command": ["python", "benchmarks/distributed_cpu.py", *sys.argv[1:]],
              "steps": progress}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distributed-cpu.json").write_text(json.dumps(result, indent=1) + "\n",
                                                   encoding="utf-8")
    (args.out / "distributed-cpu.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
