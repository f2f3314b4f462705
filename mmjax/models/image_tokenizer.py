"""Image tokenizer (text-to-image's first stage): a ViT autoencoder whose latent grid is quantised
by finite scalar quantisation (FSQ: Mentzer et al. 2023), so an image becomes a grid of integer
tokens a generator can model, and tokens become an image again.

FSQ needs no codebook: each latent channel is squashed into a bounded range and rounded to one
of `levels[c]` values, so the implicit codebook is every combination (prod(levels) codes), every
code is reachable, and there is nothing to collapse and no auxiliary loss. Rounding passes the
gradient straight through.

It trains through the one trainer as config.model.name='image_tokenizer' with the
`reconstruction` loss and is evaluated by the `reconstruction` evaluator (configs/
smoke_image_tokenizer.py); the text-to-image generator over its tokens is the second stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.models import layers
from mmjax.models.towers.image_tower import (
    VisionTransformer,
    denormalize_pixels,
    normalize_pixels,
    tower_shape,
)


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
        # z = 0 lands on zero; two levels have half just under the offset, where arctanh of
        # their ratio would be NaN: cap it (z = 0 then lands a hair below zero, still code 0).
        shift = jnp.arctanh(jnp.minimum(offset / half, 1 - 1e-3))
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


def reconstruction_errors(model, images: jax.Array) -> dict[str, jax.Array]:
    """On the device, per eval image: the squared error of its reconstruction in the model's
    normalised units and in uint8 pixel units (after rounding to what an image file holds), its
    tokens, and the codebook size (one per row, to keep the outputs row-aligned)."""
    tokens = model.tokenize(images)
    reconstruction = model.detokenize(tokens)
    pixels = model.as_uint8(reconstruction).astype(jnp.float32)
    return {
        "reconstruction_mse": jnp.mean(jnp.square(reconstruction - model.normalized(images)),
                                       axis=(1, 2, 3)),
        "reconstruction_pixel_mse": jnp.mean(jnp.square(pixels - images.astype(jnp.float32)),
                                             axis=(1, 2, 3)),
        "image_tokens": tokens,
        "codebook_size": jnp.full(tokens.shape[:1], model.codebook_size, jnp.int32)}


def reconstruction_metrics(extra: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean reconstruction error, PSNR (dB, of 8-bit pixels, averaged over images) and code
    usage over an eval set, from what `reconstruction_errors` gave for each image."""
    pixel_mse = np.maximum(extra["reconstruction_pixel_mse"], 1e-10)
    return {"reconstruction_mse": float(np.mean(extra["reconstruction_mse"])),
            "reconstruction_psnr": float(np.mean(10 * np.log10(255.0 ** 2 / pixel_mse))),
            **code_usage(extra["image_tokens"], int(extra["codebook_size"][0]))}


# The pixel head's fields of config.model.image_decoder when a config leaves them out (a run
# trained before pixel_blocks existed has none): a linear patch head, no residual convolutions.
PIXEL_HEAD_DEFAULTS = {"pixel_channels": 0, "pixel_blocks": 0}


class PixelHead(nnx.Module):
    """Decoder tokens -> pixels through `channels` features per pixel and 3x3 convolutions over
    the whole image: a linear head gives each patch at most `width` independent pixel
    patterns and cannot see across patch borders, which blurs small shapes into blobs. One
    hidden convolution, then `blocks` residual ones (x + gelu(conv(x))), then one to RGB."""

    def __init__(self, width: int, patch_size: int, channels: int, *, rngs: nnx.Rngs,
                 blocks: int = 0, dtype=jnp.float32):
        self.patch_size, self.dtype = patch_size, dtype
        self.to_features = layers.Dense(width, patch_size ** 2 * channels, ("embed", "patch"),
                                        rngs=rngs, dtype=dtype)
        init = jax.nn.initializers.lecun_normal()

        def conv(features_out, scale=1.0):
            return (nnx.Param(init(rngs.params(), (3, 3, channels, features_out)) * scale,
                              logical_axes=(None, None, None, None)),
                    nnx.Param(jnp.zeros((features_out,)), logical_axes=(None,)))

        self.hidden, self.hidden_bias = conv(channels)
        # Residual blocks start small, so a deeper head begins as the shallow one.
        self.blocks = nnx.List([nnx.List(conv(channels, 0.1)) for _ in range(blocks)])
        self.out, self.out_bias = conv(3, 0.1)

    def _conv(self, x, kernel, bias):
        y = jax.lax.conv_general_dilated(x, kernel[...].astype(self.dtype), (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias[...].astype(self.dtype)

    def __call__(self, x: jax.Array, grid: tuple[int, int]) -> jax.Array:
        features = unpatchify(self.to_features(x), grid, self.patch_size)
        hidden = jax.nn.gelu(self._conv(features.astype(self.dtype), self.hidden,
                                        self.hidden_bias))
        for kernel, bias in self.blocks:
            hidden = hidden + jax.nn.gelu(self._conv(hidden, kernel, bias))
        return self._conv(hidden, self.out, self.out_bias).astype(jnp.float32)


def unpatchify(patches: jax.Array, grid: tuple[int, int], patch_size: int) -> jax.Array:
    """[batch, rows * columns, p * p * c] -> [batch, rows * p, columns * p, c]."""
    batch, (rows, columns), p = patches.shape[0], grid, patch_size
    patches = patches.reshape(batch, rows, columns, p, p, -1).transpose(0, 1, 3, 2, 4, 5)
    return patches.reshape(batch, rows * p, columns * p, -1)


class ImageTokenizer(nnx.Module):
    """ViT encoder (the image tower) -> FSQ latents per patch -> ViT decoder -> pixels, patch
    by patch (or through PixelHead's convolutions, with image_decoder.pixel_channels). Built
    by mmjax.models.build_model as config.model.name='image_tokenizer' from
    config.model.image_tower (the encoder), image_decoder (its shape), fsq_levels and
    tokens_per_patch.

    Each patch's latent is `tokens_per_patch` FSQ codes (tokens_per_patch * len(fsq_levels)
    channels), one token each, a patch's tokens adjacent in the sequence: more bits a patch
    without a larger codebook, which a generator's head and softmax pay for at every token."""

    modalities = ("image",)

    def __init__(self, *, image_size: int, image_tower: dict, image_decoder: dict,
                 fsq_levels: Sequence[int], tokens_per_patch: int = 1,
                 dtype: str = "float32", remat: str = "none",
                 scan_layers: bool = False, attention_implementation: str | None = None,
                 rngs: nnx.Rngs, **unused):
        del unused  # the model-building arguments other models take (vocab_size, embed_dim, ...)
        compute_dtype = jnp.dtype(dtype)
        shared = dict(dtype=compute_dtype, remat=remat, scan_layers=scan_layers,
                      attention_implementation=attention_implementation, rngs=rngs)
        self.quantizer = FiniteScalarQuantizer(fsq_levels)
        encoder = {k: v for k, v in dict(image_tower).items() if k != "name"}
        self.image_tower = VisionTransformer(image_size=image_size, **dict(encoder, **shared))
        self.grid = self.image_tower.grid
        self.patch_size = self.image_tower.patch_size
        if not isinstance(tokens_per_patch, int) or tokens_per_patch < 1:
            raise ValueError(f"config.model.tokens_per_patch = {tokens_per_patch!r}: give a "
                             "whole number of FSQ codes (tokens) for each patch, 1 or more")
        self.tokens_per_patch = tokens_per_patch
        self.num_tokens = self.grid[0] * self.grid[1] * tokens_per_patch
        channels = len(self.quantizer.levels) * tokens_per_patch
        self.to_latent = layers.Dense(self.image_tower.width, channels, ("embed", None),
                                      rngs=rngs, dtype=compute_dtype)
        decoder = {**PIXEL_HEAD_DEFAULTS, **dict(image_decoder)}
        pixel_channels = decoder.pop("pixel_channels")
        if not isinstance(pixel_channels, int) or pixel_channels < 0:
            raise ValueError(f"config.model.image_decoder.pixel_channels = {pixel_channels!r}: "
                             "give a whole number of features per pixel for the convolutional "
                             "pixel head, or 0 for a linear patch head")
        pixel_blocks = decoder.pop("pixel_blocks")
        if not isinstance(pixel_blocks, int) or pixel_blocks < 0 or (
                pixel_blocks and not pixel_channels):
            raise ValueError(f"config.model.image_decoder.pixel_blocks = {pixel_blocks!r}: "
                             "give a whole number of residual convolutions for the pixel head "
                             "(which needs pixel_channels > 0), or 0")
        shape = tower_shape(**decoder)
        self.from_latent = layers.Dense(channels, shape["width"], (None, "embed"), rngs=rngs,
                                        dtype=compute_dtype)
        self.decoder_position = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (self.grid[0] * self.grid[1],
                                                     shape["width"])),
            logical_axes=("length", "embed"))
        self.decoder = layers.Transformer(shape["width"], shape["depth"], shape["num_heads"],
                                          shape["mlp_dim"], **shared)
        self.to_pixels = (
            PixelHead(shape["width"], self.patch_size, pixel_channels, blocks=pixel_blocks,
                      rngs=rngs, dtype=compute_dtype) if pixel_channels else
            layers.Dense(shape["width"], self.patch_size ** 2 * 3, ("embed", "patch"), rngs=rngs,
                         dtype=compute_dtype))

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def normalized(self, images: jax.Array) -> jax.Array:
        """What the decoder reconstructs: the images as the encoder sees them."""
        return normalize_pixels(images, self.image_tower.input_normalization).astype(jnp.float32)

    def encode(self, images: jax.Array) -> jax.Array:
        """Quantised latents [batch, num_tokens, len(fsq_levels)] in [-1, 1]."""
        _, aux = self.image_tower(images)
        latents = self.to_latent(aux["tokens"])
        return self.quantizer(latents.reshape(latents.shape[0], self.num_tokens, -1))

    def encode_batch(self, batch: dict, rng: jax.Array | None = None) -> tuple[dict, dict]:
        """The encoder's pooled features as the image embedding (what the embedding-based
        evaluators and the report read), and its aux."""
        del rng
        pooled, aux = self.image_tower(batch["image"])
        return {"image": pooled.astype(jnp.float32)}, {"image": aux}

    def tokenize(self, images: jax.Array) -> jax.Array:
        """Integer tokens [batch, num_tokens], row by row over the patch grid (a patch's
        tokens_per_patch tokens adjacent)."""
        return self.quantizer.codes_to_indices(self.encode(images))

    def decode(self, codes: jax.Array) -> jax.Array:
        """Quantised latents [batch, num_tokens, len(fsq_levels)] -> images [batch, H, W, 3],
        normalised as the encoder's inputs are."""
        patches = codes.reshape(codes.shape[0], self.grid[0] * self.grid[1], -1)
        x = self.decoder(self.from_latent(patches) + self.decoder_position[...])
        if isinstance(self.to_pixels, PixelHead):
            return self.to_pixels(x, self.grid)
        return unpatchify(self.to_pixels(x).astype(jnp.float32), self.grid, self.patch_size)

    def detokenize(self, tokens: jax.Array) -> jax.Array:
        return self.decode(self.quantizer.indices_to_codes(tokens))

    def as_uint8(self, images: jax.Array) -> jax.Array:
        """Images normalised as the encoder's inputs (decode's output) -> uint8 pixels."""
        return denormalize_pixels(images, self.image_tower.input_normalization).astype(
            jnp.uint8)

    def __call__(self, batch: dict, rng: jax.Array | None = None) -> dict[str, jax.Array]:
        del rng
        return {"reconstruction": self.decode(self.encode(batch["image"])),
                "target": self.normalized(batch["image"])}
