"""Device mesh and logical-axis sharding.

Model code names the axes of every parameter and of key activations with logical names
(`batch`, `length`, `embed`, `mlp`, `heads`, `kv`, `vocab`). A short rules table in the config
maps each logical name to a mesh axis (or to nothing, meaning replicated), so the same model runs
data-parallel, FSDP or tensor-parallel by changing only the config.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

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
    "fsdp": (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
    ),
    "fsdp_tensor": (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("vocab", "tensor"),
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
    num_processes = len({d.process_index for d in devices})
    if num_processes > 1 and sizes["data"] % num_processes == 0:
        per_process = len(devices) // num_processes
        inner = (sizes["data"] // num_processes, sizes["fsdp"], sizes["tensor"])
        if math.prod(inner) == per_process:
            device_array = mesh_utils.create_hybrid_device_mesh(
                inner, (num_processes, 1, 1), devices=devices
            )
            return Mesh(device_array, MESH_AXES)
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(ordered, dtype=object).reshape(shape), MESH_AXES)


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


def logical_to_spec(logical_axes: Sequence[str | None] | None, rules) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once per array."""
    if logical_axes is None:
        return PartitionSpec()
    rule_map = dict(rules)
    used: set[str] = set()
    spec = []
    for name in logical_axes:
        mesh_axes = rule_map.get(name) if name is not None else None
        if mesh_axes is None:
            spec.append(None)
            continue
        axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else (axes or None))
    return PartitionSpec(*spec)


def _fits(shape, spec: PartitionSpec, mesh: Mesh) -> bool:
    for dim, axes in zip(shape, spec):
        if axes is None:
            continue
        axes = (axes,) if isinstance(axes, str) else axes
        if dim % math.prod(mesh.shape[a] for a in axes):
            return False
    return True


def variable_sharding(variable: nnx.Variable, mesh: Mesh, rules) -> NamedSharding:
    """The sharding the rules give a parameter (or an optimizer slot that mirrors it)."""
    logical_axes = variable.get_metadata().get("logical_axes")
    spec = logical_to_spec(logical_axes, rules)
    shape = np.shape(variable.get_value() if hasattr(variable, "get_value") else variable.value)
    if not _fits(shape, spec, mesh):
        raise ValueError(
            f"A parameter of shape {shape} with logical axes {logical_axes} cannot be split as "
            f"{spec} on mesh {dict(mesh.shape)}: a dimension is not divisible by its mesh axes. "
            "Change the model width or the mesh."
        )
    return NamedSharding(mesh, spec)


def tree_shardings(tree, mesh: Mesh, rules):
    """Shardings for a pytree of nnx Variables and plain arrays (arrays are replicated)."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def leaf_sharding(leaf):
        if isinstance(leaf, nnx.Variable):
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


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    mesh = _ACTIVE["mesh"]
    if mesh is None:
        return x
    spec = logical_to_spec(logical_axes, _ACTIVE["rules"])
    if not _fits(x.shape, spec, mesh):
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def batch_sharding(mesh: Mesh, rules, ndim: int = 1) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules))
