import os
import subprocess
import sys

import pytest

from configs import clip_b16, clip_b32
from conftest import xla_flags
from mmjax.tools import benchmark

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_analytic_flops_match_published_counts():
    # ViT-B/16 at 224 px: 17.6 GMACs; open_clip's B/16 text tower: 2.96 GMACs (35.1 / 5.9 GFLOPs).
    flops = benchmark.forward_flops_per_example(clip_b16.get_config())
    assert flops["image"] == pytest.approx(2 * 17.58e9, rel=0.01)
    assert flops["text"] == pytest.approx(2 * 2.96e9, rel=0.02)
    # ViT-B/32: 4.4 GMACs.
    assert benchmark.forward_flops_per_example(clip_b32.get_config())["image"] == pytest.approx(
        2 * 4.41e9, rel=0.02)


def test_patch_dropout_counts_the_tokens_the_blocks_see():
    config = clip_b16.get_config()
    full = benchmark.forward_flops_per_example(config)
    config.model.image_tower.patch_dropout = 0.5
    half = benchmark.forward_flops_per_example(config)
    # 98 of 196 patches and the class token: a little under half (attention is quadratic, every
    # patch is still embedded); the text tower is untouched.
    assert half["image"] / full["image"] == pytest.approx(0.4956, abs=1e-3)
    assert half["text"] == full["text"]


def test_benchmark_runs_without_tensorflow(tmp_path):
    """The benchmark (and the trainer it uses) must run where TensorFlow is not installed."""
    out = tmp_path / "benchmark.json"
    script = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['tensorflow_datasets'] = None\n"
        "import runpy; runpy.run_module('mmjax.tools.benchmark', run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, f"--config={REPO_ROOT}/tests/tiny_config.py", "--steps=2",
         "--warmup_steps=1", f"--out={out}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, XLA_FLAGS=xla_flags(2)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pairs_per_second" in result.stdout and "compile_seconds" in result.stdout
    import json
    results = json.loads(out.read_text())
    assert results["devices"] == 2 and results["pairs_per_second"] > 0
    assert results["mfu"] is None  # no peak is known for a CPU


def test_benchmark_lowers_a_distillation_step_with_its_teacher(finished_run, tiny_config):
    """The train step of a config whose loss reads a teacher takes the teacher's parameters."""
    teacher, _ = finished_run
    tiny_config.losses = {"clip": 1.0, "distill": 1.0}
    tiny_config.distill.teacher = teacher
    result = benchmark.run(tiny_config, steps=1, warmup_steps=0)
    assert result["step_seconds"] > 0 and result["final_loss"] > 0


def test_the_step_profile_attributes_operations_to_model_parts(tiny_config):
    from conftest import one_device_mesh
    from mmjax.tools import profile_step

    # The tool's default 5 traced steps: over 2, one stalled operation outside the model's parts
    # under the suite's load once read as 28 % of the step (it is about 5 %).
    result = profile_step.run(tiny_config, steps=5, mesh=one_device_mesh())
    time = {(row["part"], row["kind"]): row["ms_per_step"] for row in result["rows"]}
    for part in ("attention", "mlp", "image embedding", "projections"):
        assert time.get((part, "matmul"), 0) > 0, part
    for part in ("layer norm", "optimizer update", "metrics", "loss"):
        assert sum(v for (p, _), v in time.items() if p == part) > 0, part
    assert sum(v for (p, _), v in time.items() if p == "other") < 0.2 * result["op_ms_per_step"]
    assert "mlp" in profile_step.format_table(result)


def test_a_profile_without_a_trace_says_so(tmp_path):
    from mmjax.tools import benchmark, profile_step

    with pytest.raises(benchmark.CannotMeasure, match="jax.profiler wrote no trace under"):
        profile_step.breakdown(str(tmp_path), {}, steps=1)
