"""`mmjax_clips`: the embedded video-caption dataset, generated locally with no download, in
which one frame is not enough.

Each clip is 12 frames of 32x32 holding one to three shapes of one colour that all do one thing:
move left, right, up or down, grow, shrink, appear or disappear. Its caption says so: "two red
circles moving to the left". Any single frame is drawn from much the same distribution whatever
the motion (positions, sizes and the moment a shape appears are spread so that the middle frame
tells little), so classifying the motion needs the frames in order. Eight colour-shape-motion
combinations, one per motion, never appear in training; a quarter of the `test` split draws
from them. `label` is the motion (8 classes, "moving to the left") and `object_label` the
colour-shape (12 classes, "red circle"), each for zero-shot classification: the first through
`mmjax_clips`, the second through its view `mmjax_clips_objects`.

Frames are stored as PNGs (`video`, string [12]); input_pipeline/video.py decodes them and
samples the clip a model sees. Rendering is plain NumPy and deterministic per (split, index).
"""

from __future__ import annotations

import itertools

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.generated import builder, shapes

IMAGE_SIZE = 32
FRAMES = 12
COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
# Participles, the same whatever the count, so a class name fits every prompt.
MOTIONS = ("moving to the left", "moving to the right", "moving up", "moving down", "growing",
           "shrinking", "appearing", "disappearing")
DIRECTIONS = {"moving to the left": (-1, 0), "moving to the right": (1, 0), "moving up": (0, -1),
              "moving down": (0, 1)}
SPEED = 1.25  # pixels a frame
COUNTS = ("one", "two", "three")
COMBINATIONS = tuple(itertools.product(COLORS, SHAPES, MOTIONS))
HELD_OUT = (("red", "circle", "moving to the left"), ("green", "square", "moving to the right"),
            ("blue", "triangle", "moving up"), ("yellow", "circle", "moving down"),
            ("red", "square", "growing"), ("green", "triangle", "shrinking"),
            ("blue", "circle", "appearing"), ("yellow", "square", "disappearing"))
CLASS_NAMES = MOTIONS
OBJECT_PAIRS = tuple(itertools.product(COLORS, SHAPES))
OBJECT_NAMES = tuple(f"{color} {shape}" for color, shape in OBJECT_PAIRS)
# Zero-shot prompts, averaged: the motion with every count and colour-shape, the colour-shape
# with every motion.
PROMPT_TEMPLATES = tuple(f"{count} {color} {shape if count == 'one' else shapes.PLURALS[shape]} "
                         "{}" for count in COUNTS for color, shape in OBJECT_PAIRS)
OBJECT_PROMPT_TEMPLATES = tuple(f"one {{}} {motion}" for motion in MOTIONS)
SPLIT_SEEDS = {"train": 30, "test": 31}
TEST_UNSEEN_FRACTION = 0.25


def caption(color: str, shape: str, motion: str, count: int) -> str:
    noun = shape if count == 1 else shapes.PLURALS[shape]
    return f"{COUNTS[count - 1]} {color} {noun} {motion}"


def render_example(split: str, index: int) -> dict:
    """The example at `index` of `split`: frames, caption, both labels and whether its
    combination is held out."""
    rng = np.random.default_rng([SPLIT_SEEDS[split], index])
    color, shape, motion = builder.draw_pair(rng, split, COMBINATIONS, HELD_OUT,
                                             TEST_UNSEEN_FRACTION)
    count = int(rng.integers(1, 4))
    return {
        "id": index,
        "frames": render_frames(color, shape, motion, count, rng),
        "caption": caption(color, shape, motion, count),
        "label": MOTIONS.index(motion),
        "object_label": OBJECT_PAIRS.index((color, shape)),
        "unseen_combination": (color, shape, motion) in HELD_OUT,
    }


def _paths(motion: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """One shape's centre [FRAMES, 2] and radius [FRAMES] over the clip."""
    t = np.arange(FRAMES, dtype=np.float64)
    if motion in DIRECTIONS:
        radius = rng.uniform(3.0, 4.5)
        travel = SPEED * (FRAMES - 1)
        along = rng.uniform(radius, IMAGE_SIZE - radius - travel)
        across = rng.uniform(radius, IMAGE_SIZE - radius)
        dx, dy = DIRECTIONS[motion]
        step = np.where(np.array([dx, dy]) < 0, IMAGE_SIZE - 2 * along, 0)  # mirrored
        start = np.array([along if dx else across, along if dy else across]) + step
        centre = start + np.outer(t * SPEED, [dx, dy])
        return centre, np.full(FRAMES, radius)
    centre = np.tile(rng.uniform(7.0, IMAGE_SIZE - 7.0, size=2), (FRAMES, 1))
    if motion in ("growing", "shrinking"):
        # Never smaller than a shape that appears is, so growing is no appearing.
        small, large = rng.uniform(2.5, 3.0), rng.uniform(6.0, 7.0)
        radius = small + (large - small) * t / (FRAMES - 1)
        return centre, radius if motion == "growing" else radius[::-1]
    return centre, np.full(FRAMES, rng.uniform(3.0, 4.5))  # appearing, disappearing


def render_frames(color: str, shape: str, motion: str, count: int,
                  rng: np.random.Generator) -> np.ndarray:
    """[FRAMES, 32, 32, 3] uint8: `count` shapes doing `motion` over a noisy background."""
    background = rng.integers(0, 60, size=3)
    frames = background + rng.normal(0, 6, size=(FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3))
    rgb = np.asarray(shapes.COLORS[color]) + rng.integers(-20, 21, size=3)
    # Every sampled 8-frame clip of the 12 sees the change: it happens at frame 5, 6 or 7.
    switch = int(rng.integers(5, 8))
    visible = np.arange(FRAMES) >= switch if motion == "appearing" else (
        np.arange(FRAMES) < switch if motion == "disappearing" else np.ones(FRAMES, bool))
    for _ in range(count):
        centre, radius = _paths(motion, rng)
        for f in np.flatnonzero(visible):
            frames[f][shapes.shape_mask(shape, *centre[f], radius[f], IMAGE_SIZE)] = rgb
    return np.clip(frames, 0, 255).astype(np.uint8)


class MmjaxClips(builder.GeneratedSplits, tfds.core.GeneratorBasedBuilder):
    """Moving shapes with captions that describe them; generated, never downloaded."""

    BUILDER_CONFIGS = builder.generated_configs("clips", (6_000, 600), (128, 64))
    MEDIA = {"video": tfds.features.Tensor(shape=(FRAMES,), dtype=np.object_)}  # PNG bytes
    EXTRA_FEATURES = {"object_label": tfds.features.ClassLabel(names=OBJECT_NAMES)}
    CLASS_NAMES = CLASS_NAMES


def prepare(data_dir: str | None = None, config: str = "default") -> tfds.core.DatasetBuilder:
    """Generates the dataset into `data_dir` once (ArrayRecord, for random access); its builder."""
    return builder.prepare_generated(MmjaxClips, data_dir, config)
