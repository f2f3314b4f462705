"""Dataset specs, sources and the deterministic train / eval pipelines.

A spec names a dataset: `tfds:NAME[:SPLIT]` reads TFDS's prepared files from
`config.data.tfds_data_dir` (nothing is ever downloaded; the embedded `mmjax_shapes` is generated
on first use). Sources with random access (ArrayRecord) give a global order that depends only on
the seed: the example at global position `i` of the run is record
`index_shuffle(i mod N, seed=(seed, epoch))`, and the batch of step `s` covers positions
`[s * B, (s + 1) * B)`. Each process reads its own contiguous slice of that batch, so the global
batch at a step does not depend on the number of processes, and resuming at step `s` needs no
state beyond `s`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import preprocess, shapes, text

EMBEDDED_DATASET = "mmjax_shapes"
# Views of the embedded dataset's records under another name (same files, other examples).
EMBEDDED_VIEWS = {"mmjax_shapes_vqa": EMBEDDED_DATASET}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    kind: str
    name: str
    split: str

    @property
    def short_name(self) -> str:
        """For metric names: `eval/<short_name>/...`."""
        return self.name.split("/")[0] + ("" if self.split in ("test", "validation") else f"_{self.split}")


def parse_spec(spec: str, default_split: str) -> DatasetSpec:
    parts = spec.split(":")
    if parts[0] != "tfds" or len(parts) not in (2, 3) or not parts[1]:
        raise ValueError(
            f"Dataset spec {spec!r} is not of the form 'tfds:NAME[:SPLIT]', for example "
            "'tfds:mmjax_shapes:train'."
        )
    return DatasetSpec(kind=parts[0], name=parts[1], split=parts[2] if len(parts) == 3 else default_split)


@dataclasses.dataclass
class Adapter:
    """Maps one dataset's features to mmjax's: `image` (encoded), `captions` [K], `label`, `id`."""

    to_example: Callable[[dict], dict]
    class_names: tuple[str, ...] = ()
    prompt_templates: tuple[str, ...] = ()


def _shapes_vqa_example(features: dict) -> dict:
    """The question of type (id mod 5) about the image, its caption's answer as the label."""
    words = tf.strings.split(features["caption"])
    kind = tf.cast(features["id"] % len(shapes.VQA_QUESTIONS), tf.int32)
    # Caption: "{count} {size} {colour} {shape or plural} {position, 3 words}".
    answer_word = tf.gather(words, tf.gather([2, 3, 0, 4, 1], kind))
    position = tf.strings.reduce_join(words[4:], separator=" ")
    answer = tf.where(kind == 3, position, answer_word)
    keys = list(shapes.VQA_ANSWERS) + list(shapes.PLURALS.values())
    values = list(range(len(shapes.VQA_ANSWERS))) + [shapes.VQA_ANSWERS.index(s)
                                                     for s in shapes.PLURALS]
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(keys), tf.constant(values, tf.int64)), default_value=-1)
    question = tf.gather(tf.constant(shapes.VQA_QUESTIONS), kind)
    return {"image": features["image"], "captions": tf.reshape(question, [1]),
            "label": table.lookup(answer), "id": features["id"]}


ADAPTERS = {
    EMBEDDED_DATASET: Adapter(
        to_example=lambda f: {"image": f["image"], "captions": tf.reshape(f["caption"], [1]),
                              "label": f["label"], "id": f["id"]},
        class_names=shapes.CLASS_NAMES,
        prompt_templates=shapes.PROMPT_TEMPLATES,
    ),
    "mmjax_shapes_vqa": Adapter(to_example=_shapes_vqa_example),
}


class RandomAccessSource:
    """A TFDS split stored as ArrayRecord: fetches serialized records by index."""

    def __init__(self, spec: DatasetSpec, data_dir: str | None):
        base_name = spec.name.split("/")[0]
        stored_name = spec.name.replace(base_name, EMBEDDED_VIEWS.get(base_name, base_name), 1)
        if stored_name.split("/")[0] == EMBEDDED_DATASET:
            config = spec.name.split("/")[1] if "/" in spec.name else "default"
            builder = shapes.prepare(data_dir, config)
        else:
            builder = tfds.builder(spec.name, data_dir=data_dir)
            if not os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")):
                raise FileNotFoundError(
                    f"TFDS dataset {spec.name!r} is not prepared under {builder.data_dir}. mmjax never "
                    "downloads: prepare it with `tfds build` and point config.data.tfds_data_dir "
                    "(or TFDS_DATA_DIR) at its folder."
                )
        if base_name not in ADAPTERS:
            raise ValueError(f"No adapter for dataset {base_name!r}; datasets with adapters: "
                             f"{sorted(ADAPTERS)}. Add one in input_pipeline/datasets.py.")
        if spec.split not in builder.info.splits:
            raise ValueError(f"Dataset {spec.name!r} has no split {spec.split!r}; it has "
                             f"{sorted(builder.info.splits)}.")
        if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
            raise ValueError(
                f"Dataset {spec.name!r} is stored as {builder.info.file_format.value}; mmjax's "
                "deterministic pipeline needs random access. Re-prepare it with "
                "`tfds build --file_format=array_record`."
            )
        self.spec = spec
        self.builder = builder
        self.adapter = ADAPTERS[base_name]
        self.records = tfds.data_source(stored_name, split=spec.split,
                                        data_dir=data_dir).data_source
        self.num_examples = len(self.records)

    def fetch(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self.records.__getitems__([int(i) for i in indices]), dtype=object)

    def decode(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        # Images stay encoded here: preprocess.decode_rgb decodes them (and can reject bad ones).
        features = self.builder.info.features.deserialize_example(
            serialized, decoders={"image": tfds.decode.SkipDecoding()})
        return self.adapter.to_example(features)


def _fetch_and_decode(source: RandomAccessSource, dataset: tf.data.Dataset, process_fn):
    """[local_batch] record indices -> examples processed by `process_fn(example, position)`."""

    def fetch(positions, indices):
        serialized = tf.numpy_function(source.fetch, [indices], tf.string, stateful=False)
        return positions, tf.ensure_shape(serialized, indices.shape)

    dataset = dataset.map(fetch).unbatch()
    return dataset.map(lambda position, serialized: process_fn(source.decode(serialized), position),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def train_dataset(source: RandomAccessSource, tokenizer, *, global_batch_size: int,
                  image_size: int, seed: int, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1, normalization: str = "minus_one_one") -> tf.data.Dataset:
    """Endless batches for steps start_step, start_step + 1, ...; this process's slice of each."""
    if global_batch_size % process_count:
        raise ValueError(f"Global batch size {global_batch_size} is not divisible by the "
                         f"{process_count} processes.")
    local_batch_size = global_batch_size // process_count
    num_examples = source.num_examples
    if local_batch_size > num_examples:
        raise ValueError(f"The per-process batch ({local_batch_size}) is larger than the dataset "
                         f"{source.spec.name}:{source.spec.split} ({num_examples} examples).")
    tokenize = text.make_tokenize_fn(tokenizer)

    def local_positions(step):
        first = step * global_batch_size + process_index * local_batch_size
        positions = tf.ensure_shape(tf.range(first, first + local_batch_size, dtype=tf.int64),
                                    [local_batch_size])
        epochs, offsets = positions // num_examples, positions % num_examples
        # Each epoch is its own permutation, keyed by (seed, epoch); a local batch spans at most
        # two epochs (checked above). The raw op: TF 2.21's wrapper mis-pads vector seeds.
        def permute(epoch):
            return tf.raw_ops.RandomIndexShuffle(
                index=offsets, seed=tf.stack([tf.constant(seed, tf.int64), epoch, 0]),
                max_index=tf.constant(num_examples - 1, tf.int64), rounds=4)
        indices = tf.where(epochs == epochs[0], permute(epochs[0]), permute(epochs[0] + 1))
        return positions, indices

    def process(example, position):
        example_seed = tf.stack([tf.cast(seed, tf.int64), position])
        return {
            "image": preprocess.train_image(example["image"], image_size, example_seed,
                                            normalization),
            "tokens": tokenize(preprocess.sample_caption(example["captions"], example_seed)),
            "label": tf.cast(example["label"], tf.int32),
            "id": tf.cast(example["id"], tf.int64),
        }

    steps = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max // global_batch_size)
    dataset = _fetch_and_decode(source, steps.map(local_positions), process)
    return dataset.batch(local_batch_size, drop_remainder=True).prefetch(2)


def eval_dataset(source: RandomAccessSource, tokenizer, *, global_batch_size: int,
                 image_size: int, process_index: int = 0, process_count: int = 1,
                 normalization: str = "minus_one_one", max_examples: int | None = None):
    """One pass in order over the first `max_examples` (all if None); the last global batch is
    padded and marked by `valid` = False."""
    local_batch_size = global_batch_size // process_count
    num_examples = min(source.num_examples, max_examples or source.num_examples)
    num_batches = -(-num_examples // global_batch_size)
    tokenize = text.make_tokenize_fn(tokenizer)

    def local_positions(batch_index):
        first = batch_index * global_batch_size + process_index * local_batch_size
        positions = tf.range(first, first + local_batch_size, dtype=tf.int64)
        return positions, positions % num_examples

    def process(example, position):
        return {
            "image": preprocess.eval_image(example["image"], image_size, normalization),
            "tokens": tokenize(example["captions"][0]),
            "label": tf.cast(example["label"], tf.int32),
            "id": tf.cast(example["id"], tf.int64),
            "valid": position < num_examples,
        }

    batches = tf.data.Dataset.range(num_batches).map(local_positions)
    dataset = _fetch_and_decode(source, batches, process)
    return dataset.batch(local_batch_size, drop_remainder=True).prefetch(2)


def zeroshot_prompts(source: RandomAccessSource) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(class names, prompt templates) for zero-shot classification, or empty if unlabelled."""
    return source.adapter.class_names, source.adapter.prompt_templates

