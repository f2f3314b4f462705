"""Conventions both packages share: pixel normalisation and parameter names.

Plain Python (no JAX, no TensorFlow), so the input pipeline uses them without importing models.
"""

from __future__ import annotations

# How a model expects pixels: (mean, std) per channel in [0, 255] units; normalised = (x - mean) / std.
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
    """Whether a parameter name lies under one of `prefixes` ('image_tower', 'text_tower/encoder')."""
    return any(name == p or name.startswith(p.rstrip("/") + "/") for p in prefixes)
