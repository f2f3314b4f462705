"""Orbax checkpoints of the whole train state (params, optimizer state, step).

The input position is the step itself: the pipeline's batch at step s depends only on the seed
and s, so restoring the step restores the data order.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


def create_manager(workdir: str, *, max_to_keep: int | None) -> ocp.CheckpointManager:
    """Saves are asynchronous and atomic (written to a temporary name, then renamed)."""
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
        ),
    )


def save(manager: ocp.CheckpointManager, step: int, state) -> bool:
    # The trainer decides when to save; force bypasses orbax's own interval logic.
    return manager.save(step, args=ocp.args.StandardSave(state), force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
    """Restores `step` onto the shardings of `abstract_state` (jax.ShapeDtypeStruct leaves)."""
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


def abstract_with_shardings(abstract_state, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state, shardings)
