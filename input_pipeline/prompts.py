"""Class names and prompt templates for zero-shot classification of the datasets CLIP papers
report, used automatically by TFDS name.

Class names come from the dataset's ClassLabel, with underscores read as spaces; labels that
are WordNet ids (imagenet2012, imagenet_v2, imagenet_a, imagenet_r, imagenet_sketch) read
through OpenAI's ImageNet names (imagenet_class_names.txt). Templates are those of the CLIP
paper's evaluation for each dataset (OpenAI's; imagenet_templates.txt holds the 80 for
ImageNet); other classification datasets get a short general ensemble.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re

_HERE = pathlib.Path(__file__).parent
WORDNET_ID = re.compile(r"n\d{8}")

# A short general ensemble for classification datasets without their own templates.
GENERAL_TEMPLATES = ("a photo of a {}.", "a bad photo of a {}.", "a photo of the large {}.",
                     "a photo of the small {}.", "a cropped photo of a {}.",
                     "a close-up photo of a {}.", "itap of a {}.", "art of the {}.")

# The CLIP paper's CIFAR-10 / CIFAR-100 ensemble (OpenAI's, data/prompts.md of openai/CLIP).
_CIFAR_TEMPLATES = tuple(
    f"a {quality}photo of {article} {size}{{}}."
    for article in ("a", "the")
    for quality, size in (("", ""), ("blurry ", ""), ("black and white ", ""),
                          ("low contrast ", ""), ("high contrast ", ""), ("bad ", ""),
                          ("good ", ""), ("", "small "), ("", "big "))
)


@functools.cache
def _read_lines(filename: str) -> tuple[str, ...]:
    lines = (_HERE / filename).read_text(encoding="utf-8").splitlines()
    return tuple(line for line in lines if line and not line.startswith("#"))


def imagenet_class_names() -> dict[str, str]:
    """WordNet id -> OpenAI's class name, for the 1,000 ImageNet-1k classes."""
    return dict(line.split("\t", 1) for line in _read_lines("imagenet_class_names.txt"))


def imagenet_templates() -> tuple[str, ...]:
    return _read_lines("imagenet_templates.txt")


@dataclasses.dataclass(frozen=True)
class ZeroShot:
    templates: tuple[str, ...]
    # Classify among the classes present in the split (ImageNet-A and -R label 200 of the 1,000
    # classes and are evaluated on those, as in the CLIP paper).
    present_classes_only: bool = False
    # The dataset's name in clip_benchmark's result files.
    clip_benchmark_name: str = ""


_IMAGENET = imagenet_templates()  # one small file, read once
DATASETS = {
    "imagenet2012": ZeroShot(_IMAGENET, clip_benchmark_name="imagenet1k"),
    "imagenet_v2": ZeroShot(_IMAGENET, clip_benchmark_name="imagenetv2"),
    "imagenet_sketch": ZeroShot(_IMAGENET, clip_benchmark_name="imagenet_sketch"),
    "imagenet_a": ZeroShot(_IMAGENET, present_classes_only=True, clip_benchmark_name="imagenet-a"),
    "imagenet_r": ZeroShot(_IMAGENET, present_classes_only=True, clip_benchmark_name="imagenet-r"),
    "cifar10": ZeroShot(_CIFAR_TEMPLATES, clip_benchmark_name="cifar10"),
    "cifar100": ZeroShot(_CIFAR_TEMPLATES, clip_benchmark_name="cifar100"),
    "food101": ZeroShot(("a photo of {}, a type of food.",), clip_benchmark_name="food101"),
    "oxford_iiit_pet": ZeroShot(("a photo of a {}, a type of pet.",),
                                clip_benchmark_name="pets"),
    "oxford_flowers102": ZeroShot(("a photo of a {}, a type of flower.",),
                                  clip_benchmark_name="flowers"),
    "coco_captions": ZeroShot((), clip_benchmark_name="mscoco_captions"),
}


def zeroshot(dataset: str) -> ZeroShot:
    """The zero-shot settings of a TFDS dataset (`name`, `name/config` or `name:split`)."""
    return DATASETS.get(dataset.split("/")[0].split(":")[0], ZeroShot(GENERAL_TEMPLATES))


def class_names(label_names) -> tuple[str, ...]:
    """Readable class names for a ClassLabel's names: WordNet ids through OpenAI's ImageNet
    names (any dataset labelled with them), underscores as spaces otherwise."""
    label_names = list(label_names)
    if label_names and all(WORDNET_ID.fullmatch(n) for n in label_names):
        table = imagenet_class_names()
        return tuple(table.get(n, n) for n in label_names)
    return tuple(n.replace("_", " ") for n in label_names)
