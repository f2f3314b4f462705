import json
import os
import shutil

import jax
import numpy as np
import pytest

from input_pipeline import pipeline
from mmjax import sharding, train


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(workdir):
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def test_a_few_steps_on_one_batch_lower_the_loss(tiny_config):
    tiny_config.learning_rate = 3e-3
    tiny_config.total_steps = 10  # the schedule decays over total_steps
    tiny_config.warmup_steps = 0
    trainer = train.Trainer(tiny_config, mesh=sharding.create_mesh({"data": 1}, jax.devices()[:1]))
    batch = next(pipeline.train_batches(tiny_config, trainer.tokenizer))
    state = trainer.create_state()
    losses = []
    for _ in range(10):
        state, metrics = trainer.train_step(state, trainer.global_batch(batch))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.85 * losses[0], losses
    assert int(state["step"]) == 10


def test_runs_are_reproducible_and_resume_exactly(tiny_config, tmp_path):
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    final_metrics = train.train_and_evaluate(tiny_config, first)
    train.train_and_evaluate(tiny_config, second)
    expected = train_losses(first)
    assert sorted(expected) == list(range(1, 9))
    assert train_losses(second) == expected  # bitwise: same seed, same losses

    # Outputs of a run: config snapshot, metrics with the documented names, TensorBoard events.
    assert json.load(open(os.path.join(first, "config.json")))["seed"] == tiny_config.seed
    record = read_metrics(first)[0]
    for name in ("train/loss", "train/learning_rate", "train/grad_norm", "train/examples_per_sec"):
        assert name in record
    assert final_metrics["eval/mmjax_shapes/num_candidates"] == 128
    for name in ("i2t_recall@1", "i2t_recall@5", "t2i_recall@1", "t2i_recall@5", "zeroshot_top1"):
        assert 0.0 <= final_metrics[f"eval/mmjax_shapes/{name}"] <= 1.0
    assert os.listdir(os.path.join(first, "tensorboard"))

    # Simulate a crash after step 4: drop the later checkpoint and log lines, run the same
    # command again, and the continuation matches the uninterrupted run.
    shutil.rmtree(os.path.join(second, "checkpoints", "8"))
    records = [r for r in read_metrics(second) if r["step"] <= 4 and "train/loss" in r]
    with open(os.path.join(second, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    resumed_metrics = train.train_and_evaluate(tiny_config, second)
    assert train_losses(second) == expected
    assert resumed_metrics == pytest.approx(
        {k: v for k, v in final_metrics.items() if k != "eval/seconds"} | {
            "eval/seconds": resumed_metrics["eval/seconds"]})

    # --mode=eval on the finished run reproduces the final evaluation.
    evaluated = train.evaluate_checkpoint(tiny_config, first)
    for name, value in final_metrics.items():
        if name != "eval/seconds":
            assert evaluated[name] == pytest.approx(value, abs=1e-6), name


def load_words_vocabulary():
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "input_pipeline", "shapes_vocabulary.txt")


def test_config_errors_come_before_compiling(tiny_config):
    tiny_config.tokenizer.context_length = 20
    with pytest.raises(ValueError, match="context_length .*set them equal"):
        train.Trainer(tiny_config)
    tiny_config.tokenizer.context_length = 12
    tiny_config.tokenizer.update(name="clip_bpe", vocabulary_file=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "fixtures", "bpe_simple_vocab_16e6.txt.gz"))
    with pytest.raises(ValueError, match="ends texts with id 49407 .*text_tower.eot_id=49407"):
        train.Trainer(tiny_config)
    tiny_config.tokenizer.update(name="words", vocabulary_file=load_words_vocabulary())
    tiny_config.batch_size = 12
    with pytest.raises(ValueError, match="batch_size 12 must split .* divide over the 8 devices"):
        train.Trainer(tiny_config)
    tiny_config.batch_size = 16
    tiny_config.model.attention_implementation = "cudnn"
    with pytest.raises(ValueError, match="'cudnn' needs NVIDIA GPUs .*found cpu.*Set it to 'xla'"):
        train.Trainer(tiny_config)


def test_gradient_accumulation_gives_the_one_batch_update(tiny_config):
    mesh = sharding.create_mesh({"data": 1}, jax.devices()[:1])
    one_batch = train.Trainer(tiny_config, mesh=mesh)
    tiny_config.grad_accum_steps = 4
    accumulated = train.Trainer(tiny_config, mesh=mesh)
    batch = one_batch.global_batch(next(pipeline.train_batches(tiny_config, one_batch.tokenizer)))
    state = one_batch.create_state()
    rng = one_batch.step_rng(0)
    (loss, _), grads = jax.jit(one_batch.loss_and_grads)(state["params"], batch, rng)
    (accum_loss, _), accum_grads = jax.jit(accumulated.loss_and_grads)(state["params"], batch,
                                                                       rng)
    assert float(accum_loss) == pytest.approx(float(loss), abs=1e-6)
    for g, a in zip(jax.tree.leaves(grads), jax.tree.leaves(accum_grads)):
        np.testing.assert_allclose(a, g, atol=1e-6, rtol=1e-4)
    # Warm the schedule past step 0 so the update is not zero.
    state["step"] = jax.numpy.asarray(3, jax.numpy.int32)
    copy = jax.tree.map(jax.numpy.copy, state)
    updated, _ = one_batch.train_step(state, batch)
    accum_updated, _ = accumulated.train_step(copy, batch)
    for p, a in zip(jax.tree.leaves(updated["params"]), jax.tree.leaves(accum_updated["params"])):
        np.testing.assert_allclose(a, p, atol=1e-5, rtol=0)
