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
    # Labelled training examples for the linear probe (config.evals has "linear_probe").
    probe: "EvalData | None" = None

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        return self.dataset.as_numpy_iterator()


def eval_data(config, tokenizer, spec: str | None = None, default_split: str = "test",
              max_examples: int | None = None) -> EvalData:
    """The eval split (config.data.eval), or another `spec`'s first `max_examples` (the
    linear probe's training features)."""
    spec = datasets.parse_spec(spec or config.data.eval, default_split)
    source = datasets.RandomAccessSource(spec, _data_dir(config))
    batch_size = config.data.eval_batch_size
    if batch_size % jax.process_count():
        raise ValueError(f"config.data.eval_batch_size {batch_size} is not divisible by the "
                         f"{jax.process_count()} processes.")
    dataset = datasets.eval_dataset(
        source, tokenizer, global_batch_size=batch_size, image_size=config.data.image_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        normalization=config.data.normalization, max_examples=max_examples)
    class_names, templates = datasets.zeroshot_prompts(source)
    probe = None
    if "linear_probe" in config.evals and max_examples is None:
        probe = eval_data(config, tokenizer, spec=config.data.get("probe_train") or
                          config.data.train, default_split="train",
                          max_examples=config.data.get("probe_examples", 5000))
    return EvalData(spec.short_name, dataset.cache(), class_names, templates,
                    min(source.num_examples, max_examples or source.num_examples), probe)
