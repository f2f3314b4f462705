"""ViT image tower: patches -> position embeddings -> pre-LN blocks -> pooled embedding.

Returns `(pooled, aux)` where aux holds `"tokens"` (the final normalised patch tokens, which
cross-modal attention and captioning attend to) and `"pre_logits"` (the pooled vector).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax import sharding
from mmjax.conventions import image_normalization
from mmjax.models import layers
from mmjax.models.layer_norm import LayerNorm

# name -> (width, depth, mlp_dim, num_heads), as in big_vision's decode_variant.
VIT_SIZES = {
    "mu": (64, 2, 128, 4),  # the CPU smoke model
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
}
POOLING_TYPES = ("cls", "gap", "map")


def patches_kept(num_patches: int, patch_dropout: float) -> int:
    """How many patch tokens an image keeps in training under `patch_dropout` (at least one)."""
    return max(1, round(num_patches * (1.0 - patch_dropout)))


def keep_random_patches(tokens: jax.Array, rng: jax.Array, keep: int) -> jax.Array:
    """`keep` of each image's patch tokens [batch, patches, width], chosen uniformly at random
    without replacement, independently per image (FLIP). The count is static, so shapes are."""
    scores = jax.random.uniform(rng, tokens.shape[:2])
    _, indices = jax.lax.top_k(scores, keep)
    return jnp.take_along_axis(tokens, indices[..., None], axis=1)


def normalize_pixels(images: jax.Array, normalization: str) -> jax.Array:
    """uint8 pixels -> float32 normalised by `normalization` (conventions.image_normalization);
    other dtypes are taken as normalised already."""
    if images.dtype != jnp.uint8:
        return images
    mean, std = image_normalization(normalization)
    return (images.astype(jnp.float32) - jnp.asarray(mean)) / jnp.asarray(std)


def denormalize_pixels(images: jax.Array, normalization: str) -> jax.Array:
    """normalize_pixels undone: float32 pixel values in [0, 255], rounded to what an 8-bit
    image holds."""
    mean, std = image_normalization(normalization)
    return jnp.clip(jnp.round(images * jnp.asarray(std) + jnp.asarray(mean)), 0, 255)


def decode_variant(variant: str) -> dict:
    """"B/16" -> width, depth, mlp_dim, num_heads and patch_size."""
    match = re.fullmatch(r"(\w+)/(\d+)", variant)
    if not match or match.group(1) not in VIT_SIZES:
        raise ValueError(
            f"Unknown ViT variant {variant!r}: expected SIZE/PATCH with SIZE one of "
            f"{list(VIT_SIZES)}, for example 'B/16'."
        )
    width, depth, mlp_dim, num_heads = VIT_SIZES[match.group(1)]
    return dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads,
                patch_size=int(match.group(2)))


SHAPE_FIELDS = ("width", "depth", "mlp_dim", "num_heads", "patch_size")


def tower_shape(variant: str | None = None, **explicit) -> dict:
    """width, depth, mlp_dim, num_heads and patch_size from a variant and/or explicit fields."""
    return layers.resolve_shape("ViT", decode_variant(variant) if variant else {},
                                **{k: explicit.get(k) for k in SHAPE_FIELDS})


class VisionTransformer(nnx.Module):
    def __init__(self, *, image_size: int | tuple[int, int], variant: str | None = None,
                 width: int | None = None, depth: int | None = None, mlp_dim: int | None = None,
                 num_heads: int | None = None,
                 patch_size: int | None = None, pooling: str = "map", activation: str = "gelu",
                 remat: str = "none", scan_layers: bool = False,
                 attention_implementation: str | None = None, pre_norm: bool = False,
                 norm_epsilon: float = 1e-6, patch_dropout: float = 0.0, patch_bias: bool = True,
                 class_position: bool = False, key_bias: bool = False, channels: int = 3,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        """`pre_norm`: a layer norm before the first block (OpenAI CLIP's ln_pre).
        `patch_dropout`: the share of patch tokens dropped in training (FLIP), when the tower is
        given an rng; the class token is always kept, and evaluation (no rng) sees every patch.
        `patch_bias`, `class_position` (a position embedding for the class token too) and
        `key_bias` (in attention) give OpenAI CLIP's parameter set exactly, so that its weights
        go in and come back out unchanged (open_clip and transformers: no patch bias, a class
        position, a key bias). `image_size` (height, width) and `channels` other than 3 serve
        other inputs laid out as images (the audio tower's spectrograms)."""
        shape = tower_shape(variant, width=width, depth=depth, mlp_dim=mlp_dim,
                            num_heads=num_heads, patch_size=patch_size)
        if pooling not in POOLING_TYPES:
            raise ValueError(f"Unknown ViT pooling {pooling!r}; valid: {list(POOLING_TYPES)}.")
        rows, columns = (image_size, image_size) if isinstance(image_size, int) else image_size
        if rows % shape["patch_size"] or columns % shape["patch_size"]:
            raise ValueError(
                f"image_size {image_size} is not divisible by patch size {shape['patch_size']}."
            )
        if class_position and pooling != "cls":
            raise ValueError("class_position needs a class token: set pooling='cls'.")
        if not 0.0 <= patch_dropout < 1.0:
            raise ValueError(f"patch_dropout {patch_dropout} must be in [0, 1).")
        self.patch_size = shape["patch_size"]
        self.grid = (rows // self.patch_size, columns // self.patch_size)
        self.width = width = shape["width"]
        num_patches = self.grid[0] * self.grid[1]
        self.patch_dropout = patch_dropout
        self.patches_kept = patches_kept(num_patches, patch_dropout)
        patch_dim = self.patch_size * self.patch_size * channels
        self.patch_embedding = layers.Dense(patch_dim, width, ("patch", "embed"), rngs=rngs,
                                            dtype=dtype, use_bias=patch_bias)
        self.class_position = class_position
        self.position_embedding = nnx.Param(
            jax.random.normal(rngs.params(), (num_patches + class_position, width)) * 0.02,
            logical_axes=("length", "embed"))
        self.cls_token = (nnx.Param(jnp.zeros((1, width)), logical_axes=(None, "embed"))
                          if pooling == "cls" else None)
        self.encoder = layers.Transformer(width, shape["depth"], shape["num_heads"],
                                          shape["mlp_dim"], rngs=rngs, dtype=dtype,
                                          activation=activation, remat=remat,
                                          scan_layers=scan_layers, norm_epsilon=norm_epsilon,
                                          attention_implementation=attention_implementation,
                                          key_bias=key_bias)
        self.pre_norm = (LayerNorm(width, dtype=dtype, epsilon=norm_epsilon)
                         if pre_norm else None)
        self.attention_pool = (
            layers.AttentionPool(
                width,
                shape["num_heads"],
                shape["mlp_dim"],
                rngs=rngs,
                dtype=dtype,
                norm_epsilon=norm_epsilon,
                attention_implementation=attention_implementation,
                key_bias=key_bias,
            )
            if pooling == "map"
            else None
        )
        self.pooling = pooling
        self.dtype = dtype

    def patchify(self, images: jax.Array) -> jax.Array:
        batch, height, width, channels = images.shape
        p = self.patch_size
        patches = images.reshape(batch, height // p, p, width // p, p, channels)
        patches = patches.transpose(0, 1, 3, 2, 4, 5)
        return patches.reshape(batch, (height // p) * (width // p), p * p * channels)

    def positions(self) -> jax.Array:
        """[patches (+1 with a class position), width]: what is added to the patch tokens."""
        return self.position_embedding[...]

    # Set by models.build_model from config.data.normalization.
    input_normalization = "minus_one_one"

    def __call__(self, images: jax.Array, rng: jax.Array | None = None):
        """`rng` marks training: patch dropout, if configured, draws from it."""
        # Pixels straight from the input pipeline (4x fewer bytes to the device than float32)
        # are normalised here, where it fuses into the patch embedding.
        images = normalize_pixels(images, self.input_normalization)
        tokens = self.patch_embedding(self.patchify(images))
        positions = self.positions().astype(self.dtype)
        tokens = tokens + positions[int(self.class_position):]
        if rng is not None and self.patch_dropout:
            tokens = keep_random_patches(tokens, rng, self.patches_kept)
        if self.cls_token is not None:
            cls = self.cls_token[...].astype(self.dtype)
            if self.class_position:
                cls = cls + positions[:1]
            cls = jnp.broadcast_to(cls, (tokens.shape[0], 1, self.width))
            tokens = jnp.concatenate([cls, tokens], axis=1)
        if self.pre_norm is not None:
            tokens = self.pre_norm(tokens)
        tokens = sharding.constrain(tokens, ("batch", "length", "embed"))
        tokens = self.encoder(tokens)
        if self.pooling == "cls":
            pooled, tokens = tokens[:, 0], tokens[:, 1:]
        elif self.pooling == "gap":
            pooled = tokens.mean(axis=1)
        else:
            pooled = self.attention_pool(tokens)
        return pooled, {"tokens": tokens, "pre_logits": pooled}
