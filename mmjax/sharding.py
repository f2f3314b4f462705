"""Device mesh and logical-axis sharding.

Model code names the axes of every parameter and of key activations with logical names
(`batch`, `length`, `embed`, `mlp`, `heads`, `kv`, `vocab`). A short rules table in the config
maps each logical name to a mesh axis (or to nothing, meaning replicated), so the same model runs
data-parallel, FSDP or tensor-parallel by changing only the config.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Preset rules tables, by name (config.sharding.rules may also be an explicit list of pairs).
RULES_PRESETS = {
    "data_parallel": (
        ("batch", ("data", "fsdp")),
    ),
    # Every parameter dimension may take `fsdp`; the first that divides evenly does, so weight
    # matrices split along `embed` and vectors (norms, biases) along their only axis.
    "fsdp": (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("mlp", "fsdp"),
        ("heads", "fsdp"),
        ("kv", "fsdp"),
        ("vocab", "fsdp"),
        ("norm", "fsdp"),
    ),
    "fsdp_tensor": (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("mlp", ("tensor", "fsdp")),
        ("heads", ("tensor", "fsdp")),
        ("kv", "fsdp"),
        ("vocab", ("tensor", "fsdp")),
        ("norm", "fsdp"),
    ),
}


def resolve_mesh_shape(mesh_config: dict[str, int], num_devices: int) -> dict[str, int]:
    """Fills in one axis of size -1 with the devices the others leave, and checks the product."""
    unknown_axes = [name for name in mesh_config if name not in MESH_AXES]
    if unknown_axes:
        raise ValueError(
            f"config.mesh has unknown axes {unknown_axes}; valid axes are {list(MESH_AXES)}."
        )
    sizes = {name: int(mesh_config.get(name, 1)) for name in MESH_AXES}
    free_axes = [name for name, size in sizes.items() if size == -1]
    if len(free_axes) > 1:
        raise ValueError(
            f"config.mesh may set at most one axis to -1, got {free_axes}; give the others sizes."
        )
    fixed_product = math.prod(size for size in sizes.values() if size != -1)
    if free_axes:
        if num_devices % fixed_product:
            raise ValueError(
                f"config.mesh {sizes}: {num_devices} devices are not divisible by the fixed axes' "
                f"product {fixed_product}."
            )
        sizes[free_axes[0]] = num_devices // fixed_product
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(
            f"config.mesh {sizes} needs {math.prod(sizes.values())} devices but {num_devices} are "
            "available; set one axis to -1 to use the rest."
        )
    return sizes


def create_mesh(mesh_config: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all devices of all processes with axes (data, fsdp, tensor).

    With several processes the devices are ordered so that the fast axes (fsdp, tensor) stay inside
    one process and `data` runs across processes.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(dict(mesh_config), len(devices))
    shape = tuple(sizes[name] for name in MESH_AXES)
    if devices[0].platform == "tpu":
        return _tpu_mesh(sizes, devices)
    num_processes = len({d.process_index for d in devices})
    if num_processes == 1:
        # Topology-aware on TPU; a plain reshape elsewhere.
        return Mesh(mesh_utils.create_device_mesh(shape, devices), MESH_AXES)
    per_process = len(devices) // num_processes
    if sizes["data"] % num_processes or (sizes["fsdp"] * sizes["tensor"]) > per_process:
        raise ValueError(
            f"config.mesh {sizes} over {num_processes} processes: the `data` axis must be "
            "divisible by the number of processes and `fsdp` x `tensor` must fit inside one "
            "process, so that only data-parallel traffic crosses hosts."
        )
    # Process-major order with `data` outermost: fsdp and tensor neighbours share a host.
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(ordered, dtype=object).reshape(shape), MESH_AXES)


def _tpu_mesh(sizes: dict[str, int], devices) -> Mesh:
    """TPU chips of one slice are all joined by ICI, whatever host they sit on: the mesh follows
    the physical torus. Over several slices (multi-slice, joined by the data-centre network)
    only `data` spans them, so only data-parallel traffic crosses slices."""
    shape = tuple(sizes[name] for name in MESH_AXES)
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    if slices > 1 and sizes["data"] % slices:
        raise ValueError(f"config.mesh {sizes} over {slices} slices: the `data` axis must be "
                         "divisible by the number of slices (only it crosses slices)")
    within = (sizes["data"] // slices, sizes["fsdp"], sizes["tensor"])

    def build(split: bool):
        if slices == 1:
            return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=split)
        return mesh_utils.create_hybrid_device_mesh(within, (slices, 1, 1), devices,
                                                    allow_split_physical_axes=split)

    try:
        return Mesh(build(split=False), MESH_AXES)
    except NotImplementedError:
        # An axis that is no product of the torus's sides (fsdp=8 on 16x16) takes a run of
        # chips along one side: still neighbours on the ring.
        return Mesh(build(split=True), MESH_AXES)


def get_rules(rules: Any) -> tuple[tuple[str, Any], ...]:
    """A rules table from a preset name or an explicit sequence of (logical, mesh axes) pairs."""
    if isinstance(rules, str):
        if rules not in RULES_PRESETS:
            raise ValueError(
                f"Unknown sharding rules preset {rules!r}; valid presets: {sorted(RULES_PRESETS)}."
            )
        return RULES_PRESETS[rules]
    table = []
    for pair in rules:
        logical, mesh_axes = pair
        mesh_axes = tuple(mesh_axes) if isinstance(mesh_axes, (list, tuple)) else mesh_axes
        table.append((logical, mesh_axes))
    return tuple(table)


def logical_to_spec(logical_axes: Sequence[str | None] | None, rules,
                    shape: Sequence[int] | None = None, mesh: Mesh | None = None) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec.

    A mesh axis is used at most once per array. Given `shape` and `mesh`, a mesh axis that does not
    divide its dimension is skipped (that dimension stays replicated along it), so a rule such as
    `heads -> fsdp` shards what it can instead of failing on a model with 2 heads.
    """
    if logical_axes is None:
        return PartitionSpec()
    rule_map = dict(rules)
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(logical_axes):
        mesh_axes = rule_map.get(name) if name is not None else None
        if mesh_axes is None:
            spec.append(None)
            continue
        candidates = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
        chosen: list[str] = []
        for axis in candidates:
            if axis in used:
                continue
            if shape is not None and mesh is not None:
                if shape[dim] % (math.prod(mesh.shape[a] for a in chosen) * mesh.shape[axis]):
                    continue
            chosen.append(axis)
        used.update(chosen)
        spec.append(chosen[0] if len(chosen) == 1 else (tuple(chosen) or None))
    return PartitionSpec(*spec)


def variable_sharding(variable: nnx.Variable, mesh: Mesh, rules) -> NamedSharding:
    """The sharding the rules give a parameter (or an optimizer slot that mirrors it)."""
    logical_axes = variable.get_metadata().get("logical_axes")
    shape = np.shape(variable.get_value() if hasattr(variable, "get_value") else variable.value)
    if logical_axes is not None and len(logical_axes) != len(shape):
        raise ValueError(f"A parameter of shape {shape} names {len(logical_axes)} logical axes "
                         f"{logical_axes}; give one name per dimension.")
    return NamedSharding(mesh, logical_to_spec(logical_axes, rules, shape, mesh))


def tree_shardings(tree, mesh: Mesh, rules):
    """Shardings for a pytree of nnx Variables and plain arrays (arrays are replicated)."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def leaf_sharding(leaf):
        if isinstance(leaf, nnx.Variable):
            value = leaf.get_value() if hasattr(leaf, "get_value") else leaf.value
            if not hasattr(value, "shape"):
                return leaf  # an optimizer's empty placeholder (optax.MaskedNode): no arrays
            return leaf.replace(variable_sharding(leaf, mesh, rules))
        return replicated

    return jax.tree.map(leaf_sharding, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


# Activation constraints: the trainer sets the mesh and rules while it traces the step, and model
# code calls `constrain(x, ("batch", "length", "embed"))` without knowing either.
_ACTIVE: dict[str, Any] = {"mesh": None, "rules": ()}


@contextlib.contextmanager
def use_mesh_rules(mesh: Mesh | None, rules) -> Iterator[None]:
    previous = dict(_ACTIVE)
    _ACTIVE.update(mesh=mesh, rules=rules)
    try:
        yield
    finally:
        _ACTIVE.update(previous)


def batch_axes(rules) -> tuple[str, ...]:
    """The mesh axes the rules split the batch over."""
    spec = logical_to_spec(("batch",), rules)[0]
    return () if spec is None else ((spec,) if isinstance(spec, str) else tuple(spec))


def batch_devices(mesh_shape: dict[str, int], rules) -> int:
    """How many ways the batch is split: the product of its mesh axes' sizes."""
    return math.prod(mesh_shape[axis] for axis in batch_axes(rules))


def active_batch_axes() -> tuple[Mesh | None, tuple[str, ...]]:
    """The mesh in use and the mesh axes the batch is split over (empty without a mesh)."""
    mesh = _ACTIVE["mesh"]
    if mesh is None:
        return None, ()
    return mesh, tuple(a for a in batch_axes(_ACTIVE["rules"]) if mesh.shape[a] > 1)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    mesh = _ACTIVE["mesh"]
    if mesh is None:
        return x
    spec = logical_to_spec(logical_axes, _ACTIVE["rules"], x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def batch_sharding(mesh: Mesh, rules, ndim: int = 1) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules))
