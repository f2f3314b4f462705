"""A run compiled for a TPU pod that is not here: whether it fits, what it computes and what it
communicates, from this machine (libtpu's compile-only path; no TPU needed).

    python -m mmjax.tools.aot --config=configs/clip_b16.py --topology=v5e-256 --out=aot.json
    python -m mmjax.tools.aot --config=configs/clip_b16.py --topology=v5e:16x16 --slices=2

The run is built as main.py builds it on that pod (the mesh from config.mesh and the sharding
rules over the topology's chips; over several slices `data` spans them), and its real train
step is lowered with abstract inputs and compiled by XLA for those chips. Reported: the bytes a
chip holds during the step (arguments + temporaries + outputs - aliases, as the compiler
counts them) against its HBM, the FLOPs of a chip's program, XLA's estimate of the step's time
and the model-FLOPs utilisation it implies (an estimate, not a measurement), and each
collective in the step by kind with its bytes and whether it crosses slices. The exit status is
0 when the run fits, 1 when it does not (with the knobs that would help), 2 on a bad argument.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time

import jax
import numpy as np
from absl import app, flags
from jax.experimental import topologies

from mmjax import paths, preflight, sharding
from mmjax.tools import benchmark
from mmjax.training import host_memory
from mmjax.training.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class Chip:
    hbm_gib: float
    peak_tflops: float  # bf16, dense, per chip
    cores_per_chip: int = 1  # v4 and v5p pods are named by TensorCores, two a chip


CHIPS = {"v4": Chip(32, 275.0, 2), "v5p": Chip(95, 459.0, 2), "v5e": Chip(16, 197.0),
         "v6e": Chip(32, 918.0),
         # NVIDIA SXM parts; HBM as CUDA reports it (80 GB and 141 GB less what the driver keeps).
         "h100": Chip(79.1, 989.0), "h200": Chip(139.7, 989.0)}
# Chips -> the torus libtpu names: 2D for v5e and v6e, 3D for v4 and v5p.
GRIDS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
            256: "16x16"}
GRIDS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
            256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
         "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# What XLA's GPU compiler needs to know of a GPU it cannot see (a GpuTargetConfigProto): the
# SXM parts' published figures. Memory and SM count decide the fit and the kernels' shapes.
GPU_SPECS = {
    "h100": dict(name="NVIDIA H100 80GB HBM3", memory=84_942_979_072, bandwidth=3_352_320_000_000,
                 l2=52_428_800),
    "h200": dict(name="NVIDIA H200", memory=150_014_656_512, bandwidth=4_800_000_000_000,
                 l2=52_428_800),
}
GPU_TOPOLOGY_HELP = ("a GPU cluster as HOSTSxGPUSxMODEL (8xh100 is one host of 8, 2x8xh100 two); "
                     "needs the CUDA plugin (pip install -e '.[gpu-compile]'), no GPU")


def gpu_target_config(model: str) -> str:
    """The text of the GpuTargetConfigProto that stands for an absent `model` (Hopper: compute
    capability 9.0, 132 SMs)."""
    spec = GPU_SPECS[model]
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 shared_memory_per_block_optin: 232448
  threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
  memory_bandwidth: {spec["bandwidth"]} l2_cache_size: {spec["l2"]} clock_rate_ghz: 1.98
  device_memory_size: {spec["memory"]} cuda_compute_capability {{ major: 9 }}
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 }}
device_description_str: "{spec["name"]}"
"""


def libtpu_topology(name: str) -> tuple[str, str]:
    """(generation, libtpu's name) of 'v5e-256' (as Cloud TPU names pods) or 'v5e:16x16'."""
    match = re.fullmatch(r"(v4|v5p|v5e|v6e)([-:])([\dx]+)", name.strip().lower())
    if not match:
        raise ValueError(f"--topology={name!r}: give a pod as Cloud TPU names it (v5e-256, "
                         f"v5p-1024, v4-2048, v6e-256) or as libtpu does (v5e:16x16), or "
                         + GPU_TOPOLOGY_HELP)
    generation, separator, size = match.groups()
    if separator == ":":
        return generation, f"{generation}:{size}"
    chips = int(size) // CHIPS[generation].cores_per_chip
    grids = GRIDS_3D if CHIPS[generation].cores_per_chip == 2 else GRIDS_2D
    if chips not in grids:
        raise ValueError(f"--topology={name!r}: no {generation} pod of that size; sizes: "
                         + ", ".join(f"{generation}-{n * CHIPS[generation].cores_per_chip}"
                                     for n in grids))
    return generation, f"{generation}:{grids[chips]}"


def gpu_topology(name: str) -> tuple[str, int, int] | None:
    """(model, hosts, GPUs a host) of '8xh100' or '2x8xh100'; None for another name."""
    match = re.fullmatch(r"(?:(\d+)x)?(\d+)x(h100|h200)", name.strip().lower())
    if not match:
        return None
    return match.group(3), int(match.group(1) or 1), int(match.group(2))


def topology_devices(name: str, slices: int = 1):
    """(chip, the topology's name, the devices of `slices` slices of it)."""
    gpus = gpu_topology(name)
    if gpus is None:
        generation, libtpu_name = libtpu_topology(name)
        # libtpu takes a machine-wide lock meant for the chips; compiling for absent chips
        # needs none, and two compiles at once (a sweep, test workers) must not refuse each other.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        description = topologies.get_topology_desc(topology_name=libtpu_name, platform="tpu",
                                                    num_slices=slices)
        return generation, libtpu_name, list(description.devices)
    model, hosts, per_host = gpus
    if slices != 1:
        raise ValueError(f"--slices={slices}: GPU hosts are joined by their network already; "
                         f"name them in the topology ({slices * hosts}x{per_host}x{model})")
    try:
        description = topologies.get_topology_desc(
            model, platform="cuda", target_config=gpu_target_config(model),
            topology=f"1x{hosts}x{per_host}")
    except NotImplementedError:
        raise ValueError(f"--topology={name!r}: JAX has no CUDA plugin here; install it with "
                         "pip install -e '.[gpu-compile]' (and run with "
                         "JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 on a machine without CUDA)") from None
    return model, f"{hosts}x{per_host}x{model}", list(description.devices)


def collectives(hlo: str) -> dict[str, dict]:
    """Per kind: how many collectives the compiled step runs and the bytes each chip's results
    hold, within a slice (over ICI) and across slices (over the data-centre network: the
    transfers libtpu's multi-slice runtime makes of a collective, named by its kind)."""
    found = {kind: {"count": 0, "bytes": 0, "crossing_slices": 0, "bytes_crossing_slices": 0}
             for kind in COLLECTIVES}
    within = re.compile(r"=\s*(\(?[^=]*?\)?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
    seen = set()
    for line in hlo.splitlines():
        line = re.sub(r"/\*index=\d+\*/", "", line)  # a long tuple's element numbers
        # The TPU compiler copies one collective into each fused computation that overlaps it;
        # the copies share the collective's channel, which is counted once.
        channel = re.search(r"channel_id=(\d+)", line)
        if channel and (" send(" in line, channel.group(1)) in seen:
            continue
        if channel:
            seen.add((" send(" in line, channel.group(1)))
        across = re.search(r'_xla_megascale_transfer_type="(\w+)"', line)
        if across and " send(" in line:
            kind = across.group(1).lower().replace("_", "-")
            entry = found.setdefault(kind, dict.fromkeys(found["all-reduce"], 0))
            entry["crossing_slices"] += 1
            entry["bytes_crossing_slices"] += _bytes(line.split(" send(")[0].split("=", 1)[1],
                                                     first_only=True)
            continue
        match = within.search(line)
        if match:
            found[match.group(2)]["count"] += 1
            found[match.group(2)]["bytes"] += _bytes(match.group(1))
    return found


def _bytes(result_type: str, first_only: bool = False) -> int:
    """Bytes of an HLO result type: f32[8,128] or a tuple of such (`first_only`: its first)."""
    shapes = re.findall(r"(\w+)\[([\d,]*)\]", result_type)[:1 if first_only else None]
    return sum(BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d]))
               for dtype, dims in shapes)


def compile_for(config, topology: str, slices: int = 1) -> dict:
    """The run of `config` compiled for `slices` slices of `topology`: the report's fields."""
    generation, libtpu_name, devices = topology_devices(topology, slices)
    chip = CHIPS[generation]
    mesh = sharding.create_mesh(dict(config.mesh), devices)
    trainer = Trainer(config, mesh=mesh, with_teacher=False)
    state = trainer.sharded_abstract_state
    batch = jax.eval_shape(lambda: benchmark.synthetic_batch(trainer))
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_sharding(v.ndim))
             for k, v in batch.items()}
    report = {
        "config": config.get("name", ""), "topology": libtpu_name, "slices": slices,
        "requested": topology, "devices": len(devices), "chip": generation,
        "mesh": dict(mesh.shape), "sharding_rules": str(config.sharding_rules),
        "global_batch": int(config.batch_size)}
    started = time.perf_counter()
    # A program for absent chips cannot be read back from the persistent compilation cache.
    cache = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        # Compiling for an absent GPU, Triton's GEMM tiling can find no tiles for some dots;
        # cuBLAS's GEMMs stand in for those kernels.
        options = {"xla_gpu_enable_triton_gemm": False} if generation in GPU_SPECS else None
        compiled = trainer.train_step.lower(state, batch).compile(compiler_options=options)
    except jax.errors.JaxRuntimeError as e:
        # The TPU compiler refuses a program whose temporaries exceed HBM, naming both.
        needed = re.search(r"RESOURCE_EXHAUSTED.*?\(([\d.]+)([KMGT])\).*?HBM \(([\d.]+)([KMGT])\)",
                           str(e))
        if not needed:
            raise
        held, hbm = (float(needed.group(i)) * 1024 ** "KMGT".index(needed.group(i + 1)) * 1024
                     for i in (1, 3))
        report.update(compiled=False, compile_seconds=round(time.perf_counter() - started, 2),
                      bytes_per_device=int(held), hbm_bytes_per_device=int(hbm), fits=False,
                      over_by_bytes=int(held - hbm), compiler_message=str(e).splitlines()[-1],
                      collectives={}, knobs=knobs(config, held, hbm))
        return report
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)
    compile_seconds = time.perf_counter() - started

    memory = compiled.memory_analysis()
    held = (memory.argument_size_in_bytes + memory.temp_size_in_bytes
            + memory.output_size_in_bytes - memory.alias_size_in_bytes)
    hbm = int(chip.hbm_gib * 2**30)
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    seconds = cost.get("optimal_seconds")
    model_flops = 3 * sum(benchmark.forward_flops_per_example(config).values()) * config.batch_size
    report.update({
        "compiled": True, "compile_seconds": round(compile_seconds, 2),
        "bytes_per_device": int(held), "hbm_bytes_per_device": hbm, "fits": held <= hbm,
        "over_by_bytes": max(0, int(held - hbm)),
        # The compiled SPMD program is one chip's: its FLOPs are per device.
        "flops_per_step_per_device": float(cost["flops"]) if cost.get("flops") else None,
        "model_flops_per_step_total": float(model_flops),
        "xla_estimated_step_seconds": float(seconds) if seconds and seconds > 0 else None,
        "collectives": collectives(compiled.as_text()),
    })
    if report["xla_estimated_step_seconds"]:
        report["xla_estimated_mfu"] = model_flops / (
            report["xla_estimated_step_seconds"] * len(devices) * chip.peak_tflops * 1e12)
    if not report["fits"]:
        report["knobs"] = knobs(config, held, hbm)
    return report


def check_target(config) -> dict | None:
    """config.target_topology (with config.target_slices): the run compiled for it; raises the
    preflight's ConfigError, with the figures and the knobs, when it would not fit there."""
    target = config.get("target_topology")
    if not target:
        return None
    try:
        report = compile_for(config, target, int(config.get("target_slices") or 1))
    except ValueError as e:
        raise preflight.ConfigError([preflight.Problem(
            "config.target_topology", target, str(e).rstrip("."), "fix the name")]) from None
    if not report["fits"]:
        gib = 2**30
        raise preflight.ConfigError([preflight.Problem(
            "config.target_topology", target,
            f"the run needs {report['bytes_per_device'] / gib:.2f} GiB a chip there and a "
            f"{report['chip']} chip holds {report['hbm_bytes_per_device'] / gib:.2f} GiB",
            "; or ".join(report["knobs"]))])
    return report


def knobs(config, held: float = 0.0, hbm: float = 1.0) -> list[str]:
    """What would lower the bytes a chip holds (`held` against `hbm`), from what the config
    does not do yet."""
    found = []
    if config.sharding_rules != "fsdp" or config.mesh.get("fsdp", 1) == 1:
        found.append("--config.sharding_rules=fsdp --config.mesh.fsdp=N --config.mesh.data=-1 "
                     "(parameters and optimizer state split over N chips)")
    if config.model.get("remat", "none") in ("none", None):
        found.append("--config.model.remat=full (activations recomputed in the backward pass)")
    # Activations shrink with the micro-batch: split it by the power of two over the excess.
    factor = 2 ** max(1, math.ceil(math.log2(max(held / hbm, 1.0))))
    found.append(f"--config.grad_accum_steps={factor * int(config.grad_accum_steps)} (the batch "
                 "in more micro-batches: fewer activations at once)")
    found.append("a larger topology (more chips to split the state over)")
    return found


def format_report(report: dict) -> str:
    gib = 2**30
    lines = [
        f"{report['config']} on "
        + (f"{report['slices']} x " if report["slices"] > 1 else "") + f"{report['topology']} "
        f"({report['devices']} chips, mesh {report['mesh']}, global batch "
        f"{report['global_batch']}): "
        + (f"compiled in {report['compile_seconds']} s" if report["compiled"] else
           f"refused by the compiler after {report['compile_seconds']} s"),
        f"  memory per chip   {report['bytes_per_device'] / gib:8.2f} GiB of "
        f"{report['hbm_bytes_per_device'] / gib:.0f} GiB HBM: "
        + ("fits" if report["fits"] else
           f"DOES NOT FIT (over by {report['over_by_bytes'] / gib:.2f} GiB)"),
    ]
    if not report["compiled"]:
        lines.append(f"  the compiler: {report['compiler_message']}")
    else:
        lines.append(f"  FLOPs per chip    {report['flops_per_step_per_device']:.3e} per step "
                     "(XLA's count)" if report["flops_per_step_per_device"] else
                     "  FLOPs per chip    not counted by this compiler (XLA's GPU compiler "
                     "reports none)")
    if report.get("xla_estimated_step_seconds"):
        lines.append(f"  step (estimate)   {report['xla_estimated_step_seconds'] * 1e3:.1f} ms, "
                     f"model-FLOPs MFU {report['xla_estimated_mfu']:.1%} (XLA's cost model, not "
                     "a measurement)")
    lines.append(f"  collectives       {'kind':<18} {'in a slice':>10} {'MiB/chip':>9}  "
                 f"{'across slices':>14} {'MiB/chip':>9}")
    for kind, c in report["collectives"].items() if report["compiled"] else ():
        if c["count"] or c["crossing_slices"]:
            lines.append(f"{'':20}{kind:<18} {c['count']:10d} {c['bytes'] / 2**20:9.2f}  "
                         f"{c['crossing_slices']:14d} {c['bytes_crossing_slices'] / 2**20:9.2f}")
    for knob in report.get("knobs", ()):
        lines.append(f"  would help: {knob}")
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    if gpu_topology(flags.FLAGS.topology):
        # The CUDA plugin checks the CUDA libraries' versions as it loads; compiling for an
        # absent GPU needs none of them.
        os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    config = flags.FLAGS.config
    host_memory.configure(config)
    try:
        report = compile_for(config, flags.FLAGS.topology, flags.FLAGS.slices)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        sys.exit(2)
    print(format_report(report))
    if flags.FLAGS.out:
        paths.write_text(flags.FLAGS.out, json.dumps(report, indent=2))
        print(f"report written to {flags.FLAGS.out}")
    sys.exit(0 if report["fits"] else 1)


if __name__ == "__main__":
    flags.DEFINE_string("topology", None, "A TPU pod: v5e-256, v5p-1024, v4-2048, v6e-256, or "
                        "libtpu's name (v5e:16x16); or GPU hosts: 8xh100, 2x8xh100.",
                        required=True)
    flags.DEFINE_integer("slices", 1, "Slices of that topology, joined by the data-centre "
                         "network (multi-slice); `data` spans them.")
    flags.DEFINE_string("out", None, "Also write the report here (JSON; a path or gs://...).")
    benchmark.define_config_flag()
    app.run(main)
