"""Evaluation: one encode pass over the eval set, then the configured evaluators.

The encode step computes the image and text embeddings of every eval batch and whatever the
evaluators declare as device outputs (captions, matching logits, class logits); the evaluators
then turn it into metrics (mmjax.evaluation.evaluators). Also `--mode=eval` and `--mode=caption`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from input_pipeline import pipeline
from mmjax import conventions, sharding
from mmjax.evaluation import benchmark_results, eval_sets, evaluators
from mmjax.evaluation.eval_sets import EvalSet
from mmjax.models import decoding
from mmjax.training.trainer import Trainer, modality_inputs


def eval_inputs(config) -> dict[str, int]:
    """The eval batch entries (name -> ndim) the encode step takes."""
    return {**modality_inputs(config.model), "tokens": 2, "label": 1, "valid": 1}


def all_rows(local: np.ndarray) -> np.ndarray:
    """A global batch's rows of a host array, from every process's part, in process order."""
    if jax.process_count() == 1:
        return np.asarray(local)
    return np.asarray(multihost_utils.process_allgather(local, tiled=True))


def report_thumbnails(images: np.ndarray, normalization: str, size: int = 48) -> np.ndarray:
    """Eval images (uint8, or normalised floats) as uint8, shrunk to at most `size` pixels (box
    filter)."""
    pixels = np.asarray(images, np.float32)
    if np.asarray(images).dtype != np.uint8:
        mean, std = conventions.image_normalization(normalization)
        pixels = np.clip(pixels * np.asarray(std) + np.asarray(mean), 0, 255)
    factor = max(1, -(-pixels.shape[1] // size))
    if factor > 1:
        n, h, w, c = pixels.shape
        h, w = h // factor * factor, w // factor * factor
        pixels = pixels[:, :h, :w].reshape(n, h // factor, factor, w // factor, factor, c)
        pixels = pixels.mean(axis=(2, 4))
    return pixels.round().astype(np.uint8)


class Evaluation:
    """The compiled encode steps of a trainer and the evaluators of one eval set of its plan
    (mmjax.evaluation.eval_sets; the first by default)."""

    def __init__(self, trainer: Trainer, eval_set: EvalSet | None = None):
        self.trainer = trainer
        self.eval_set = eval_set or trainer.plan.eval_sets[0]
        self.evaluators = {name: evaluators.EVALUATORS[name] for name in self.eval_set.evals}
        self.settings = evaluators.EvalSettings.from_config(trainer.config, trainer.tokenizer)

    @property
    def needs_probe(self) -> bool:
        return any(e.needs_probe for e in self.evaluators.values())

    def _encode(self, params, batch):
        trainer = self.trainer
        with sharding.use_mesh_rules(trainer.mesh, trainer.rules):
            model = trainer.model(params)
            # Each modality's embeddings by modality name ("image", "audio", "text").
            encoded = {**model.encode_batch(batch)[0], "tokens": batch["tokens"],
                       "label": batch["label"], "valid": batch["valid"]}
            for evaluator in self.evaluators.values():
                if evaluator.device_outputs is not None:
                    encoded.update(evaluator.device_outputs(model, batch, encoded, self.settings))
            return encoded

    def compile_over_batch(self, fn: Callable, batch_ndims) -> Callable:
        trainer = self.trainer
        return jax.jit(fn, in_shardings=(trainer.state_shardings["params"], jax.tree.map(
            trainer.batch_sharding, batch_ndims)), out_shardings=trainer.replicated)

    @functools.cached_property
    def encode_step(self) -> Callable:
        return self.compile_over_batch(self._encode, eval_inputs(self.trainer.config))

    @functools.cached_property
    def encode_text_step(self) -> Callable:
        def encode_text(params, tokens):
            with sharding.use_mesh_rules(self.trainer.mesh, self.trainer.rules):
                return self.trainer.model(params).encode_text(tokens)[0]
        trainer = self.trainer
        return jax.jit(encode_text, in_shardings=(trainer.state_shardings["params"],
                                                  trainer.replicated),
                       out_shardings=trainer.replicated)

    @functools.cached_property
    def encode_examples_step(self) -> Callable:
        """Every classified modality's embeddings (all but text) of an eval batch."""
        def encode(params, batch):
            with sharding.use_mesh_rules(self.trainer.mesh, self.trainer.rules):
                model = self.trainer.model(params)
                return {m: model.encode(m, batch[conventions.BATCH_KEYS[m]])[0]
                        for m in self.classified}
        return self.compile_over_batch(encode, self.classified_inputs)

    @property
    def classified(self) -> tuple[str, ...]:
        return tuple(m for m in self.trainer.model_modalities if m != "text")

    @property
    def classified_inputs(self) -> dict[str, int]:
        return {k: v for k, v in modality_inputs(self.trainer.config.model).items()
                if k != conventions.BATCH_KEYS["text"]}

    @functools.cached_property
    def caption_step(self) -> Callable:
        def caption(params, images):
            with sharding.use_mesh_rules(self.trainer.mesh, self.trainer.rules):
                return decoding.caption(self.trainer.model(params), images,
                                        self.settings.tokenizer, self.settings.beam_size)
        return self.compile_over_batch(caption, 4)

    def encode_examples(self, params, data) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Each classified modality's embeddings, and the labels, of one pass over `data` (an
        EvalData)."""
        features, labels = {m: [] for m in self.classified}, []
        for local_batch in data.batches():
            batch = self.trainer.global_batch(local_batch, keys=tuple(self.classified_inputs))
            valid = all_rows(local_batch["valid"]).astype(bool)
            for modality, value in jax.device_get(self.encode_examples_step(
                    params, batch)).items():
                features[modality].append(value[valid])
            labels.append(all_rows(local_batch["label"])[valid])
        return {m: np.concatenate(f) for m, f in features.items()}, np.concatenate(labels)

    def encode_token_rows(self, params, tokens: np.ndarray) -> np.ndarray:
        """Embeds token rows in fixed-size chunks (one compiled shape)."""
        chunk = 256
        padded = np.zeros((-(-len(tokens) // chunk) * chunk, tokens.shape[1]), np.int32)
        padded[: len(tokens)] = tokens
        outputs = [np.asarray(self.encode_text_step(params, padded[i:i + chunk]))
                   for i in range(0, len(padded), chunk)]
        return np.concatenate(outputs)[: len(tokens)]

    def evaluate(self, params, eval_data, report: dict | None = None) -> dict[str, float]:
        """Encodes one pass of the eval set and runs every planned evaluator on it.

        `report`, if given, is filled with what the evaluation report shows: the evaluators'
        details, the embeddings, image thumbnails and the reference captions.
        """
        trainer = self.trainer
        parts: dict[str, list[np.ndarray]] = {}
        thumbnails, all_captions = [], []
        for local_batch in eval_data.batches():
            encoded = jax.device_get(self.encode_step(
                params, trainer.global_batch(local_batch,
                                             keys=tuple(eval_inputs(trainer.config)))))
            valid = encoded.pop("valid")
            for key, value in encoded.items():
                parts.setdefault(key, []).append(value[valid])
            if "all_tokens" in local_batch:  # several captions per image
                all_captions.append((all_rows(local_batch["all_tokens"])[valid],
                                     all_rows(local_batch["all_valid"])[valid]))
            if report is not None and "image" in local_batch:
                local = report_thumbnails(local_batch["image"], trainer.config.data.normalization)
                thumbnails.append(all_rows(local)[valid])
        outputs = {key: np.concatenate(value) for key, value in parts.items()}
        if self.needs_probe:
            probe, outputs["probe_labels"] = self.encode_examples(params, eval_data.probe)
            outputs.update({f"probe_{m}": features for m, features in probe.items()})
        context = evaluators.EvalContext(
            embeddings={m: outputs.pop(m) for m in trainer.model_modalities},
            labels=outputs.pop("label"), tokens=outputs.pop("tokens"), extra=outputs,
            tokenizer=trainer.tokenizer, class_names=eval_data.class_names,
            prompt_templates=eval_data.prompt_templates,
            present_classes_only=eval_data.present_classes_only, settings=self.settings,
            encode_texts=lambda texts: self.encode_token_rows(params, trainer.tokenizer(texts)))
        if all_captions:
            tokens = np.concatenate([t for t, _ in all_captions])
            present = np.concatenate([v for _, v in all_captions]).astype(bool)
            context.all_text_image = np.nonzero(present)[0]
            context.all_text_embeddings = self.encode_token_rows(params, tokens[present])
        metrics = {}
        for evaluator in self.evaluators.values():
            for metric, value in evaluator.compute(context).items():
                metrics[f"eval/{eval_data.name}/{metric}"] = value
        if report is not None:
            report.update(details=context.details,
                          thumbnails=np.concatenate(thumbnails) if thumbnails else None,
                          embeddings=context.embeddings, labels=context.labels,
                          captions=[trainer.tokenizer.decode(row) for row in context.tokens],
                          dataset=eval_data.name)
        return metrics


def open_eval_data(evaluation: Evaluation):
    """An evaluation's eval split (and the probe's training images, if an evaluator needs
    them), batched as the plan says."""

    trainer = evaluation.trainer
    return pipeline.eval_data(trainer.config, trainer.tokenizer, evaluation.eval_set,
                              global_batch_size=trainer.plan.eval_batch_size,
                              with_probe=evaluation.needs_probe)


class EvalSuite:
    """Every eval set of a trainer's plan: each set's evaluation, and its data once opened."""

    def __init__(self, trainer: Trainer):
        self.evaluations = [Evaluation(trainer, s) for s in trainer.plan.eval_sets if s.evals]
        self.data: dict[int, object] = {}  # index -> EvalData, opened on first use

    def __bool__(self) -> bool:
        return bool(self.evaluations)

    def run(self, params, step: int, is_last: bool = True,
            reports: list | None = None) -> dict[str, float]:
        """The metrics of the sets due at `step` (all of them at the last); `reports`, if
        given, gets (EvalSet, EvalData, report) triples."""
        metrics = {}
        for i, evaluation in enumerate(self.evaluations):
            if not evaluation.eval_set.due(step, is_last):
                continue
            if i not in self.data:
                self.data[i] = open_eval_data(evaluation)
            details = {} if reports is not None else None
            metrics.update(evaluation.evaluate(params, self.data[i], report=details))
            if reports is not None:
                reports.append((evaluation.eval_set, self.data[i], details))
        return metrics

    def write_benchmark_results(self, config, workdir: str, step: int,
                                metrics: dict[str, float]) -> list[str]:
        """clip_benchmark-style files of the sets evaluated so far (benchmark_results.py)."""
        named = [(data.name, data.benchmark_name) for data in self.data.values()]
        return benchmark_results.write(workdir, named, metrics, model=config.get("name", ""),
                                       step=step)


def real_images(config, tokenizer, data: str, examples: int):
    """(uint8 images, captions) of a split, as the run's eval pipeline reads them."""

    eval_set = dataclasses.replace(eval_sets.eval_sets(config)[0], data=data, name="judge",
                                   max_examples=examples, where=None, captions_per_image=1)
    batches = pipeline.eval_data(config, tokenizer, eval_set, global_batch_size=250).batches()
    images, tokens = [], []
    for batch in batches:
        keep = batch["valid"].astype(bool)
        images.append(batch["image"][keep])
        tokens.append(batch["tokens"][keep])
    return np.concatenate(images), [tokenizer.decode(row) for row in np.concatenate(tokens)]
