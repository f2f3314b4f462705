"""Where a training step's time goes: one compiled step traced with jax.profiler, by category.

python -m mmjax.tools.profile_step --config=configs/bench_cpu_clip.py [--steps=5]
[--out=profile.json]

Each operation of the optimised program is attributed to the model part whose Python code made
it (the innermost known function of its source stack: layer norm, attention, MLP, embeddings,
projections, loss, optimizer update, metrics) and to a kind (matmul or everything else: the
elementwise work, reductions, copies and casts around the matmuls). Time is the traced time of
the operations, per step; on a CPU operations overlap on the cores, so the sum exceeds the wall
time of a step. Runs without TensorFlow, on synthetic batches (mmjax.tools.benchmark).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax
from absl import app, flags

from mmjax.tools import benchmark

# Innermost-first: the first frame of an operation's source stack ("file.py:Function") that holds
# one of these names its part.
PARTS = (
    ("layer norm", ("layer_norm.py:",)),
    ("attention", ("layers.py:MultiHeadAttention.", "layers.py:padded_attention",
                   "dot_product_attention")),
    ("mlp", ("layers.py:Mlp.",)),
    ("metrics", ("trainer.py:global_norm",)),
    ("loss", ("mmjax/losses/", "optax/losses/")),
    # Text-to-image: the generator's own embeddings and codebook heads with the model's
    # conditioning around them (dropped captions), and the tokenizer's quantiser; without these
    # they fall to the train step's frames and read as the optimizer update.
    ("generator", ("image_generator.py:", "text_to_image.py:")),
    ("image tokenizer", ("image_tokenizer.py:",)),
    ("optimizer update", ("optax/", "trainer.py:Trainer._train_step")),
    ("image embedding", ("image_tower.py:",)),
    ("text embedding", ("text_tower.py:",)),
    ("projections", ("mmjax/models/clip.py:", "mmjax/models/fusion.py:")),
)
MATMUL = re.compile(r"\b(dot|convolution)\(|custom_call_target=\"[^\"]*(gemm|matmul|cublas)",
                    re.IGNORECASE)


def _tables(hlo: str, name: str) -> dict[int, str]:
    """A numbered table of the HLO text's trailer (FileNames, FunctionNames, ...)."""
    match = re.search(rf"^{name}\n(.*?)(?:\n\n|\n[A-Z]\w+\n|\Z)", hlo, re.S | re.M)
    rows = {}
    for line in (match.group(1).splitlines() if match else ()):
        number, _, rest = line.partition(" ")
        if number.isdigit():
            rows[int(number)] = rest.strip().strip('"')
    return rows


def attribute(hlo: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (part, kind) for the instructions of the optimised HLO text."""
    files = _tables(hlo, "FileNames")
    functions = _tables(hlo, "FunctionNames")
    locations = {}
    for k, v in _tables(hlo, "FileLocations").items():
        file_id, function_id = (int(x) for x in re.findall(r"_id=(\d+)", v)[:2])
        path = files.get(file_id, "")
        # The path from the package on ("optax/_src/alias.py", "mmjax/models/layers.py").
        short = (path.split("site-packages/")[-1] if "site-packages/" in path else
                 "mmjax/" + path.rsplit("/mmjax/", 1)[-1] if "/mmjax/" in path else
                 os.path.basename(path))
        locations[k] = f"{short}:{functions.get(function_id, '')}"
    frames = {k: tuple(int(x) for x in re.findall(r"=(\d+)", v)[:2])
              for k, v in _tables(hlo, "StackFrames").items()}

    def part_of(frame_id: int) -> str:
        # A frame's caller is the row numbered parent_frame_id - 1 (the outermost frame's
        # points to a row that does not exist).
        for _ in range(len(frames)):
            if frame_id not in frames:
                break
            location, parent = frames[frame_id]
            where = locations.get(location, "")
            for part, markers in PARTS:
                if any(marker in where for marker in markers):
                    return part
            frame_id = parent - 1
        return "other"

    bodies = dict(re.findall(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S | re.M))
    result = {}
    for match in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*", hlo, re.M):
        line = match.group(0)
        called = re.search(r"calls=%?([\w.\-]+)", line)
        text = line + (bodies.get(called.group(1), "") if called else "")
        frame = re.search(r"stack_frame_id=(\d+)", line)
        result[match.group(1)] = (part_of(int(frame.group(1))) if frame else "other",
                                  "matmul" if MATMUL.search(text) else "other")
    return result


def breakdown(trace_dir: str, names: dict[str, tuple[str, str]], steps: int) -> dict:
    """Milliseconds per step by (part, kind) from a jax.profiler trace of `steps` steps."""
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
    if not files:
        raise benchmark.CannotMeasure(
            f"jax.profiler wrote no trace under {trace_dir}: this JAX build or platform records "
            "none (on GPUs it needs the CUDA profiling tools, CUPTI); the step's time without a "
            "breakdown is mmjax.tools.benchmark's")
    with gzip.open(files[-1]) as f:
        events = json.load(f)["traceEvents"]
    totals = collections.Counter()
    for event in events:
        if event.get("ph") != "X":
            continue
        op = (event.get("args") or {}).get("hlo_op", event["name"])  # GPU kernels name their op
        if op in names:
            totals[names[op]] += event.get("dur", 0) / 1000 / steps
    return totals


def run(config, steps: int, mesh=None) -> dict:
    """The breakdown of `steps` traced steps of config's train step (on `mesh`, default the
    config's)."""
    trainer, compiled, state, batch, _ = benchmark.compiled_step(config, mesh)
    names = attribute(compiled.as_text())
    state, _ = benchmark.advance(trainer, compiled, state, batch, 3)
    with tempfile.TemporaryDirectory() as trace_dir:
        start = time.perf_counter()
        with jax.profiler.trace(trace_dir):
            benchmark.advance(trainer, compiled, state, batch, steps)
        wall = (time.perf_counter() - start) / steps
        totals = breakdown(trace_dir, names, steps)
    traced = sum(totals.values())
    rows = [{"part": part, "kind": kind, "ms_per_step": ms, "share": ms / traced if traced else 0}
            for (part, kind), ms in totals.most_common()]
    return {"config": config.get("name", ""), "device": jax.devices()[0].device_kind,
            "steps": steps, "wall_ms_per_step_traced": 1000 * wall,
            "op_ms_per_step": traced, "rows": rows}


def format_table(result: dict) -> str:
    lines = [f"{result['config']} on {result['device']}: {result['op_ms_per_step']:.1f} ms of "
             f"operations per step, {result['wall_ms_per_step_traced']:.1f} ms wall (traced)",
             f"{'part':18s} {'kind':7s} {'ms/step':>9s} {'share':>7s}"]
    for row in result["rows"]:
        lines.append(f"{row['part']:18s} {row['kind']:7s} {row['ms_per_step']:9.2f} "
                     f"{100 * row['share']:6.1f}%")
    by_part = collections.Counter()
    for row in result["rows"]:
        by_part[row["part"]] += row["share"]
    lines.append("by part: " + ", ".join(f"{p} {100 * s:.1f}%" for p, s in by_part.most_common()))
    return "\n".join(lines)


if __name__ == "__main__":
    flags.DEFINE_integer("steps", 5, "Traced steps (after 3 untraced ones).")
    flags.DEFINE_string("out", "profile_step.json", "Where to write the breakdown (JSON).")
    benchmark.define_config_flag()
    app.run(benchmark.program(lambda config: run(config, flags.FLAGS.steps), format_table))
