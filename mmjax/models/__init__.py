"""The models a config names (config.model.name), and how a run's config builds one.

The two-tower and captioning models are in mmjax/models/clip.py, the fusion models in
mmjax/models/fusion.py, the image tokenizer and text-to-image models in their own modules;
adding a model means one class and one entry in `MODELS`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import nnx

from mmjax import conventions
from mmjax.conventions import image_normalization
from mmjax.models.clip import CLIP, DTYPES, TOWERS, CoCa, lookup
from mmjax.models.fusion import FusionClassifier, FusionModel
from mmjax.models.image_tokenizer import ImageTokenizer
from mmjax.models.text_to_image import TextToImage

__all__ = ["DTYPES", "MODELS", "TOWERS", "ModelInputs", "build_model", "example_inputs",
           "pretrained_sources", "text_tower_ids"]

MODELS = {"clip": CLIP, "coca": CoCa, "fusion": FusionModel,
          "fusion_classifier": FusionClassifier, "image_tokenizer": ImageTokenizer,
          "text_to_image": TextToImage}


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """What the input pipeline hands a model, from config.data: the image size, the pixel
    normalisation applied on the device to uint8 images and clips, the spectrograms' (frames,
    mel bins) and the clips' frames."""

    image_size: int
    normalization: str = "minus_one_one"
    spectrogram_shape: tuple[int, int] = (96, 80)
    video_frames: int = 8

    @classmethod
    def from_data(cls, data_config) -> ModelInputs:
        audio = data_config.get("audio") or {}
        return cls(image_size=int(data_config.image_size),
                   normalization=data_config.get("normalization", "minus_one_one"),
                   spectrogram_shape=(int(audio.get("frames", 96)),
                                      int(audio.get("num_mels", 80))),
                   video_frames=int((data_config.get("video") or {}).get("frames", 8)))


def build_model(model_config, inputs: ModelInputs, tokenizer, *, seed: int) -> nnx.Module:
    """Builds the model `model_config.name` names, taking the inputs it reads and its text
    vocabulary from `inputs` and `tokenizer`; parameters come from `seed`. The text tower's
    context length and pad / end-of-text ids are the tokenizer's unless model_config.text_tower
    sets them."""
    kwargs = dict(model_config)
    model_cls = lookup(MODELS, kwargs.pop("name"), "model")
    # A fixed model vocabulary (an imported model's, or a benchmark's) overrides the tokenizer's.
    vocab_size = kwargs.pop("vocab_size", None) or tokenizer.vocab_size
    if kwargs.get("text_tower"):
        kwargs["text_tower"] = dict(text_tower_ids(tokenizer), **dict(kwargs["text_tower"]))
    image_normalization(inputs.normalization)  # an unknown name fails here, before compiling
    model = model_cls(vocab_size=vocab_size, image_size=inputs.image_size,
                      spectrogram_shape=(inputs.spectrogram_shape if kwargs.get("audio_tower")
                                         else None),
                      video_shape=((inputs.video_frames, inputs.image_size)
                                   if kwargs.get("video_tower") else None),
                      rngs=nnx.Rngs(seed), **kwargs)
    for modality in ("image", "video"):
        if modality in model.modalities:
            getattr(model, f"{modality}_tower").input_normalization = inputs.normalization
    return model


def example_inputs(model_config, inputs: ModelInputs,
                   context_length: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """(shape, dtype) of one example's entry for each of the model's towers, as the input
    pipeline gives them: uint8 images and clips, bfloat16 spectrograms, int32 token rows."""
    size = inputs.image_size
    shapes = {"image": ((size, size, 3), jnp.uint8),
              "audio": (inputs.spectrogram_shape, jnp.bfloat16),
              "video": ((inputs.video_frames, size, size, 3), jnp.uint8),
              "text": ((context_length,), jnp.int32)}
    return {conventions.BATCH_KEYS[m]: shapes[m]
            for m in conventions.model_modalities(model_config)}


def text_tower_ids(tokenizer) -> dict[str, int]:
    """What the text tower takes from the tokenizer when its config leaves it unset."""
    return {"context_length": tokenizer.context_length, "pad_id": tokenizer.pad_id,
            "eot_id": tokenizer.eot_id}


def pretrained_sources(config) -> list[tuple[str, str | None, tuple[str, ...], tuple[str, ...]]]:
    """(config field, workdir, parameter prefixes (none: all), settings that must equal the
    workdir's config) of each run a new run starts parameters from: config.init_from, then what
    the model declares (a text-to-image model's tokenizer); a declared workdir may be unset."""
    init_from = config.init_from.get("checkpoint")
    declared = getattr(MODELS.get(config.model.name), "pretrained_parts", None)
    return ([("config.init_from.checkpoint", init_from,
              tuple(config.init_from.get("params", ())), ())] if init_from else []) + (
        declared(config) if declared else [])
