import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from input_pipeline import pipeline
from mmjax import sharding
from mmjax.training.trainer import Trainer


def test_mesh_sizes_fill_in_minus_one_and_explain_errors():
    assert sharding.resolve_mesh_shape({"data": -1, "fsdp": 2}, 8) == {
        "data": 4,
        "fsdp": 2,
        "tensor": 1,
    }
    with pytest.raises(ValueError, match="needs 6 devices but 8"):
        sharding.resolve_mesh_shape({"data": 3, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match="unknown axes \\['model'\\]"):
        sharding.resolve_mesh_shape({"model": 2}, 8)


def test_logical_rules_map_to_partition_specs():
    rules = sharding.get_rules("fsdp_tensor")
    assert sharding.logical_to_spec(("embed", "mlp"), rules) == P("fsdp", "tensor")
    assert sharding.logical_to_spec(("embed", "heads", "kv"), rules) == P("fsdp", "tensor", None)
    assert sharding.logical_to_spec(("mlp",), rules) == P(("tensor", "fsdp"))
    assert sharding.logical_to_spec(("batch", "length"), rules) == P(("data", "fsdp"), None)
    # With a shape, mesh axes that do not divide a dimension are skipped.
    mesh = sharding.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert sharding.logical_to_spec(("heads", "kv"), rules, (3, 8), mesh) == P(None, "fsdp")
    assert sharding.logical_to_spec(("vocab", "embed"), rules, (6, 8), mesh) == P("tensor", "fsdp")
    with pytest.raises(ValueError, match="valid presets"):
        sharding.get_rules("zero3")


MESHES = {
    "data8": ({"data": 8}, "data_parallel"),
    "fsdp8": ({"data": 1, "fsdp": 8}, "fsdp"),
    "data2_fsdp2_tensor2": ({"data": 2, "fsdp": 2, "tensor": 2}, "fsdp_tensor"),
}


@pytest.fixture(scope="module")
def reference(tfds_dir):
    """Losses of 3 steps on one device, and the batches they used."""
    from conftest import make_tiny_config

    config = make_tiny_config(tfds_dir)
    trainer = Trainer(config, mesh=sharding.create_mesh({"data": 1}, jax.devices()[:1]))
    batches = pipeline.train_batches(config, trainer.tokenizer)
    batches = [next(batches) for _ in range(3)]
    state, losses = trainer.create_state(), []
    for batch in batches:
        state, metrics = trainer.train_step(state, trainer.global_batch(batch))
        losses.append(float(metrics["loss"]))
    return config, batches, losses


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_sharded_training_matches_one_device(reference, mesh_name):
    config, batches, reference_losses = reference
    mesh_config, rules = MESHES[mesh_name]
    config = config.copy_and_resolve_references()
    config.sharding_rules = rules
    trainer = Trainer(config, mesh=sharding.create_mesh(mesh_config))
    state, losses = trainer.create_state(), []

    # Every parameter (and optimizer slot) is laid out as the rules say.
    rule_table = sharding.get_rules(rules)
    def check(variable, array):
        expected = sharding.logical_to_spec(variable.get_metadata().get("logical_axes"), rule_table,
                                            variable.shape, trainer.mesh)
        assert array[...].sharding.spec == expected
    jax.tree.map(check, trainer.abstract_state["params"], state["params"],
                 is_leaf=lambda x: isinstance(x, nnx.Variable))

    for batch in batches:
        state, metrics = trainer.train_step(state, trainer.global_batch(batch))
        losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses, reference_losses, atol=1e-4, rtol=0)


def test_fsdp_spreads_parameters_and_optimizer_state(tfds_dir):
    from conftest import make_tiny_config

    config = make_tiny_config(tfds_dir)
    config.sharding_rules = "fsdp"
    trainer = Trainer(config, mesh=sharding.create_mesh({"data": 1, "fsdp": 8}))
    state = trainer.create_state()
    arrays = [x for x in jax.tree.leaves(state) if x.ndim > 0]
    total = sum(x.nbytes for x in arrays)
    per_device = {}
    for array in arrays:
        for shard in array.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    assert len(per_device) == 8
    assert max(per_device.values()) <= total / 8 * 1.10, (max(per_device.values()), total)
