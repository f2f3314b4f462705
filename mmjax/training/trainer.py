"""The trainer: mesh, state and its shardings, and the compiled train step for one config.

Everything model-specific comes from the registries: the model maps a batch to outputs, the
objective (mmjax.losses) maps outputs to a scalar and says which batch entries it reads and
whether it needs a teacher. The config is snapshotted here: what is compiled never changes with
later edits to the caller's config.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmjax import (
    conventions,
    inference,
    losses,
    models,
    paths,
    preflight,
    sharding,
    text_tokenizers,
)
from mmjax.models.towers import audio_tower, video_tower
from mmjax.training import accumulation, checkpoint, optim

# Each modality's batch entry and its rank: images [B, H, W, 3], spectrograms [B, frames, mels],
# clips [B, frames, H, W, 3], token rows [B, L].
MODALITY_NDIMS = {"image": 4, "audio": 3, "video": 5, "text": 2}


# The towers a run may start from another run's image tower (config.init_from.
# <modality>_tower_from): (image tower parameters, this tower's parameter shapes, this tower)
# -> its parameters.
FROM_IMAGE_TOWER = {
    "audio": lambda image, shapes, tower: audio_tower.from_image_tower(image, shapes, tower.grid),
    "video": lambda image, shapes, tower: video_tower.from_image_tower(
        image, shapes, tower.tubelet_frames, tower.steps),
}


def modality_inputs(model_config) -> dict[str, int]:
    """The batch entries (name -> ndim) a model's towers take."""
    return {conventions.BATCH_KEYS[m]: MODALITY_NDIMS[m]
            for m in conventions.model_modalities(model_config)}


def global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


class Trainer:
    """Holds the mesh, the abstract state and the compiled steps for one config.

    `plan` is the preflight's result for this config; without one the preflight runs here (on
    the config alone, no data), so a bad config fails before anything is compiled.
    `with_teacher=False` leaves a distillation teacher unloaded: evaluation never reads it.
    """

    def __init__(self, config, mesh: Mesh | None = None, plan: preflight.Plan | None = None,
                 with_teacher: bool = True):
        self.config = config = copy.deepcopy(config)
        self.plan = plan if plan is not None else preflight.check(config, mesh=mesh)
        self.mesh = mesh if mesh is not None else sharding.create_mesh(dict(config.mesh))
        self.rules = sharding.get_rules(config.sharding_rules)
        self.tokenizer = text_tokenizers.build_tokenizer(config.tokenizer)
        self.inputs = models.ModelInputs.from_data(config.data)
        self.schedule = optim.run_schedule(config)
        self.optimizer = optim.build_optimizer(config.optimizer, self.schedule,
                                               tuple(config.get("frozen_params", ())))
        self.objective = losses.Objective(config.losses, self.plan.loss_settings)
        self.accum_steps = int(config.grad_accum_steps)
        self.skip_nonfinite_steps = bool(config.skip_nonfinite_steps)
        self.seed = int(config.seed)
        self.teacher = (self._load_teacher() if with_teacher and self.objective.needs_teacher
                        else None)
        abstract_model = nnx.eval_shape(self._build_model)
        self.graphdef, _ = nnx.split(abstract_model, nnx.Param)
        self.abstract_state = jax.eval_shape(self._init_state)
        self.state_shardings = sharding.tree_shardings(self.abstract_state, self.mesh, self.rules)
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    # -- the teacher (losses that read a frozen model's outputs) ------------------------------
    def _load_teacher(self):
        """(graphdef, params laid out on the mesh, their shardings) of config.distill.teacher;
        the preflight has checked that it exists and sees the same inputs."""

        teacher = inference.load(self.config.distill.teacher)
        shardings = sharding.tree_shardings(teacher.params, self.mesh, self.rules)
        return teacher.graphdef, jax.device_put(teacher.params, shardings), shardings

    @property
    def step_args(self) -> tuple:
        """What the train step takes after (state, batch): the teacher's parameters, if any."""
        return () if self.teacher is None else (self.teacher[1],)

    @staticmethod
    def _teacher_outputs(graphdef, params, batch) -> dict[str, jax.Array]:
        teacher = nnx.merge(graphdef, params)
        return dict(zip(losses.TEACHER_OUTPUTS, (teacher.encode_image(batch["image"])[0],
                                                 teacher.encode_text(batch["tokens"])[0],
                                                 teacher.temperature_scale())))

    # -- state -------------------------------------------------------------------------------
    def _build_model(self) -> nnx.Module:
        return models.build_model(self.config.model, self.inputs, self.tokenizer,
                                  seed=self.seed)

    def _init_state(self) -> dict[str, Any]:
        _, params = nnx.split(self._build_model(), nnx.Param)
        return self._state_at_start(params)

    def _state_at_start(self, params) -> dict[str, Any]:
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "opt_state": self.optimizer.init(params),
                # Steps whose loss or gradients were NaN/Inf, and the first of them (-1: none).
                "nonfinite_steps": jnp.zeros((), jnp.int32),
                "first_nonfinite_step": jnp.full((), -1, jnp.int32)}

    def state_with_params(self, loaded: dict[str, np.ndarray], source: str) -> dict[str, Any]:
        """Step 0 with every parameter taken from `loaded` (a converter's output, by name) and a
        fresh optimizer state; nothing is initialised at random, so nothing is compiled."""
        params = jax.tree.map(lambda leaf, where: jax.device_put(
            np.zeros(leaf.shape, leaf.dtype), where), self.abstract_state["params"],
            self.state_shardings["params"])
        params = checkpoint.merge_params(params, loaded, (), source, require_all_used=True)
        return jax.device_put(self._state_at_start(params), self.state_shardings)

    def create_state(self) -> dict[str, Any]:
        """A fresh state, materialised directly with its shardings (never whole on one device)."""
        return jax.jit(self._init_state, out_shardings=self.state_shardings)()

    @functools.cached_property
    def sharded_abstract_state(self) -> dict[str, Any]:
        """The state's shapes and dtypes with this trainer's shardings: what restores target."""
        return checkpoint.abstract_with_shardings(self.abstract_state, self.state_shardings)

    def initial_state(self, manager, emergency_saves=None) -> tuple[dict[str, Any], dict | None]:
        """The resume order: the newest of this workdir's checkpoint that reads back whole and
        a preempted run's emergency save (`emergency_saves`); else config.init_from; else fresh.
        Returns the state and the input position saved with it (None when starting)."""
        # An emergency save newer than every checkpoint is read first, so that the checkpoint
        # (a whole state, from a bucket) is not read for nothing.
        latest = manager.latest_step()
        from_copy = self._emergency_save(emergency_saves, -1 if latest is None else latest)
        if from_copy is not None:
            return from_copy
        restored = checkpoint.restore_newest_whole(manager, self.sharded_abstract_state)
        if restored is not None and restored[0] != latest:  # fell back past damaged ones
            from_copy = self._emergency_save(emergency_saves, restored[0])
            if from_copy is not None:
                return from_copy
        if restored is not None:
            step, state, data_state = restored
            if jax.process_index() == 0:
                print(f"Resuming from {manager.directory} at step {step}.", flush=True)
            return state, data_state
        state = self.create_state()
        for _, source, prefixes, _ in models.pretrained_sources(self.config):
            state["params"] = checkpoint.merge_params(
                state["params"], checkpoint.load_params(source), prefixes, source)
            if jax.process_index() == 0:
                print(f"Initialised {list(prefixes) or 'all parameters'} from {source}.",
                      flush=True)
        for modality in FROM_IMAGE_TOWER:
            source = self.config.init_from.get(f"{modality}_tower_from")
            if source:
                state["params"] = self._tower_from_image(state["params"], modality, source)
        return state, None

    def _tower_from_image(self, params, modality: str, source: str):
        """`params` with the `modality` tower started from `source`'s image tower."""
        loaded = checkpoint.load_params(source)
        image = {n.removeprefix("image_tower/"): v for n, v in loaded.items()
                 if n.startswith("image_tower/")}
        prefix = f"{modality}_tower"
        shapes = {n.removeprefix(prefix + "/"): s for n, s in
                  checkpoint.parameter_shapes(params).items() if n.startswith(prefix + "/")}
        tower = getattr(nnx.eval_shape(self._build_model), prefix)
        converted = FROM_IMAGE_TOWER[modality](image, shapes, tower)
        params = checkpoint.merge_params(params, {f"{prefix}/{n}": v for n, v in
                                                  converted.items()}, (prefix,), source)
        if jax.process_index() == 0:
            print(f"Initialised the {modality} tower from {source}'s image tower.", flush=True)
        return params

    def _emergency_save(self, saves, after: int) -> tuple[dict[str, Any], dict] | None:
        """(state, input position) of the newest emergency save after step `after`, if any
        reads back onto this trainer's layout."""
        newer = saves.newest(after=after) if saves is not None else None
        from_copy = saves.restore(newer[1], self.sharded_abstract_state) if newer else None
        if from_copy is not None and jax.process_index() == 0:
            print(f"Resuming from the emergency save of step {newer[0]} in "
                  f"{paths.dirname(newer[1])} (newer than the checkpoints).", flush=True)
        return from_copy

    def restore(self, manager, step: int) -> dict[str, Any]:
        """A checkpoint's train state laid out for this trainer's mesh, whatever mesh saved it."""
        return checkpoint.restore(manager, step, self.sharded_abstract_state)[0]

    # -- batches -----------------------------------------------------------------------------
    def batch_sharding(self, ndim: int) -> NamedSharding:
        return sharding.batch_sharding(self.mesh, self.rules, ndim)

    @property
    def model_modalities(self) -> tuple[str, ...]:
        return conventions.model_modalities(self.config.model)

    @property
    def model_inputs(self) -> dict[str, int]:
        """The batch entries the train step takes (name -> ndim): the model's, and those the
        losses read (labels, for a classification loss)."""
        return {**modality_inputs(self.config.model),
                **{key: 1 for key in self.objective.batch_keys}}

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

    # -- the train step ----------------------------------------------------------------------
    def model(self, params) -> nnx.Module:
        return nnx.merge(self.graphdef, params)

    def forward(self, params, batch, rng):
        return self.model(params)(batch, rng=rng)

    def step_rng(self, step: jax.Array) -> jax.Array:
        """The model's randomness at a step (negatives, masks): a function of seed and step
        alone, so a resumed run draws what the uninterrupted one did."""
        return jax.random.fold_in(jax.random.key(self.seed), step)

    def loss_and_grads(self, params, batch, rng, extra_outputs=None):
        """((loss, metrics), grads) over the whole batch, in config.grad_accum_steps
        micro-batches (mmjax.training.accumulation). `extra_outputs` are constants to the losses (a
        teacher's outputs)."""
        extra_outputs = extra_outputs or {}
        loss_fn = lambda outputs: self.objective({**outputs, **extra_outputs}, batch)
        return accumulation.loss_and_grads(self.forward, loss_fn, params, batch, rng,
                                           self.accum_steps)

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
        if self.skip_nonfinite_steps:
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
