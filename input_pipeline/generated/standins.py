"""Stand-ins for TFDS datasets that mmjax never downloads: the real builder's feature spec,
splits, version and config, filled with generated examples and written as ArrayRecord, so that
`tfds:imagenet2012:validation` or `tfds:coco_captions:test` read them exactly as they would read
the prepared real ones (WordNet-id labels, five captions per image, the Karpathy splits).

For trying the evaluation suite without the data, and for the tests:

    python -m input_pipeline.generated.standins --data_dir=/tmp/standins

The images are random noise and the captions word salad: numbers measured on these say nothing
about a model; they show that the evaluation runs and what it writes.
"""

from __future__ import annotations

import argparse

import numpy as np
import tensorflow_datasets as tfds

_WORDS = ("a", "man", "woman", "dog", "cat", "red", "blue", "car", "tree", "on", "the", "street",
          "table", "with", "two", "small", "large", "near", "water", "field")


def _image(rng, size: int) -> np.ndarray:
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def _caption(rng) -> str:
    return " ".join(rng.choice(_WORDS, rng.integers(5, 10)))


def _imagenet_examples(split: str, count: int, image_size: int):
    rng = np.random.default_rng(["train", "validation"].index(split))
    for i in range(count):
        yield f"{split}_{i}", {"image": _image(rng, image_size), "label": int(i * 37 % 1000),
                               "file_name": f"ILSVRC2012_{split}_{i:08d}.JPEG"}


_COCO_SPLITS = ("train", "val", "test", "restval")


def _coco_examples(split: str, count: int, image_size: int):
    rng = np.random.default_rng(10 + _COCO_SPLITS.index(split))
    for i in range(count):
        image_id = 1000 * _COCO_SPLITS.index(split) + i
        yield image_id, {
            "image": _image(rng, image_size),
            "image/filename": f"COCO_val2014_{image_id:012d}.jpg",
            "image/id": image_id,
            "objects": [],
            "captions": [{"text": _caption(rng), "id": 5 * image_id + k} for k in range(5)],
        }


def _stand_in(real_name: str, generate, split_sizes: dict[str, int], image_size: int):
    real = tfds.builder_cls(real_name)

    class StandIn(real, skip_registration=True):
        name = real.name

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing is downloaded
            return {split: self._generate_examples(split, count)
                    for split, count in split_sizes.items()}

        def _generate_examples(self, split, count):
            return generate(split, count, image_size)

    return StandIn


def build(data_dir: str, *, imagenet_sizes: dict[str, int] | None = None,
          coco_sizes: dict[str, int] | None = None, image_size: int = 32) -> None:
    """Writes the imagenet2012 and coco_captions stand-ins under `data_dir` (TFDS layout)."""
    imagenet_sizes = imagenet_sizes or {"train": 64, "validation": 50}
    coco_sizes = coco_sizes or {"train": 16, "val": 8, "test": 40, "restval": 8}
    for real_name, generate, sizes in (("imagenet2012", _imagenet_examples, imagenet_sizes),
                                       ("coco_captions", _coco_examples, coco_sizes)):
        builder = _stand_in(real_name, generate, sizes, image_size)(
            data_dir=data_dir, file_format="array_record")
        builder.download_and_prepare()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="TFDS data dir to write into")
    build(parser.parse_args().data_dir)


if __name__ == "__main__":
    main()
