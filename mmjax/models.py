"""Image-text models assembled from registered towers.

`CLIP` joins an image tower and a text tower with linear projections to a shared embedding and a
learned temperature (stored as a log scale, as in CLIP). Towers and models are chosen by name from
the registries below; adding a tower means one class and one registry entry.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax import layers
from mmjax.image_tower import VisionTransformer
from mmjax.text_tower import TextTransformer

IMAGE_TOWERS = {"vit": VisionTransformer}
TEXT_TOWERS = {"transformer": TextTransformer}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# How a model expects pixels: (mean, std) per channel in [0, 255] units; normalised = (x - mean) / std.
IMAGE_NORMALIZATIONS = {
    "minus_one_one": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    "clip": ((0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255),  # OpenAI CLIP / open_clip
             (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)),
}


def image_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return _lookup(IMAGE_NORMALIZATIONS, name, "image normalization")


def _lookup(registry: dict, name: str, what: str):
    if name not in registry:
        raise ValueError(f"Unknown {what} {name!r}; valid names: {sorted(registry)}.")
    return registry[name]


def _tower_kwargs(tower_config) -> dict[str, Any]:
    kwargs = dict(tower_config)
    kwargs.pop("name")
    return kwargs


class CLIP(nnx.Module):
    def __init__(self, *, image_tower, text_tower, embed_dim: int, vocab_size: int,
                 image_size: int, dtype: str = "float32", remat: str = "none",
                 scan_layers: bool = False, attention_implementation: str | None = None,
                 logit_scale_init: float = math.log(1 / 0.07), logit_scale_max: float = 100.0,
                 logit_bias_init: float | None = None, rngs: nnx.Rngs):
        compute_dtype = _lookup(DTYPES, dtype, "dtype")
        image_cls = _lookup(IMAGE_TOWERS, image_tower["name"], "image tower")
        text_cls = _lookup(TEXT_TOWERS, text_tower["name"], "text tower")
        shared = dict(dtype=compute_dtype, remat=remat, scan_layers=scan_layers, rngs=rngs,
                      attention_implementation=attention_implementation)
        self.image_tower = image_cls(image_size=image_size, **shared, **_tower_kwargs(image_tower))
        self.text_tower = text_cls(vocab_size=vocab_size, **shared, **_tower_kwargs(text_tower))
        self.image_projection = layers.Dense(self.image_tower.width, embed_dim, ("embed", None),
                                             rngs=rngs, use_bias=False, dtype=compute_dtype)
        self.text_projection = layers.Dense(self.text_tower.width, embed_dim, ("embed", None),
                                            rngs=rngs, use_bias=False, dtype=compute_dtype)
        self.logit_scale = nnx.Param(jnp.asarray(logit_scale_init, jnp.float32), logical_axes=())
        self.logit_scale_max = logit_scale_max
        # SigLIP's learned bias on the logits (None: no bias, as in CLIP).
        self.logit_bias = (None if logit_bias_init is None else
                           nnx.Param(jnp.asarray(logit_bias_init, jnp.float32), logical_axes=()))

    def encode_image(self, images: jax.Array):
        pooled, aux = self.image_tower(images)
        return self.image_projection(pooled).astype(jnp.float32), aux

    def encode_text(self, tokens: jax.Array):
        pooled, aux = self.text_tower(tokens)
        return self.text_projection(pooled).astype(jnp.float32), aux

    def temperature_scale(self) -> jax.Array:
        """exp(logit_scale), clipped at logit_scale_max as in CLIP."""
        return jnp.minimum(jnp.exp(self.logit_scale[...]), self.logit_scale_max)

    def __call__(self, images: jax.Array, tokens: jax.Array) -> dict[str, jax.Array]:
        """What the losses need: per-example outputs (batch-major) and global scalars."""
        image_embedding, _ = self.encode_image(images)
        text_embedding, _ = self.encode_text(tokens)
        outputs = {
            "image_embedding": image_embedding,
            "text_embedding": text_embedding,
            "logit_scale": self.temperature_scale(),
        }
        if self.logit_bias is not None:
            outputs["logit_bias"] = self.logit_bias[...]
        return outputs


MODELS = {"clip": CLIP}


def build_model(model_config, *, vocab_size: int, image_size: int, seed: int) -> nnx.Module:
    """Builds the model the config names; its parameters come from `seed`."""
    kwargs = dict(model_config)
    model_cls = _lookup(MODELS, kwargs.pop("name"), "model")
    # A fixed model vocabulary (an imported model's, or a benchmark's) overrides the tokenizer's.
    vocab_size = kwargs.pop("vocab_size", None) or vocab_size
    return model_cls(vocab_size=vocab_size, image_size=image_size, rngs=nnx.Rngs(seed), **kwargs)
