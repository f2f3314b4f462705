"""Training objectives, chosen and weighted by name in `config.losses`.

Each loss takes the model's outputs and the batch and returns `(scalar, metrics)`. Embeddings are
over the global batch: under jit with sharded inputs, XLA gathers what the similarity matrix
needs, so the loss is exact whatever the mesh.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


def l2_normalize(x: jax.Array, axis: int = -1, epsilon: float = 1e-12) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), epsilon))


def clip_contrastive_loss(outputs, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Symmetric InfoNCE: each image picks its caption among all N texts, and each text its image."""
    image = l2_normalize(outputs["image_embedding"].astype(jnp.float32))
    text = l2_normalize(outputs["text_embedding"].astype(jnp.float32))
    logits = outputs["logit_scale"] * image @ text.T
    labels = jnp.arange(logits.shape[0])
    image_to_text = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    text_to_image = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    loss = 0.5 * (image_to_text + text_to_image)
    accuracy = 0.5 * ((logits.argmax(1) == labels).mean() + (logits.argmax(0) == labels).mean())
    return loss, {"clip_loss": loss, "clip_batch_accuracy": accuracy,
                  "logit_scale": outputs["logit_scale"]}


LossFn = Callable[[dict, dict], tuple[jax.Array, dict]]
LOSSES: dict[str, LossFn] = {"clip": clip_contrastive_loss}


def check_loss_weights(weights: dict[str, float]) -> None:
    unknown = [name for name in weights if name not in LOSSES]
    if unknown or not weights:
        raise ValueError(
            f"config.losses must name at least one loss from {sorted(LOSSES)}; got "
            f"{dict(weights)} (unknown: {unknown})."
        )


def total_loss(weights: dict[str, float], outputs, batch) -> tuple[jax.Array, dict]:
    total, metrics = 0.0, {}
    for name, weight in weights.items():
        value, loss_metrics = LOSSES[name](outputs, batch)
        total = total + weight * value
        metrics.update(loss_metrics)
    return total, metrics
