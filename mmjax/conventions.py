"""Conventions both packages share: pixel normalisation and parameter names.

Plain Python (no JAX, no TensorFlow), so the input pipeline uses them without importing models.
"""

from __future__ import annotations

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
MODALITIES = ("image", "audio", "text")
BATCH_KEYS = {"image": "image", "audio": "audio", "text": "tokens"}
# One letter each, for retrieval metrics: i2t, a2t, i2a.
INITIALS = {"image": "i", "audio": "a", "text": "t"}
# Before the names of per-modality metrics (zero-shot, linear probe); images' stay unprefixed.
METRIC_PREFIXES = {"image": "", "audio": "audio_"}


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
