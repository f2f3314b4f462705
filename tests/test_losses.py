import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import losses


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
    loss, metrics = losses.clip_contrastive_loss(outputs, {})
    np.testing.assert_allclose(float(loss), numpy_clip_loss(image, text, scale), rtol=1e-5)
    assert float(metrics["clip_loss"]) == float(loss)


def test_clip_loss_is_low_for_matching_pairs_and_high_for_shuffled():
    embeddings = jnp.eye(8)
    matched = {"image_embedding": embeddings, "text_embedding": embeddings, "logit_scale": 50.0}
    shuffled = dict(matched, text_embedding=embeddings[::-1])
    assert float(losses.clip_contrastive_loss(matched, {})[0]) < 1e-3
    assert float(losses.clip_contrastive_loss(shuffled, {})[0]) > 10.0


def test_unknown_loss_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"\['clip'\].*unknown: \['sigmoid'\]"):
        losses.check_loss_weights({"sigmoid": 1.0})
