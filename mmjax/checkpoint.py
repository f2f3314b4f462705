"""Orbax checkpoints of the whole train state (params, optimizer state, step), and the input
position at each saved step (WORKDIR/data_state.json).

The pipeline's batches depend only on the seed and the global input position, so restoring the
position restores the data order (with another global batch size, too).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from mmjax.conventions import parameter_name, under_prefixes


def create_manager(workdir: str, *, max_to_keep: int | None, folder: str = "checkpoints"
                   ) -> ocp.CheckpointManager:
    """Saves are asynchronous and atomic (written to a temporary name, then renamed)."""
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, folder)),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
        ),
    )


def save(manager: ocp.CheckpointManager, step: int, state) -> bool:
    # The trainer decides when to save; force bypasses orbax's own interval logic.
    return manager.save(step, args=ocp.args.StandardSave(state), force=True)


DATA_STATE = "data_state.json"


def save_data_state(workdir: str, step: int, data_state: dict, keep_steps) -> None:
    """Records {step: data_state} (input position, bad examples so far) next to the checkpoints;
    written atomically, before the checkpoint itself, for the steps still kept."""
    path = os.path.join(workdir, DATA_STATE)
    states = load_data_states(workdir)
    states[str(step)] = data_state
    # Entries older than the oldest kept checkpoint go; newer ones stay (a save still in flight
    # is not yet among the kept steps).
    oldest = min([*keep_steps, step])
    states = {k: v for k, v in states.items() if int(k) >= oldest}
    with open(path + ".tmp", "w") as f:
        json.dump(states, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def load_data_states(workdir: str) -> dict:
    path = os.path.join(workdir, DATA_STATE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


class BestCheckpoint:
    """Keeps, in WORKDIR/best/, the checkpoint with the best value of one eval metric so far.

    The last `keep_checkpoints` stay in WORKDIR/checkpoints/ as usual; `best/best.json` records the
    step and the value, so a resumed run keeps comparing against it.
    """

    def __init__(self, workdir: str, metric: str, mode: str):
        if mode not in ("max", "min"):
            raise ValueError(f"config.keep_best_mode must be 'max' or 'min', got {mode!r}.")
        self.metric, self.mode = metric, mode
        self.manager = create_manager(workdir, max_to_keep=1, folder="best")
        self.record_path = os.path.join(workdir, "best", "best.json")
        self.best = None
        if os.path.exists(self.record_path):
            with open(self.record_path) as f:
                self.best = json.load(f)["value"]

    def update(self, step: int, state, eval_metrics: dict[str, float]) -> bool:
        if self.metric not in eval_metrics:
            raise KeyError(f"config.keep_best_by names {self.metric!r}, which the evaluation does "
                           f"not report; it reports {sorted(eval_metrics)}.")
        value = eval_metrics[self.metric]
        better = (self.best is None or (value > self.best if self.mode == "max"
                                        else value < self.best))
        if better:
            save(self.manager, step, state)
            self.manager.wait_until_finished()
            self.best = value
            if jax.process_index() == 0:
                with open(self.record_path, "w") as f:
                    json.dump({"step": step, "metric": self.metric, "value": value}, f)
        return better

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
    """Restores `step` onto the shardings of `abstract_state` (jax.ShapeDtypeStruct leaves)."""
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except ValueError as e:
        if "not compatible with the stored shape" not in str(e):
            raise
        raise ValueError(
            f"The checkpoint at step {step} in {manager.directory} does not fit this config's "
            f"model ({e}). The model config or the tokenizer's vocabulary (which sets the "
            "embedding size) differs from the run that saved it: run with that run's config "
            "(--config=configs/from_workdir.py:WORKDIR) or its vocabulary "
            "(--config.tokenizer.vocabulary_file=WORKDIR/vocabulary.txt).") from None


def abstract_with_shardings(abstract_state, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state, shardings)


def find_checkpoint(path: str) -> tuple[str, int]:
    """(checkpoints directory, step) for a workdir, its `checkpoints/` folder or one step's folder."""
    path = os.path.abspath(path)
    candidates = [(os.path.join(path, "checkpoints"), None), (path, None),
                  (os.path.dirname(path), os.path.basename(path))]
    for directory, step in candidates:
        if not os.path.isdir(directory):
            continue
        steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
        if step is not None and step.isdigit() and int(step) in steps:
            return directory, int(step)
        if step is None and steps:
            return directory, steps[-1]
    raise FileNotFoundError(
        f"No checkpoint at {path}: give a workdir, its checkpoints/ folder or a checkpoints/STEP "
        "folder written by mmjax."
    )


def parameter_shapes(params) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of a model's (possibly abstract) nnx parameters."""
    return {name: tuple(leaf.shape) for name, leaf in _flat(nnx.to_pure_dict(params)).items()}


def saved_parameter_shapes(directory: str, step: int) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape in a checkpoint, from its metadata (no array is read)."""
    with ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler()) as manager:
        saved = manager.item_metadata(step)
    return {name: tuple(leaf.shape)
            for name, leaf in _flat(saved["params"], saved_variables=True).items()}


def _flat(tree, saved_variables: bool = False) -> dict[str, Any]:
    """{'image_tower/encoder/blocks/0/mlp/up/kernel': array}.

    A saved state holds each nnx Variable as {'value': array}: `saved_variables` drops that level.
    """
    return {parameter_name(path[:-1] if saved_variables else path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def load_params(path: str) -> dict[str, np.ndarray]:
    """The parameters of a checkpoint as a flat {name: array} dict, on the host."""
    directory, step = find_checkpoint(path)
    with ocp.CheckpointManager(directory) as manager:
        restored = manager.restore(step, args=ocp.args.StandardRestore())
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
        raise ValueError(f"config.init_from.params {list(prefixes)} selects no parameter; top-level "
                         f"names are {sorted({n.split('/')[0] for n in flat})}.")
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
            + (f"{len(missing)} parameters are not in it (first: {missing[:3]}); " if missing else "")
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
