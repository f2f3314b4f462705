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

import dataclasses
import io
import itertools
import struct
import sys
import zlib

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mmjax import paths

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
# judge of generated images learns from (mmjax/judge.py), never a model it judges.
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


_PIXEL_Y, _PIXEL_X = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5


def _shape_mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = _PIXEL_X - cx, _PIXEL_Y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "triangle":
        depth = (dy + r) / (1.8 * r)  # 0 at the apex, 1 at the base
        return (depth >= 0) & (depth <= 1) & (np.abs(dx) <= depth * r)
    arm = 0.32 * r  # cross
    return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))


def draw_pair(rng, split: str, class_pairs, held_out_pairs, test_unseen_fraction: float):
    """An example's class pair: in `test`, a held-out pair with probability
    `test_unseen_fraction`; otherwise one of the others (training never sees a held-out one)."""
    seen_pairs = [p for p in class_pairs if p not in held_out_pairs]
    if split == "test" and rng.random() < test_unseen_fraction:
        return held_out_pairs[rng.integers(len(held_out_pairs))]
    return seen_pairs[rng.integers(len(seen_pairs))]


def draw_scene(rng, split: str, class_pairs, held_out_pairs, test_unseen_fraction: float,
               before_count, after_count) -> tuple:
    """A generated example's attributes, drawn in this order (the datasets' bytes depend on
    it): its class pair (draw_pair), one of `before_count`, a count of 1 to 3, one of
    `after_count`."""
    pair = draw_pair(rng, split, class_pairs, held_out_pairs, test_unseen_fraction)
    before = list(before_count)[rng.integers(len(before_count))]
    count = int(rng.integers(1, 4))
    return pair, before, count, list(after_count)[rng.integers(len(after_count))]


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
    from input_pipeline import preprocess as ops

    op = ops.parse_ops(preprocess, image_size=image_size, normalization=normalization)
    examples = [render_any_pair(i) for i in range(count)]
    encoded = tf.data.Dataset.from_tensor_slices([encode_png(e["image"]) for e in examples])
    images = encoded.map(lambda png: op(png, tf.constant([0, 0], tf.int64)),
                         num_parallel_calls=tf.data.AUTOTUNE).batch(1000)
    return (np.concatenate([np.asarray(b) for b in images.as_numpy_iterator()]),
            [e["caption"] for e in examples])


def _render(index: int, rng, split: str, held_out_pairs) -> dict:
    (color, shape), size, count, position = draw_scene(
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
        image[_shape_mask(shape, cx, cy, radius)] = rgb
    return np.clip(image, 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """A minimal RGB PNG encoder: 30x faster than TFDS's per-image TensorFlow call."""
    height, width, _ = image.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


@dataclasses.dataclass
class GeneratedConfig(tfds.core.BuilderConfig):
    """A build of a generated dataset: how many train and test examples."""

    num_train: int = 20_000
    num_test: int = 1_000


def generated_configs(what: str, default: tuple[int, int], tiny: tuple[int, int]) -> list:
    """A generated dataset's two builds, (train, test) sizes each: `default` and `tiny` (tests)."""
    return [GeneratedConfig(name="default", description=f"{default[0]:,} training and "
                            f"{default[1]:,} test {what}.", num_train=default[0],
                            num_test=default[1]),
            GeneratedConfig(name="tiny", description=f"For tests: {tiny[0]} training and "
                            f"{tiny[1]} test {what}.", num_train=tiny[0], num_test=tiny[1])]


class GeneratedSplits:
    """For the builders of generated datasets (mmjax_shapes, mmjax_sounds, mmjax_triples):
    `train` and `test` of the config's sizes. A builder names its `MEDIA` features (beside id,
    caption, label and unseen_combination), `CLASS_NAMES`, and its module's
    `render_example(split, index)`; `encode` turns a rendered example into stored features."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MEDIA: dict = {}
    CLASS_NAMES: tuple[str, ...] = ()
    SUPERVISED_KEYS = None

    def _info(self) -> tfds.core.DatasetInfo:
        module = sys.modules[type(self).__module__]
        return self.dataset_info_from_configs(
            description=module.__doc__,
            features=tfds.features.FeaturesDict({
                "id": np.int64, **self.MEDIA, "caption": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=self.CLASS_NAMES),
                "unseen_combination": np.bool_,
            }),
            supervised_keys=self.SUPERVISED_KEYS,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        sizes = {"train": self.builder_config.num_train, "test": self.builder_config.num_test}
        return {split: self._generate_examples(split, size) for split, size in sizes.items()}

    def _generate_examples(self, split, size):
        render = sys.modules[type(self).__module__].render_example
        for index in range(size):
            yield index, self.encode(render(split, index))

    @staticmethod
    def encode(example: dict) -> dict:
        """Rendered media -> stored bytes: `image` as PNG, `waveform` as `audio` WAV bytes."""
        from input_pipeline import sounds

        if "image" in example:
            example["image"] = io.BytesIO(encode_png(example["image"]))
        if "waveform" in example:
            example["audio"] = sounds.encode_wav(example.pop("waveform"))
        return example


def prepare_generated(builder_class, data_dir: str | None, config: str):
    """Generates a dataset into `data_dir` once (ArrayRecord, for random access); its builder."""
    builder = builder_class(config=config, data_dir=data_dir, file_format="array_record")
    if not paths.exists(paths.join(builder.data_dir, "dataset_info.json")):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder


class MmjaxShapes(GeneratedSplits, tfds.core.GeneratorBasedBuilder):
    """Coloured shapes with captions that describe them; generated, never downloaded."""

    BUILDER_CONFIGS = generated_configs("examples", (20_000, 1_000), (512, 128))
    MEDIA = {"image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3))}
    CLASS_NAMES = CLASS_NAMES
    SUPERVISED_KEYS = ("image", "label")


def prepare(data_dir: str | None = None, config: str = "default") -> tfds.core.DatasetBuilder:
    """Generates the dataset into `data_dir` once (ArrayRecord, for random access) and returns it."""
    return prepare_generated(MmjaxShapes, data_dir, config)


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
