"""The text-to-image generator's core (text-to-image's second stage): masking for training, the
masked-token
loss, guided parallel decoding in one compiled loop; the autoregressive generator's cached
decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mmjax.losses import classification
from mmjax.models import image_generator

CODES, TOKENS, CONTEXT, CONTEXT_WIDTH = 12, 16, 4, 8


def tiny_generator(seed: int = 0, kind=image_generator.MaskedTokenGenerator,
                   tokens_per_step: int = 1):
    return kind(
        codebook_size=CODES, num_tokens=TOKENS, context_length=CONTEXT,
        context_width=CONTEXT_WIDTH, width=32, depth=2, num_heads=2, mlp_dim=64,
        tokens_per_step=tokens_per_step, rngs=nnx.Rngs(seed))


def contexts(batch: int, seed: int):
    context = jax.random.normal(jax.random.key(seed), (batch, CONTEXT, CONTEXT_WIDTH))
    return context, jnp.full((batch,), CONTEXT, jnp.int32)


def test_training_masks_a_cosine_share_of_each_image_and_at_least_one_token():
    tokens = jnp.arange(64 * TOKENS).reshape(64, TOKENS) % CODES
    inputs, masked = image_generator.mask_for_training(jax.random.key(0), tokens, CODES)
    counts = np.asarray(masked.sum(axis=1))
    assert counts.min() >= 1 and counts.max() <= TOKENS and len(set(counts)) > 4
    np.testing.assert_array_equal(np.asarray(inputs)[np.asarray(masked)], CODES)
    np.testing.assert_array_equal(np.asarray(inputs)[~np.asarray(masked)],
                                  np.asarray(tokens)[~np.asarray(masked)])
    # E[cos(pi/2 u)] = 2/pi of the tokens (plus the rounding up).
    assert counts.mean() / TOKENS == pytest.approx(2 / np.pi, abs=0.12)


def test_masked_token_loss_counts_only_the_masked_positions():
    logits = jax.random.normal(jax.random.key(1), (2, TOKENS, CODES))
    targets = jax.random.randint(jax.random.key(2), (2, TOKENS), 0, CODES)
    masked = jnp.arange(TOKENS)[None].repeat(2, 0) < jnp.asarray([[3], [5]])
    loss, _ = classification.masked_token_cross_entropy(logits, targets, masked.astype(jnp.float32))
    each = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    assert float(loss) == pytest.approx(float(each[np.asarray(masked)].mean()), rel=1e-5)


def test_decoding_is_one_loop_seeded_and_fills_every_token():
    model = tiny_generator()
    context, lengths = contexts(3, 0)
    generate = nnx.jit(lambda m, c, n, r: m.generate(c, n, r, steps=6, guidance_scale=2.0))
    first = np.asarray(generate(model, context, lengths, jax.random.key(5)))
    again = np.asarray(generate(model, context, lengths, jax.random.key(5)))
    other = np.asarray(generate(model, context, lengths, jax.random.key(6)))
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    assert first.shape == (3, TOKENS) and 0 <= first.min() and first.max() < CODES
    jaxpr = jax.make_jaxpr(lambda c, n, r: model.generate(c, n, r, steps=6))(
        context, lengths, jax.random.key(5))
    # The steps are one loop (fori_loop: a scan over the step index), not unrolled.
    assert str(jaxpr).count("scan[") + str(jaxpr).count("while[") == 1


def test_guidance_scale_zero_is_the_unconditional_model():
    """Scale 0 ignores the text: two different texts decode identically, and the logits are
    the null context's."""
    model = tiny_generator()
    context_a, lengths = contexts(2, 1)
    context_b, _ = contexts(2, 2)
    tokens = jax.random.randint(jax.random.key(3), (2, TOKENS), 0, CODES + 1)
    null, null_lengths = model.condition(context_a, lengths, jnp.ones((2,), bool))
    np.testing.assert_allclose(model.guided_logits(tokens, context_a, lengths, 0.0),
                               model.logits(tokens, null, null_lengths), atol=1e-5)
    np.testing.assert_allclose(model.guided_logits(tokens, context_a, lengths, 1.0),
                               model.logits(tokens, context_a, lengths), atol=1e-5)
    a = model.generate(context_a, lengths, jax.random.key(4), steps=4, guidance_scale=0.0)
    b = model.generate(context_b, lengths, jax.random.key(4), steps=4, guidance_scale=0.0)
    np.testing.assert_array_equal(a, b)
    c = model.generate(context_b, lengths, jax.random.key(4), steps=4, guidance_scale=3.0)
    assert (np.asarray(a) != np.asarray(c)).any()


@pytest.mark.parametrize("tokens_per_step", [1, 2])
def test_autoregressive_cached_decoding_is_the_causal_pass(tokens_per_step):
    """Greedy cached decoding picks, at every position, the full causal pass's argmax over the
    tokens it drew; a token changes no row before it (nor its own, when a step draws two);
    padded context is ignored."""
    model = tiny_generator(kind=image_generator.AutoregressiveTokenGenerator,
                           tokens_per_step=tokens_per_step)
    context, _ = contexts(3, 0)
    lengths = jnp.asarray([CONTEXT, 2, 1], jnp.int32)
    greedy = model.generate(context, lengths, jax.random.key(1), temperature=1e-6)
    logits = model.logits(greedy, context, lengths)
    np.testing.assert_array_equal(logits.argmax(-1), greedy)
    changed = model.logits(greedy.at[:, 5].set((greedy[:, 5] + 1) % CODES), context, lengths)
    np.testing.assert_allclose(changed[:, :6], logits[:, :6], atol=1e-6)
    assert not np.allclose(changed[:, 6:], logits[:, 6:], atol=1e-3)
    padded = context.at[1:, 2:].set(7.0)
    np.testing.assert_array_equal(
        model.generate(padded, lengths, jax.random.key(1), temperature=1e-6), greedy)


@pytest.mark.parametrize("tokens_per_step", [1, 2])
def test_autoregressive_decoding_is_one_seeded_loop_and_scale_zero_ignores_the_text(
        tokens_per_step):
    model = tiny_generator(kind=image_generator.AutoregressiveTokenGenerator,
                           tokens_per_step=tokens_per_step)
    context_a, lengths = contexts(2, 1)
    context_b, _ = contexts(2, 2)
    generate = nnx.jit(lambda m, c, r, s: m.generate(c, lengths, r, guidance_scale=s))
    first = np.asarray(generate(model, context_a, jax.random.key(4), 2.0))
    np.testing.assert_array_equal(first, generate(model, context_a, jax.random.key(4), 2.0))
    assert (first != np.asarray(generate(model, context_a, jax.random.key(5), 2.0))).any()
    np.testing.assert_array_equal(generate(model, context_a, jax.random.key(4), 0.0),
                                  generate(model, context_b, jax.random.key(4), 0.0))
    null, null_lengths = model.condition(context_a, lengths, jnp.ones((2,), bool))
    np.testing.assert_array_equal(generate(model, context_a, jax.random.key(4), 0.0),
                                  model.generate(null, null_lengths, jax.random.key(4)))
    jaxpr = jax.make_jaxpr(lambda c, r: model.generate(c, lengths, r))(context_a,
                                                                        jax.random.key(4))
    assert str(jaxpr).count("scan[") + str(jaxpr).count("while[") == 1


@pytest.mark.parametrize("kind,tokens_per_step", [
    (image_generator.MaskedTokenGenerator, 1), (image_generator.AutoregressiveTokenGenerator, 1),
    (image_generator.AutoregressiveTokenGenerator, 2)])
def test_a_trained_generator_draws_the_image_its_text_asks_for(kind, tokens_per_step):
    """Two texts, each always paired with one token grid: after training with condition
    dropout, decoding each text (guidance scale 1 and 2) gives its grid."""
    model = tiny_generator(1, kind, tokens_per_step)
    grids = jax.random.randint(jax.random.key(7), (2, TOKENS), 0, CODES)
    texts, lengths = contexts(2, 3)
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, rng):
        def loss_fn(model):
            mask_rng, drop_rng, pick_rng = jax.random.split(rng, 3)
            pick = jax.random.randint(pick_rng, (32,), 0, 2)
            targets, context = grids[pick], texts[pick]
            dropped = jax.random.uniform(drop_rng, (32,)) < 0.2
            context, context_lengths = model.condition(context, lengths[pick], dropped)
            logits, counted = model.training_outputs(mask_rng, targets, context,
                                                     context_lengths)
            return classification.masked_token_cross_entropy(logits, targets,
                                                     counted.astype(jnp.float32))[0]
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    for i in range(300):
        step(model, optimizer, jax.random.key(100 + i))
    for scale in (1.0, 2.0):
        drawn = model.generate(texts, lengths, jax.random.key(9), steps=6, guidance_scale=scale,
                               temperature=0.5)
        np.testing.assert_array_equal(drawn, grids, err_msg=f"guidance scale {scale}")


def test_only_the_autoregressive_generator_draws_several_tokens_a_step():
    with pytest.raises(ValueError, match="tokens_per_step = 2: the masked generator draws "
                                         "single tokens"):
        tiny_generator(tokens_per_step=2)
    with pytest.raises(ValueError, match="tokens_per_step = 3: give a whole number that "
                                         "divides the image's 16 tokens"):
        tiny_generator(kind=image_generator.AutoregressiveTokenGenerator, tokens_per_step=3)
