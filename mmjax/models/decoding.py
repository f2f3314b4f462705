"""Caption generation for models with a text decoder (CoCa): greedy and beam search.

Both decode with a key/value cache: `model.start_decoding(images, rows)` projects the image
tokens once for cross-attention and makes empty self-attention caches, and
`model.decode_step(token, position, state)` returns the next-token logits. `use_cache=False`
recomputes the full causal pass at every position instead (`model.next_token_logits`); it gives
the same tokens and exists to check the cache. Sequences start with `bos_id`; after `eot_id`
a sequence continues with `pad_id`. Everything runs inside one compiled loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def greedy(model, images: jax.Array, *, max_length: int, bos_id: int, eot_id: int,
           pad_id: int, use_cache: bool = True) -> jax.Array:
    """Token rows [batch, max_length]: the most likely token at each step."""
    batch = images.shape[0]
    tokens = jnp.full((batch, max_length), pad_id, jnp.int32).at[:, 0].set(bos_id)
    state = model.start_decoding(images, batch) if use_cache else None

    def step(position, carry):
        tokens, state, done = carry
        if use_cache:
            logits, state = model.decode_step(tokens[:, position], position, state)
        else:
            logits = model.next_token_logits(images, tokens, position)
        token = jnp.where(done, pad_id, jnp.argmax(logits, axis=-1).astype(jnp.int32))
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], position + 1, axis=1)
        return tokens, state, done | (token == eot_id)

    tokens, _, _ = jax.lax.fori_loop(0, max_length - 1, step,
                                     (tokens, state, jnp.zeros((batch,), bool)))
    return tokens


def beam_search(model, images: jax.Array, *, beam_size: int, max_length: int, bos_id: int,
                eot_id: int, pad_id: int) -> tuple[jax.Array, jax.Array]:
    """The highest-scoring of `beam_size` beams per image (score: the sum of token
    log-probabilities) as token rows [batch, max_length], and those scores."""
    batch, beams = images.shape[0], beam_size
    rows = batch * beams
    tokens = jnp.full((rows, max_length), pad_id, jnp.int32).at[:, 0].set(bos_id)
    state = model.start_decoding(images, rows)  # row b * beams + k is beam k of image b
    # Only the first beam is live at the start, so the beams do not all pick the same token.
    scores = jnp.tile(jnp.where(jnp.arange(beams) == 0, 0.0, -jnp.inf)[None], (batch, 1))
    finished = jnp.zeros((batch, beams), bool)

    def step(position, carry):
        tokens, state, scores, finished = carry
        logits, state = model.decode_step(tokens[:, position], position, state)
        vocab = logits.shape[-1]
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch, beams, vocab)
        # A finished beam continues only with padding, at no cost.
        pad_only = jnp.where(jnp.arange(vocab) == pad_id, 0.0, -jnp.inf)
        log_probs = jnp.where(finished[..., None], pad_only, log_probs)
        candidates = (scores[..., None] + log_probs).reshape(batch, beams * vocab)
        scores, chosen = jax.lax.top_k(candidates, beams)
        source_beam, token = chosen // vocab, (chosen % vocab).astype(jnp.int32)
        source_rows = (jnp.arange(batch)[:, None] * beams + source_beam).reshape(-1)
        tokens = jax.lax.dynamic_update_slice_in_dim(
            tokens[source_rows], token.reshape(-1, 1), position + 1, axis=1)
        state = jax.tree.map(lambda x: x[source_rows], state)
        finished = jnp.take_along_axis(finished, source_beam, axis=1) | (token == eot_id)
        return tokens, state, scores, finished

    tokens, _, scores, _ = jax.lax.fori_loop(0, max_length - 1, step,
                                             (tokens, state, scores, finished))
    best = jnp.argmax(scores, axis=1)
    tokens = tokens.reshape(batch, beams, max_length)[jnp.arange(batch), best]
    return tokens, scores[jnp.arange(batch), best]


def generate(model, images: jax.Array, *, beam_size: int = 1, **ids) -> jax.Array:
    """Token rows [batch, max_length]: greedy when `beam_size` is 1, else the best beam."""
    if beam_size > 1:
        return beam_search(model, images, beam_size=beam_size, **ids)[0]
    return greedy(model, images, **ids)


def caption(model, images: jax.Array, tokenizer, beam_size: int = 1) -> jax.Array:
    """Caption token rows for `images`, laid out as `tokenizer` lays out texts."""
    return generate(model, images, beam_size=beam_size, max_length=tokenizer.context_length,
                    bos_id=tokenizer.bos_id, eot_id=tokenizer.eot_id, pad_id=tokenizer.pad_id)
