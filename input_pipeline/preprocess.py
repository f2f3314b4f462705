"""Image and text preprocessing ops: small named functions, usable eagerly and inside tf.data.

A config names a chain of image ops as a string, big_vision style:

    config.data.train_preprocess = "decode_jpeg_and_inception_crop(scale=(0.9, 1.0))|flip"
    config.data.eval_preprocess = "decode|resize_shorter|center_crop"

Each op maps (image, seed) to an image; `size` defaults to config.data.image_size and
`normalize`'s kind to config.data.normalization. Ops that find a bad image (undecodable,
truncated, zero-sized) raise; the pipeline skips that example and counts it (datasets.py).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable

import tensorflow as tf

from mmjax.conventions import image_normalization

ImageOp = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
OPS: dict[str, Callable[..., ImageOp]] = {}


def registrar(ops: dict):
    """`register(name)`, a decorator that adds an op factory to the registry `ops`."""
    def register(name: str):
        def add(factory):
            ops[name] = factory
            return factory
        return add
    return register


register = registrar(OPS)


def _check_size(image: tf.Tensor) -> tf.Tensor:
    shape = tf.shape(image)
    with tf.control_dependencies([tf.debugging.assert_positive(
            shape[:2], message="zero-sized image")]):
        return tf.identity(image)


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG / PNG / GIF (first frame) / BMP / WebP bytes -> uint8 [H, W, 3]. Grayscale, RGBA
    (alpha dropped, as PIL's convert("RGB")) and CMYK JPEG become RGB."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return _check_size(tf.ensure_shape(image, [None, None, 3]))


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """-> float32 [size, size, 3] (bilinear, antialiased)."""
    return tf.image.resize(tf.cast(image, tf.float32), [size, size], antialias=True)


def normalize_pixels(image: tf.Tensor, normalization: str = "minus_one_one") -> tf.Tensor:
    """[0, 255] -> the model's input range: a name in mmjax.conventions.IMAGE_NORMALIZATIONS."""
    mean, std = image_normalization(normalization)
    return (tf.cast(image, tf.float32) - tf.constant(mean, tf.float32)) / tf.constant(
        std, tf.float32
    )


def caption_choice(captions: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """The index (into `captions`) of one of several captions, chosen by a stateless seed (the
    same every run). Empty captions are never chosen; an example with none but empty ones
    raises (and is skipped)."""
    non_empty = tf.where(tf.strings.length(tf.strings.strip(captions)) > 0)[:, 0]
    count = tf.shape(non_empty)[0]
    with tf.control_dependencies([tf.debugging.assert_positive(count, message="no caption")]):
        index = tf.random.stateless_uniform([], seed=seed, maxval=tf.maximum(count, 1),
                                            dtype=tf.int32)
    return non_empty[index]


def _crop_window(
    image_shape: tf.Tensor, seed: tf.Tensor, scale, ratio
) -> tuple[tf.Tensor, tf.Tensor]:
    """Inception-style random crop (area fraction in `scale`, aspect ratio in `ratio`): offset and
    size [2] each; the whole image when no window fits."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape, bounding_boxes=tf.zeros([1, 0, 4]), seed=seed,
        area_range=tuple(scale), aspect_ratio_range=tuple(ratio), max_attempts=10,
        use_image_if_no_bounding_boxes=True, min_object_covered=0.0)
    return begin[:2], size[:2]


@register("decode")
def _decode():
    return lambda image, seed: decode_rgb(image)


@register("resize")
def _resize(size: int):
    return lambda image, seed: resize(image, size)


@register("resize_shorter")
def _resize_shorter(size: int):
    """Shorter side to `size`, aspect kept (before center_crop, as CLIP's eval transform)."""
    def op(image, seed):
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        new = tf.cast(tf.round(shape * size / tf.reduce_min(shape)), tf.int32)
        return tf.image.resize(tf.cast(image, tf.float32), tf.maximum(new, size), antialias=True)
    return op


@register("center_crop")
def _center_crop(size: int):
    def op(image, seed):
        shape = tf.shape(image)
        top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
        return tf.ensure_shape(image[top:top + size, left:left + size], [size, size, 3])
    return op


@register("inception_crop")
def _inception_crop(size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Random resized crop of a decoded image, resized to size x size."""
    def op(image, seed):
        begin, crop = _crop_window(tf.shape(image), seed, scale, ratio)
        return resize(tf.slice(image, tf.concat([begin, [0]], 0), tf.concat([crop, [3]], 0)), size)
    return op


@register("decode_jpeg_and_inception_crop")
def _decode_jpeg_and_inception_crop(size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """decode + inception_crop in one, fast for JPEG: only the crop window is decoded, and
    downscaled by the JPEG decoder itself (DCT scaling by 2, 4 or 8, never below `size`) before
    a bilinear resize covers the remaining factor (< 2). Other formats: decode, then crop."""
    crop_decoded = _inception_crop(size, scale, ratio)

    def op(encoded, seed):
        def jpeg():
            shape = tf.io.extract_jpeg_shape(encoded)
            begin, crop = _crop_window(shape, seed, scale, ratio)
            # The largest DCT scale that keeps the crop at least `size` on its shorter side.
            factor = tf.reduce_min(crop) // size
            branch = tf.cast(factor >= 2, tf.int32) + tf.cast(factor >= 4, tf.int32) + tf.cast(
                factor >= 8, tf.int32)

            def decode_scaled(dct_scale):
                def decode():
                    scaled_shape = (shape[:2] + dct_scale - 1) // dct_scale
                    # Rounded to the scaled grid: the window moves by at most half a scaled pixel.
                    top_left = tf.minimum((begin + dct_scale // 2) // dct_scale, scaled_shape - 1)
                    extent = tf.maximum(tf.minimum((crop + dct_scale // 2) // dct_scale,
                                                   scaled_shape - top_left), 1)
                    return tf.io.decode_and_crop_jpeg(
                        encoded, tf.concat([top_left, extent], 0), channels=3, ratio=dct_scale)
                return decode
            image = tf.switch_case(branch, [decode_scaled(r) for r in (1, 2, 4, 8)])
            image = _check_size(tf.ensure_shape(image, [None, None, 3]))
            return tf.image.resize(tf.cast(image, tf.float32), [size, size])

        return tf.cond(
            tf.io.is_jpeg(encoded), jpeg, lambda: crop_decoded(decode_rgb(encoded), seed)
        )

    return op


@register("flip")
def _flip():
    """Random left-right flip. Not for captions that say "left" or "right"."""
    return lambda image, seed: tf.image.stateless_random_flip_left_right(image, seed)


@register("normalize")
def _normalize(kind: str):
    return lambda image, seed: normalize_pixels(image, kind)


def parse_chain(spec: str, ops: dict, defaults: dict) -> list[tuple[str, Callable]]:
    """"name|name(literal arguments)" -> [(name, op)], each op made by its factory in the
    registry `ops`; `defaults` give parameters the text leaves out (by parameter name)."""
    chain = []
    for text in [t.strip() for t in spec.split("|") if t.strip()]:
        try:
            call = ast.parse(text if "(" in text else text + "()", mode="eval").body
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
                raise SyntaxError
            args = [ast.literal_eval(a) for a in call.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        except (SyntaxError, ValueError):
            raise ValueError(
                f"Preprocessing op {text!r} in {spec!r} is not of the form "
                "name or name(literal arguments), e.g. inception_crop(scale=(0.5, 1.0))."
            ) from None
        name = call.func.id
        if name not in ops:
            raise ValueError(f"Unknown preprocessing op {name!r} in {spec!r}; valid names: "
                             f"{sorted(ops)}.")
        factory = ops[name]
        code = factory.__code__
        for parameter, value in defaults.items():
            if parameter in code.co_varnames[:code.co_argcount] and parameter not in kwargs \
                    and not args:
                kwargs[parameter] = value
        try:
            chain.append((name, factory(*args, **kwargs)))
        except TypeError as e:
            raise ValueError(f"Preprocessing op {text!r}: {e}.") from None
    return chain


@dataclasses.dataclass(frozen=True)
class Media:
    """How one non-text modality's stored bytes become its batch entry: `ops` (encoded, seed) ->
    a tensor of `shape` and `dtype` (zeros of which stand in for an unreadable example)."""

    ops: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
    shape: tuple[int, ...]
    dtype: tf.DType

    def __call__(self, encoded: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        return tf.ensure_shape(self.ops(encoded, seed), self.shape)

    def stand_in(self) -> tf.Tensor:
        return tf.zeros(self.shape, self.dtype)


def image_media(spec: str, *, image_size: int, normalization: str) -> Media:
    ops = parse_ops(spec, image_size=image_size, normalization=normalization)
    return Media(ops, (image_size, image_size, 3), ops.output_dtype)


def parse_ops(spec: str, *, image_size: int, normalization: str) -> ImageOp:
    """"decode|resize" -> one function (encoded image, seed) -> image.

    The image is uint8 (rounded), which the model normalises on the device: 4x fewer bytes to
    move, and no float work here, where it is slow. A chain that ends with `normalize` gives
    float32 instead, which the model takes as it is. Arguments are Python literals
    (`inception_crop(scale=(0.5, 1.0))`); an op's `size` defaults to `image_size` and
    normalize's `kind` to `normalization`. Each op gets its own seed.
    """
    chain = parse_chain(spec, OPS, {"size": image_size, "kind": normalization})
    names, ops = [name for name, _ in chain], [op for _, op in chain]
    ends_normalized = bool(names) and names[-1] == "normalize"

    def run(image, seed):
        for i, op in enumerate(ops):
            image = op(image, tf.random.experimental.stateless_fold_in(seed, i))
        if ends_normalized:
            return tf.cast(image, tf.float32)
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    run.output_dtype = tf.float32 if ends_normalized else tf.uint8
    return run
