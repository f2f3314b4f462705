"""Cross-modal attention: text queries attending to image (and audio) tokens.

`CaptionDecoder` is CoCa's multimodal text decoder: causal self-attention over the unimodal text
tower's outputs, cross-attention to the image tower's tokens, and a next-token head.
`FusionEncoder` is the bidirectional form (ALBEF / BLIP style) whose outputs feed image-text
matching and masked language modelling heads. Both are stacks of `layers.TransformerBlock` with
a cross-attention context, so sharding rules, remat and scan apply to them unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax import text_tokenizers
from mmjax.models import layers


def sample_hard_negatives(rng: jax.Array, similarity: jax.Array, excluded: jax.Array,
                          scale: jax.Array, hard_fraction: float = 1.0) -> jax.Array:
    """For each row, a column drawn with probability ∝ exp(scale * similarity), never an
    excluded one (the row's own match, identical captions); rows with no candidate take the
    next example. With `hard_fraction` < 1 that share of rows draws so and the others draw
    uniformly among the allowed columns (easy negatives, so matching can start to learn)."""
    hard_rng, uniform_rng, choice_rng = jax.random.split(rng, 3)
    hard = jnp.where(excluded, -jnp.inf, scale * similarity)
    uniform = jnp.where(excluded, -jnp.inf, 0.0)
    is_hard = jax.random.uniform(choice_rng, (similarity.shape[0], 1)) < hard_fraction
    logits = jnp.where(is_hard, hard + jax.random.gumbel(hard_rng, hard.shape),
                       uniform + jax.random.gumbel(uniform_rng, uniform.shape))
    drawn = jnp.argmax(logits, axis=1)
    fallback = (jnp.arange(similarity.shape[0]) + 1) % similarity.shape[1]
    return jnp.where(jnp.all(excluded, axis=1), fallback, drawn)


def mask_tokens(rng: jax.Array, tokens: jax.Array, vocab_size: int, probability: float, *,
                mask_id: int, pad_id: int, eot_id: int) -> tuple[jax.Array, jax.Array]:
    """BERT's masking: `probability` of the real tokens (never the first token, end-of-text or
    padding) are selected; of those 80 % become `mask_id`, 10 % a random id, 10 % stay.

    Returns the masked tokens and the selection as float32 weights for the loss.
    """
    select_rng, kind_rng, random_rng = jax.random.split(rng, 3)
    positions = jnp.arange(tokens.shape[1])[None]
    maskable = (positions > 0) & (tokens != pad_id) & (tokens != eot_id)
    selected = maskable & (jax.random.uniform(select_rng, tokens.shape) < probability)
    kind = jax.random.uniform(kind_rng, tokens.shape)
    random_ids = jax.random.randint(random_rng, tokens.shape, text_tokenizers.NUM_SPECIAL_IDS,
                                    vocab_size)
    replaced = jnp.where(kind < 0.8, mask_id, jnp.where(kind < 0.9, random_ids, tokens))
    return jnp.where(selected, replaced, tokens), selected.astype(jnp.float32)


def modality_memory(parts: list[jax.Array], modality_embedding: jax.Array | None,
                    dropout: float = 0.0, rng: jax.Array | None = None):
    """The fusion encoder's memory from several modalities' tokens ([batch, tokens_m, width]
    each): each part plus its row of `modality_embedding`, concatenated. Returns (memory, each
    example's count of real memory tokens, or None when all are). With `dropout`, that share of
    examples keeps one modality only, drawn evenly: its tokens go first (the memory's order
    means nothing to cross-attention) and the count covers them alone."""
    if len(parts) == 1:
        return parts[0], None
    parts = [p + modality_embedding[i].astype(p.dtype) for i, p in enumerate(parts)]
    if not dropout:
        return jnp.concatenate(parts, axis=1), None
    drop_rng, keep_rng = jax.random.split(rng)
    batch = parts[0].shape[0]
    dropped = jax.random.uniform(drop_rng, (batch,)) < dropout
    first = jax.random.randint(keep_rng, (batch,), 0, len(parts))
    orders = [jnp.concatenate(parts[k:] + parts[:k], axis=1) for k in range(len(parts))]
    memory = jnp.select([first[:, None, None] == k for k in range(len(orders))], orders)
    counts = jnp.asarray([p.shape[1] for p in parts], jnp.int32)
    return memory, jnp.where(dropped, counts[first], counts.sum())


def cross_attention_stack(*, width: int, depth: int, num_heads: int, mlp_dim: int,
                          context_width: int, rngs: nnx.Rngs, dtype=jnp.float32,
                          activation: str = "gelu", remat: str = "none", scan_layers: bool = False,
                          attention_implementation: str | None = None,
                          norm_epsilon: float = 1e-6) -> layers.Transformer:
    """Blocks of self-attention, cross-attention to tokens of `context_width`, and MLP."""
    return layers.Transformer(
        width, depth, num_heads, mlp_dim, rngs=rngs, dtype=dtype, activation=activation,
        remat=remat, scan_layers=scan_layers, context_width=context_width,
        attention_implementation=attention_implementation, norm_epsilon=norm_epsilon)


class CaptionDecoder(nnx.Module):
    def __init__(self, *, vocab_size: int, rngs: nnx.Rngs, dtype=jnp.float32, **stack):
        self.transformer = cross_attention_stack(rngs=rngs, dtype=dtype, **stack)
        self.head = layers.Dense(stack["width"], vocab_size, ("embed", "vocab"), rngs=rngs,
                                 dtype=dtype)

    def __call__(self, text_hidden: jax.Array, image_tokens: jax.Array) -> jax.Array:
        """Next-token logits (float32) at every position of the text."""
        x = self.transformer(text_hidden, is_causal=True, context=image_tokens)
        return self.head(x).astype(jnp.float32)

    def empty_cache(self, batch: int, length: int) -> list[dict]:
        return self.transformer.empty_cache(batch, length)

    def image_keys_values(self, image_tokens: jax.Array):
        return self.transformer.context_keys_values(image_tokens)

    def decode(self, text_hidden, cache, position, image_keys_values):
        """Logits [batch, vocab] for the token after `position`, given the caches."""
        x, cache = self.transformer.decode(text_hidden, cache, position, image_keys_values)
        return self.head(x)[:, 0].astype(jnp.float32), cache


class FusionEncoder(nnx.Module):
    def __init__(self, *, vocab_size: int, rngs: nnx.Rngs, dtype=jnp.float32, **stack):
        self.transformer = cross_attention_stack(rngs=rngs, dtype=dtype, **stack)
        width = stack["width"]
        self.itm_head = layers.Dense(width, 2, ("embed", None), rngs=rngs, dtype=dtype)
        self.mlm_head = layers.Dense(width, vocab_size, ("embed", "vocab"), rngs=rngs, dtype=dtype)

    def __call__(self, text_hidden, memory, text_lengths, memory_lengths=None) -> jax.Array:
        """Fused text states: every real text token sees the whole text and every real memory
        token (image tokens, or several modalities' tokens: FusionModel.memory)."""
        return self.transformer(text_hidden, key_lengths=text_lengths, context=memory,
                                context_lengths=memory_lengths)

    def match_logits(self, fused: jax.Array) -> jax.Array:
        """[batch, 2] logits of (no match, match), read at the first (beginning-of-text) token."""
        return self.itm_head(fused[:, 0]).astype(jnp.float32)

    def token_logits(self, fused: jax.Array) -> jax.Array:
        return self.mlm_head(fused).astype(jnp.float32)
