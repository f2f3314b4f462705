"""Conventions both packages share: pixel normalisation, parameter names and how a mixture of
training sources is written.

Plain Python (no JAX, no TensorFlow), so the input pipeline uses them without importing models.
"""

from __future__ import annotations

import math
import re

# How a model expects pixels: (mean, std) per channel in [0, 255] units;
# normalised = (x - mean) / std.
IMAGE_NORMALIZATIONS = {
    "minus_one_one": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    "clip": ((0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255),  # OpenAI CLIP / open_clip
             (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)),
}


def image_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if name not in IMAGE_NORMALIZATIONS:
        raise ValueError(f"Unknown image normalization {name!r}; valid names: "
                         f"{sorted(IMAGE_NORMALIZATIONS)}.")
    return IMAGE_NORMALIZATIONS[name]


def parameter_name(path) -> str:
    """A key path -> 'image_tower/encoder/blocks/0/mlp/up/kernel'."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def under_prefixes(name: str, prefixes) -> bool:
    """Whether a parameter name lies under one of `prefixes` ('image_tower', 'text_tower/x')."""
    return any(name == p or name.startswith(p.rstrip("/") + "/") for p in prefixes)


# The modalities a model may have, in the order metric names and loss pairs follow, and the
# batch entry each is fed by. A model has those whose tower its config sets
# (config.model.<modality>_tower).
MODALITIES = ("image", "audio", "video", "text")
BATCH_KEYS = {"image": "image", "audio": "audio", "video": "video", "text": "tokens"}
# One letter each, for retrieval metrics: i2t, a2t, v2t, i2a.
INITIALS = {"image": "i", "audio": "a", "video": "v", "text": "t"}
# Before the names of per-modality metrics (zero-shot, linear probe); images' stay unprefixed.
METRIC_PREFIXES = {"image": "", "audio": "audio_", "video": "video_"}


def model_modalities(model_config) -> tuple[str, ...]:
    """The modalities whose tower a model config sets, in MODALITIES order."""
    return tuple(m for m in MODALITIES if model_config.get(f"{m}_tower"))


def contrastive_pairs(model_config, pairs=()) -> tuple[tuple[str, str], ...]:
    """The modality pairs the contrastive losses align: `pairs` ("audio-text", ...) or, when
    empty, every pair of the model's modalities. Each pair in MODALITIES order."""
    present = model_modalities(model_config)
    if not pairs:
        return tuple((a, b) for i, a in enumerate(present) for b in present[i + 1:])
    parsed = []
    for pair in pairs:
        names = tuple(pair.split("-"))
        if len(names) != 2 or names[0] == names[1] or any(n not in present for n in names):
            raise ValueError(f"contrastive pair {pair!r} is not two of the model's modalities "
                             f"{list(present)} joined by '-' (e.g. 'audio-text')")
        parsed.append(tuple(sorted(names, key=MODALITIES.index)))
    return tuple(dict.fromkeys(parsed))


def audio_samples(frames: int, hop: int, frame_length: int) -> int:
    """The clip length (samples) whose spectrogram has exactly `frames` frames."""
    return frame_length + (frames - 1) * hop


def is_mixture(spec: str) -> bool:
    return spec.strip().startswith("mix(")


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """(source spec, weight) pairs of `mix(SPEC=WEIGHT, ...)`; ValueError naming what is wrong."""
    match = re.fullmatch(r"\s*mix\((.*)\)\s*", spec, flags=re.S)
    example = "mix(tfds:mmjax_shapes:train=0.7, shards:/data/cc12m:train=0.3)"
    if not match:
        raise ValueError(f"Mixture {spec!r} is not of the form {example!r}.")
    parts = []
    for part in (p.strip() for p in match.group(1).split(",")):
        source, separator, weight = part.rpartition("=")
        try:
            value = float(weight)
        except ValueError:
            value = None
        if "=" in source:
            raise ValueError(f"Mixture part {part!r} holds two weights; separate the parts with "
                             f"commas, as in {example!r}.")
        if not separator or not source.strip() or value is None:
            raise ValueError(f"Mixture part {part!r} needs a weight: SPEC=WEIGHT, as in "
                             f"{example!r}.")
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"Mixture part {part!r}: weights must be positive; leave a source "
                             "out instead of giving it 0.")
        parts.append((source.strip(), value))
    names = [s for s, _ in parts]
    if len(parts) < 2 or len(set(names)) < len(names):
        raise ValueError(f"Mixture {spec!r} needs two or more different sources (a single "
                         "source is given without mix()).")
    return parts


def first_source(spec: str) -> str:
    """A training spec's first dataset: itself, or a mixture's first source (a malformed
    mixture as it is, for the preflight to name)."""
    try:
        return parse_mixture(spec)[0][0] if is_mixture(spec) else spec
    except ValueError:
        return spec
