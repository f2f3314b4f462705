"""Gradients over a batch in micro-batches with the exact whole-batch loss (GradCache).

A contrastive loss needs every pair of the batch, so averaging micro-batch gradients would change
the objective. Instead a first pass computes every micro-batch's outputs without keeping
activations, the loss and its gradients with respect to those outputs are computed once over the
whole batch, and a second pass backpropagates each micro-batch's share. The update equals the
one-batch update, at the cost of a second forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def loss_and_grads(forward: Callable, loss_fn: Callable, params, batch: dict, rng: jax.Array,
                   accum_steps: int):
    """((loss, metrics), grads) of `loss_fn(forward(params, batch, rng))` over the whole batch.

    `forward(params, batch, rng)` gives per-example outputs (batch-major) and global scalars;
    `loss_fn(outputs)` gives `(loss, metrics)`. With `accum_steps` > 1 the batch runs as that
    many micro-batches (micro-batch i draws from `fold_in(rng, i)`).
    """
    if accum_steps == 1:
        return jax.value_and_grad(lambda p: loss_fn(forward(p, batch, rng)), has_aux=True)(params)

    micro_batches = jax.tree.map(
        lambda x: x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:]), batch)
    micro_rngs = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(accum_steps))
    stacked = jax.lax.map(lambda micro: forward(params, *micro), (micro_batches, micro_rngs))
    # Per-example outputs come back [accum, micro, ...]; global scalars as [accum].
    is_per_example = jax.tree.map(lambda x: x.ndim >= 2, stacked)
    outputs = jax.tree.map(lambda x, per_example: x.reshape((-1,) + x.shape[2:])
                           if per_example else x[0], stacked, is_per_example)
    (loss, metrics), output_grads = jax.value_and_grad(loss_fn, has_aux=True)(outputs)

    def accumulate(grads, inputs):
        index, micro, micro_rng = inputs
        _, backward = jax.vjp(lambda p: forward(p, micro, micro_rng), params)
        cotangent = jax.tree.map(
            lambda g, per_example: (g.reshape((accum_steps, -1) + g.shape[1:])[index]
                                    if per_example else g * (index == 0)),
            output_grads, is_per_example)
        return jax.tree.map(jnp.add, grads, backward(cotangent)[0]), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accum_steps), micro_batches, micro_rngs))
    return (loss, metrics), grads
