"""The one trainer: state creation, the train step, evaluation and the loop.

Everything model-specific comes from the registries (models, losses, evaluators); the loop only
knows that the model maps a batch to outputs, the losses map outputs to a scalar, and the
evaluators map embeddings to metrics.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmjax import (checkpoint, decoding, evaluators, losses, models, optim, sharding,
                   tokenizers)
from mmjax.metric_writers import MetricWriter

MODEL_INPUTS = {"image": 4, "tokens": 2}  # name -> ndim
EVAL_INPUTS = {**MODEL_INPUTS, "label": 1, "valid": 1}


class TrainingDiverged(RuntimeError):
    pass


def global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def validate_config(config) -> None:
    """Checks that need no compilation, so a bad config fails in seconds."""
    losses.check_loss_weights(dict(config.losses))
    evaluators.check_evaluator_names(list(config.evals), config.model.name)
    for field in ("total_steps", "batch_size", "log_every_steps"):
        if config[field] <= 0:
            raise ValueError(f"config.{field} must be positive, got {config[field]}.")
    text_length = config.model.text_tower.get("context_length")
    if text_length is not None and text_length != config.tokenizer.context_length:
        raise ValueError(
            f"config.tokenizer.context_length ({config.tokenizer.context_length}) differs from "
            f"config.model.text_tower.context_length ({text_length}); set them equal."
        )


class Trainer:
    """Holds the mesh, the abstract state and the compiled steps for one config."""

    def __init__(self, config, mesh: Mesh | None = None):
        validate_config(config)
        self.config = config
        self.mesh = mesh if mesh is not None else sharding.create_mesh(dict(config.mesh))
        self.rules = sharding.get_rules(config.sharding_rules)
        if config.model.get("attention_implementation") == "cudnn":
            platform = self.mesh.devices.flat[0].platform
            if platform != "gpu" or config.model.dtype not in ("bfloat16", "float16"):
                raise ValueError(
                    "config.model.attention_implementation='cudnn' needs NVIDIA GPUs and a "
                    f"bfloat16 or float16 config.model.dtype; found {platform} devices and "
                    f"{config.model.dtype}. Set it to 'xla' (or leave it unset).")
        self.tokenizer = tokenizers.build_tokenizer(config.tokenizer)
        self.optimizer = optim.build_optimizer(config)
        self.schedule = optim.learning_rate_schedule(config)
        self.loss_weights = dict(config.losses)
        accum_steps = config.get("grad_accum_steps", 1)
        if accum_steps < 1 or config.batch_size % (accum_steps * self.batch_shards()):
            raise ValueError(
                f"config.batch_size {config.batch_size} must split into config.grad_accum_steps "
                f"({accum_steps}) micro-batches that each divide over the {self.batch_shards()} "
                "devices of the batch axes."
            )
        if accum_steps > 1 and config.model.name == "fusion":
            raise ValueError("config.grad_accum_steps > 1 is not supported for the fusion model "
                             "(its matching labels are integer outputs); use 1.")
        for field, default, tokenizer_does, tower_does in (
                ("eot_id", tokenizers.EOT_ID, "ends texts with", "pools at"),
                ("pad_id", tokenizers.PAD_ID, "pads with", "masks")):
            tower_id, tokenizer_id = (config.model.text_tower.get(field, default),
                                      getattr(self.tokenizer, field))
            if tower_id != tokenizer_id:
                raise ValueError(
                    f"The {self.tokenizer.name} tokenizer {tokenizer_does} id {tokenizer_id} but "
                    f"the text tower {tower_does} id {tower_id}; set "
                    f"config.model.text_tower.{field}={tokenizer_id}.")
        model_vocab = config.model.get("vocab_size")
        if model_vocab and self.tokenizer.vocab_size > model_vocab:
            raise ValueError(f"The tokenizer has {self.tokenizer.vocab_size} ids but "
                             f"config.model.vocab_size is {model_vocab}; raise it or unset it.")
        self.teacher = self._load_teacher() if "distill" in self.loss_weights else None
        abstract_model = nnx.eval_shape(self._build_model)
        self.graphdef, _ = nnx.split(abstract_model, nnx.Param)
        self.abstract_state = jax.eval_shape(self._init_state)
        self.state_shardings = sharding.tree_shardings(self.abstract_state, self.mesh, self.rules)
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    def _load_teacher(self):
        """The frozen teacher of config.distill.teacher: (graphdef, params laid out on the mesh)."""
        from mmjax import inference

        path = self.config.get("distill", {}).get("teacher")
        if not path:
            raise ValueError("The distill loss needs config.distill.teacher: a workdir (or its "
                             "checkpoints/STEP folder) of a trained model.")
        teacher = inference.load(path)
        for name, mine, theirs in (
                ("config.tokenizer", dict(self.config.tokenizer), dict(teacher.config.tokenizer)),
                ("config.data.image_size", self.config.data.image_size,
                 teacher.config.data.image_size),
                ("config.data.normalization", self.config.data.get("normalization"),
                 teacher.config.data.get("normalization"))):
            mine, theirs = _comparable(mine), _comparable(theirs)
            if mine != theirs:
                raise ValueError(f"The teacher at {path} was trained with {name} = {theirs}, this "
                                 f"run uses {mine}: the teacher must see the same inputs; set "
                                 f"{name} to the teacher's.")
        shardings = sharding.tree_shardings(teacher.params, self.mesh, self.rules)
        return teacher.graphdef, jax.device_put(teacher.params, shardings), shardings

    @property
    def step_args(self) -> tuple:
        """What the train step takes after (state, batch): the teacher's parameters, if any."""
        return () if self.teacher is None else (self.teacher[1],)

    def _teacher_outputs(self, graphdef, params, batch):
        teacher = nnx.merge(graphdef, params)
        return {"teacher_image_embedding": teacher.encode_image(batch["image"])[0],
                "teacher_text_embedding": teacher.encode_text(batch["tokens"])[0],
                "teacher_logit_scale": teacher.temperature_scale(),
                "distill_temperature": jnp.asarray(self.config.distill.get("temperature", 1.0),
                                                   jnp.float32)}

    # -- state -------------------------------------------------------------------------------
    def _build_model(self) -> nnx.Module:
        return models.build_model(self.config.model, vocab_size=self.tokenizer.vocab_size,
                                  image_size=self.config.data.image_size, seed=self.config.seed,
                                  normalization=self.config.data.get("normalization",
                                                                     "minus_one_one"))

    def _init_state(self) -> dict[str, Any]:
        _, params = nnx.split(self._build_model(), nnx.Param)
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "opt_state": self.optimizer.init(params),
                # Steps whose loss or gradients were NaN/Inf, and the first of them (-1: none).
                "nonfinite_steps": jnp.zeros((), jnp.int32),
                "first_nonfinite_step": jnp.full((), -1, jnp.int32)}

    def create_state(self) -> dict[str, Any]:
        """A fresh state, materialised directly with its shardings (never whole on one device)."""
        return jax.jit(self._init_state, out_shardings=self.state_shardings)()

    def initial_state(self, manager) -> dict[str, Any]:
        """The resume order: this workdir's latest checkpoint; else config.init_from; else fresh."""
        latest = manager.latest_step()
        if latest is not None:
            if jax.process_index() == 0:
                print(f"Resuming from {manager.directory} at step {latest}.", flush=True)
            return self.restore(manager, latest)
        state = self.create_state()
        init_from = self.config.get("init_from", {}).get("checkpoint")
        if init_from:
            prefixes = tuple(self.config.init_from.get("params", ()))
            state["params"] = checkpoint.merge_params(
                state["params"], checkpoint.load_params(init_from), prefixes, init_from)
            if jax.process_index() == 0:
                print(f"Initialised {list(prefixes) or 'all parameters'} from {init_from}.",
                      flush=True)
        return state

    def restore(self, manager, step: int) -> dict[str, Any]:
        """A checkpoint laid out for this trainer's mesh, whatever mesh saved it."""
        return checkpoint.restore(manager, step, checkpoint.abstract_with_shardings(
            self.abstract_state, self.state_shardings))

    def batch_shards(self) -> int:
        spec = sharding.logical_to_spec(("batch",), self.rules)[0]
        axes = () if spec is None else ((spec,) if isinstance(spec, str) else spec)
        return int(np.prod([self.mesh.shape[a] for a in axes]))

    def batch_sharding(self, ndim: int) -> NamedSharding:
        return sharding.batch_sharding(self.mesh, self.rules, ndim)

    @property
    def model_inputs(self) -> dict[str, int]:
        """The batch entries the train step takes (name -> ndim): labels only when a loss reads
        them."""
        needs_labels = any(name in losses.NEEDS_LABELS for name in self.loss_weights)
        return {**MODEL_INPUTS, **({"label": 1} if needs_labels else {})}

    def global_batch(self, local_batch: dict[str, np.ndarray], keys=None) -> dict:
        """This process's rows -> global arrays sharded along the batch axes."""
        keys = self.model_inputs if keys is None else keys
        process_count = jax.process_count()
        return {
            key: jax.make_array_from_process_local_data(
                self.batch_sharding(local_batch[key].ndim), local_batch[key],
                (local_batch[key].shape[0] * process_count,) + local_batch[key].shape[1:])
            for key in keys
        }

    # -- steps -------------------------------------------------------------------------------
    def model(self, params) -> nnx.Module:
        return nnx.merge(self.graphdef, params)

    def _forward(self, params, batch, rng):
        return self.model(params)(batch["image"], batch["tokens"], rng=rng)

    def step_rng(self, step: jax.Array) -> jax.Array:
        """The model's randomness at a step (negatives, masks): a function of seed and step
        alone, so a resumed run draws what the uninterrupted one did."""
        return jax.random.fold_in(jax.random.key(self.config.seed), step)

    def loss_and_grads(self, params, batch, rng, extra_outputs=None):
        """((loss, metrics), grads) over the whole batch, in config.grad_accum_steps micro-batches.

        With micro-batches the losses still see the whole batch's outputs (GradCache): a first
        pass computes every micro-batch's outputs without keeping activations, the losses and
        their gradients with respect to those outputs are computed once over the whole batch,
        and a second pass backpropagates each micro-batch's share. The update equals the
        one-batch update (the contrastive loss needs every pair), at the cost of a second forward.
        """
        accum_steps = self.config.get("grad_accum_steps", 1)
        extra_outputs = extra_outputs or {}  # constants to the losses (a teacher's outputs)
        loss_fn = lambda outputs: losses.total_loss(self.loss_weights,
                                                    {**outputs, **extra_outputs}, batch)
        if accum_steps == 1:
            return jax.value_and_grad(lambda p: loss_fn(self._forward(p, batch, rng)),
                                      has_aux=True)(params)

        micro_batches = jax.tree.map(
            lambda x: x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:]), batch)
        micro_rngs = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(accum_steps))
        stacked = jax.lax.map(lambda micro: self._forward(params, *micro),
                              (micro_batches, micro_rngs))
        # Per-example outputs come back [accum, micro, ...]; global scalars as [accum].
        is_per_example = jax.tree.map(lambda x: x.ndim >= 2, stacked)
        outputs = jax.tree.map(lambda x, per_example: x.reshape((-1,) + x.shape[2:])
                               if per_example else x[0], stacked, is_per_example)
        (loss, metrics), output_grads = jax.value_and_grad(loss_fn, has_aux=True)(outputs)

        def accumulate(grads, inputs):
            index, micro, micro_rng = inputs
            _, backward = jax.vjp(lambda p: self._forward(p, micro, micro_rng), params)
            cotangent = jax.tree.map(
                lambda g, per_example: (g.reshape((accum_steps, -1) + g.shape[1:])[index]
                                        if per_example else g * (index == 0)),
                output_grads, is_per_example)
            return jax.tree.map(jnp.add, grads, backward(cotangent)[0]), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        grads, _ = jax.lax.scan(accumulate, zeros,
                                (jnp.arange(accum_steps), micro_batches, micro_rngs))
        return (loss, metrics), grads

    def _train_step(self, state, batch, teacher_params=None):
        with sharding.use_mesh_rules(self.mesh, self.rules):
            extra = (None if teacher_params is None else jax.lax.stop_gradient(
                self._teacher_outputs(self.teacher[0], teacher_params, batch)))
            (loss, metrics), grads = self.loss_and_grads(state["params"], batch,
                                                         self.step_rng(state["step"]), extra)
            updates, opt_state = self.optimizer.update(grads, state["opt_state"], state["params"])
            params = optax.apply_updates(state["params"], updates)
        grad_norm = global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if self.config.get("skip_nonfinite_steps", False):
            # Keep the previous parameters and optimizer state: the step did not happen.
            keep = lambda new, old: jnp.where(finite, new, old)
            params = jax.tree.map(keep, params, state["params"])
            opt_state = jax.tree.map(keep, opt_state, state["opt_state"])
        step = state["step"] + 1
        nonfinite_steps = state["nonfinite_steps"] + (~finite).astype(jnp.int32)
        first_nonfinite = jnp.where((state["first_nonfinite_step"] < 0) & ~finite, step,
                                    state["first_nonfinite_step"])
        metrics.update(loss=loss, grad_norm=grad_norm, param_norm=global_norm(params),
                       learning_rate=self.schedule(state["step"]), nonfinite_steps=nonfinite_steps)
        new_state = {"step": step, "params": params, "opt_state": opt_state,
                     "nonfinite_steps": nonfinite_steps, "first_nonfinite_step": first_nonfinite}
        return new_state, metrics

    @functools.cached_property
    def train_step(self) -> Callable:
        batch_shardings = {k: self.batch_sharding(ndim) for k, ndim in self.model_inputs.items()}
        in_shardings = (self.state_shardings, batch_shardings)
        if self.teacher is not None:
            in_shardings += (self.teacher[2],)
        return jax.jit(self._train_step, in_shardings=in_shardings,
                       out_shardings=(self.state_shardings, self.replicated), donate_argnums=0)

    def _encode(self, params, batch):
        """Embeddings of an eval batch, with its labels and padding marks, on every process;
        generated captions and matching logits where the configured evaluators need them."""
        with sharding.use_mesh_rules(self.mesh, self.rules):
            model = self.model(params)
            encoded = {"image": model.encode_image(batch["image"])[0],
                       "text": model.encode_text(batch["tokens"])[0],
                       "tokens": batch["tokens"], "label": batch["label"],
                       "valid": batch["valid"]}
            if "captioning" in self.config.evals:
                encoded["caption_tokens"] = self.generate(model, batch["image"])
            if "classification" in self.config.evals:
                encoded["class_logits"] = model.classify(batch["image"], batch["tokens"])
            if "itm" in self.config.evals:
                encoded.update(self._matching_logits(model, batch, encoded))
            return encoded

    def generate(self, model, images) -> jax.Array:
        """Caption token rows for `images`: greedy, or beam search if config.caption.beam_size > 1."""
        beam_size = self.config.get("caption", {}).get("beam_size", 1)
        return decoding.generate(model, images, beam_size=beam_size,
                                 max_length=self.config.tokenizer.context_length,
                                 bos_id=self.tokenizer.bos_id, eot_id=self.tokenizer.eot_id,
                                 pad_id=self.tokenizer.pad_id)

    @staticmethod
    def _matching_logits(model, batch, encoded) -> dict[str, jax.Array]:
        """ITM logits of each eval image with its own caption, with the next example's caption
        that differs from it, and with the most similar differing caption (hard negative)."""
        tokens, valid = batch["tokens"], batch["valid"].astype(bool)
        excluded = jnp.all(tokens[:, None] == tokens[None], axis=-1) | ~valid[None, :]
        size = tokens.shape[0]
        # "Next differing": the first allowed column after the row's own, cyclically.
        offsets = (jnp.arange(size)[None, :] - jnp.arange(size)[:, None]) % size
        next_other = jnp.argmin(jnp.where(excluded, size, offsets), axis=1)
        similarity = (losses.l2_normalize(encoded["image"]) @
                      losses.l2_normalize(encoded["text"]).T)
        hardest = jnp.argmax(jnp.where(excluded, -jnp.inf, similarity), axis=1)
        return {"itm_positive": model.match_logits(batch["image"], tokens),
                "itm_negative": model.match_logits(batch["image"], tokens[next_other]),
                "itm_hard_negative": model.match_logits(batch["image"], tokens[hardest]),
                "itm_has_negative": ~jnp.all(excluded, axis=1)}

    @functools.cached_property
    def encode_step(self) -> Callable:
        batch_shardings = {k: self.batch_sharding(ndim) for k, ndim in EVAL_INPUTS.items()}
        return jax.jit(self._encode, in_shardings=(self.state_shardings["params"], batch_shardings),
                       out_shardings=self.replicated)

    @functools.cached_property
    def encode_text_step(self) -> Callable:
        def encode_text(params, tokens):
            with sharding.use_mesh_rules(self.mesh, self.rules):
                return self.model(params).encode_text(tokens)[0]
        return jax.jit(encode_text, in_shardings=(self.state_shardings["params"], self.replicated),
                       out_shardings=self.replicated)

    @functools.cached_property
    def encode_image_step(self) -> Callable:
        def encode_image(params, images):
            with sharding.use_mesh_rules(self.mesh, self.rules):
                return self.model(params).encode_image(images)[0]
        return jax.jit(encode_image, in_shardings=(self.state_shardings["params"],
                                                   self.batch_sharding(4)),
                       out_shardings=self.replicated)

    def encode_images(self, params, data) -> tuple[np.ndarray, np.ndarray]:
        """Image embeddings and labels of one pass over `data` (an EvalData)."""
        features, labels = [], []
        for local_batch in data.batches():
            batch = self.global_batch(local_batch, keys=("image",))
            valid = all_rows(local_batch["valid"]).astype(bool)
            features.append(np.asarray(self.encode_image_step(params, batch["image"]))[valid])
            labels.append(all_rows(local_batch["label"])[valid])
        return np.concatenate(features), np.concatenate(labels)

    def encode_texts(self, params, texts) -> np.ndarray:
        """Embeds strings in fixed-size chunks (one compiled shape)."""
        return self.encode_token_rows(params, self.tokenizer(texts))

    def encode_token_rows(self, params, tokens: np.ndarray) -> np.ndarray:
        chunk = 256
        padded = np.zeros((-(-len(tokens) // chunk) * chunk, tokens.shape[1]), np.int32)
        padded[: len(tokens)] = tokens
        outputs = [np.asarray(self.encode_text_step(params, padded[i:i + chunk]))
                   for i in range(0, len(padded), chunk)]
        return np.concatenate(outputs)[: len(tokens)]

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, params, eval_data, report: dict | None = None) -> dict[str, float]:
        """Encodes one pass of the eval set and runs every configured evaluator on it.

        `report`, if given, is filled with what the evaluation report shows: the evaluators'
        details, the embeddings, image thumbnails and the reference captions.
        """
        parts: dict[str, list[np.ndarray]] = {}
        thumbnails, all_captions = [], []
        for local_batch in eval_data.batches():
            encoded = jax.device_get(self.encode_step(
                params, self.global_batch(local_batch, keys=tuple(EVAL_INPUTS))))
            valid = encoded.pop("valid")
            for key, value in encoded.items():
                parts.setdefault(key, []).append(value[valid])
            if "all_tokens" in local_batch:  # several captions per image
                all_captions.append((all_rows(local_batch["all_tokens"])[valid],
                                     all_rows(local_batch["all_valid"])[valid]))
            if report is not None:
                local = report_thumbnails(local_batch["image"],
                                          self.config.data.get("normalization", "minus_one_one"))
                thumbnails.append(all_rows(local)[valid])
        outputs = {key: np.concatenate(value) for key, value in parts.items()}
        if eval_data.probe is not None:
            outputs["probe_features"], outputs["probe_labels"] = self.encode_images(
                params, eval_data.probe)
        context = evaluators.EvalContext(
            image_embeddings=outputs.pop("image"),
            text_embeddings=outputs.pop("text"),
            labels=outputs.pop("label"),
            tokens=outputs.pop("tokens"),
            extra=outputs,
            tokenizer=self.tokenizer,
            class_names=eval_data.class_names,
            prompt_templates=eval_data.prompt_templates,
            encode_texts=lambda texts: self.encode_texts(params, texts),
        )
        if all_captions:
            tokens = np.concatenate([t for t, _ in all_captions])
            present = np.concatenate([v for _, v in all_captions]).astype(bool)
            context.all_text_image = np.nonzero(present)[0]
            context.all_text_embeddings = self.encode_token_rows(params, tokens[present])
        metrics = {}
        for name in self.config.evals:
            for metric, value in evaluators.EVALUATORS[name](context).items():
                metrics[f"eval/{eval_data.name}/{metric}"] = value
        if report is not None:
            report.update(details=context.details, thumbnails=np.concatenate(thumbnails),
                          image_embeddings=context.image_embeddings,
                          text_embeddings=context.text_embeddings, labels=context.labels,
                          captions=[self.tokenizer.decode(row) for row in context.tokens],
                          dataset=eval_data.name)
        return metrics


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
        mean, std = models.image_normalization(normalization)
        pixels = np.clip(pixels * np.asarray(std) + np.asarray(mean), 0, 255)
    factor = max(1, -(-pixels.shape[1] // size))
    if factor > 1:
        n, h, w, c = pixels.shape
        h, w = h // factor * factor, w // factor * factor
        pixels = pixels[:, :h, :w].reshape(n, h // factor, factor, w // factor, factor, c)
        pixels = pixels.mean(axis=(2, 4))
    return pixels.round().astype(np.uint8)


def _comparable(value):
    """Config values as plain data (ConfigDict, lists and tuples alike) for comparison."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if k != "vocabulary_file"}
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    return value


def _host_metrics(metrics) -> dict[str, float]:
    return {f"train/{k}": float(v) for k, v in jax.device_get(metrics).items()}


def check_finite(config, state) -> None:
    """Stops a run whose loss or gradients went NaN/Inf, before anything bad is saved."""
    if config.get("skip_nonfinite_steps", False):
        return
    first_bad = int(jax.device_get(state["first_nonfinite_step"]))
    if first_bad >= 0:
        raise TrainingDiverged(
            f"Training diverged at step {first_bad}: the loss or the gradients are NaN or Inf. "
            "No checkpoint was written from that step on, so the last good one is kept; lower "
            "config.learning_rate or raise config.warmup_steps and restart, or set "
            "config.skip_nonfinite_steps=True to skip such steps."
        )


class PreemptionHandler:
    """SIGTERM / SIGINT: finish the current step, save and exit 0; a second signal exits at once.

    TPU VMs and cloud schedulers send SIGTERM before preempting. With several processes the
    request is shared, so every process saves the same step.
    """

    def __init__(self):
        self._requested = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        del frame
        if self._requested:
            os._exit(128 + signum)
        self._requested = True
        print(f"Received {signal.Signals(signum).name}: finishing this step and saving "
              "(send it again to exit at once).", flush=True)

    def requested(self) -> bool:
        """Whether any process was signalled (a collective: every process calls it each step)."""
        if jax.process_count() > 1:
            flags = multihost_utils.process_allgather(np.asarray(self._requested, np.int32))
            self._requested = bool(np.any(flags))
        return self._requested

    @property
    def stopped(self) -> bool:
        return self._requested

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def write_config_snapshot(config, workdir: str) -> None:
    """config.json, and a copy of the tokenizer's vocabulary, so the workdir stands alone."""
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
        vocabulary = config.tokenizer.get("vocabulary_file")
        if vocabulary:
            shutil.copyfile(vocabulary, os.path.join(workdir, "vocabulary.txt"))


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Trains from the workdir's latest checkpoint (or from scratch) to config.total_steps.

    Returns the final evaluation metrics.
    """
    from input_pipeline import pipeline  # TensorFlow stays out of the model and trainer modules

    trainer = Trainer(config)
    write_config_snapshot(config, workdir)
    manager = checkpoint.create_manager(workdir, max_to_keep=config.keep_checkpoints)
    state = trainer.initial_state(manager)
    start_step = int(jax.device_get(state["step"]))

    writer = MetricWriter(workdir, config.total_steps, resume_step=start_step)
    data_state = checkpoint.load_data_states(workdir).get(str(start_step)) or {
        # Runs saved before positions were recorded: the order was step-based.
        "position": start_step * config.batch_size, "skipped": 0}
    if start_step and jax.process_index() == 0:
        print(f"Input continues at position {data_state['position']}.", flush=True)
    train_batches = pipeline.train_batches(config, trainer.tokenizer,
                                           start_position=data_state["position"])

    def skipped_so_far() -> int:
        """Bad examples skipped over all processes since the run began (the examples read are
        the input position)."""
        skipped = train_batches.skipped
        if jax.process_count() > 1:
            skipped = int(np.sum(multihost_utils.process_allgather(np.int64(skipped))))
        return skipped + data_state["skipped"]

    eval_data = pipeline.eval_data(config, trainer.tokenizer) if config.data.eval else None
    eval_metrics: dict[str, float] = {}

    best = (checkpoint.BestCheckpoint(workdir, config.keep_best_by, config.keep_best_mode)
            if config.get("keep_best_by") else None)

    def run_eval(step: int) -> None:
        nonlocal eval_metrics
        eval_started = time.time()
        eval_metrics = trainer.evaluate(state["params"], eval_data)
        eval_metrics["eval/seconds"] = time.time() - eval_started
        writer.write(step, eval_metrics)
        if best is not None:
            best.update(step, state, eval_metrics)
        if jax.process_index() == 0:
            print(f"eval at step {step}: " + ", ".join(
                f"{k.split('/')[-1]} {v:.4f}" for k, v in eval_metrics.items()
                if k.split("/")[-1] != "seconds"), flush=True)

    interval_start, interval_step = time.time(), start_step
    preemption = PreemptionHandler()
    try:
        for step in range(start_step + 1, config.total_steps + 1):
            batch = trainer.global_batch(next(train_batches))
            state, metrics = trainer.train_step(state, batch, *trainer.step_args)
            if step % config.log_every_steps == 0 or step == config.total_steps:
                check_finite(config, state)
                host_metrics = _host_metrics(metrics)
                elapsed = time.time() - interval_start
                steps_per_sec = (step - interval_step) / max(elapsed, 1e-9)
                host_metrics["train/examples_per_sec"] = steps_per_sec * config.batch_size
                host_metrics["train/steps_per_sec"] = steps_per_sec
                skipped = skipped_so_far()
                host_metrics["data/skipped"] = skipped
                writer.write(step, host_metrics)
                writer.progress(step, host_metrics["train/loss"], steps_per_sec, skipped)
                train_batches.check_bad_fraction(skipped, train_batches.position, config.data.get(
                    "max_bad_fraction", 0.01))
                interval_start, interval_step = time.time(), step
            stop = preemption.requested()
            if step % config.checkpoint_every_steps == 0 or step == config.total_steps or stop:
                check_finite(config, state)
                skipped = skipped_so_far()
                if jax.process_index() == 0:
                    checkpoint.save_data_state(workdir, step, {
                        "position": train_batches.position, "skipped": skipped,
                        "global_batch_size": config.batch_size, "train": config.data.train,
                        "seed": config.seed}, manager.all_steps())
                checkpoint.save(manager, step, state)
            if stop:
                if jax.process_index() == 0:
                    print(f"Stopped by a signal: saved step {step} to {manager.directory}; run the "
                          "same command to continue.", flush=True)
                break
            if eval_data is not None and (
                    (config.eval_every_steps and step % config.eval_every_steps == 0)
                    or step == config.total_steps):
                run_eval(step)
                interval_start = time.time()  # steps/s should not count evaluation
        if start_step >= config.total_steps and eval_data is not None:
            run_eval(start_step)
    finally:
        preemption.restore()
        manager.wait_until_finished()
        manager.close()
        if best is not None:
            best.close()
        writer.close()
    if preemption.stopped:
        return {}
    if jax.process_index() == 0 and eval_metrics:
        with open(os.path.join(workdir, "eval_results.json"), "w") as f:
            json.dump({"step": config.total_steps, **eval_metrics}, f, indent=2)
    return eval_metrics


def _restore_latest(trainer: Trainer, workdir: str):
    manager = checkpoint.create_manager(workdir, max_to_keep=None)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"No checkpoint under {manager.directory}: train first, or point "
                                "--workdir at a run that has one.")
    return manager, step, trainer.restore(manager, step)


def caption_checkpoint(config, workdir: str, mesh: Mesh | None = None) -> dict[str, float]:
    """`--mode=caption`: captions the eval split with the workdir's latest checkpoint.

    Writes WORKDIR/captions.jsonl (reference and generated text per image) and prints the token
    accuracy against the references next to the most-frequent-caption baseline.
    """
    from input_pipeline import pipeline

    if config.model.name != "coca":
        raise ValueError(f"--mode=caption needs a captioning model (config.model.name='coca'), "
                         f"not {config.model.name!r}.")
    trainer = Trainer(config, mesh=mesh)
    manager, step, state = _restore_latest(trainer, workdir)

    def caption(params, images):
        with sharding.use_mesh_rules(trainer.mesh, trainer.rules):
            return trainer.generate(trainer.model(params), images)

    caption_step = jax.jit(caption, in_shardings=(trainer.state_shardings["params"],
                                                  trainer.batch_sharding(4)),
                           out_shardings=trainer.replicated)
    generated, references = [], []
    for local_batch in pipeline.eval_data(config, trainer.tokenizer).batches():
        batch = trainer.global_batch(local_batch, keys=("image",))
        tokens = jax.device_get(caption_step(state["params"], batch["image"]))
        keep = all_rows(local_batch["valid"]).astype(bool)
        generated.append(tokens[keep])
        references.append(all_rows(local_batch["tokens"])[keep])
    generated, references = np.concatenate(generated), np.concatenate(references)
    context = evaluators.EvalContext(
        image_embeddings=None, text_embeddings=None, labels=None, class_names=(),
        prompt_templates=(), encode_texts=None, tokens=references,
        extra={"caption_tokens": generated}, tokenizer=trainer.tokenizer)
    metrics = {"step": step, **evaluators.evaluate_captioning(context)}
    if jax.process_index() == 0:
        decode = trainer.tokenizer.decode
        with open(os.path.join(workdir, "captions.jsonl"), "w") as f:
            for reference, caption_row in zip(references, generated):
                f.write(json.dumps({"reference": decode(reference),
                                    "generated": decode(caption_row)}) + "\n")
        for reference, caption_row in list(zip(references, generated))[:5]:
            print(f"  {decode(caption_row)!r}  (reference: {decode(reference)!r})")
        for name, value in metrics.items():
            print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}")
    manager.close()
    return metrics


def evaluate_checkpoint(config, workdir: str, mesh: Mesh | None = None) -> dict[str, float]:
    """`--mode=eval`: evaluates the workdir's latest checkpoint; writes eval_results.json, the
    embeddings (eval_embeddings.npz) and the report (eval_report.md with PNG figures).

    The checkpoint may come from any mesh; it is laid out for this one (`mesh`, or config.mesh).
    """
    from input_pipeline import pipeline

    trainer = Trainer(config, mesh=mesh)
    manager, step, state = _restore_latest(trainer, workdir)
    details: dict = {}
    metrics = trainer.evaluate(state["params"], pipeline.eval_data(config, trainer.tokenizer),
                               report=details)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "eval_results.json"), "w") as f:
            json.dump({"step": step, **metrics}, f, indent=2)
        np.savez(os.path.join(workdir, "eval_embeddings.npz"),
                 image=details["image_embeddings"], text=details["text_embeddings"],
                 labels=details["labels"], **({"class_embeddings": details["details"]["zeroshot"]
                                               ["class_embeddings"]}
                                              if "zeroshot" in details["details"] else {}))
        for name, value in metrics.items():
            print(f"{name}: {value:.4f}")
        from mmjax import report  # matplotlib is loaded only to write the report

        path = report.write_report(workdir, step=step, metrics=metrics, details=details,
                                   config_name=config.get("name", ""))
        print(f"Report: {path}")
    manager.close()
    return metrics
