"""`mmjax_sounds`: the embedded sound-caption dataset, generated locally with no
download, as `mmjax_shapes` is for images.

Each one-second 16 kHz clip holds one to three beeps of one waveform (sine, square, sawtooth,
triangle), register (low, middle, high: around 220, 440 and 880 Hz), loudness (quiet, loud) and
timing (the clip's first, middle or last third), over faint noise; its caption says so: "two
loud high square beeps at the start". Three waveform-register pairs never appear in training; a
quarter of the `test` split draws from them, so held-out retrieval and zero-shot accuracy
measure composition, not memory. `label` is the waveform-register class (12 classes, names such
as "high square beep") for zero-shot classification.

Synthesis is plain NumPy and deterministic per (split, index); clips are stored as 16-bit PCM
WAV, which input_pipeline/audio.py decodes in tf.data. No tower trains on it yet.
"""

from __future__ import annotations

import itertools

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.generated import builder

RATE = builder.AUDIO_RATE
SECONDS = 1.0
WAVEFORMS = ("sine", "square", "sawtooth", "triangle")
REGISTERS = {"low": 220.0, "middle": 440.0, "high": 880.0}  # Hz, each clip within +-6 %
LOUDNESS = {"quiet": 0.12, "loud": 0.5}  # peak amplitude
COUNTS = ("one", "two", "three")
TIMINGS = ("at the start", "in the middle", "at the end")  # the clip's thirds
BEEP_SECONDS, GAP_SECONDS, RAMP_SECONDS = 0.08, 0.04, 0.01
HELD_OUT_PAIRS = (("sine", "high"), ("square", "low"), ("sawtooth", "middle"))
CLASS_PAIRS = tuple(itertools.product(WAVEFORMS, REGISTERS))
CLASS_NAMES = tuple(f"{register} {waveform} beep" for waveform, register in CLASS_PAIRS)
# Zero-shot prompts: every count, loudness and timing of the captions, averaged (an ensemble).
PROMPT_TEMPLATES = tuple(f"{count} {loudness} {{}}{'s' if count != 'one' else ''} {timing}"
                         for count in COUNTS for loudness in LOUDNESS for timing in TIMINGS)
SPLIT_SEEDS = {"train": 10, "test": 11}
TEST_UNSEEN_FRACTION = 0.25


def oscillator(waveform: str, hz: float, seconds: float) -> np.ndarray:
    """One period-exact tone in [-1, 1]."""
    phase = (hz * np.arange(int(round(seconds * RATE))) / RATE) % 1.0
    if waveform == "sine":
        return np.sin(2 * np.pi * phase)
    if waveform == "square":
        return np.where(phase < 0.5, 1.0, -1.0)
    if waveform == "sawtooth":
        return 2.0 * phase - 1.0
    return 1.0 - 4.0 * np.abs(phase - 0.5)  # triangle


def render_example(split: str, index: int) -> dict:
    """The example at `index` of `split`: waveform (float32 samples), caption, label and
    whether its pair is held out."""
    rng = np.random.default_rng([SPLIT_SEEDS[split], index])
    (waveform, register), loudness, count, timing = builder.draw_scene(
        rng, split, CLASS_PAIRS, HELD_OUT_PAIRS, TEST_UNSEEN_FRACTION, LOUDNESS, TIMINGS)
    noun = "beep" if count == 1 else "beeps"
    return {
        "id": index,
        "waveform": render_clip(waveform, register, loudness, count, timing, rng),
        "caption": f"{COUNTS[count - 1]} {loudness} {register} {waveform} {noun} {timing}",
        "label": CLASS_PAIRS.index((waveform, register)),
        "unseen_combination": (waveform, register) in HELD_OUT_PAIRS,
    }


def render_clip(waveform: str, register: str, loudness: str, count: int, timing: str,
                rng: np.random.Generator) -> np.ndarray:
    """One second of float32 samples: `count` beeps over faint noise, pitch, level and onset
    jittered from `rng`."""
    samples = rng.normal(0, 0.004, int(RATE * SECONDS))
    hz = REGISTERS[register] * rng.uniform(0.94, 1.06)
    beep = oscillator(waveform, hz, BEEP_SECONDS)
    ramp = int(RAMP_SECONDS * RATE)  # no clicks: fade in and out
    envelope = np.minimum(1.0, np.minimum(np.arange(len(beep)) + 1,
                                          np.arange(len(beep))[::-1] + 1) / ramp)
    beep = LOUDNESS[loudness] * rng.uniform(0.9, 1.1) * envelope * beep
    third = SECONDS / 3
    span = count * BEEP_SECONDS + (count - 1) * GAP_SECONDS
    start = TIMINGS.index(timing) * third + rng.uniform(0, third - span)
    for k in range(count):
        first = int(round((start + k * (BEEP_SECONDS + GAP_SECONDS)) * RATE))
        samples[first:first + len(beep)] += beep
    return np.clip(samples, -1, 1).astype(np.float32)


class MmjaxSounds(builder.GeneratedSplits, tfds.core.GeneratorBasedBuilder):
    """Beeps with captions that describe them; generated, never downloaded."""

    BUILDER_CONFIGS = builder.generated_configs("clips", (4_000, 500), (256, 64))
    MEDIA = {"audio": tfds.features.Tensor(shape=(), dtype=np.object_)}  # WAV bytes
    CLASS_NAMES = CLASS_NAMES


def prepare(data_dir: str | None = None, config: str = "default") -> tfds.core.DatasetBuilder:
    """Generates the dataset into `data_dir` once (ArrayRecord, for random access); its builder."""
    return builder.prepare_generated(MmjaxSounds, data_dir, config)
