"""Video front end: named ops from a clip's encoded frames to the frames the video tower takes,
usable eagerly and inside tf.data.

A config names a chain as a string, as for images (input_pipeline/preprocess.py):

    "decode_frames|sample_clip(random=True)|resize_shorter|random_crop"

A stored clip is its frames, each encoded as an image (JPEG in shards, PNG in the generated
datasets), string [stored frames]. Each op maps (clip, seed) to a clip: after `decode_frames` a
[frames, H, W, 3] tensor. The spatial ops draw one window for the whole clip, so every frame is
cut and scaled alike (motion stays motion). `frames`, `stride` and `size` default to
config.data.video.frames, .stride and config.data.image_size. Ops that find a bad clip
(undecodable frames, none at all) raise; the pipeline skips that example as it does images.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from input_pipeline import preprocess

VideoOp = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
OPS: dict[str, Callable[..., VideoOp]] = {}
register = preprocess.registrar(OPS)


def decode_frames(encoded: tf.Tensor) -> tf.Tensor:
    """string [stored frames] -> uint8 [stored frames, H, W, 3]; every frame the first's size."""
    with tf.control_dependencies([tf.debugging.assert_positive(
            tf.size(encoded), message="a clip with no frames")]):
        first = preprocess.decode_rgb(encoded[0])
    frames = tf.map_fn(lambda e: tf.ensure_shape(preprocess.decode_rgb(e), [None, None, 3]),
                       encoded, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    with tf.control_dependencies([tf.debugging.assert_equal(
            tf.shape(frames)[1:3], tf.shape(first)[:2], message="frames of different sizes")]):
        return tf.identity(frames)


def clip_start(stored: tf.Tensor, span: int, seed: tf.Tensor, random: bool) -> tf.Tensor:
    """The first stored frame of a clip spanning `span` stored frames: uniform over the starts
    that fit (training) or centred (evaluation); 0 when the video is shorter."""
    room = tf.maximum(stored - span, 0)
    if random:
        return tf.random.stateless_uniform([], seed, maxval=room + 1, dtype=tf.int32)
    return room // 2


@register("decode_frames")
def _decode_frames():
    return lambda clip, seed: decode_frames(clip)


@register("sample_clip")
def _sample_clip(frames: int, stride: int = 1, random: bool = False):
    """`frames` frames, every `stride`-th, from a random start (random=True) or the centred one.
    A shorter video is played to its end and its last frame held."""
    span = (frames - 1) * stride + 1

    def op(clip, seed):
        stored = tf.shape(clip)[0]
        start = clip_start(stored, span, seed, random)
        indices = tf.minimum(start + tf.range(frames) * stride, stored - 1)
        return tf.gather(clip, indices)
    return op


@register("resize")
def _resize(size: int):
    return lambda clip, seed: tf.image.resize(tf.cast(clip, tf.float32), [size, size],
                                              antialias=True)


@register("resize_shorter")
def _resize_shorter(size: int):
    """Each frame's shorter side to `size`, aspect kept; a clip already that size is kept."""
    def op(clip, seed):
        shape = tf.cast(tf.shape(clip)[1:3], tf.float32)
        new = tf.maximum(tf.cast(tf.round(shape * size / tf.reduce_min(shape)), tf.int32), size)
        return tf.cond(tf.reduce_all(tf.equal(tf.shape(clip)[1:3], new)),
                       lambda: tf.cast(clip, tf.float32),
                       lambda: tf.image.resize(tf.cast(clip, tf.float32), new, antialias=True))
    return op


@register("center_crop")
def _center_crop(size: int):
    def op(clip, seed):
        shape = tf.shape(clip)
        top, left = (shape[1] - size) // 2, (shape[2] - size) // 2
        return clip[:, top:top + size, left:left + size]
    return op


@register("random_crop")
def _random_crop(size: int):
    """One size x size window, the same for every frame."""
    def op(clip, seed):
        shape = tf.shape(clip)
        return tf.image.stateless_random_crop(clip, tf.stack([shape[0], size, size, 3]), seed)
    return op


@register("flip")
def _flip():
    """Every frame flipped left-right, or none. Not for captions that say "left" or "right"."""
    def op(clip, seed):
        flip = tf.random.stateless_uniform([], seed) < 0.5
        return tf.cond(flip, lambda: tf.reverse(clip, axis=[2]), lambda: clip)
    return op


@register("still")
def _still(frame: int | None = None):
    """Every frame replaced by one of them (`frame`, by default the middle one): a control
    that shows what a model makes of a clip without its motion."""
    def op(clip, seed):
        index = tf.shape(clip)[0] // 2 if frame is None else frame
        return tf.repeat(clip[index][None], tf.shape(clip)[0], axis=0)
    return op


def clip_media(spec: str, *, frames: int, stride: int, image_size: int) -> preprocess.Media:
    """A chain as the batch entry the video tower takes: uint8 [frames, size, size, 3] (the
    model normalises it on the device, as it does images)."""
    ops = [op for _, op in preprocess.parse_chain(
        spec, OPS, {"frames": frames, "stride": stride, "size": image_size})]

    def run(encoded, seed):
        clip = encoded
        for i, op in enumerate(ops):
            clip = op(clip, tf.random.experimental.stateless_fold_in(seed, i))
        if clip.dtype == tf.string:
            raise ValueError(f"Video chain {spec!r} never decodes the frames: start it with "
                             "decode_frames")
        return tf.cast(tf.clip_by_value(tf.round(tf.cast(clip, tf.float32)), 0, 255), tf.uint8)
    return preprocess.Media(run, (frames, image_size, image_size, 3), tf.uint8)
