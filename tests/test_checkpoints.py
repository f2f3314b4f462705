"""Crash, preemption and divergence: a run resumes exactly and never loses saved work."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import copy_run, one_device_mesh, xla_flags
from mmjax import evaluate, sharding, train
from mmjax.evaluation import suite
from mmjax.training import checkpoint
from mmjax.training.trainer import Trainer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steps = [r["step"] for r in records if "train/loss" in r]
    assert len(steps) == len(set(steps)), "a step was logged twice"
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def start(workdir, tfds_dir, *overrides, devices=2):
    command = [sys.executable, "-u", os.path.join(REPO_ROOT, "main.py"),
               f"--config={os.path.join(REPO_ROOT, 'tests', 'tiny_config.py')}",
               f"--workdir={workdir}", f"--config.data.tfds_data_dir={tfds_dir}", *overrides]
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices),
               TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def run_until(process, marker):
    """Reads the process's output until a line starts with `marker`."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(marker):
            return lines
    raise AssertionError("process ended before " + repr(marker) + ":\n" + "".join(lines[-30:]))


def test_sigkill_at_any_moment_then_restart_matches_an_uninterrupted_run(finished_run, tfds_dir,
                                                                         tmp_path):
    """main.py killed while the step-2 checkpoint is being written (saves are asynchronous),
    and again after step 7 (step 4's is complete: a save waits for the one before it, and step
    6's was requested), then run again: the losses equal the uninterrupted run's (the shared
    finished run: the same config on the same 8 devices; the checkpoint interval does not
    change the losses) bitwise."""
    reference, _ = finished_run
    crashed = str(tmp_path / "crashed")
    for marker in ("step      3/", "step      7/"):
        process = start(crashed, tfds_dir, "--config.checkpoint_every_steps=2", devices=8)
        run_until(process, marker)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    process = start(crashed, tfds_dir, "--config.checkpoint_every_steps=2", devices=8)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output[-3000:]
    # The killed job's lock is taken over: its process is gone.
    assert f"Took over the lock of {crashed}" in output and "its process is gone" in output
    assert re.search(r"Resuming from .* at step [46]\.", output), output[-3000:]
    assert not os.path.exists(os.path.join(crashed, "job.lock"))  # released at the end

    assert train_losses(crashed) == train_losses(reference)  # bitwise
    with open(os.path.join(reference, "eval_results.json")) as f:
        expected = json.load(f)
    with open(os.path.join(crashed, "eval_results.json")) as f:
        got = json.load(f)
    expected.pop("eval/seconds"), got.pop("eval/seconds")
    assert got == expected


def test_sigterm_saves_the_current_step_and_exits_zero(tfds_dir, tmp_path):
    """And while it runs, a second job on its workdir is refused, naming it."""
    workdir = str(tmp_path / "preempted")
    process = start(workdir, tfds_dir, "--config.total_steps=100000",
                    "--config.checkpoint_every_steps=100000")
    lines = run_until(process, "step      4/")
    second = start(workdir, tfds_dir)
    refused = second.communicate(timeout=120)[0]
    assert second.returncode != 0, refused[-3000:]
    assert f"is in use by the job that holds {workdir}/job.lock" in refused, refused
    assert f"process id {process.pid}, started" in refused and "Traceback" not in refused
    process.send_signal(signal.SIGTERM)
    output = "".join(lines) + process.communicate(timeout=120)[0]
    assert process.returncode == 0, output[-3000:]
    saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert len(saved) == 1 and 4 <= saved[0] < 100000, (saved, output[-2000:])
    assert f"saved step {saved[0]}" in output


def test_a_half_written_checkpoint_is_never_restored(finished_run, tiny_config, tmp_path):
    workdir = copy_run(finished_run, tmp_path / "run")
    checkpoints = os.path.join(workdir, "checkpoints")
    # A save of step 10 cut off mid-way: orbax writes under a temporary name and renames at the end.
    partial = os.path.join(checkpoints, "10.orbax-checkpoint-tmp-1234")
    shutil.copytree(os.path.join(checkpoints, "8"), partial)
    for root, _, files in os.walk(partial):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\0garbage")
    tiny_config.total_steps = 10
    tiny_config.profile_steps = (9, 10)  # and a profile of the steps after the restart
    metrics = train.train_and_evaluate(tiny_config, workdir, mesh=one_device_mesh())
    assert sorted(train_losses(workdir)) == list(range(1, 11))
    traces = [f for _, _, files in os.walk(os.path.join(workdir, "profile")) for f in files]
    assert any(f.endswith(".xplane.pb") for f in traces), traces
    assert metrics["eval/mmjax_shapes/num_candidates"] == 128
    assert sorted(d for d in os.listdir(checkpoints) if d.isdigit()) == ["10", "8"]


def test_divergence_names_the_step_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path,
                                                                     monkeypatch):
    from input_pipeline import pipeline

    real_next = pipeline.TrainBatches.__next__

    def poisoned_next(self):  # NaN images from step 4 on
        batch = real_next(self)
        step = self.position // self.global_batch_size
        # Normalised float images throughout (as the model takes them), so that the NaN ones
        # do not compile the step a second time for another input dtype.
        image = (batch["image"].astype(np.float32) - 127.5) / 127.5
        return dict(batch, image=image * np.nan if step >= 4 else image)

    monkeypatch.setattr(pipeline.TrainBatches, "__next__", poisoned_next)
    tiny_config.total_steps = 6
    tiny_config.data.eval = ""  # no evaluation: not what this tests
    tiny_config.checkpoint_every_steps = 2
    workdir = str(tmp_path / "diverged")
    with pytest.raises(train.TrainingDiverged, match="diverged at step 4"):
        train.train_and_evaluate(tiny_config, workdir, mesh=one_device_mesh())
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]

    tiny_config.skip_nonfinite_steps = True
    skipping = str(tmp_path / "skipping")
    train.train_and_evaluate(tiny_config, skipping, mesh=one_device_mesh())
    with open(os.path.join(skipping, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f if "train/nonfinite_steps" in line][-1]
    assert last["step"] == 6 and last["train/nonfinite_steps"] == 3
    assert np.isfinite(last["train/param_norm"])


@pytest.fixture(scope="module")
def fsdp_run(tfds_dir, tmp_path_factory):
    """A short run saved from 8 devices under FSDP, and its final evaluation."""
    from conftest import make_tiny_config

    config = make_tiny_config(tfds_dir)
    config.total_steps = 4
    config.mesh.update(data=1, fsdp=8)
    config.sharding_rules = "fsdp"
    workdir = str(tmp_path_factory.mktemp("fsdp_run"))
    return workdir, train.train_and_evaluate(config, workdir)


@pytest.mark.parametrize("num_devices", [4, 1])
def test_checkpoint_from_8_fsdp_devices_restores_on_fewer(fsdp_run, tiny_config, num_devices):
    workdir, saved_metrics = fsdp_run
    mesh = sharding.create_mesh({"data": num_devices}, jax.devices()[:num_devices])
    metrics = evaluate.evaluate_checkpoint(tiny_config, workdir, mesh=mesh)
    for name, value in saved_metrics.items():
        if name != "eval/seconds":
            assert metrics[name] == pytest.approx(value, abs=1e-5), name


def test_a_checkpoint_that_does_not_fit_the_config_names_the_fix(fsdp_run, tiny_config):
    workdir, _ = fsdp_run
    tiny_config.model.text_tower.width = 48
    with pytest.raises(ValueError, match=r"holds checkpoints of another model.*text_tower.*"
                       r"from_workdir.py"):
        evaluate.evaluate_checkpoint(tiny_config, workdir)


def test_lit_fine_tuning_keeps_the_locked_image_tower_bit_identical(finished_run, tiny_config,
                                                                   tmp_path):
    from mmjax.training import checkpoint

    pretrained, _ = finished_run
    tiny_config.init_from.checkpoint = pretrained
    tiny_config.init_from.params = ("image_tower", "image_projection")
    tiny_config.frozen_params = ("image_tower", "image_projection")
    tiny_config.seed = 7  # the text tower starts fresh, from another seed
    tiny_config.total_steps = 3
    tiny_config.data.eval = ""  # no evaluation: not what this tests
    workdir = str(tmp_path / "lit")
    train.train_and_evaluate(tiny_config, workdir, mesh=one_device_mesh())

    before, after = checkpoint.load_params(pretrained), checkpoint.load_params(workdir)
    image_names = [n for n in before if n.startswith(("image_tower/", "image_projection/"))]
    assert image_names
    for name in image_names:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    text_names = [n for n in before if n.startswith("text_tower/")]
    assert any(not np.array_equal(after[n], before[n]) for n in text_names)


def test_inference_api_matches_the_trainer(finished_run, tiny_config):
    from input_pipeline.generated import shapes
    from mmjax import inference
    from mmjax.training import checkpoint

    workdir, _ = finished_run
    model = inference.load(workdir)
    trainer = Trainer(tiny_config, mesh=one_device_mesh())
    state = trainer.restore(checkpoint.create_manager(workdir, keep=None), 8)
    evaluator = suite.Evaluation(trainer)
    batch = next(suite.open_eval_data(evaluator).batches())
    expected = jax.device_get(evaluator.encode_step(
        state["params"], trainer.global_batch(batch, keys=tuple(
            suite.eval_inputs(trainer.config)))))
    np.testing.assert_allclose(
        model.encode_image(batch["image"]), expected["image"], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        model.encode_text(batch["tokens"]), expected["text"], rtol=1e-5, atol=1e-5
    )

    # Strings and uint8 images of any size go through the model's own tokenizer and preprocessing.
    examples = [
        shapes.render_example("test", int(i)) for i in batch["id"][:4]
    ]  # records are shuffled
    captions = [e["caption"] for e in examples]
    np.testing.assert_array_equal(model.encode_text(captions),
                                  model.encode_text(trainer.tokenizer(captions)))
    from_uint8 = model.encode_image(np.stack([e["image"] for e in examples]))  # 64 px -> 16 px
    np.testing.assert_allclose(from_uint8, expected["image"][:4], rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="must be 16x16"):
        model.encode_image(np.zeros((1, 20, 20, 3), np.float32))


def test_best_by_a_metric_of_one_of_several_eval_sets_at_other_intervals(tiny_config, tmp_path):
    """Set `b` evaluates at steps 2, 4, 6 and 8, set `a` (the best-by metric's) at 3, 6 and 8:
    only a's steps are saved with metrics, so orbax's best-by never meets a step without it."""
    spec = tiny_config.data.eval
    tiny_config.eval_sets = {"a": dict(data=spec, evals=("retrieval",), every_steps=3),
                             "b": dict(data=spec, evals=("retrieval",), every_steps=2)}
    tiny_config.keep_best_by = "eval/a/t2i_recall@5"
    tiny_config.keep_checkpoints = 1
    workdir = str(tmp_path / "best")
    train.train_and_evaluate(tiny_config, workdir, mesh=one_device_mesh())
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records if "eval/a/t2i_recall@5" in r] == [3, 6, 8]
    with checkpoint.create_manager(workdir, keep=1, best_by=tiny_config.keep_best_by) as manager:
        assert manager.best_step() in (3, 6, 8)


def test_best_checkpoint_by_an_eval_metric_is_kept_beside_the_last(tiny_config, tmp_path):
    """orbax's preservation policy keeps the latest and the best (the earliest among equal
    values); each checkpoint holds its input position and, when evaluated, its metrics."""
    metric = "eval/mmjax_shapes/t2i_recall@5"
    tiny_config.keep_best_by = metric
    tiny_config.eval_every_steps = 2
    tiny_config.keep_checkpoints = 1
    workdir = str(tmp_path / "best")
    train.train_and_evaluate(tiny_config, workdir, mesh=one_device_mesh())
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [(r[metric], -r["step"]) for r in map(json.loads, f) if metric in r]
    assert [-step for _, step in evals] == [2, 4, 6, 8]
    best_value, best_step = max(evals)
    best_step = -best_step
    checkpoints = os.path.join(workdir, "checkpoints")
    assert sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit()) == sorted({best_step, 8})
    with checkpoint.create_manager(workdir, keep=1, best_by=metric) as manager:
        assert manager.best_step() == best_step
    with open(os.path.join(checkpoints, str(best_step), "metrics", "metrics")) as f:
        assert json.load(f)[metric] == best_value
    assert checkpoint.saved_data_state(workdir, best_step)["position"] == best_step * 16
    assert not os.path.exists(os.path.join(workdir, "data_state.json"))
    assert not os.path.exists(os.path.join(workdir, "best"))


def test_eval_writes_a_report_and_numbers_a_brute_force_recount_confirms(finished_run, tiny_config,
                                                                        tmp_path):
    """--mode=eval on 8 devices: eval_results.json, eval_embeddings.npz, eval_report.md and its
    PNGs; recall@k (identical captions right for each other) and zero-shot accuracy recomputed
    by plain loops over the saved embeddings and captions equal the reported ones."""
    workdir = copy_run(finished_run, tmp_path / "run")
    tiny_config.evals = ("retrieval", "zeroshot", "linear_probe")
    metrics = evaluate.evaluate_checkpoint(tiny_config, workdir)
    # 512 probe images of 32 classes after 8 steps: above the 1/32 chance, not yet good.
    assert 1 / 32 < metrics["eval/mmjax_shapes/linear_probe_top1"] < 0.9
    with open(os.path.join(workdir, "eval_results.json")) as f:
        results = json.load(f)
    saved = np.load(os.path.join(workdir, "eval_embeddings.npz"))
    image = saved["image"] / np.linalg.norm(saved["image"], axis=1, keepdims=True)
    text = saved["text"] / np.linalg.norm(saved["text"], axis=1, keepdims=True)
    n = len(image)

    captions = [str(c) for c in saved["captions"]]

    def recall(scores, k):
        # A word-for-word identical caption is a right answer too; ties count against.
        hits = 0
        for query in range(n):
            right = [o for o in range(n) if captions[o] == captions[query]]
            best = max(scores[query][o] for o in right)
            better = sum(1 for other in range(n)
                         if other not in right and scores[query][other] >= best)
            hits += better < k
        return hits / n

    similarity = (image @ text.T).tolist()
    transposed = [list(row) for row in zip(*similarity)]
    for k in (1, 5, 10):
        assert results[f"eval/mmjax_shapes/i2t_recall@{k}"] == pytest.approx(recall(similarity, k))
        assert results[f"eval/mmjax_shapes/t2i_recall@{k}"] == pytest.approx(recall(transposed, k))
    classes = saved["class_embeddings"]
    correct = sum(int(np.argmax([image[i] @ c for c in classes]) == saved["labels"][i])
                  for i in range(n))
    assert results["eval/mmjax_shapes/zeroshot_top1"] == pytest.approx(correct / n)
    assert metrics["eval/mmjax_shapes/zeroshot_top1"] == results["eval/mmjax_shapes/zeroshot_top1"]

    with open(os.path.join(workdir, "eval_report.md")) as f:
        report = f.read()
    for section in ("## retrieval", "## zero-shot", "## linear probe", "## training",
                    "| i2t_recall@10 |"):
        assert section in report
    for figure in ("retrieval_examples", "similarity", "zeroshot_per_class", "training_curves"):
        path = os.path.join(workdir, "report", f"{figure}.png")
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert f"report/{figure}.png" in report
