"""The image tokenizer's pieces (issue 16, stage 1): FSQ and the ViT autoencoder around it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mmjax import image_tokenizer


def test_fsq_rounds_to_its_grid_and_indexes_every_code_once():
    quantizer = image_tokenizer.FiniteScalarQuantizer((8, 5, 5, 3))
    z = 4.0 * jax.random.normal(jax.random.key(0), (4096, 4))
    codes = quantizer(z)
    half = np.array([4, 2, 2, 1])
    steps = np.asarray(codes) * half
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-5)  # on the grid
    for channel, level in enumerate((8, 5, 5, 3)):  # exactly `level` values per channel
        assert len(np.unique(np.round(steps[:, channel]))) == level
    indices = jnp.arange(quantizer.codebook_size)
    np.testing.assert_array_equal(
        quantizer.codes_to_indices(quantizer.indices_to_codes(indices)), indices)
    np.testing.assert_allclose(quantizer.indices_to_codes(quantizer.codes_to_indices(codes)),
                               codes, atol=1e-6)
    # Rounding passes the gradient straight through: it is the bounding's, nonzero.
    near_zero = z[:8] / 4.0  # where tanh is not saturated
    gradient = jax.grad(lambda x: quantizer(x).sum())(near_zero)
    expected = jax.grad(lambda x: (quantizer.bound(x) / half).sum())(near_zero)
    np.testing.assert_allclose(gradient, expected, rtol=1e-6)
    assert (np.abs(gradient) > 0).all()
    with pytest.raises(ValueError, match="at least 2 levels"):
        image_tokenizer.FiniteScalarQuantizer((8, 1))


def test_code_usage():
    assert image_tokenizer.code_usage(np.array([0, 1, 2, 3]), 8) == {
        "code_perplexity": pytest.approx(4.0), "codes_used": 0.5}
    assert image_tokenizer.code_usage(np.zeros(10, int), 4)["code_perplexity"] == 1.0


def test_the_autoencoder_tokenizes_detokenizes_and_learns_to_reconstruct():
    model = image_tokenizer.ImageTokenizer(
        image_size=16, levels=(5, 5, 5), rngs=nnx.Rngs(0),
        encoder=dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=4),
        decoder=dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=4))
    images = jax.random.randint(jax.random.key(1), (8, 16, 16, 3), 0, 256).astype(jnp.uint8)
    tokens = model.tokenize(images)
    assert tokens.shape == (8, 16) and tokens.dtype == jnp.int32
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 125
    np.testing.assert_allclose(model.detokenize(tokens), model.decode(model.encode(images)),
                               atol=1e-5)
    outputs = model({"image": images})
    assert outputs["reconstruction"].shape == (8, 16, 16, 3)

    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            out = model({"image": images})
            return jnp.mean((out["reconstruction"] - out["target"]) ** 2)
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0], losses[::10]
