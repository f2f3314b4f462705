"""Emergency checkpoints: a preempted run saves in seconds to each host's local disk, and the copy
to the workdir follows in the background.

A preemption notice leaves a pod seconds to minutes; a full save to a bucket can take longer.
With config.local_checkpoint_dir set, the step a preempted run stops at is written by every
process as the shards it holds (`LOCAL/<run>/process_<i>/<step>/`: one .npz and a meta.json,
renamed into place when whole), then copied to WORKDIR/emergency/<step>/process_<i>/ by a
background thread, a COMPLETE marker last. The process may die before that copy ends.

On resume the newest of three is taken: the workdir's orbax checkpoint, the local copies (used
when every process finds the same whole step on its own disk: the same hosts, the same layout)
and the bucket's copy (when every process's copy is COMPLETE). A copy is read back shard by
shard onto the same shardings, so the run goes on bitwise as if never stopped; a layout that
differs falls back to the orbax checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from mmjax import paths

META, ARRAYS, COMPLETE = "meta.json", "arrays.npz", "COMPLETE"


def _key(index: tuple, shape: tuple) -> str:
    """A shard's place in its array: 'start:stop' per dimension."""
    return ",".join(f"{s.start or 0}:{dim if s.stop is None else s.stop}"
                    for s, dim in zip(index, shape))


class EmergencyCheckpoints:
    """The local and bucket copies of one run's preemption saves, for this process."""

    def __init__(self, local_dir: str, workdir: str):
        run = hashlib.sha256(paths.absolute(workdir).encode()).hexdigest()[:16]
        self.process = jax.process_index()
        self.local = os.path.join(local_dir, run, f"process_{self.process}")
        self.bucket = paths.join(workdir, "emergency")
        self._copy: threading.Thread | None = None

    # -- saving --------------------------------------------------------------------------------
    def save(self, step: int, state, data_state: dict) -> float:
        """Writes this process's shards of `state` locally (whole or not at all), starts the copy
        to the workdir, and returns the seconds the local save took."""
        started = time.perf_counter()
        leaves = jax.tree.leaves(state)
        arrays, dtypes = {}, []
        for i, leaf in enumerate(leaves):
            dtypes.append(str(leaf.dtype))
            for shard in leaf.addressable_shards:
                name = f"{i}|{_key(shard.index, leaf.shape)}"
                if name not in arrays:  # replicas of one shard are saved once
                    arrays[name] = np.asarray(shard.data).reshape(-1).view(np.uint8)
        meta = {"step": int(step), "data_state": data_state, "dtypes": dtypes,
                "shapes": [list(leaf.shape) for leaf in leaves],
                "processes": jax.process_count()}
        folder = os.path.join(self.local, str(step))
        partial = folder + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        np.savez(os.path.join(partial, ARRAYS), **arrays)
        with open(os.path.join(partial, META), "w") as f:
            json.dump(meta, f)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
        for name in os.listdir(self.local):  # older local copies are of no more use
            if name != str(step):
                shutil.rmtree(os.path.join(self.local, name), ignore_errors=True)
        seconds = time.perf_counter() - started
        self._copy = threading.Thread(target=self._copy_to_bucket, args=(step,), daemon=True,
                                      name="mmjax-emergency-copy")
        self._copy.start()
        return seconds

    def _copy_to_bucket(self, step: int) -> None:
        target = paths.join(self.bucket, str(step), f"process_{self.process}")
        paths.makedirs(target)
        for name in (ARRAYS, META):
            paths.copy(os.path.join(self.local, str(step), name), paths.join(target, name))
        paths.write_text(paths.join(target, COMPLETE), "")

    def wait_for_copy(self, timeout: float | None = None) -> bool:
        """Whether the background copy has ended (waiting up to `timeout` seconds)."""
        if self._copy is not None:
            self._copy.join(timeout)
            return not self._copy.is_alive()
        return True

    # -- resuming ------------------------------------------------------------------------------
    def _whole_local_step(self) -> int:
        steps = [int(n) for n in os.listdir(self.local) if n.isdigit()] if os.path.isdir(
            self.local) else []
        return max(steps, default=-1)

    def _whole_bucket_step(self) -> int:
        steps = sorted((int(n) for n in paths.listdir(self.bucket) if n.isdigit()), reverse=True)
        for step in steps:
            folder = paths.join(self.bucket, str(step))
            names = paths.listdir(folder)
            count = len([n for n in names if n.startswith("process_")])
            if count == jax.process_count() and all(
                    paths.exists(paths.join(folder, f"process_{i}", COMPLETE))
                    for i in range(count)):
                return step
        return -1

    def newest(self, after: int) -> tuple[int, str] | None:
        """(step, folder of this process's copy) of the newest emergency save that every
        process can read and that is newer than step `after`; local copies first."""
        for where, step in (("local", self._whole_local_step()),
                            ("bucket", self._whole_bucket_step())):
            steps = [step]
            if jax.process_count() > 1:
                steps = multihost_utils.process_allgather(np.int64(step)).tolist()
            if len(set(steps)) == 1 and steps[0] > after:
                folder = (os.path.join(self.local, str(step)) if where == "local" else
                          paths.join(self.bucket, str(step), f"process_{self.process}"))
                return step, folder
        return None

    def restore(self, folder: str, abstract_state) -> tuple[object, dict] | None:
        """(state on the shardings of `abstract_state`, input position) from a copy; None when
        the copy was written under another layout (then the orbax checkpoint is used)."""
        meta = json.loads(paths.read_text(paths.join(folder, META)))
        arrays = np.load(io.BytesIO(paths.read_bytes(paths.join(folder, ARRAYS))))
        abstract_leaves, treedef = jax.tree.flatten(abstract_state)
        fits = meta["processes"] == jax.process_count() and [
            list(a.shape) for a in abstract_leaves] == meta["shapes"]
        for i, leaf in enumerate(abstract_leaves if fits else ()):
            wanted = leaf.sharding.addressable_devices_indices_map(leaf.shape).values()
            fits = fits and all(f"{i}|{_key(index, leaf.shape)}" in arrays for index in wanted)
        if jax.process_count() > 1:
            fits = bool(np.all(multihost_utils.process_allgather(np.int32(fits))))
        if not fits:
            return None

        def leaf(i, abstract):
            dtype = jax.numpy.dtype(meta["dtypes"][i])

            def shard(index):
                data = arrays[f"{i}|{_key(index, abstract.shape)}"]
                shape = tuple((s.stop if s.stop is not None else d) - (s.start or 0)
                              for s, d in zip(index, abstract.shape))
                return data.view(dtype).reshape(shape)
            return jax.make_array_from_callback(abstract.shape, abstract.sharding, shard)

        state = treedef.unflatten([leaf(i, a) for i, a in enumerate(abstract_leaves)])
        return state, meta["data_state"]
