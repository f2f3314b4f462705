"""`mmjax_triples`: image-audio-text triples for three-modality runs, generated
locally from the two embedded datasets' renderers, never downloaded.

Each example is one scene seen and heard: an `mmjax_shapes` image and an `mmjax_sounds` clip
drawn from the same attributes, and the image's caption ("two large red circles on the left").
The sound follows the picture by a fixed mapping, so nothing but co-occurrence ties them:

    shape     circle -> sine, square -> square, triangle -> triangle, cross -> sawtooth
    colour    red -> low register, green -> middle, blue -> high
    size      small -> quiet, large -> loud
    count     one, two or three objects -> as many beeps
    position  on the left / in the center / on the right -> at the start / middle / end

Three colour-shape pairs (with their sounds) never appear in training; a quarter of the `test`
split draws from them. `label` is the colour-shape class (12 classes, "red circle") for
zero-shot classification of either the image or the sound.
"""

from __future__ import annotations

import itertools

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.generated import builder, shapes, sounds

COLORS = {"red": "low", "green": "middle", "blue": "high"}
SHAPES = {"circle": "sine", "square": "square", "triangle": "triangle", "cross": "sawtooth"}
SIZES = {"small": "quiet", "large": "loud"}
POSITIONS = {"on the left": "at the start", "in the center": "in the middle",
             "on the right": "at the end"}
CLASS_PAIRS = tuple(itertools.product(COLORS, SHAPES))
CLASS_NAMES = tuple(f"{color} {shape}" for color, shape in CLASS_PAIRS)
HELD_OUT_PAIRS = (("red", "triangle"), ("blue", "cross"), ("green", "circle"))
PROMPT_TEMPLATES = tuple(f"one {size} {{}} {position}" for size in SIZES for position in POSITIONS)
SPLIT_SEEDS = {"train": 20, "test": 21}
TEST_UNSEEN_FRACTION = 0.25


def render_example(split: str, index: int) -> dict:
    """The triple at `index` of `split`: image (uint8), waveform (float32), caption, label and
    whether its pair is held out."""
    rng = np.random.default_rng([SPLIT_SEEDS[split], index])
    (color, shape), size, count, position = builder.draw_scene(
        rng, split, CLASS_PAIRS, HELD_OUT_PAIRS, TEST_UNSEEN_FRACTION, SIZES, POSITIONS)
    return {
        "id": index,
        "image": shapes.render_image(color, shape, size, count, position, rng),
        "waveform": sounds.render_clip(SHAPES[shape], COLORS[color], SIZES[size], count,
                                       POSITIONS[position], rng),
        "caption": shapes.caption(color, shape, size, count, position),
        "label": CLASS_PAIRS.index((color, shape)),
        "unseen_combination": (color, shape) in HELD_OUT_PAIRS,
    }


class MmjaxTriples(builder.GeneratedSplits, tfds.core.GeneratorBasedBuilder):
    """Shapes, the sounds they map to, and captions; generated, never downloaded."""

    BUILDER_CONFIGS = builder.generated_configs("triples", (4_000, 500), (128, 32))

    MEDIA = {"image": tfds.features.Image(shape=(shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3)),
             "audio": tfds.features.Tensor(shape=(), dtype=np.object_)}  # WAV bytes
    CLASS_NAMES = CLASS_NAMES


def prepare(data_dir: str | None = None, config: str = "default") -> tfds.core.DatasetBuilder:
    """Generates the dataset into `data_dir` once (ArrayRecord, for random access); its builder."""
    return builder.prepare_generated(MmjaxTriples, data_dir, config)
