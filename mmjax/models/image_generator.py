"""Text-to-image generator core (text-to-image's second stage): a masked-token transformer over an
image tokenizer's tokens whose blocks cross-attend to the text tower's token states (MaskGIT, Muse).

Training masks a share cos(pi/2 * u) of each image's tokens (u uniform: most steps see many
masks, some few) and predicts them. Condition dropout replaces the text states with a learned
null context of the same shape, so one model is both conditional and unconditional and the
shapes never change. The loss is classification.masked_token_cross_entropy over the masked
positions. Decoding starts from all masks and, over `steps` parallel steps in one
compiled loop, samples every masked token, keeps the most confident ones and masks the rest
again, fewer each step by the cosine schedule; classifier-free guidance mixes the conditional and
unconditional logits as uncond + scale * (cond - uncond), so scale 1 is the plain conditional
model and scale 0 the unconditional one.

`AutoregressiveTokenGenerator` is the other mode over the same tokens and text: raster order,
causal self-attention, one token (or a patch's tokens_per_step) a step from the key/value
cache the caption decoder uses. Its samples commit to each token knowing every earlier one,
where parallel decoding draws a step's tokens independently of one another; on the smoke data
that is the difference between drawing the caption's shape and drawing a blob of its colour
(BENCHMARKS.md).

The text-to-image model around it (text tower, the tokenizer loaded frozen from its run) is
mmjax/models/text_to_image.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax import sharding
from mmjax.models import cross_attention, layers
from mmjax.models.layer_norm import LayerNorm


def cosine_schedule(fraction: jax.Array) -> jax.Array:
    """The share of tokens masked at `fraction` of the way (0: all, 1: none)."""
    return jnp.cos(0.5 * jnp.pi * fraction)


def _ranks(scores: jax.Array) -> jax.Array:
    """Each entry's rank (0: smallest) along the last axis."""
    return jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)


def mask_for_training(rng: jax.Array, tokens: jax.Array, mask_id: int):
    """Each example masks ceil(cos(pi/2 * u) * P) of its P tokens (u ~ U[0, 1), at least one),
    at random positions. Returns the inputs (masked tokens set to `mask_id`) and the mask."""
    ratio_rng, order_rng = jax.random.split(rng)
    batch, length = tokens.shape
    ratio = cosine_schedule(jax.random.uniform(ratio_rng, (batch,)))
    count = jnp.clip(jnp.ceil(ratio * length), 1, length).astype(jnp.int32)
    masked = _ranks(jax.random.uniform(order_rng, tokens.shape)) < count[:, None]
    return jnp.where(masked, mask_id, tokens), masked


class _TextConditionedTokens(nnx.Module):
    """What both generators are: token embeddings (the codebook's plus one special token: the
    mask, or the beginning of the image), positions, blocks with cross-attention to a text
    context or a learned null context of its shape, and logits over the codebook."""

    def __init__(self, *, codebook_size: int, num_tokens: int, context_length: int,
                 context_width: int, width: int, depth: int, num_heads: int, mlp_dim: int,
                 tokens_per_step: int = 1, dtype=jnp.float32, remat: str = "none",
                 scan_layers: bool = False, attention_implementation: str | None = None,
                 rngs: nnx.Rngs):
        if (not isinstance(tokens_per_step, int) or tokens_per_step < 1
                or num_tokens % tokens_per_step):
            raise ValueError(f"config.model.generator.tokens_per_step = {tokens_per_step!r}: "
                             f"give a whole number that divides the image's {num_tokens} "
                             "tokens (the tokenizer's tokens_per_patch draws a patch a step)")
        self.codebook_size, self.num_tokens = codebook_size, num_tokens
        self.tokens_per_step = tokens_per_step
        # Token k of a step embeds as row k * codebook_size + code (tokens_per_step tables in
        # one); the last row is the special token: the mask, or the beginning of the image.
        self.special_id = codebook_size * tokens_per_step
        self.token_embedding = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (self.special_id + 1, width)),
            logical_axes=("vocab", "embed"))
        self.position_embedding = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (num_tokens // tokens_per_step, width)),
            logical_axes=("length", "embed"))
        # The unconditional model's context: learned, shaped as a text's token states.
        self.null_context = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (context_length, context_width)),
            logical_axes=("length", "embed"))
        self.blocks = cross_attention.cross_attention_stack(
            width=width, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim,
            context_width=context_width, rngs=rngs, dtype=dtype, remat=remat,
            scan_layers=scan_layers, attention_implementation=attention_implementation)
        self.head = layers.Dense(width, codebook_size, ("embed", "vocab"), rngs=rngs, dtype=dtype)
        self.dtype = dtype

    def _embedded(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.token_embedding[...], ids, axis=0).astype(self.dtype)

    def _slot_embedded(self, codes: jax.Array, slot) -> jax.Array:
        """The embeddings of codes drawn as token `slot` of their step (its table's rows)."""
        return self._embedded(codes + slot * self.codebook_size)

    def _positioned(self, x: jax.Array, positions: jax.Array | slice = slice(None)):
        return x + self.position_embedding[...][positions].astype(self.dtype)

    def embed(self, tokens: jax.Array) -> jax.Array:
        return self._positioned(self._embedded(tokens))

    def states(self, x: jax.Array, context: jax.Array, context_lengths: jax.Array, *,
               is_causal: bool = False) -> jax.Array:
        """Embedded tokens -> the blocks' states (attending to the text)."""
        x = sharding.constrain(x, ("batch", "length", "embed"))
        return self.blocks(x, is_causal=is_causal, context=context.astype(self.dtype),
                           context_lengths=context_lengths)

    def codebook_logits(self, x: jax.Array) -> jax.Array:
        return sharding.constrain(self.head(x).astype(jnp.float32), ("batch", "length", "vocab"))

    def predict(self, x: jax.Array, context: jax.Array, context_lengths: jax.Array, *,
                is_causal: bool = False) -> jax.Array:
        """Embedded tokens -> the blocks (attending to the text) -> float32 codebook logits."""
        return self.codebook_logits(self.states(x, context, context_lengths,
                                                is_causal=is_causal))

    def condition(self, context: jax.Array, context_lengths: jax.Array, dropped: jax.Array):
        """The text context, with the null context (every position real) where `dropped`."""
        null = jnp.broadcast_to(self.null_context[...].astype(context.dtype), context.shape)
        full = jnp.full_like(context_lengths, context.shape[1])
        return (jnp.where(dropped[:, None, None], null, context),
                jnp.where(dropped, full, context_lengths))

    def with_unconditional(self, context: jax.Array, context_lengths: jax.Array):
        """[conditional; unconditional] contexts, for guidance's one batched pass."""
        null, null_lengths = self.condition(context, context_lengths,
                                            jnp.ones((context.shape[0],), bool))
        return (jnp.concatenate([context, null]),
                jnp.concatenate([context_lengths, null_lengths]))

    @staticmethod
    def guide(both_logits: jax.Array, guidance_scale) -> jax.Array:
        """uncond + scale * (cond - uncond) from [conditional; unconditional] logits."""
        conditional, unconditional = jnp.split(both_logits, 2)
        return unconditional + guidance_scale * (conditional - unconditional)


class MaskedTokenGenerator(_TextConditionedTokens):
    """Bidirectional blocks over image tokens (mask_id where unknown), decoded in parallel."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.tokens_per_step != 1:
            raise ValueError(f"config.model.generator.tokens_per_step = "
                             f"{self.tokens_per_step}: the masked generator draws single "
                             "tokens; set it to 1, or mode='autoregressive'")
        self.mask_id = self.special_id

    def logits(self, tokens: jax.Array, context: jax.Array, context_lengths: jax.Array):
        """[batch, tokens, codebook] float32 logits of image tokens (mask_id where unknown)."""
        return self.predict(self.embed(tokens), context, context_lengths)

    def training_outputs(self, rng: jax.Array, tokens: jax.Array, context, context_lengths):
        """(logits, which tokens the loss counts): a cosine-drawn share masked and predicted."""
        inputs, masked = mask_for_training(rng, tokens, self.mask_id)
        return self.logits(inputs, context, context_lengths), masked

    def guided_logits(self, tokens, context, context_lengths, guidance_scale):
        """uncond + scale * (cond - uncond), both halves in one batched pass."""
        both, both_lengths = self.with_unconditional(context, context_lengths)
        return self.guide(self.logits(jnp.concatenate([tokens, tokens]), both, both_lengths),
                          guidance_scale)

    def generate(self, context: jax.Array, context_lengths: jax.Array, rng: jax.Array, *,
                 steps: int = 8, guidance_scale: float = 1.0, temperature: float = 1.0,
                 choice_temperature: float = 4.5) -> jax.Array:
        """Tokens [batch, num_tokens] decoded in `steps` parallel steps (one fori_loop).

        Each step samples every masked token from the guided logits at `temperature`, then
        keeps the most confident (log-probability of the sample plus Gumbel noise scaled by
        choice_temperature, annealed to 0) and masks the rest again, down to
        floor(P * cos(pi/2 * (step + 1) / steps)) masks; known tokens are never re-masked."""
        batch, length = context.shape[0], self.num_tokens

        def step(t, carry):
            tokens, rng = carry
            rng, sample_rng, noise_rng = jax.random.split(rng, 3)
            logits = self.guided_logits(tokens, context, context_lengths, guidance_scale)
            logits = logits / jnp.maximum(temperature, 1e-6)
            sampled = jax.random.categorical(sample_rng, logits)
            unknown = tokens == self.mask_id
            sampled = jnp.where(unknown, sampled, tokens)
            log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits), sampled[..., None],
                                            axis=-1)[..., 0]
            annealed = choice_temperature * (1.0 - (t + 1) / steps)
            confidence = log_probs + annealed * jax.random.gumbel(noise_rng, log_probs.shape)
            confidence = jnp.where(unknown, confidence, jnp.inf)
            remaining = jnp.floor(length * cosine_schedule((t + 1) / steps)).astype(jnp.int32)
            # At least one new token per step, so `steps` steps always finish.
            remaining = jnp.minimum(remaining, unknown.sum(axis=1, keepdims=True) - 1)
            return jnp.where(_ranks(confidence) < remaining, self.mask_id, sampled), rng

        start = jnp.full((batch, length), self.mask_id, jnp.int32)
        tokens, _ = jax.lax.fori_loop(0, steps, step, (start, rng))
        return tokens


class AutoregressiveTokenGenerator(_TextConditionedTokens):
    """Causal blocks over image tokens in raster order: token p is predicted from a
    beginning-of-image token and tokens 0..p-1 (and the text).

    With tokens_per_step = K > 1 the blocks step over groups of K tokens (a patch's, at the
    tokenizer's tokens_per_patch): a group's input is the sum of its tokens' embeddings, and
    its K tokens are drawn in turn from the group's state, each with the embeddings of the ones
    before it added, through a small MLP, to the shared head. The blocks cost what 1/K of the
    tokens would; the group's tokens still depend on each other."""

    def __init__(self, *, rngs: nnx.Rngs, **kwargs):
        super().__init__(rngs=rngs, **kwargs)
        self.bos_id = self.special_id
        if self.tokens_per_step > 1:
            width = kwargs["width"]
            self.slot_embedding = nnx.Param(
                0.02 * jax.random.normal(rngs.params(), (self.tokens_per_step, width)),
                logical_axes=(None, "embed"))
            self.slot_norm = LayerNorm(width, dtype=self.dtype)
            self.slot_mlp = layers.Mlp(width, kwargs["mlp_dim"], rngs=rngs, dtype=self.dtype)

    def _slot_logits(self, state: jax.Array, before: jax.Array, slot) -> jax.Array:
        """Logits of a group's token `slot` from the group's state [batch, length, width] and
        the summed embeddings of its tokens before it."""
        if self.tokens_per_step == 1:
            return self.codebook_logits(state)
        x = state + before + self.slot_embedding[...][slot].astype(self.dtype)
        return self.codebook_logits(x + self.slot_mlp(self.slot_norm(x)))

    def logits(self, tokens: jax.Array, context: jax.Array, context_lengths: jax.Array):
        """[batch, tokens, codebook] float32 logits, row p predicting tokens[:, p]."""
        batch, steps = tokens.shape[0], self.num_tokens // self.tokens_per_step
        groups = tokens.reshape(batch, steps, self.tokens_per_step)
        embedded = self._slot_embedded(groups, jnp.arange(self.tokens_per_step))
        start = self._embedded(jnp.full((batch, 1), self.bos_id, tokens.dtype))
        inputs = jnp.concatenate([start, embedded.sum(axis=2)[:, :-1]], axis=1)
        state = self.states(self._positioned(inputs), context, context_lengths, is_causal=True)
        before = jnp.cumsum(embedded, axis=2) - embedded
        return jnp.stack([self._slot_logits(state, before[:, :, k], k)
                          for k in range(self.tokens_per_step)], axis=2).reshape(
                              batch, self.num_tokens, -1)

    def training_outputs(self, rng: jax.Array, tokens: jax.Array, context, context_lengths):
        """(logits, which tokens the loss counts): every token, from those before it."""
        del rng
        return self.logits(tokens, context, context_lengths), jnp.ones(tokens.shape, bool)

    def generate(self, context: jax.Array, context_lengths: jax.Array, rng: jax.Array, *,
                 guidance_scale: float = 1.0, temperature: float = 1.0, **unused) -> jax.Array:
        """Tokens [batch, num_tokens], one step a group of tokens_per_step in one fori_loop:
        the conditional and unconditional halves share a key/value cache of twice the batch
        and each token is sampled from the guided logits at `temperature`. (`steps` and
        `choice_temperature`, parallel decoding's settings, do not apply.)"""
        del unused
        batch, group = context.shape[0], self.tokens_per_step
        both, both_lengths = self.with_unconditional(context, context_lengths)
        context_keys_values = self.blocks.context_keys_values(both.astype(self.dtype))
        steps = self.num_tokens // group
        cache = self.blocks.empty_cache(2 * batch, steps)

        def step(position, carry):
            tokens, previous, cache, rng = carry
            x = self._positioned(previous, position)
            state, cache = self.blocks.decode(x[:, None], cache, position, context_keys_values,
                                              both_lengths)
            before = jnp.zeros_like(state)
            for k in range(group):
                rng, sample_rng = jax.random.split(rng)
                logits = self.guide(self._slot_logits(state, before, k)[:, 0], guidance_scale)
                sampled = jax.random.categorical(sample_rng,
                                                 logits / jnp.maximum(temperature, 1e-6))
                tokens = jax.lax.dynamic_update_slice_in_dim(tokens, sampled[:, None],
                                                             position * group + k, 1)
                before = before + self._slot_embedded(jnp.concatenate([sampled, sampled]),
                                                      k)[:, None]
            return tokens, before[:, 0], cache, rng

        start = self._embedded(jnp.full((2 * batch,), self.bos_id, jnp.int32))
        tokens = jnp.zeros((batch, self.num_tokens), jnp.int32)
        tokens, *_ = jax.lax.fori_loop(0, steps, step, (tokens, start, cache, rng))
        return tokens
