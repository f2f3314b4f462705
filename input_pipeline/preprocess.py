"""Image and text preprocessing ops, each a small function usable eagerly and inside tf.data."""

from __future__ import annotations

import tensorflow as tf

from mmjax import models


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG / PNG / GIF (first frame) / BMP bytes -> uint8 [H, W, 3]; grayscale and RGBA become RGB."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 or float image -> float32 [size, size, 3] (bilinear, antialiased)."""
    return tf.image.resize(tf.cast(image, tf.float32), [size, size], antialias=True)


def normalize(image: tf.Tensor, normalization: str = "minus_one_one") -> tf.Tensor:
    """[0, 255] -> the model's input range: a name in mmjax.models.IMAGE_NORMALIZATIONS."""
    mean, std = models.image_normalization(normalization)
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def sample_caption(captions: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One of several captions, chosen by a stateless seed (the same every run)."""
    index = tf.random.stateless_uniform([], seed=seed, maxval=tf.shape(captions)[0], dtype=tf.int32)
    return captions[index]


def train_image(encoded: tf.Tensor, size: int, seed: tf.Tensor,
                normalization: str = "minus_one_one") -> tf.Tensor:
    # No flips or crops: captions of the embedded dataset say "left", "right" and how many.
    del seed
    return normalize(resize(decode_rgb(encoded), size), normalization)


def eval_image(encoded: tf.Tensor, size: int, normalization: str = "minus_one_one") -> tf.Tensor:
    return normalize(resize(decode_rgb(encoded), size), normalization)
