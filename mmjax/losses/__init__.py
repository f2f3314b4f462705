"""Training objectives, chosen and weighted by name in `config.losses`.

Each loss takes the model's outputs, the batch and its own settings and returns `(scalar,
metrics)`; its registry entry (`Loss`) declares which model outputs and batch entries it reads,
where its settings come from in the config, and whether it needs a teacher, so the preflight can
check a config against the model before anything is compiled. Embeddings are over the global
batch: under jit with sharded inputs, XLA gathers what the similarity matrix needs, so the loss
is exact whatever the mesh.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from mmjax import conventions, sharding


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
                          + matches[logits.argmax(0), rows].mean())
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


def masked_image_token_loss(outputs, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A masked-token generator's cross-entropy at the masked image tokens."""
    del batch
    loss, accuracy = masked_token_cross_entropy(
        outputs["image_token_logits"], outputs["image_token_targets"],
        outputs["image_token_mask"].astype(jnp.float32))
    return loss, {"image_token_loss": loss, "image_token_accuracy": accuracy}


@dataclasses.dataclass(frozen=True)
class Loss:
    """A registered objective and what it needs."""

    fn: Callable[..., tuple[jax.Array, dict]]
    # Model outputs it reads (or a function of its settings giving them), and the fix when the
    # model lacks one of them.
    model_outputs: tuple[str, ...] | Callable[[dict], tuple[str, ...]]
    missing_output_fix: str = ""
    # Batch entries it reads beyond images and tokens (the trainer feeds exactly these).
    batch_keys: tuple[str, ...] = ()
    # Its keyword settings from the run's config and tokenizer.
    settings: Callable[..., dict] = lambda config, tokenizer: {}
    # Reads a frozen teacher's outputs (`teacher_*`; the teacher is config.distill.teacher).
    needs_teacher: bool = False

    def outputs(self, settings: dict) -> tuple[str, ...]:
        return (self.model_outputs(settings) if callable(self.model_outputs)
                else self.model_outputs)


class SettingError(ValueError):
    """A loss setting the config gives wrongly: the preflight reports `field`, what is wrong
    and `fix`."""

    def __init__(self, field: str, problem: str, fix: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem, self.fix = field, problem, fix


def _pair_settings(config, tokenizer) -> dict:
    try:
        return {"pairs": conventions.contrastive_pairs(config.model, config.get(
            "contrastive_pairs", ()))}
    except ValueError as e:
        raise SettingError("config.contrastive_pairs", str(e), "name pairs of the model's "
                           "modalities, or leave it empty for every pair") from e


def _reconstruction_settings(config, tokenizer) -> dict:
    settings = config.get("reconstruction", {})
    edge_weight = settings.get("edge_weight", 0.0)
    if not _is_number_at_least_zero(edge_weight):
        raise SettingError("config.reconstruction.edge_weight", "must be a number >= 0",
                           "give 0 for a plain squared error, or a weight such "
                           "as 4 for the pixels along shapes' edges")
    noise_floor = settings.get("noise_floor", 0.0)
    if not _is_number_at_least_zero(noise_floor) or noise_floor >= 128:
        raise SettingError("config.reconstruction.noise_floor", "must be a number of 8-bit "
                           "pixel levels in [0, 128)", "give 0 to count every error, or about "
                           "three times the images' pixel noise (for example 12)")
    resolved = {"edge_weight": float(edge_weight)}
    if noise_floor:
        # The loss compares normalised pixels: the floor in each channel's normalised units.
        _, std = conventions.image_normalization(config.data.get("normalization",
                                                                 "minus_one_one"))
        resolved["noise_floor"] = tuple(float(noise_floor) / s for s in std)
    return resolved


def _is_number_at_least_zero(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and 0 <= value < float("inf"))


def _pair_outputs(settings) -> tuple[str, ...]:
    return tuple(dict.fromkeys(f"{m}_embedding" for pair in settings["pairs"] for m in pair)) + (
        "logit_scale",)


CONTRASTIVE_OUTPUTS = ("image_embedding", "text_embedding", "logit_scale")
LOSSES: dict[str, Loss] = {
    "clip": Loss(clip_contrastive_loss, _pair_outputs, settings=lambda config, tokenizer: {
        **_pair_settings(config, tokenizer),
        "identical_captions_match": bool(config.get("identical_captions_match", False))}),
    "siglip": Loss(siglip_loss, lambda settings: _pair_outputs(settings) + ("logit_bias",),
                   "give the model a learned logit bias: set config.model.logit_bias_init "
                   "(SigLIP uses -10)", settings=_pair_settings),
    "caption": Loss(caption_loss, ("caption_logits",),
                    "use a model with a caption decoder (config.model.name='coca')",
                    settings=lambda config, tokenizer: {"pad_id": config.model.text_tower.get(
                        "pad_id", tokenizer.pad_id)}),
    "itm": Loss(itm_loss, ("itm_logits", "itm_labels"),
                "use a model with a fusion encoder (config.model.name='fusion')"),
    "mlm": Loss(mlm_loss, ("mlm_logits", "mlm_mask"),
                "use a model with a fusion encoder (config.model.name='fusion')"),
    "distill": Loss(distillation_loss, CONTRASTIVE_OUTPUTS, needs_teacher=True,
                    settings=lambda config, tokenizer: {
                        "temperature": float(config.distill.get("temperature", 1.0))}),
    "reconstruction": Loss(reconstruction_loss, ("reconstruction", "target"),
                           "use an image tokenizer (config.model.name='image_tokenizer')",
                           settings=_reconstruction_settings),
    "masked_image_tokens": Loss(masked_image_token_loss, ("image_token_logits",
                                                          "image_token_targets",
                                                          "image_token_mask"),
                                "use a text-to-image model (config.model.name='text_to_image')"),
    "classification": Loss(classification_loss, ("class_logits",),
                           "use a model with a classification head "
                           "(config.model.name='fusion_classifier')", batch_keys=("label",)),
}
TEACHER_OUTPUTS = ("teacher_image_embedding", "teacher_text_embedding", "teacher_logit_scale")


class Objective:
    """The weighted sum of the losses a config names, with their settings resolved once."""

    def __init__(self, config, tokenizer):
        self.weights = {name: float(weight) for name, weight in dict(config.losses).items()}
        self.losses = {name: LOSSES[name] for name in self.weights}
        self.settings = {name: loss.settings(config, tokenizer)
                         for name, loss in self.losses.items()}

    @property
    def batch_keys(self) -> tuple[str, ...]:
        return tuple(sorted({key for loss in self.losses.values() for key in loss.batch_keys}))

    @property
    def needs_teacher(self) -> bool:
        return any(loss.needs_teacher for loss in self.losses.values())

    def __call__(self, outputs, batch) -> tuple[jax.Array, dict]:
        total, metrics = 0.0, {}
        for name, loss in self.losses.items():
            value, loss_metrics = loss.fn(outputs, batch, **self.settings[name])
            total = total + self.weights[name] * value
            metrics.update(loss_metrics)
        return total, metrics
