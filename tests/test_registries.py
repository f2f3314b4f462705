"""Adding a loss or an evaluator is one function plus one registry entry: the trainer, the
evaluation and the preflight find everything else in the entry."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import copy_run, one_device_mesh
from mmjax import evaluate, losses, preflight, train
from mmjax.evaluation import evaluators


def test_a_new_loss_is_one_function_and_one_entry(tiny_config, tmp_path, monkeypatch):
    def embedding_norm_loss(outputs, batch, *, target):
        """Pulls the mean image embedding norm towards `target` (from the config)."""
        del batch
        norm = jnp.linalg.norm(outputs["image_embedding"], axis=-1).mean()
        return (norm - target) ** 2, {"image_norm": norm}

    monkeypatch.setitem(losses.LOSSES, "embedding_norm", losses.Loss(
        embedding_norm_loss, ("image_embedding",),
        settings=lambda config, tokenizer: {"target": config.learning_rate * 1000}))
    tiny_config.losses = {"clip": 1.0, "embedding_norm": 0.5}
    tiny_config.total_steps = 2
    tiny_config.data.eval = ""  # no evaluation: not what this tests
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(tiny_config, workdir, mesh=one_device_mesh())
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f if "train/image_norm" in line]
    assert [r["step"] for r in logged] == [1, 2] and all(r["train/image_norm"] > 0 for r in logged)

    # What it declares is checked like any built-in loss's.
    monkeypatch.setitem(losses.LOSSES, "embedding_norm", losses.Loss(
        embedding_norm_loss, ("image_features",), "use a model that has them"))
    with pytest.raises(preflight.ConfigError, match=r"the 'embedding_norm' loss reads "
                       r"\['image_features'\], which the 'clip' model does not output"):
        preflight.check(tiny_config)


def test_a_new_evaluator_is_one_function_and_one_entry(finished_run, tiny_config, tmp_path,
                                                        monkeypatch):
    def mean_text_norm(context):
        return {"mean_text_norm": float(np.mean(context.extra["text_norm"]))}

    monkeypatch.setitem(evaluators.EVALUATORS, "text_norm", evaluators.Evaluator(
        mean_text_norm, metrics=("mean_text_norm",),
        device_outputs=lambda model, batch, encoded, settings: {
            "text_norm": jnp.linalg.norm(encoded["text"], axis=-1)}))
    tiny_config.evals = ("retrieval", "text_norm")
    workdir = copy_run(finished_run, tmp_path / "run")
    metrics = evaluate.evaluate_checkpoint(tiny_config, workdir)
    saved = np.load(os.path.join(workdir, "eval_embeddings.npz"))
    assert metrics["eval/mmjax_shapes/mean_text_norm"] == pytest.approx(
        np.linalg.norm(saved["text"], axis=-1).mean(), rel=1e-5)
    assert metrics["eval/mmjax_shapes/i2t_recall@1"] == finished_run[1][
        "eval/mmjax_shapes/i2t_recall@1"]
