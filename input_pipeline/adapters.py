"""How a dataset's stored features become mmjax's example: `image`, `audio` or `video` (encoded),
`captions` [K], `label`, `id`. The embedded dataset and its VQA view have their own adapters;
other TFDS datasets get one inferred from their features (captions, a caption, or class labels)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import prompts
from input_pipeline.generated import clips, shapes, sounds, triples

EMBEDDED_DATASET = "mmjax_shapes"
# The datasets generated on first use (never downloaded), by name: their builders' prepare.
GENERATED_DATASETS = {EMBEDDED_DATASET: shapes.prepare, "mmjax_sounds": sounds.prepare,
                      "mmjax_triples": triples.prepare, "mmjax_clips": clips.prepare}


@dataclasses.dataclass
class Adapter:
    """Maps one dataset's features to mmjax's: `image` (encoded), `captions` [K], `label`, `id`.

    `to_example(features, index)`: `index` is the record's index in its split (an id for datasets
    that have none).
    """

    to_example: Callable[[dict, tf.Tensor], dict]
    class_names: tuple[str, ...] = ()
    prompt_templates: tuple[str, ...] = ()
    # Zero-shot picks among the classes present in the split only (ImageNet-A, -R).
    present_classes_only: bool = False


def captioned(*media: str, label: str = "label"):
    """`to_example` of a generated dataset: its `media` entries, its one caption, the class
    `label` and its id."""
    return lambda f, index: {**{m: f[m] for m in media}, "label": f[label], "id": f["id"],
                             "captions": tf.reshape(f["caption"], [1])}


ADAPTERS = {
    EMBEDDED_DATASET: Adapter(captioned("image"), shapes.CLASS_NAMES, shapes.PROMPT_TEMPLATES),
    "mmjax_shapes_vqa": Adapter(to_example=shapes.vqa_example),
    "mmjax_sounds": Adapter(captioned("audio"), sounds.CLASS_NAMES, sounds.PROMPT_TEMPLATES),
    "mmjax_triples": Adapter(captioned("image", "audio"), triples.CLASS_NAMES,
                             triples.PROMPT_TEMPLATES),
    "mmjax_clips": Adapter(captioned("video"), clips.CLASS_NAMES, clips.PROMPT_TEMPLATES),
    # The same clips classified by what is in them instead of what it does.
    "mmjax_clips_objects": Adapter(captioned("video", label="object_label"), clips.OBJECT_NAMES,
                                   clips.OBJECT_PROMPT_TEMPLATES),
}


def infer_adapter(name: str, features: tfds.features.FeaturesDict) -> Adapter:
    """An adapter from a TFDS dataset's features, for datasets not in ADAPTERS:

    - several captions, coco_captions style: `captions` a Sequence with a `text` feature;
    - one caption: a Text feature `caption` (or `text`);
    - image classification: a ClassLabel `label`; the caption is a prompt with the class name
      (for training) and zero-shot uses the class names with the dataset's prompt templates
      (input_pipeline/prompts.py: OpenAI's names and templates for the datasets CLIP papers
      report, WordNet-id labels read as ImageNet class names).
    """
    if "image" not in features:
        raise ValueError(
            f"TFDS dataset {name!r} has no `image` feature (it has "
            f"{sorted(features.keys())}); add an adapter in input_pipeline/adapters.py."
        )
    label = features["label"] if "label" in features else None
    class_names = prompts.class_names(label.names) if isinstance(
        label, tfds.features.ClassLabel) else ()
    zeroshot = prompts.zeroshot(name)

    def common(f, index):
        return {
            "image": f["image"],
            "label": tf.cast(f["label"], tf.int64) if class_names else tf.constant(-1, tf.int64),
            "id": tf.cast(index, tf.int64),
        }

    captions = features["captions"] if "captions" in features else None
    if isinstance(captions, tfds.features.Sequence) and "text" in getattr(captions, "feature", {}):
        to_example = lambda f, index: {**common(f, index), "captions": f["captions"]["text"]}
    elif "caption" in features or "text" in features:
        key = "caption" if "caption" in features else "text"
        to_example = lambda f, index: {**common(f, index), "captions": tf.reshape(f[key], [1])}
    elif class_names:
        # Training captions: the plain prompt where the dataset's ensemble has it.
        template = ("a photo of a {}." if "a photo of a {}." in zeroshot.templates
                    else zeroshot.templates[0])
        captions = tf.constant([template.format(n) for n in class_names])
        to_example = lambda f, index: {**common(f, index), "captions": tf.reshape(
            tf.gather(captions, f["label"]), [1])}
    else:
        raise ValueError(f"TFDS dataset {name!r} has neither captions nor a ClassLabel `label` "
                         f"(features: {sorted(features.keys())}); add an adapter in "
                         "input_pipeline/adapters.py.")
    return Adapter(to_example, class_names, zeroshot.templates if class_names else (),
                   present_classes_only=zeroshot.present_classes_only)
