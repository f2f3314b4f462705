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
from collections.abc import Callable

import jax

from mmjax import conventions
from mmjax.losses import classification, contrastive, reconstruction


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
    "clip": Loss(
        contrastive.clip_contrastive_loss,
        _pair_outputs,
        settings=lambda config, tokenizer: {
            **_pair_settings(config, tokenizer),
            "identical_captions_match": bool(config.get("identical_captions_match", False)),
        },
    ),
    "siglip": Loss(
        contrastive.siglip_loss,
        lambda settings: _pair_outputs(settings) + ("logit_bias",),
        "give the model a learned logit bias: set config.model.logit_bias_init (SigLIP uses -10)",
        settings=_pair_settings,
    ),
    "caption": Loss(
        classification.caption_loss,
        ("caption_logits",),
        "use a model with a caption decoder (config.model.name='coca')",
        settings=lambda config, tokenizer: {
            "pad_id": config.model.text_tower.get("pad_id", tokenizer.pad_id)
        },
    ),
    "itm": Loss(
        classification.itm_loss,
        ("itm_logits", "itm_labels"),
        "use a model with a fusion encoder (config.model.name='fusion')",
    ),
    "mlm": Loss(
        classification.mlm_loss,
        ("mlm_logits", "mlm_mask"),
        "use a model with a fusion encoder (config.model.name='fusion')",
    ),
    "distill": Loss(
        contrastive.distillation_loss,
        CONTRASTIVE_OUTPUTS,
        needs_teacher=True,
        settings=lambda config, tokenizer: {
            "temperature": float(config.distill.get("temperature", 1.0))
        },
    ),
    "reconstruction": Loss(
        reconstruction.reconstruction_loss,
        ("reconstruction", "target"),
        "use an image tokenizer (config.model.name='image_tokenizer')",
        settings=_reconstruction_settings,
    ),
    "masked_image_tokens": Loss(
        classification.masked_image_token_loss,
        ("image_token_logits", "image_token_targets", "image_token_mask"),
        "use a text-to-image model (config.model.name='text_to_image')",
    ),
    "classification": Loss(
        classification.classification_loss,
        ("class_logits",),
        "use a model with a classification head (config.model.name='fusion_classifier')",
        batch_keys=("label",),
    ),
}
TEACHER_OUTPUTS = ("teacher_image_embedding", "teacher_text_embedding", "teacher_logit_scale")


class Objective:
    """The weighted sum of the losses `weights` (config.losses) names, each called with its
    settings (each Loss.settings of the run's config, which the preflight's plan holds)."""

    def __init__(self, weights, settings: dict[str, dict]):
        self.weights = {name: float(weight) for name, weight in dict(weights).items()}
        self.losses = {name: LOSSES[name] for name in self.weights}
        self.settings = {name: settings[name] for name in self.weights}

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
