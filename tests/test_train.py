import json
import os
import shutil
import time

import jax
import numpy as np
import pytest

from conftest import copy_run, one_device_mesh
from input_pipeline import pipeline
from mmjax import evaluate, train
from mmjax.training.trainer import Trainer


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(workdir):
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def test_a_few_steps_on_one_batch_lower_the_loss(tiny_config):
    tiny_config.learning_rate = 3e-3
    tiny_config.total_steps = 10  # the schedule decays over total_steps
    tiny_config.warmup_steps = 0
    trainer = Trainer(tiny_config, mesh=one_device_mesh())
    batch = next(pipeline.train_batches(tiny_config, trainer.tokenizer))
    state = trainer.create_state()
    losses = []
    for _ in range(10):
        state, metrics = trainer.train_step(state, trainer.global_batch(batch))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.85 * losses[0], losses
    assert int(state["step"]) == 10


def test_patch_dropout_draws_per_step_and_evaluation_sees_every_patch(tiny_config):
    tiny_config.model.image_tower.patch_dropout = 0.5
    trainer = Trainer(tiny_config, mesh=one_device_mesh())
    params = trainer.create_state()["params"]
    batch = {"image": np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), np.uint8),
             "tokens": np.full((4, trainer.tokenizer.context_length), 5, np.int32)}

    def trained(step):  # the train step's forward pass at `step`
        return np.asarray(trainer.forward(params, batch, trainer.step_rng(step))["image_embedding"])

    np.testing.assert_array_equal(trained(3), trained(3))  # a resumed step drops the same patches
    assert np.abs(trained(3) - trained(4)).max() > 1e-3
    # Evaluation encodes every patch: equal to the same parameters without patch dropout.
    tiny_config.model.image_tower.patch_dropout = 0.0
    without = Trainer(tiny_config, mesh=one_device_mesh())
    evaluated = trainer.model(params).encode_image(batch["image"])[0]
    np.testing.assert_array_equal(evaluated, without.model(params).encode_image(batch["image"])[0])
    np.testing.assert_array_equal(
        without.forward(params, batch, trainer.step_rng(3))["image_embedding"], evaluated)


def test_a_resumed_run_matches_the_uninterrupted_one(finished_run, tiny_config, tmp_path):
    reference, final_metrics = finished_run
    expected = train_losses(reference)
    assert sorted(expected) == list(range(1, 9))

    # Outputs of a run: config snapshot, metrics with the documented names, TensorBoard events.
    assert json.load(open(os.path.join(reference, "config.json")))["seed"] == tiny_config.seed
    record = read_metrics(reference)[0]
    for name in ("train/loss", "train/learning_rate", "train/grad_norm", "train/param_norm",
                 "train/examples_per_sec", "train/data_wait_seconds", "data/skipped"):
        assert name in record and np.isfinite(record[name]), name
    assert final_metrics["eval/mmjax_shapes/num_candidates"] == 128
    assert os.listdir(os.path.join(reference, "tensorboard"))

    # A crash after step 4: the later checkpoint and log lines are gone; the same command
    # continues, and the continuation matches the uninterrupted run bitwise.
    crashed = copy_run(finished_run, tmp_path / "crashed")
    shutil.rmtree(os.path.join(crashed, "checkpoints", "8"))
    records = [r for r in read_metrics(crashed) if r["step"] <= 4 and "train/loss" in r]
    with open(os.path.join(crashed, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    resumed_metrics = train.train_and_evaluate(tiny_config, crashed)
    assert train_losses(crashed) == expected
    final_metrics = {k: v for k, v in final_metrics.items() if k != "eval/seconds"}
    assert {k: v for k, v in resumed_metrics.items() if k != "eval/seconds"} == pytest.approx(
        final_metrics, abs=1e-6)

    # --mode=eval on the finished run reproduces the final evaluation.
    evaluated = evaluate.evaluate_checkpoint(tiny_config, crashed)
    assert evaluated == pytest.approx(final_metrics, abs=1e-6)


def test_the_trainer_snapshots_its_config(tiny_config):
    trainer = Trainer(tiny_config, mesh=one_device_mesh())
    tiny_config.grad_accum_steps = 4
    tiny_config.losses = {"siglip": 1.0}
    assert trainer.accum_steps == 1 and trainer.config.grad_accum_steps == 1
    assert list(trainer.objective.losses) == ["clip"]


def test_gradient_accumulation_gives_the_one_batch_update(tiny_config):
    """Four micro-batches give the one-batch loss, gradients and update (GradCache)."""
    mesh = one_device_mesh()
    one_batch = Trainer(tiny_config, mesh=mesh)
    accumulating_config = tiny_config.copy_and_resolve_references()
    accumulating_config.grad_accum_steps = 4
    accumulated = Trainer(accumulating_config, mesh=mesh)
    assert (one_batch.accum_steps, accumulated.accum_steps) == (1, 4)
    batch = one_batch.global_batch(next(pipeline.train_batches(tiny_config, one_batch.tokenizer)))
    state = one_batch.create_state()
    rng = one_batch.step_rng(0)
    (loss, _), grads = jax.jit(one_batch.loss_and_grads)(state["params"], batch, rng)
    (accum_loss, _), accum_grads = jax.jit(accumulated.loss_and_grads)(state["params"], batch,
                                                                       rng)
    assert float(accum_loss) == pytest.approx(float(loss), abs=1e-6)
    # Up to float32 rounding (a sum over four micro-batches is not the one-batch sum); an
    # accumulation that keeps one micro-batch's share is off by 0.25.
    for g, a in zip(jax.tree.leaves(grads), jax.tree.leaves(accum_grads)):
        np.testing.assert_allclose(a, g, atol=5e-6, rtol=1e-4)
    # Warm the schedule past step 0 so the update is not zero.
    state["step"] = jax.numpy.asarray(3, jax.numpy.int32)
    copy = jax.tree.map(jax.numpy.copy, state)
    updated, _ = one_batch.train_step(state, batch)
    accum_updated, _ = accumulated.train_step(copy, batch)
    for p, a in zip(jax.tree.leaves(updated["params"]), jax.tree.leaves(accum_updated["params"])):
        np.testing.assert_allclose(a, p, atol=1e-5, rtol=0)


def test_throughput_counts_training_only():
    """Steps/s after an evaluation: the time and the steps before it are not counted."""
    now = [0.0]
    throughput = train.Throughput(0, clock=lambda: now[0])
    now[0] = 10.0  # 50 steps in 10 s
    assert throughput.steps_per_second(50) == pytest.approx(5.0)
    throughput.restart(50)
    now[0] = 70.0  # an evaluation of 60 s after step 50 ...
    throughput.restart(50)
    now[0] = 80.0  # ... then 50 steps in 10 s
    assert throughput.steps_per_second(100) == pytest.approx(5.0)


def test_the_wait_for_input_is_measured_per_interval():
    now = [0.0]
    throughput = train.Throughput(0, clock=lambda: now[0])

    def slow_batches():
        while True:
            now[0] += 0.25  # each batch takes 0.25 s to arrive
            yield {}

    batches = slow_batches()
    for _ in range(4):
        throughput.next_batch(batches)
        now[0] += 1.0  # the step's own host time is not waiting
    assert throughput.data_wait == pytest.approx(1.0)
    throughput.restart(4)
    assert throughput.data_wait == 0.0


def test_several_processes_agree_on_the_preemption_step_without_a_collective(monkeypatch):
    """With several processes SIGTERM is left to JAX's preemption service, and the loop asks
    its sync point at each step: no collective (the all-gather is made to fail here)."""
    import signal

    from jax.experimental import multihost_utils

    asked = []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather",
                        lambda x: pytest.fail("a collective for preemption"))
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point",
                        lambda step: asked.append(step) or step == 57)
    handler = train.PreemptionHandler()
    try:
        assert signal.getsignal(signal.SIGTERM) != handler._handle
        assert signal.getsignal(signal.SIGINT) == handler._handle
        stops = [handler.requested(step) for step in range(1, 101)]
        assert asked == list(range(1, 101))
        assert stops == [step == 57 for step in range(1, 101)]
    finally:
        handler.restore()


def _wandb_history(run_file: str) -> dict[int, dict[str, float]]:
    """The history records of an offline W&B run file: protobuf Records in 32 KiB blocks of
    chunks, each chunk behind a 7-byte header (checksum, length, kind: 1 whole, 2-4 parts)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = open(run_file, "rb").read()
    position, pending, history = 7, b"", {}  # after the file header
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        if kind == 0:
            break
        pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record.FromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item}
                history[record.history.step.num] = {k: v for k, v in items.items()
                                                    if not k.startswith("_")}
    return history


def test_the_wandb_writer_logs_what_metrics_jsonl_gets(tiny_config, tmp_path):
    """config.wandb.project turns on the W&B writer beside JSONL and TensorBoard (offline here:
    the run file is read back), with a run id that a resumed run shares."""
    import glob

    from mmjax.training.metric_writers import MetricWriter

    tiny_config.wandb.update(project="mmjax-tests", mode="offline")
    workdir = str(tmp_path / "run")
    writer = MetricWriter(workdir, total_steps=3, config=tiny_config)
    logged = {step: {"train/loss": 1.0 / step, "eval/x/i2t_recall@1": 0.25 * step}
              for step in (1, 2, 3)}
    for step, metrics in logged.items():
        writer.write(step, metrics)
    writer.close()
    assert {r["step"]: {k: v for k, v in r.items() if k != "step"}
            for r in read_metrics(workdir)} == logged
    (run_file,) = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb"))
    # wandb-core writes the run file in the background: finish() can return before it does.
    deadline = time.monotonic() + 60
    while _wandb_history(run_file) != logged and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _wandb_history(run_file) == logged
    resumed = MetricWriter(workdir, total_steps=3, resume_step=3, config=tiny_config)
    resumed.close()
    run_ids = {os.path.basename(p).split("-")[-1]
               for p in glob.glob(os.path.join(workdir, "wandb", "offline-run-*"))}
    assert len(run_ids) == 1
