"""The image tokenizer's reconstruction loss: squared pixel error, weighted along edges, with a
noise floor under which errors do not count."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def edge_map(images: jax.Array) -> jax.Array:
    """[batch, H, W, 1]: how far each pixel is from the mean of its 3x3 neighbourhood, summed
    over channels; zero on flat colour, large along the edges of shapes."""
    # Edge padding: the image border is not an edge.
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = jax.lax.reduce_window(padded, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1),
                                    "VALID") / 9.0
    return jnp.abs(images - blurred).sum(-1, keepdims=True)


def reconstruction_loss(outputs, batch, edge_weight: float = 0.0,
                        noise_floor: tuple[float, ...] | None = None
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean squared error of an autoencoder's reconstruction against its (normalised) input,
    each pixel weighted 1 + edge_weight * edge_map(target): small shapes are mostly edge, and
    a plain mean spends its gradient on the background they sit on. With `noise_floor` (per
    channel, in normalised units) an error counts only by how far it exceeds the floor: pixel
    noise below it costs nothing, so the tokens need not spend codes on it."""
    del batch
    difference = outputs["reconstruction"] - outputs["target"]
    error = jnp.mean(jnp.square(difference))
    if noise_floor is not None:
        floor = jnp.asarray(noise_floor, difference.dtype)
        difference = jnp.sign(difference) * jnp.maximum(jnp.abs(difference) - floor, 0.0)
    squared = jnp.square(difference)
    weight = 1.0
    if edge_weight:
        weight = 1.0 + edge_weight * jax.lax.stop_gradient(edge_map(outputs["target"]))
    return jnp.mean(weight * squared), {"reconstruction_mse": error}
