"""Transformer text tower: token + position embeddings -> blocks -> pooled at the end-of-text token.

With `causal=True` (CLIP's choice, and what a captioning decoder needs) each token sees only
those before it, so padding after the end-of-text token cannot change the pooled output and
needs no mask; with `causal=False` attention is limited to each text's real tokens through
per-example key lengths. Both forms are ones cuDNN's flash attention accepts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax import sharding
from mmjax.models import layers

# name -> (width, depth, mlp_dim, num_heads)
TEXT_SIZES = {
    "mu": (64, 2, 128, 4),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "clip": (512, 12, 2048, 8),  # open_clip's ViT-B text tower
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
}


def end_of_text_index(tokens: jax.Array, eot_id: int) -> jax.Array:
    """Index of the first end-of-text token in each row (the last position if there is none)."""
    is_eot = tokens == eot_id
    return jnp.where(is_eot.any(axis=1), jnp.argmax(is_eot, axis=1), tokens.shape[1] - 1)


SHAPE_FIELDS = ("width", "depth", "mlp_dim", "num_heads")
TEXT_POOLING = ("eot", "last")


def tower_shape(variant: str | None = None, **explicit) -> dict:
    """width, depth, mlp_dim and num_heads from a variant and/or explicit fields."""
    if variant is not None and variant not in TEXT_SIZES:
        raise ValueError(f"Unknown text variant {variant!r}; valid: {list(TEXT_SIZES)}.")
    variant_shape = dict(zip(SHAPE_FIELDS, TEXT_SIZES[variant])) if variant else {}
    return layers.resolve_shape("Text tower", variant_shape,
                                **{k: explicit.get(k) for k in SHAPE_FIELDS})


class TextTransformer(nnx.Module):
    def __init__(self, *, vocab_size: int, context_length: int, variant: str | None = None,
                 width: int | None = None, depth: int | None = None, mlp_dim: int | None = None,
                 num_heads: int | None = None, causal: bool = True, pad_id: int = 0,
                 eot_id: int = 2, activation: str = "gelu", remat: str = "none",
                 scan_layers: bool = False, attention_implementation: str | None = None,
                 norm_epsilon: float = 1e-6, pooling: str = "eot", mask_padding: bool = True,
                 key_bias: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
        """`pooling`: the text's state at its first end-of-text token ("eot", CLIP) or at the
        last position ("last", SigLIP, whose texts are padded to the full context).
        `mask_padding` (non-causal towers): keys limited to each text's real tokens; False lets
        every position attend to the padding too, as SigLIP was trained. `key_bias`: see
        layers.MultiHeadAttention."""
        if pooling not in TEXT_POOLING:
            raise ValueError(f"Unknown text pooling {pooling!r}; valid: {list(TEXT_POOLING)}.")
        shape = tower_shape(variant, width=width, depth=depth, mlp_dim=mlp_dim,
                            num_heads=num_heads)
        self.width = shape["width"]
        self.token_embedding = nnx.Param(
            jax.random.normal(rngs.params(), (vocab_size, self.width)) * 0.02,
            logical_axes=("vocab", "embed"))
        self.position_embedding = nnx.Param(
            jax.random.normal(rngs.params(), (context_length, self.width)) * 0.01,
            logical_axes=("length", "embed"))
        self.encoder = layers.Transformer(self.width, shape["depth"], shape["num_heads"],
                                          shape["mlp_dim"], rngs=rngs, dtype=dtype,
                                          activation=activation, remat=remat,
                                          scan_layers=scan_layers, norm_epsilon=norm_epsilon,
                                          attention_implementation=attention_implementation,
                                          key_bias=key_bias)
        self.context_length = context_length
        self.causal, self.pad_id, self.eot_id = causal, pad_id, eot_id
        self.pooling, self.mask_padding = pooling, mask_padding
        self.dtype = dtype

    def __call__(self, tokens: jax.Array, rng: jax.Array | None = None):
        """`rng` (training) is unused: the text tower draws nothing."""
        del rng
        if tokens.shape[1] > self.context_length:
            raise ValueError(f"Text of length {tokens.shape[1]} exceeds the tower's context "
                             f"length {self.context_length}; tokenise with that context length.")
        length = tokens.shape[1]
        x = jnp.take(self.token_embedding[...], tokens, axis=0).astype(self.dtype)
        x = x + self.position_embedding[...][:length].astype(self.dtype)
        x = sharding.constrain(x, ("batch", "length", "embed"))
        if self.causal:
            x = self.encoder(x, is_causal=True)
        elif self.mask_padding:  # texts are laid out [bos, ..., eot, pad, ...]: real tokens lead
            x = self.encoder(x, key_lengths=(tokens != self.pad_id).sum(axis=1).astype(jnp.int32))
        else:
            x = self.encoder(x)
        if self.pooling == "last":
            pooled = x[:, -1]
        else:
            pooled = jnp.take_along_axis(
                x, end_of_text_index(tokens, self.eot_id)[:, None, None], axis=1)[:, 0]
        return pooled, {"tokens": x, "pre_logits": pooled}

    # -- incremental decoding ---------------------------------------------------------------
    def empty_cache(self, batch: int) -> list[dict]:
        if not self.causal:
            raise ValueError("Incremental decoding needs a causal text tower (causal=True).")
        return self.encoder.empty_cache(batch, self.context_length)

    def decode(self, token: jax.Array, position: jax.Array, cache: list[dict]):
        """Hidden state [batch, 1, width] of `token` [batch] at `position`, given the cache."""
        x = jnp.take(self.token_embedding[...], token[:, None], axis=0).astype(self.dtype)
        position_embedding = jax.lax.dynamic_slice_in_dim(self.position_embedding[...], position, 1)
        x = x + position_embedding[None].astype(self.dtype)
        return self.encoder.decode(x, cache, position)
