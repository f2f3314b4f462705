"""Contrastive losses over the global batch: CLIP's InfoNCE, SigLIP's sigmoid (chunked around
the ring of batch devices) and distillation of a teacher's similarities."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from mmjax import sharding


def l2_normalize(x: jax.Array, axis: int = -1, epsilon: float = 1e-12) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), epsilon))


def same_caption(tokens: jax.Array) -> jax.Array:
    """[B, B] bool: rows whose token ids are identical. Compared through two independent 32-bit
    rolling hashes of each row, each step mixed (a [B, B, length] comparison would not fit at
    CLIP's batch sizes; a collision between B rows is ~B^2 / 2^64 likely)."""
    def row_hash(multiplier: int, seed: int) -> jax.Array:
        h = jnp.full(tokens.shape[:1], seed, jnp.uint32)
        for position in range(tokens.shape[1]):
            h = (h ^ tokens[:, position].astype(jnp.uint32)) * jnp.uint32(multiplier)
            h = h ^ (h >> 15)
        return h

    hashes = [row_hash(0x85EBCA6B, 0x9E3779B9), row_hash(0xC2B2AE35, 0x27D4EB2F)]
    return (hashes[0][:, None] == hashes[0][None, :]) & (hashes[1][:, None] == hashes[1][None, :])


def column_argmax_hits(logits: jax.Array, matches: jax.Array) -> jax.Array:
    """[B] bool: whether each column's highest row (the first, on ties) is a match; the same as
    `matches[logits.argmax(0), arange(B)]`. Written as reductions over the rows, which the batch
    shards, so a mesh combines [B] vectors of all chips' rows (all-reduces) rather than
    gathering every chip's partial argmax of every column."""
    rows = jnp.arange(logits.shape[0])[:, None]
    top = logits == logits.max(axis=0, keepdims=True)
    first = jnp.where(top, rows, logits.shape[0]).min(axis=0, keepdims=True)
    return jnp.any(matches & (rows == first), axis=0)


def clip_contrastive_loss(outputs, batch, *, pairs=(("image", "text"),),
                          identical_captions_match: bool = False
                          ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Symmetric InfoNCE for each modality pair (a, b): each a picks its b among all N, and each
    b its a; the mean over pairs. With several pairs each also logs as clip_loss_<a>_<b>.

    `identical_captions_match`: examples whose captions are word for word the same are right
    answers for each other (the target spread evenly over them) instead of negatives: on data
    with few distinct captions (the generated datasets) a batch holds many such copies, and
    pushing them apart teaches the model to tell apart what nothing distinguishes."""
    size = outputs[f"{pairs[0][0]}_embedding"].shape[0]
    if identical_captions_match:
        matches = same_caption(batch["tokens"])
        targets = matches / matches.sum(axis=1, keepdims=True)  # symmetric: rows and columns
        cross_entropy = lambda logits: optax.softmax_cross_entropy(logits, targets)
    else:  # one right answer per row: the integer-label form
        matches = jnp.eye(size, dtype=bool)
        cross_entropy = lambda logits: optax.softmax_cross_entropy_with_integer_labels(
            logits, jnp.arange(size))

    pair_losses, accuracies, metrics = [], [], {}
    for a, b in pairs:
        first, second = (l2_normalize(outputs[f"{m}_embedding"].astype(jnp.float32))
                         for m in (a, b))
        logits = outputs["logit_scale"] * first @ second.T
        loss = 0.5 * (cross_entropy(logits).mean() + cross_entropy(logits.T).mean())
        rows = jnp.arange(size)
        accuracy = 0.5 * (matches[rows, logits.argmax(1)].mean()
                          + column_argmax_hits(logits, matches).mean())
        pair_losses.append(loss)
        accuracies.append(accuracy)
        if len(pairs) > 1:
            metrics[f"clip_loss_{a}_{b}"], metrics[f"clip_batch_accuracy_{a}_{b}"] = loss, accuracy
    loss = sum(pair_losses) / len(pairs)
    return loss, {**metrics, "clip_loss": loss,
                  "clip_batch_accuracy": sum(accuracies) / len(pairs),
                  "logit_scale": outputs["logit_scale"]}


def _siglip_pair_losses(image, text, scale, bias, positive):
    """Sum over pairs of -log sigmoid(±(scale * <image, text> + bias)); + where `positive`."""
    logits = scale * image @ text.T + bias
    return -jnp.sum(jax.nn.log_sigmoid(jnp.where(positive, logits, -logits)))


def siglip_loss(outputs, batch, *, pairs=(("image", "text"),)
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SigLIP's sigmoid loss: every pair of examples of two modalities is its own binary
    problem; the mean over the modality pairs (each also logged with several).

    On a mesh whose batch axes have several devices, each device keeps its first modality's
    rows and passes the second's around the ring of batch devices (one `ppermute` per step), so
    no device ever holds more than a [local batch, local batch] block of logits; the result
    equals the unchunked loss.
    """
    del batch
    scale, bias = outputs["logit_scale"], outputs["logit_bias"]
    mesh, axes = sharding.active_batch_axes()
    pair_losses, metrics = [], {}
    for a, b in pairs:
        first, second = (l2_normalize(outputs[f"{m}_embedding"].astype(jnp.float32))
                         for m in (a, b))
        global_batch = first.shape[0]
        if not axes:
            total = _siglip_pair_losses(first, second, scale, bias,
                                        jnp.eye(global_batch, dtype=bool))
        else:
            total = jax.shard_map(
                functools.partial(_siglip_ring, axes=axes),
                mesh=mesh, in_specs=(PartitionSpec(axes), PartitionSpec(axes), PartitionSpec(),
                                     PartitionSpec()),
                out_specs=PartitionSpec(), check_vma=False)(first, second, scale, bias)
        # SigLIP normalises by the batch size, not the number of pairs.
        pair_losses.append(total / global_batch)
        if len(pairs) > 1:
            metrics[f"siglip_loss_{a}_{b}"] = pair_losses[-1]
    loss = sum(pair_losses) / len(pairs)
    return loss, {**metrics, "siglip_loss": loss, "logit_scale": scale, "logit_bias": bias}


def _siglip_ring(image, text, scale, bias, *, axes):
    """Per device: its images against every device's texts, the texts travelling the ring."""
    devices = jax.lax.psum(1, axes)
    shift = [(i, (i + 1) % devices) for i in range(devices)]
    local = image.shape[0]

    def step(i, carry):
        total, text_chunk = carry
        # At step 0 the texts are this device's own, so the diagonal holds the matching pairs.
        positive = jnp.eye(local, dtype=bool) & (i == 0)
        total = total + _siglip_pair_losses(image, text_chunk, scale, bias, positive)
        return total, jax.lax.ppermute(text_chunk, axes, shift)

    total, _ = jax.lax.fori_loop(0, devices, step, (jnp.zeros((), jnp.float32), text))
    return jax.lax.psum(total, axes)


def distillation_loss(outputs, batch, *, temperature: float) -> tuple[jax.Array, dict]:
    """Knowledge distillation: KL(teacher || student) between the softmax distributions of the
    two models' image->text and text->image similarity rows at temperature T, times T^2."""
    del batch

    def similarity(image, text, scale):
        return scale * l2_normalize(image.astype(jnp.float32)) @ l2_normalize(
            text.astype(jnp.float32)).T / temperature

    student = similarity(outputs["image_embedding"], outputs["text_embedding"],
                         outputs["logit_scale"])
    teacher = similarity(outputs["teacher_image_embedding"], outputs["teacher_text_embedding"],
                         outputs["teacher_logit_scale"])

    def kl(teacher_logits, student_logits):
        teacher_log_probs = jax.nn.log_softmax(teacher_logits)
        return jnp.sum(jnp.exp(teacher_log_probs)
                       * (teacher_log_probs - jax.nn.log_softmax(student_logits)), -1).mean()

    loss = temperature ** 2 * 0.5 * (kl(teacher, student) + kl(teacher.T, student.T))
    return loss, {"distill_loss": loss}
