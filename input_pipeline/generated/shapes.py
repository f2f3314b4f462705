"""`mmjax_shapes`: the embedded image-caption dataset, generated locally with no download.

Each 64x64 image holds one to three objects of one colour, shape and size in one region, and its
caption says so: "two large red circles on the left". Four colour-shape pairs never appear in
training; the `test` split draws a quarter of its examples from them, so held-out retrieval and
zero-shot accuracy measure composition, not memory. `label` is the colour-shape class (32 classes,
names such as "red circle") for zero-shot classification.

Rendering is plain NumPy and deterministic per (split, index), so the dataset is the same
on every machine.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import preprocess as ops
from input_pipeline.generated import builder

IMAGE_SIZE = 64
COLORS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (60, 90, 240), "yellow": (230, 220, 50),
    "purple": (150, 60, 210), "orange": (245, 140, 30), "cyan": (40, 210, 220),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
SIZES = {"small": 5.0, "large": 9.0}  # radius in pixels at 64x64
COUNTS = ("one", "two", "three")
POSITIONS = ("on the left", "on the right", "at the top", "at the bottom", "in the center")
HELD_OUT_PAIRS = (("red", "triangle"), ("blue", "cross"), ("green", "circle"),
                  ("yellow", "square"))
CLASS_PAIRS = tuple(itertools.product(COLORS, SHAPES))
CLASS_NAMES = tuple(f"{color} {shape}" for color, shape in CLASS_PAIRS)
# Zero-shot prompts: one object, every size and position, averaged (a prompt ensemble).
PROMPT_TEMPLATES = tuple(f"one {size} {{}} {position}" for size in SIZES for position in POSITIONS)
# A VQA-style view of the same images (`mmjax_shapes_vqa`): one question per image, chosen by its
# id, whose answer only the image can give; answers are classes.
VQA_QUESTIONS = ("what colour is it", "what shape is it", "how many are there", "where is it",
                 "how big is it")
VQA_ANSWERS = tuple(COLORS) + SHAPES + COUNTS + POSITIONS + tuple(SIZES)
SPLIT_SEEDS = {"train": 0, "test": 1}
# Images of every colour-shape pair, held-out ones included, under a seed of their own: what a
# judge of generated images learns from (mmjax/evaluation/judge.py), never a model it judges.
JUDGE_SEED = 2
TEST_UNSEEN_FRACTION = 0.25


def _region(position: str, radius: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """(x range, y range) for object centres in a region."""
    low, high, mid = radius, IMAGE_SIZE - radius, IMAGE_SIZE / 2
    full = (low, high)
    return {
        "on the left": ((low, mid - radius / 2), full),
        "on the right": ((mid + radius / 2, high), full),
        "at the top": (full, (low, mid - radius / 2)),
        "at the bottom": (full, (mid + radius / 2, high)),
        "in the center": ((IMAGE_SIZE * 0.32, IMAGE_SIZE * 0.68),) * 2,
    }[position]


@functools.cache
def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) of every pixel's centre of a size x size image."""
    return tuple(np.mgrid[0:size, 0:size].astype(np.float32) + 0.5)


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """[size, size] bool: the pixels of a `shape` of radius `r` centred at (cx, cy)."""
    pixel_y, pixel_x = _pixel_centres(size)
    dx, dy = pixel_x - cx, pixel_y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "triangle":
        depth = (dy + r) / (1.8 * r)  # 0 at the apex, 1 at the base
        return (depth >= 0) & (depth <= 1) & (np.abs(dx) <= depth * r)
    arm = 0.32 * r  # cross
    return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))


def render_example(split: str, index: int) -> dict:
    """The example at `index` of `split`: image, caption, label and whether its pair is held out."""
    rng = np.random.default_rng([SPLIT_SEEDS[split], index])
    return _render(index, rng, split, HELD_OUT_PAIRS)


def render_any_pair(index: int) -> dict:
    """Like `render_example`, but drawn from all colour-shape pairs (the held-out ones too) under
    JUDGE_SEED: real images for a judge that must read pairs the judged model never saw."""
    return _render(index, np.random.default_rng([JUDGE_SEED, index]), "train", ())


def preprocessed_any_pairs(count: int, *, preprocess: str, image_size: int,
                           normalization: str) -> tuple[np.ndarray, list[str]]:
    """(images, captions) of the first `count` examples of `render_any_pair`, stored as PNGs and
    put through an image preprocessing chain (a run's eval_preprocess), as the dataset's own
    images are on their way to the model."""

    op = ops.parse_ops(preprocess, image_size=image_size, normalization=normalization)
    examples = [render_any_pair(i) for i in range(count)]
    encoded = tf.data.Dataset.from_tensor_slices([builder.encode_png(e["image"]) for e in examples])
    images = encoded.map(lambda png: op(png, tf.constant([0, 0], tf.int64)),
                         num_parallel_calls=tf.data.AUTOTUNE).batch(1000)
    return (np.concatenate([np.asarray(b) for b in images.as_numpy_iterator()]),
            [e["caption"] for e in examples])


def _render(index: int, rng, split: str, held_out_pairs) -> dict:
    (color, shape), size, count, position = builder.draw_scene(
        rng, split, CLASS_PAIRS, held_out_pairs, TEST_UNSEEN_FRACTION, SIZES, POSITIONS)
    return {
        "id": index,
        "image": render_image(color, shape, size, count, position, rng),
        "caption": caption(color, shape, size, count, position),
        "label": CLASS_PAIRS.index((color, shape)),
        "unseen_combination": (color, shape) in HELD_OUT_PAIRS,
    }


def caption(color: str, shape: str, size: str, count: int, position: str) -> str:
    noun = shape if count == 1 else PLURALS[shape]
    return f"{COUNTS[count - 1]} {size} {color} {noun} {position}"


def render_image(color: str, shape: str, size: str, count: int, position: str,
                 rng: np.random.Generator) -> np.ndarray:
    """[64, 64, 3] uint8: `count` objects over a noisy background, their jitter from `rng`."""
    background = rng.integers(0, 60, size=3)
    image = background + rng.normal(0, 8, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    radius = SIZES[size] * rng.uniform(0.85, 1.15)
    (x_low, x_high), (y_low, y_high) = _region(position, radius)
    centres: list[tuple[float, float]] = []
    for _ in range(count):
        for _attempt in range(30):  # keep objects apart where the region allows
            cx, cy = rng.uniform(x_low, x_high), rng.uniform(y_low, y_high)
            if all((cx - ox) ** 2 + (cy - oy) ** 2 > (2.2 * radius) ** 2 for ox, oy in centres):
                break
        centres.append((cx, cy))
    rgb = np.asarray(COLORS[color]) + rng.integers(-20, 21, size=3)
    for cx, cy in centres:
        image[shape_mask(shape, cx, cy, radius)] = rgb
    return np.clip(image, 0, 255).astype(np.uint8)


class MmjaxShapes(builder.GeneratedSplits, tfds.core.GeneratorBasedBuilder):
    """Coloured shapes with captions that describe them; generated, never downloaded."""

    BUILDER_CONFIGS = builder.generated_configs("examples", (20_000, 1_000), (512, 128))
    MEDIA = {"image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3))}
    CLASS_NAMES = CLASS_NAMES
    SUPERVISED_KEYS = ("image", "label")


def prepare(data_dir: str | None = None, config: str = "default") -> tfds.core.DatasetBuilder:
    """Generates the dataset into `data_dir` once (ArrayRecord, for random access); its builder."""
    return builder.prepare_generated(MmjaxShapes, data_dir, config)


def vqa_example(features: dict, index) -> dict:
    """In-graph, for the VQA view (`mmjax_shapes_vqa`): the question of type (id mod 5) about
    the image, its caption's answer as the label."""
    del index
    words = tf.strings.split(features["caption"])
    kind = tf.cast(features["id"] % len(VQA_QUESTIONS), tf.int32)
    # Caption: "{count} {size} {colour} {shape or plural} {position, 3 words}".
    answer_word = tf.gather(words, tf.gather([2, 3, 0, 4, 1], kind))
    position = tf.strings.reduce_join(words[4:], separator=" ")
    answer = tf.where(kind == 3, position, answer_word)
    keys = list(VQA_ANSWERS) + list(PLURALS.values())
    values = list(range(len(VQA_ANSWERS))) + [VQA_ANSWERS.index(s) for s in PLURALS]
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(keys), tf.constant(values, tf.int64)), default_value=-1)
    question = tf.gather(tf.constant(VQA_QUESTIONS), kind)
    return {"image": features["image"], "captions": tf.reshape(question, [1]),
            "label": table.lookup(answer), "id": features["id"]}
