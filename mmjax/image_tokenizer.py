"""Image tokenizer (issue 16, stage 1): a ViT autoencoder whose latent grid is quantised by
finite scalar quantisation (FSQ: Mentzer et al. 2023), so an image becomes a grid of integer
tokens a generator can model, and tokens become an image again.

FSQ needs no codebook: each latent channel is squashed into a bounded range and rounded to one
of `levels[c]` values, so the implicit codebook is every combination (prod(levels) codes), every
code is reachable, and there is nothing to collapse and no auxiliary loss. Rounding passes the
gradient straight through.

Not yet wired into the trainer (a reconstruction objective, its evaluator and configs are the
next steps of issue 16).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax import layers
from mmjax.image_tower import VisionTransformer, normalize_pixels, tower_shape


class FiniteScalarQuantizer:
    """FSQ over the last axis: channel c takes `levels[c]` values evenly spaced in [-1, 1]."""

    def __init__(self, levels: Sequence[int]):
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels {list(levels)}: each channel needs at least 2 levels.")
        self.levels = tuple(int(level) for level in levels)
        self.codebook_size = math.prod(self.levels)
        # Mixed-radix place values: a code's index is sum(digit_c * basis_c).
        self.basis = np.cumprod((1,) + self.levels[:-1]).astype(np.int32)
        # Integer steps each side of zero: codes are digits / half_width, in [-1, 1].
        self.half_width = np.asarray([level // 2 for level in self.levels], np.float32)

    def bound(self, z: jax.Array) -> jax.Array:
        """Squashes each channel so that rounding gives exactly levels[c] integers (centred,
        with a half-step offset for even level counts)."""
        levels = jnp.asarray(self.levels, jnp.float32)
        half = (levels - 1) * (1 - 1e-3) / 2
        offset = jnp.where(levels % 2 == 0, 0.5, 0.0)
        shift = jnp.arctanh(offset / half)
        return jnp.tanh(z + shift) * half - offset

    def __call__(self, z: jax.Array) -> jax.Array:
        """Quantised latents in [-1, 1] (float32); the gradient passes the rounding unchanged."""
        bounded = self.bound(z.astype(jnp.float32))
        rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
        return rounded / self.half_width

    def _digits(self, codes: jax.Array) -> jax.Array:
        """Quantised latents -> per-channel integers in [0, levels[c])."""
        return jnp.round(codes * self.half_width + self.half_width).astype(jnp.int32)

    def codes_to_indices(self, codes: jax.Array) -> jax.Array:
        return (self._digits(codes) * jnp.asarray(self.basis)).sum(axis=-1)

    def indices_to_codes(self, indices: jax.Array) -> jax.Array:
        levels = jnp.asarray(self.levels, jnp.int32)
        digits = (indices[..., None] // jnp.asarray(self.basis)) % levels
        return (digits.astype(jnp.float32) - self.half_width) / self.half_width


def code_usage(indices: np.ndarray, codebook_size: int) -> dict[str, float]:
    """How the tokens use the codebook: perplexity of the code distribution (codebook_size at
    best) and the share of codes used at least once."""
    counts = np.bincount(np.asarray(indices).ravel(), minlength=codebook_size)
    p = counts / max(counts.sum(), 1)
    entropy = -(p[p > 0] * np.log(p[p > 0])).sum()
    return {"code_perplexity": float(np.exp(entropy)),
            "codes_used": float((counts > 0).mean())}


class ImageTokenizer(nnx.Module):
    """ViT encoder -> FSQ latents per patch -> ViT decoder -> pixels, patch by patch."""

    def __init__(self, *, image_size: int, levels: Sequence[int], encoder: dict, decoder: dict,
                 dtype=jnp.float32, rngs: nnx.Rngs, **unused):
        del unused  # the model-building arguments other models take (vocab_size, ...)
        self.quantizer = FiniteScalarQuantizer(levels)
        self.encoder = VisionTransformer(image_size=image_size, pooling="gap", dtype=dtype,
                                         rngs=rngs, **dict(encoder))
        self.grid = self.encoder.grid
        self.patch_size = self.encoder.patch_size
        width = self.encoder.width
        self.to_latent = layers.Dense(width, len(self.quantizer.levels), ("embed", None),
                                      rngs=rngs, dtype=dtype)
        shape = tower_shape(**dict(decoder))
        self.from_latent = layers.Dense(len(self.quantizer.levels), shape["width"],
                                        (None, "embed"), rngs=rngs, dtype=dtype)
        self.decoder_position = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (self.grid[0] * self.grid[1],
                                                     shape["width"])),
            logical_axes=("length", "embed"))
        self.decoder = layers.Transformer(shape["width"], shape["depth"], shape["num_heads"],
                                          shape["mlp_dim"], rngs=rngs, dtype=dtype)
        self.to_pixels = layers.Dense(shape["width"], self.patch_size ** 2 * 3,
                                      ("embed", "patch"), rngs=rngs, dtype=dtype)

    @property
    def input_normalization(self) -> str:
        return self.encoder.input_normalization

    @input_normalization.setter
    def input_normalization(self, name: str) -> None:
        self.encoder.input_normalization = name

    def normalized(self, images: jax.Array) -> jax.Array:
        """What the decoder reconstructs: the images as the encoder sees them."""
        return normalize_pixels(images, self.input_normalization).astype(jnp.float32)

    def encode(self, images: jax.Array) -> jax.Array:
        """Quantised latents [batch, patches, channels] in [-1, 1]."""
        _, aux = self.encoder(images)
        return self.quantizer(self.to_latent(aux["tokens"]))

    def tokenize(self, images: jax.Array) -> jax.Array:
        """Integer tokens [batch, patches], row by row over the patch grid."""
        return self.quantizer.codes_to_indices(self.encode(images))

    def decode(self, codes: jax.Array) -> jax.Array:
        """Quantised latents [batch, patches, channels] -> images [batch, H, W, 3]."""
        x = self.from_latent(codes) + self.decoder_position[...]
        patches = self.to_pixels(self.decoder(x)).astype(jnp.float32)
        batch, p = codes.shape[0], self.patch_size
        rows, columns = self.grid
        patches = patches.reshape(batch, rows, columns, p, p, 3).transpose(0, 1, 3, 2, 4, 5)
        return patches.reshape(batch, rows * p, columns * p, 3)

    def detokenize(self, tokens: jax.Array) -> jax.Array:
        return self.decode(self.quantizer.indices_to_codes(tokens))

    def __call__(self, batch: dict, rng: jax.Array | None = None) -> dict[str, jax.Array]:
        del rng
        codes = self.encode(batch["image"])
        return {"reconstruction": self.decode(codes),
                "target": self.normalized(batch["image"]),
                "tokens": self.quantizer.codes_to_indices(codes)}
