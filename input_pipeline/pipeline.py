"""What the trainer asks of the input side: this process's train batches and the eval set."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf

from input_pipeline import datasets

# TensorFlow must not take GPU or TPU memory that JAX needs.
tf.config.set_visible_devices([], "GPU")


def _data_dir(config) -> str | None:
    return config.data.get("tfds_data_dir") or None


def train_batches(config, tokenizer, *, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    source = datasets.RandomAccessSource(datasets.parse_spec(config.data.train, "train"),
                                         _data_dir(config))
    dataset = datasets.train_dataset(
        source, tokenizer, global_batch_size=config.batch_size, image_size=config.data.image_size,
        seed=config.seed, start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count(), normalization=config.data.normalization)
    return dataset.as_numpy_iterator()


@dataclasses.dataclass
class EvalData:
    name: str
    dataset: tf.data.Dataset
    class_names: tuple[str, ...]
    prompt_templates: tuple[str, ...]
    num_examples: int

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        return self.dataset.as_numpy_iterator()


def eval_data(config, tokenizer) -> EvalData:
    spec = datasets.parse_spec(config.data.eval, "test")
    source = datasets.RandomAccessSource(spec, _data_dir(config))
    batch_size = config.data.eval_batch_size
    if batch_size % jax.process_count():
        raise ValueError(f"config.data.eval_batch_size {batch_size} is not divisible by the "
                         f"{jax.process_count()} processes.")
    dataset = datasets.eval_dataset(
        source, tokenizer, global_batch_size=batch_size, image_size=config.data.image_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        normalization=config.data.normalization)
    class_names, templates = datasets.zeroshot_prompts(source)
    return EvalData(spec.short_name, dataset.cache(), class_names, templates, source.num_examples)
