"""Orbax checkpoints of the whole run: one folder a step, written asynchronously and atomically.

    WORKDIR/checkpoints/STEP/state/    params, optimizer state, step (the train state)
    WORKDIR/checkpoints/STEP/data/     the input position and the bad examples skipped so far
    WORKDIR/checkpoints/STEP/metrics/  the evaluation at STEP (with config.keep_best_by only)

The pipeline's batches depend only on the seed and the global input position, so restoring the
position restores the data order (with another global batch size, too). Which steps stay is
orbax's preservation policy: the last `keep` and, with `best_by`, the best by that eval metric.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from mmjax import paths
from mmjax.conventions import parameter_name, under_prefixes

STATE, DATA = "state", "data"
# Before 2026-12-02 the train state was orbax's single item and the input positions sat in
# WORKDIR/data_state.json: such checkpoints still load as parameters (init_from, a teacher,
# inference), but are not resumed.
LEGACY_STATE = "default"


def create_manager(workdir: str, *, keep: int | None, best_by: str | None = None,
                   best_mode: str = "max") -> ocp.CheckpointManager:
    """WORKDIR/checkpoints: keeps the last `keep` steps (all if None) and, with `best_by`, the
    step with the best value of that eval metric (the earliest among equals)."""
    keep_policies = [policies.LatestN(n=keep)]
    sign = 1.0 if best_mode == "max" else -1.0

    def best_fn(metrics):
        return (sign * metrics[best_by], -metrics["step"])

    if best_by:
        keep_policies.append(policies.BestN(get_metric_fn=best_fn, n=1,
                                            keep_checkpoints_without_metrics=False))
    return ocp.CheckpointManager(
        paths.absolute(paths.join(workdir, "checkpoints")),
        item_names=(STATE, DATA),
        options=ocp.CheckpointManagerOptions(
            create=True, best_fn=best_fn if best_by else None,
            preservation_policy=policies.AnyPreservationPolicy(keep_policies)),
    )


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict | None = None,
         eval_metrics: dict[str, float] | None = None) -> bool:
    """Starts saving `step` (returns before the arrays are written). The trainer decides when
    to save; force bypasses orbax's own interval logic."""
    items = {STATE: ocp.args.StandardSave(state)}
    if data_state is not None:
        items[DATA] = ocp.args.JsonSave(data_state)
    metrics = {**eval_metrics, "step": step} if eval_metrics else None
    return manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state
            ) -> tuple[Any, dict | None]:
    """(train state on the shardings of `abstract_state`, the saved input position or None)."""
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    has_data = paths.exists(paths.join(str(manager.directory), str(step), DATA))
    if has_data:
        items[DATA] = ocp.args.JsonRestore()
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except ValueError as e:
        if "not compatible with the stored shape" not in str(e):
            raise
        raise CheckpointMismatch(
            f"The checkpoint at step {step} in {manager.directory} does not fit this config's "
            f"model ({e}). The model config or the tokenizer's vocabulary (which sets the "
            "embedding size) differs from the run that saved it: run with that run's config "
            "(--config=configs/from_workdir.py:WORKDIR) or its vocabulary "
            "(--config.tokenizer.vocabulary_file=WORKDIR/vocabulary.txt).") from None
    return restored[STATE], (restored[DATA] if has_data else None)


class CheckpointMismatch(ValueError):
    """A whole checkpoint that does not fit this config's model: a config problem, not damage."""


def restore_newest_whole(manager: ocp.CheckpointManager, abstract_state
                         ) -> tuple[int, Any, dict | None] | None:
    """(step, state, input position) of the newest checkpoint that reads back whole; None when
    there is none. A damaged one (a bad copy, a failing disk: files cut short after orbax
    finalised them) is set aside as STEP.unreadable, never deleted, with a line saying why; when
    every one is damaged the run stops naming them."""
    damaged = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = restore(manager, step, abstract_state)
        except CheckpointMismatch:
            raise
        except Exception as e:  # noqa: BLE001 - whatever a damaged file raises, try the next
            reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
            damaged.append((step, reason))
            if jax.process_index() == 0:
                print(f"Checkpoint {step} in {manager.directory} does not read back ({reason}); "
                      "trying the one before.", flush=True)
            continue
        if damaged:
            set_aside(manager, [s for s, _ in damaged])
            if jax.process_index() == 0:
                print(f"Set aside {[s for s, _ in damaged]} as STEP.unreadable; resuming from "
                      f"step {step}.", flush=True)
        return (step, *restored)
    if damaged:
        raise RuntimeError(
            f"No checkpoint in {manager.directory} reads back whole: "
            + "; ".join(f"step {s}: {r}" for s, r in damaged)
            + ". Restore the folder from a copy, or start a new run in another workdir; "
            "nothing was changed here.")
    return None


def set_aside(manager: ocp.CheckpointManager, steps) -> None:
    """Renames damaged steps to STEP.unreadable (kept for inspection, out of orbax's sight), so
    the run can save those steps again; every process then sees the new list."""
    if jax.process_index() == 0:
        for step in steps:
            folder = paths.join(str(manager.directory), str(step))
            paths.rename(folder, f"{folder}.unreadable")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("checkpoints set aside")
    manager.reload()


def data_changes(config, saved: dict | None) -> dict[str, tuple[Any, Any]]:
    """Field -> (saved, configured) for what the saved input position was taken over that the
    config now changes: the training data, the seed (the data order) and the global batch."""
    saved = saved or {}
    now = {"config.data.train": config.data.train, "config.seed": config.seed,
           "config.batch_size": config.batch_size}
    keys = {"config.data.train": "train", "config.seed": "seed",
            "config.batch_size": "global_batch_size"}
    return {field: (saved[keys[field]], value) for field, value in now.items()
            if keys[field] in saved and saved[keys[field]] != value}


def abstract_with_shardings(abstract_state, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state, shardings)


def find_checkpoint(path: str) -> tuple[str, int]:
    """(checkpoints directory, step) of a workdir, its `checkpoints/` folder or a step's folder."""
    path = paths.absolute(path).rstrip("/")
    candidates = [(paths.join(path, "checkpoints"), None), (path, None),
                  (paths.dirname(path), paths.basename(path))]
    for directory, step in candidates:
        steps = sorted(int(d) for d in paths.listdir(directory) if d.isdigit())
        if step is not None and step.isdigit() and int(step) in steps:
            return directory, int(step)
        if step is None and steps:
            return directory, steps[-1]
    raise FileNotFoundError(
        f"No checkpoint at {path}: give a workdir, its checkpoints/ folder or a checkpoints/STEP "
        "folder written by mmjax."
    )


def flat_params(params) -> dict[str, Any]:
    """Parameter name -> array (or abstract array) of a model's nnx parameters."""
    return _flat(nnx.to_pure_dict(params))


def parameter_shapes(params) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of a model's (possibly abstract) nnx parameters."""
    return {name: tuple(leaf.shape) for name, leaf in flat_params(params).items()}


def saved_parameter_shapes(directory: str, step: int) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape in a checkpoint, from its metadata (no array is read)."""
    item = _state_item(directory, step)
    with _reader(directory) as manager:
        saved = manager.item_metadata(step)[item]
    return {name: tuple(leaf.shape)
            for name, leaf in _flat(saved["params"], saved_variables=True).items()}


def saved_data_state(path: str, step: int) -> dict:
    """The input position saved with a workdir's checkpoint at `step`."""
    directory, _ = find_checkpoint(path)
    with _reader(directory) as manager:
        return manager.restore(step, args=ocp.args.Composite(
            **{DATA: ocp.args.JsonRestore()}))[DATA]


def is_legacy(directory: str, step: int) -> bool:
    """Whether the checkpoint at `step` has the layout of before the input position moved in."""
    return not paths.exists(paths.join(directory, str(step), STATE)) and paths.exists(
        paths.join(directory, str(step), LEGACY_STATE))


def _state_item(directory: str, step: int) -> str:
    return LEGACY_STATE if is_legacy(directory, step) else STATE


def _reader(directory: str) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(directory, item_handlers={
        STATE: ocp.StandardCheckpointHandler(), LEGACY_STATE: ocp.StandardCheckpointHandler(),
        DATA: ocp.JsonCheckpointHandler()}, options=ocp.CheckpointManagerOptions(read_only=True))


def _flat(tree, saved_variables: bool = False) -> dict[str, Any]:
    """{'image_tower/encoder/blocks/0/mlp/up/kernel': array}.

    A saved state holds each nnx Variable as {'value': array}: `saved_variables` drops that level.
    """
    return {parameter_name(path[:-1] if saved_variables else path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def load_params(path: str) -> dict[str, np.ndarray]:
    """The parameters of a checkpoint as a flat {name: array} dict, on the host."""
    directory, step = find_checkpoint(path)
    item = _state_item(directory, step)
    with _reader(directory) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(
            **{item: ocp.args.StandardRestore()}))[item]
    return {name: np.asarray(value)
            for name, value in _flat(restored["params"], saved_variables=True).items()}


def merge_params(params, loaded: dict[str, np.ndarray], prefixes, source: str,
                 require_all_used: bool = False):
    """`params` with the entries under `prefixes` (all, if empty) replaced by `loaded`'s.

    Names and shapes must match; the error lists what differs, so a user can fix the prefixes or
    the model config. `require_all_used`: also fail if `loaded` has names the model lacks (a
    converter's mapping must place every weight).
    """
    pure = nnx.to_pure_dict(params)
    flat = _flat(pure)
    wanted = [name for name in flat if not prefixes or under_prefixes(name, prefixes)]
    if not wanted:
        raise ValueError(
            f"config.init_from.params {list(prefixes)} selects no parameter; top-level "
            f"names are {sorted({n.split('/')[0] for n in flat})}."
        )
    missing = [n for n in wanted if n not in loaded]
    unused = sorted(set(loaded) - set(flat)) if require_all_used else []
    if unused:
        raise ValueError(f"{source}: {len(unused)} parameters have no place in the model "
                         f"(first: {unused[:3]}).")
    mismatched = [f"{n}: {loaded[n].shape} in the checkpoint, {flat[n].shape} in the model"
                  for n in wanted if n in loaded and loaded[n].shape != flat[n].shape]
    if missing or mismatched:
        raise ValueError(
            f"Cannot initialise from {source}: "
            + (
                f"{len(missing)} parameters are not in it (first: {missing[:3]}); "
                if missing
                else ""
            )
            + (f"shapes differ: {mismatched[:3]}; " if mismatched else "")
            + "check config.init_from.params and that the model config matches the checkpoint's."
        )

    wanted_names = set(wanted)

    def replace(path, leaf):
        name = parameter_name(path)
        if name in wanted_names:
            return jax.device_put(loaded[name].astype(leaf.dtype), leaf.sharding)
        return leaf

    nnx.replace_by_pure_dict(params, jax.tree_util.tree_map_with_path(replace, pure))
    return params


def write_config_snapshot(config, workdir: str) -> None:
    """config.json, and a copy of the tokenizer's vocabulary, so the workdir stands alone."""
    if jax.process_index() == 0:
        paths.makedirs(workdir)
        paths.write_text(paths.join(workdir, "config.json"),
                         config.to_json_best_effort(indent=2, sort_keys=True))
        vocabulary = config.tokenizer.get("vocabulary_file")
        copy = paths.join(workdir, "vocabulary.txt")
        if vocabulary and not paths.same(vocabulary, copy):
            paths.copy(vocabulary, copy)
