"""Cross-entropy losses: next and masked token prediction (captions, masked language and image
tokens), image-text matching, and an answer classifier."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def masked_token_cross_entropy(logits, targets, weights):
    """Mean token cross-entropy and accuracy over the positions whose weight is 1 (captions,
    masked words, masked image tokens)."""
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    count = jnp.maximum(weights.sum(), 1.0)
    accuracy = ((logits.argmax(-1) == targets) * weights).sum() / count
    return (per_token * weights).sum() / count, accuracy


def caption_loss(outputs, batch, *, pad_id: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CoCa's captioning loss: next-token cross-entropy, padding masked (end-of-text counts)."""
    tokens = batch["tokens"]
    targets = tokens[:, 1:]
    weights = (targets != pad_id).astype(jnp.float32)
    loss, accuracy = masked_token_cross_entropy(outputs["caption_logits"][:, :-1], targets,
                                                 weights)
    return loss, {"caption_loss": loss, "caption_token_accuracy": accuracy}


def itm_loss(outputs, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Image-text matching: 2-way cross-entropy over positive and hard-negative pairs."""
    del batch
    logits, labels = outputs["itm_logits"], outputs["itm_labels"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = (logits.argmax(-1) == labels).mean()
    return loss, {"itm_loss": loss, "itm_accuracy": accuracy}


def mlm_loss(outputs, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked language modelling: cross-entropy at the selected positions against the
    original tokens."""
    loss, accuracy = masked_token_cross_entropy(outputs["mlm_logits"], batch["tokens"],
                                                 outputs["mlm_mask"])
    return loss, {"mlm_loss": loss, "mlm_accuracy": accuracy}


def classification_loss(outputs, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Cross-entropy of a classification head against the batch's labels."""
    logits, labels = outputs["class_logits"], batch["label"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {"classification_loss": loss,
                  "classification_accuracy": (logits.argmax(-1) == labels).mean()}


def masked_image_token_loss(outputs, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A masked-token generator's cross-entropy at the masked image tokens."""
    del batch
    loss, accuracy = masked_token_cross_entropy(
        outputs["image_token_logits"], outputs["image_token_targets"],
        outputs["image_token_mask"].astype(jnp.float32))
    return loss, {"image_token_loss": loss, "image_token_accuracy": accuracy}
