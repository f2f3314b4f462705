"""The optimizer: per-part learning-rate multipliers beside frozen parameters."""

import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax.training import optim


def optimizer_config(lr_mults=(), frozen=()):
    return ml_collections.ConfigDict(dict(
        learning_rate=1e-2, warmup_steps=0, total_steps=10, end_learning_rate_factor=0.01,
        frozen_params=frozen, optimizer=dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1,
                                             grad_clip_norm=1.0, lr_mults=lr_mults)))


def first_updates(config):
    params = {name: {"kernel": jnp.full((2, 3), 0.5), "bias": jnp.full((3,), 0.5)}
              for name in ("text_tower", "generator", "image_tower")}
    grads = {name: {"kernel": jnp.linspace(-1, 1, 6).reshape(2, 3), "bias": jnp.ones((3,))}
             for name in params}
    tx = optim.build_optimizer(config.optimizer, optim.run_schedule(config),
                               tuple(config.frozen_params))
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


def test_a_parts_multiplier_scales_its_whole_update_and_no_other():
    """The text tower's step (Adam's direction and the weight decay alike) is a quarter of the
    same step elsewhere; parts without a multiplier step as they would without any."""
    plain = first_updates(optimizer_config())
    scaled = first_updates(optimizer_config(lr_mults=(("text_tower", 0.25),)))
    for leaf in ("kernel", "bias"):
        np.testing.assert_allclose(scaled["text_tower"][leaf], 0.25 * plain["text_tower"][leaf],
                                   rtol=1e-6)
        np.testing.assert_array_equal(scaled["generator"][leaf], plain["generator"][leaf])
    assert np.abs(plain["text_tower"]["kernel"]).min() > 0


def test_multipliers_and_frozen_parts_together():
    updates = first_updates(optimizer_config(lr_mults=(("text_tower", 2.0),),
                                             frozen=("image_tower",)))
    plain = first_updates(optimizer_config(frozen=("image_tower",)))
    np.testing.assert_array_equal(updates["image_tower"]["kernel"], 0.0)
    np.testing.assert_allclose(updates["text_tower"]["kernel"],
                               2.0 * plain["text_tower"]["kernel"], rtol=1e-6)
