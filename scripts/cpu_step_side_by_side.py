"""mmjax's CPU training step against open_clip's on the same shapes, alternating, medians.

    python scripts/cpu_step_side_by_side.py --open_clip_python=OPEN_CLIP_VENV/bin/python

Each run is a fresh process: `python -m mmjax.tools.benchmark --config=configs/bench_cpu_clip.py`
(with
and without reuse_host_memory) and scripts/bench_open_clip_step.py (its defaults are the same
shapes), one after the other, `--runs` times. Prints a table and writes the results as JSON.
OPEN_CLIP_VENV: `python3 -m venv V && V/bin/pip install torch torchvision open_clip_torch`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

parser = argparse.ArgumentParser()
parser.add_argument("--open_clip_python", required=True)
parser.add_argument("--runs", type=int, default=3)
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--warmup", type=int, default=3)
parser.add_argument("--out", default="cpu_step_side_by_side.json")
args = parser.parse_args()


def mmjax_step(reuse_host_memory: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mmjax.tools.benchmark",
                "--config=configs/bench_cpu_clip.py",
                f"--config.reuse_host_memory={reuse_host_memory}",
                f"--steps={args.steps}",
                f"--warmup_steps={args.warmup}",
                f"--out={out}",
            ],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
        )
        with open(out) as f:
            return json.load(f)


def open_clip_step() -> dict:
    done = subprocess.run([args.open_clip_python, os.path.join(REPO_ROOT, "scripts",
                                                               "bench_open_clip_step.py"),
                           f"--steps={args.steps}", f"--warmup={args.warmup}"],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


contenders = {
    "mmjax": lambda: mmjax_step(True),
    "mmjax, reuse_host_memory=False": lambda: mmjax_step(False),
    "open_clip": open_clip_step,
}
times = {name: [] for name in contenders}
for run in range(args.runs):
    for name, measure in contenders.items():
        seconds = measure()["step_seconds"]
        times[name].append(seconds)
        print(f"run {run + 1}: {name}: {seconds:.4f} s per step", flush=True)

reference = statistics.median(times["open_clip"])
rows = []
print(f"\n{'contender':32s} {'median s/step':>14s} {'runs':>24s} {'speed vs open_clip':>19s}")
for name, values in times.items():
    median = statistics.median(values)
    rows.append({"contender": name, "median_step_seconds": median, "step_seconds": values,
                 "speed_vs_open_clip": reference / median})
    print(f"{name:32s} {median:14.4f} {' / '.join(f'{v:.3f}' for v in values):>24s} "
          f"{reference / median:18.2f}x")
with open(args.out, "w") as f:
    json.dump({"runs": args.runs, "steps": args.steps, "warmup": args.warmup, "rows": rows},
              f, indent=2)
print(f"results written to {args.out}")
