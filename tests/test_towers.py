import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.models import layer_norm, layers
from mmjax.models.towers import image_tower, text_tower
from mmjax.text_tokenizers import EOT_ID, PAD_ID


def small_vit(pooling):
    return image_tower.VisionTransformer(image_size=16, width=32, depth=2, mlp_dim=64,
                                         num_heads=4, patch_size=4, pooling=pooling,
                                         rngs=nnx.Rngs(0))


@pytest.mark.parametrize("pooling", ["cls", "gap", "map"])
def test_vit_output_shapes(pooling):
    pooled, aux = small_vit(pooling)(jnp.zeros((3, 16, 16, 3)))
    assert pooled.shape == (3, 32)
    assert aux["tokens"].shape == (3, 16, 32)  # 4x4 patches; the class token is not returned
    np.testing.assert_array_equal(aux["pre_logits"], pooled)


def test_vit_variants_decode_like_big_vision():
    assert image_tower.decode_variant("B/16") == dict(width=768, depth=12, mlp_dim=3072,
                                                      num_heads=12, patch_size=16)
    assert image_tower.decode_variant("L/14")["patch_size"] == 14
    with pytest.raises(ValueError, match="'Q/16'.*'B'"):
        image_tower.decode_variant("Q/16")


def test_vit_rejects_image_size_not_divisible_by_patch():
    with pytest.raises(ValueError, match="not divisible by patch size 4"):
        image_tower.VisionTransformer(image_size=18, variant="mu/4", rngs=nnx.Rngs(0))


def small_text(causal):
    return text_tower.TextTransformer(vocab_size=20, context_length=8, width=32, depth=2,
                                      mlp_dim=64, num_heads=4, causal=causal, rngs=nnx.Rngs(0))


def test_text_tower_shapes_and_pools_at_end_of_text():
    tower = small_text(causal=True)
    tokens = jnp.array([[1, 5, 6, EOT_ID, 0, 0, 0, 0], [1, 7, EOT_ID, 0, 0, 0, 0, 0]])
    pooled, aux = tower(tokens)
    assert pooled.shape == (2, 32) and aux["tokens"].shape == (2, 8, 32)
    np.testing.assert_allclose(pooled[0], aux["tokens"][0, 3], rtol=1e-6)
    np.testing.assert_allclose(pooled[1], aux["tokens"][1, 2], rtol=1e-6)


def test_causal_mask_hides_future_tokens():
    tower = small_text(causal=True)
    a = jnp.array([[1, 5, 6, 7, 8, 9, 10, EOT_ID]])
    b = a.at[0, 5].set(11)  # change a later token
    _, aux_a = tower(a)
    _, aux_b = tower(b)
    np.testing.assert_allclose(aux_a["tokens"][0, :5], aux_b["tokens"][0, :5], rtol=1e-5, atol=1e-6)
    assert not np.allclose(aux_a["tokens"][0, 5:], aux_b["tokens"][0, 5:])


def test_bidirectional_mask_ignores_padding_but_sees_the_future():
    tower = small_text(causal=False)
    short = jnp.array([[1, 5, 6, EOT_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]])
    pooled_short, _ = tower(short)
    pooled_shorter, _ = tower(short[:, :5])  # less padding, same text
    np.testing.assert_allclose(pooled_short, pooled_shorter, rtol=1e-5, atol=1e-6)
    _, aux = tower(short)
    _, aux_changed = tower(short.at[0, 2].set(9))
    assert not np.allclose(aux["tokens"][0, 1], aux_changed["tokens"][0, 1])  # token 1 sees token 2


def test_text_longer_than_context_is_rejected():
    with pytest.raises(ValueError, match="exceeds the tower's context length 8"):
        small_text(causal=True)(jnp.ones((1, 9), jnp.int32))


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_and_rematerialised_layers_match_the_loop(remat):
    def build(scan_layers, remat):
        return image_tower.VisionTransformer(image_size=16, width=32, depth=3, mlp_dim=64,
                                             num_heads=4, patch_size=4, pooling="gap",
                                             scan_layers=scan_layers, remat=remat,
                                             rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))

    def loss_and_grads(model):
        graphdef, params = nnx.split(model)
        loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(images)[0] ** 2)
        return jax.jit(jax.value_and_grad(loss))(params)

    loop_loss, loop_grads = loss_and_grads(build(False, "none"))
    loss, grads = loss_and_grads(build(True, remat))
    np.testing.assert_allclose(loss, loop_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(loop_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("query_length,key_length,is_causal,with_lengths", [
    (197, 197, False, False),  # ViT-B/16 tokens
    (77, 77, True, True),      # CLIP text: causal, padded captions
    (5, 13, False, True),      # cross-attention to image tokens
])
def test_padded_attention_equals_unpadded(query_length, key_length, is_causal, with_lengths):
    """The padding that cuDNN flash attention needs must not change values or gradients."""
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (3, query_length, 2, 8))
    k = jax.random.normal(keys[1], (3, key_length, 2, 8))
    v = jax.random.normal(keys[2], (3, key_length, 2, 8))
    lengths = jnp.array([key_length, 4, key_length - 2]) if with_lengths else None

    def loss(attention, q, k, v):
        out = attention(q, k, v)
        return jnp.sum(out * jnp.cos(out)), out

    reference = lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=is_causal, key_value_seq_lengths=lengths)
    padded = lambda q, k, v: layers.padded_attention(
        q, k, v, is_causal=is_causal, key_lengths=lengths)
    (_, expected), expected_grads = jax.value_and_grad(
        functools.partial(loss, reference), argnums=(0, 1, 2), has_aux=True)(q, k, v)
    (_, got), got_grads = jax.value_and_grad(
        functools.partial(loss, padded), argnums=(0, 1, 2), has_aux=True)(q, k, v)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    for g, e in zip(got_grads, expected_grads):
        np.testing.assert_allclose(g, e, atol=1e-5)


@pytest.mark.parametrize("dtype,tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("query_length,key_length,is_causal,with_lengths", [
    (65, 65, False, False), (32, 32, True, True), (5, 13, False, True)])
def test_xla_attention_equals_jax_dot_product_attention(query_length, key_length, is_causal,
                                                        with_lengths, dtype, tolerance):
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(key, (3, length, 2, 8)).astype(dtype)
               for key, length in zip(keys, (query_length, key_length, key_length)))
    lengths = jnp.array([key_length, 4, key_length - 2]) if with_lengths else None
    probe = jax.random.normal(keys[3], (3, query_length, 2, 8))

    def loss(attention, q, k, v):
        out = attention(q, k, v, is_causal=is_causal, key_lengths=lengths)
        return jnp.sum(out.astype(jnp.float32) * probe), out

    reference = lambda q, k, v, is_causal, key_lengths: jax.nn.dot_product_attention(
        q, k, v, is_causal=is_causal, key_value_seq_lengths=key_lengths)
    (_, expected), expected_grads = jax.value_and_grad(
        functools.partial(loss, reference), argnums=(0, 1, 2), has_aux=True)(q, k, v)
    (_, got), got_grads = jax.value_and_grad(
        functools.partial(loss, layers.xla_attention), argnums=(0, 1, 2), has_aux=True)(q, k, v)
    assert got.dtype == dtype
    np.testing.assert_allclose(np.float32(got), np.float32(expected), atol=tolerance)
    for g, e in zip(got_grads, expected_grads):
        np.testing.assert_allclose(np.float32(g), np.float32(e), atol=tolerance, rtol=tolerance)


def test_layer_norm_gradient_equals_autodiff():
    keys = jax.random.split(jax.random.key(0), 4)
    x = 3 * jax.random.normal(keys[0], (4, 7, 16)) + 1
    scale, bias = 1 + jax.random.normal(keys[1], (16,)), jax.random.normal(keys[2], (16,))
    probe = jax.random.normal(keys[3], (4, 7, 16))

    def plain(x, scale, bias):
        mean = x.mean(-1, keepdims=True)
        variance = jnp.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(variance + 1e-6) * scale + bias

    loss = lambda norm: lambda *args: jnp.sum(jnp.sin(norm(*args)) * probe)
    np.testing.assert_array_equal(
        layer_norm.layer_norm(x, scale, bias, 1e-6), plain(x, scale, bias)
    )
    got = jax.grad(loss(lambda *a: layer_norm.layer_norm(*a, 1e-6)), argnums=(0, 1, 2))(
        x, scale, bias
    )
    expected = jax.grad(loss(plain), argnums=(0, 1, 2))(x, scale, bias)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
    # bfloat16 activations: the gradient comes back in bfloat16, equal to autodiff's of the
    # float32 computation to bfloat16's precision.
    x16 = x.astype(jnp.bfloat16)
    got = jax.grad(loss(lambda *a: layer_norm.layer_norm(*a, 1e-6)), argnums=(0, 1, 2))(x16, scale,
                                                                                    bias)
    expected = jax.grad(loss(lambda x, *a: plain(x.astype(jnp.float32), *a)),
                        argnums=(0, 1, 2))(x16, scale, bias)
    assert got[0].dtype == jnp.bfloat16
    for g, e in zip(got, expected):
        np.testing.assert_allclose(np.float32(g), np.float32(e), rtol=2e-2, atol=2e-2)


def test_patch_dropout_keeps_the_class_token_and_the_requested_count():
    tower = image_tower.VisionTransformer(image_size=16, width=32, depth=2, mlp_dim=64,
                                          num_heads=4, patch_size=4, pooling="cls",
                                          patch_dropout=0.5, rngs=nnx.Rngs(0))
    images = jax.random.uniform(jax.random.key(1), (3, 16, 16, 3))
    rng = jax.random.key(2)
    pooled, aux = tower(images, rng=rng)
    assert aux["tokens"].shape == (3, 8, 32)  # 8 of the 16 patches; the class token is apart

    # The same forward pass spelled out: the kept patches after their position embeddings,
    # the class token put in front of them, and pooling from it.
    patches = tower.patch_embedding(tower.patchify(images)) + tower.position_embedding[...]
    kept = image_tower.keep_random_patches(patches, rng, 8)
    cls = jnp.broadcast_to(tower.cls_token[...], (3, 1, 32))
    expected = tower.encoder(jnp.concatenate([cls, kept], axis=1))
    np.testing.assert_allclose(pooled, expected[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux["tokens"], expected[:, 1:], rtol=1e-5, atol=1e-6)

    # Which patches: distinct within an image, drawn independently per image.
    positions = jnp.broadcast_to(jnp.arange(16.0)[None, :, None], (3, 16, 1))
    chosen = np.asarray(image_tower.keep_random_patches(positions, rng, 8))[..., 0]
    assert all(len(set(row)) == 8 for row in chosen)
    assert len({tuple(sorted(row)) for row in chosen}) == 3


def test_patch_dropout_is_off_without_an_rng_and_at_rate_zero():
    def vit(rate):
        return image_tower.VisionTransformer(image_size=16, width=32, depth=1, mlp_dim=64,
                                             num_heads=4, patch_size=4, pooling="cls",
                                             patch_dropout=rate, rngs=nnx.Rngs(0))

    images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    full, _ = vit(0.0)(images)
    evaluated, aux = vit(0.75)(images)  # no rng: evaluation sees every patch
    assert aux["tokens"].shape == (2, 16, 32)
    np.testing.assert_array_equal(evaluated, full)
    trained_at_zero, _ = vit(0.0)(images, rng=jax.random.key(3))
    np.testing.assert_array_equal(trained_at_zero, full)
    with pytest.raises(ValueError, match="patch_dropout 1.0 must be in"):
        vit(1.0)
