import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import sharding
from mmjax.losses import classification, contrastive


def numpy_clip_loss(image, text, scale):
    image = image / np.linalg.norm(image, axis=1, keepdims=True)
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    logits = scale * image @ text.T

    def cross_entropy(rows):
        shifted = rows - rows.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -np.mean(np.diag(log_probs))

    return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))


@pytest.mark.parametrize("batch,scale", [(2, 1.0), (7, 14.3), (16, 100.0)])
def test_clip_loss_matches_numpy(batch, scale):
    rng = np.random.default_rng(batch)
    image, text = rng.normal(size=(batch, 12)), rng.normal(size=(batch, 12))
    outputs = {"image_embedding": jnp.asarray(image, jnp.float32),
               "text_embedding": jnp.asarray(text, jnp.float32),
               "logit_scale": jnp.asarray(scale, jnp.float32)}
    loss, metrics = contrastive.clip_contrastive_loss(outputs, {})
    np.testing.assert_allclose(float(loss), numpy_clip_loss(image, text, scale), rtol=1e-5)
    assert float(metrics["clip_loss"]) == float(loss)


def test_clip_loss_is_low_for_matching_pairs_and_high_for_shuffled():
    embeddings = jnp.eye(8)
    matched = {"image_embedding": embeddings, "text_embedding": embeddings, "logit_scale": 50.0}
    shuffled = dict(matched, text_embedding=embeddings[::-1])
    assert float(contrastive.clip_contrastive_loss(matched, {})[0]) < 1e-3
    assert float(contrastive.clip_contrastive_loss(shuffled, {})[0]) > 10.0




def numpy_siglip_loss(image, text, scale, bias):
    image = image / np.linalg.norm(image, axis=1, keepdims=True)
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    logits = scale * image @ text.T + bias
    labels = 2 * np.eye(len(image)) - 1
    return np.sum(np.log1p(np.exp(-labels * logits))) / len(image)


def test_siglip_loss_matches_numpy():
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(6, 12)), rng.normal(size=(6, 12))
    outputs = {"image_embedding": jnp.asarray(image, jnp.float32),
               "text_embedding": jnp.asarray(text, jnp.float32),
               "logit_scale": jnp.asarray(10.0), "logit_bias": jnp.asarray(-10.0)}
    loss, _ = contrastive.siglip_loss(outputs, {})
    np.testing.assert_allclose(float(loss), numpy_siglip_loss(image, text, 10.0, -10.0), rtol=1e-5)


@pytest.mark.parametrize("mesh_shape", [{"data": 8}, {"data": 2, "fsdp": 2, "tensor": 2}])
def test_chunked_siglip_equals_unchunked_on_8_devices(mesh_shape):
    """The ring over devices gives the unchunked loss and gradients, and no device holds the
    full [global batch, global batch] logits."""
    rng = np.random.default_rng(1)
    image = jnp.asarray(rng.normal(size=(32, 16)), jnp.float32)
    text = jnp.asarray(rng.normal(size=(32, 16)), jnp.float32)
    scale, bias = jnp.asarray(8.0), jnp.asarray(-6.0)

    def loss_fn(image, text, scale, bias):
        outputs = {"image_embedding": image, "text_embedding": text,
                   "logit_scale": scale, "logit_bias": bias}
        return contrastive.siglip_loss(outputs, {})[0]

    grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3))
    expected_loss, expected_grads = jax.jit(grad_fn)(image, text, scale, bias)
    np.testing.assert_allclose(float(expected_loss),
                               numpy_siglip_loss(np.asarray(image), np.asarray(text), 8.0, -6.0),
                               rtol=1e-5)

    mesh = sharding.create_mesh(mesh_shape)
    rules = sharding.get_rules("fsdp_tensor")
    batch_sharding = sharding.batch_sharding(mesh, rules, 2)

    def chunked(image, text, scale, bias):
        with sharding.use_mesh_rules(mesh, rules):
            return grad_fn(image, text, scale, bias)

    compiled = jax.jit(chunked, in_shardings=(batch_sharding, batch_sharding, None, None)).lower(
        image, text, scale, bias).compile()
    local = 32 // (mesh.shape["data"] * mesh.shape["fsdp"])
    assert "f32[32,32]" not in compiled.as_text()
    assert f"f32[{local},{local}]" in compiled.as_text()  # the per-device blocks
    got_loss, got_grads = compiled(jax.device_put(image, batch_sharding),
                                   jax.device_put(text, batch_sharding), scale, bias)
    np.testing.assert_allclose(float(got_loss), float(expected_loss), rtol=1e-5)
    for got, expected in zip(got_grads, expected_grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_distillation_loss_matches_numpy_and_vanishes_for_the_teacher_itself():
    rng = np.random.default_rng(3)
    s_image, s_text, t_image, t_text = (rng.normal(size=(5, 8)) for _ in range(4))
    temperature = 2.0
    outputs = {"image_embedding": jnp.asarray(s_image), "text_embedding": jnp.asarray(s_text),
               "logit_scale": jnp.asarray(10.0), "teacher_image_embedding": jnp.asarray(t_image),
               "teacher_text_embedding": jnp.asarray(t_text),
               "teacher_logit_scale": jnp.asarray(30.0)}
    loss, _ = contrastive.distillation_loss(outputs, {}, temperature=temperature)

    def logits(image, text, scale):
        image = image / np.linalg.norm(image, axis=1, keepdims=True)
        text = text / np.linalg.norm(text, axis=1, keepdims=True)
        return scale * image @ text.T / temperature

    def kl(p_logits, q_logits):
        log_p = p_logits - np.log(np.exp(p_logits).sum(1, keepdims=True))
        log_q = q_logits - np.log(np.exp(q_logits).sum(1, keepdims=True))
        return (np.exp(log_p) * (log_p - log_q)).sum(1).mean()

    student, teacher = logits(s_image, s_text, 10.0), logits(t_image, t_text, 30.0)
    expected = temperature ** 2 * 0.5 * (kl(teacher, student) + kl(teacher.T, student.T))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)

    same = dict(outputs, image_embedding=outputs["teacher_image_embedding"],
                text_embedding=outputs["teacher_text_embedding"], logit_scale=jnp.asarray(30.0))
    assert abs(float(contrastive.distillation_loss(same, {}, temperature=temperature)[0])) < 1e-6


def test_classification_loss_matches_numpy():
    rng = np.random.default_rng(4)
    logits, labels = rng.normal(size=(6, 5)), np.array([0, 4, 2, 2, 1, 3])
    loss, metrics = classification.classification_loss({"class_logits": jnp.asarray(logits)},
                                               {"label": jnp.asarray(labels)})
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(float(loss), -log_probs[np.arange(6), labels].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["classification_accuracy"]),
                               (logits.argmax(1) == labels).mean())


def test_identical_captions_can_be_right_answers_for_each_other():
    """Rows 0 and 1 share a caption (so their texts embed the same). As negatives (the default)
    each clip of the two must beat the other's copy of its own caption, which no model can; as
    matches the target is split between them: both losses equal hand-computed cross-entropies."""
    tokens = jnp.array([[1, 5, 6, 2], [1, 5, 6, 2], [1, 7, 2, 0]])
    assert (contrastive.same_caption(tokens) == jnp.array(
        [[1, 1, 0], [1, 1, 0], [0, 0, 1]], bool)).all()
    # Many rows, many copies and permutations of each other: exactly the identical ones.
    rows = np.random.default_rng(0).integers(3, 7, size=(400, 5))
    np.testing.assert_array_equal(contrastive.same_caption(jnp.asarray(rows)),
                                  (rows[:, None] == rows[None, :]).all(-1))
    audio = jnp.array([[1.0, 0.3], [1.0, -0.3], [0.0, 1.0]])
    text = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    outputs = {"audio_embedding": audio, "text_embedding": text,
               "logit_scale": jnp.float32(10.0)}
    pair = (("audio", "text"),)
    strict, strict_metrics = contrastive.clip_contrastive_loss(
        outputs, {"tokens": tokens}, pairs=pair
    )
    loss, metrics = contrastive.clip_contrastive_loss(outputs, {"tokens": tokens}, pairs=pair,
                                                 identical_captions_match=True)
    logits = 10.0 * np.asarray(contrastive.l2_normalize(audio) @ text.T)
    rows, columns = jax.nn.log_softmax(logits, axis=1), jax.nn.log_softmax(logits, axis=0)
    targets = np.array([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1]])
    np.testing.assert_allclose(loss, -0.5 * ((targets * rows).sum() + (targets * columns).sum())
                               / 3, rtol=1e-6)
    np.testing.assert_allclose(strict, -0.5 * (np.trace(rows) + np.trace(columns)) / 3,
                               rtol=1e-6)
    assert metrics["clip_batch_accuracy"] == 1.0 and strict_metrics["clip_batch_accuracy"] < 1.0


def test_column_argmax_hits_equals_the_gathered_argmax_and_only_reduces_on_a_mesh():
    """The batch accuracy's column argmax: the same hits as `matches[argmax(0), cols]` (ties
    included), and on 8 devices the only all-gather is the embeddings' (no [devices, B] gather
    of every chip's partial argmax)."""
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.integers(0, 4, size=(32, 32)), jnp.float32)  # many ties
    matches = jnp.asarray(rng.random((32, 32)) < 0.3) | jnp.eye(32, dtype=bool)
    expected = matches[logits.argmax(0), jnp.arange(32)]
    np.testing.assert_array_equal(contrastive.column_argmax_hits(logits, matches), expected)

    mesh = sharding.create_mesh({"data": 8})
    batch_sharding = sharding.batch_sharding(mesh, sharding.get_rules("data_parallel"), 2)
    outputs = {"image_embedding": jnp.asarray(rng.normal(size=(32, 16)), jnp.float32),
               "text_embedding": jnp.asarray(rng.normal(size=(32, 16)), jnp.float32),
               "logit_scale": jnp.asarray(10.0)}
    loss_fn = jax.jit(lambda o: contrastive.clip_contrastive_loss(o, {})[1],
                      in_shardings=({"image_embedding": batch_sharding,
                                     "text_embedding": batch_sharding, "logit_scale": None},))
    hlo = loss_fn.lower(outputs).compile().as_text()
    gathers = [line for line in hlo.splitlines() if " all-gather(" in line]
    assert len(gathers) == 1, gathers
    assert "f32[16,32]" in gathers[0] or "f32[32,16]" in gathers[0], gathers
    sharded = loss_fn(outputs)["clip_batch_accuracy"]
    assert float(sharded) == float(contrastive.clip_contrastive_loss(outputs, {})[1][
        "clip_batch_accuracy"])
