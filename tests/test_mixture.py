"""Weighted mixtures of training sources: shares, the same global batches for any number of
processes, exact resumption, and what a user is told when a mixture is wrong."""

import json
import os
import re
import signal

import numpy as np
import pytest
import tensorflow as tf
from test_checkpoints import run_until, start, train_losses
from test_data import VOCABULARY

from input_pipeline import datasets, mixture
from mmjax import text_tokenizers


def three_sources(tfds_dir, user_data) -> str:
    return (f"mix(tfds:mmjax_shapes/tiny:train=0.6, shards:{user_data['output']}:train=0.3, "
            "tfds:mmjax_shapes/tiny:test=0.1)")


def test_bad_mixtures_are_explained():
    for spec, message in [
            ("mix(tfds:a:train=0.5 tfds:b=0.5)", "holds two weights; separate the parts"),
            ("mix(tfds:a:train, tfds:b:train=1)", "needs a weight: SPEC=WEIGHT"),
            ("mix(tfds:a:train=0, tfds:b:train=1)", "weights must be positive"),
            ("mix(tfds:a:train=1)", "two or more different sources"),
            ("mix(tfds:a:train=1, tfds:a:train=2)", "two or more different sources")]:
        with pytest.raises(ValueError, match=message):
            mixture.parse_mixture(spec)


def test_block_counts_are_the_weights_shares_of_a_block():
    assert list(mixture.block_counts([0.6, 0.3, 0.1])) == [600, 300, 100]
    assert list(mixture.block_counts([1, 1, 1])) == [334, 333, 333]
    assert list(mixture.block_counts([1e6, 1, 1])) == [998, 1, 1]  # every source is read


def test_shares_order_and_processes(tfds_dir, user_data):
    """Over 10,000 positions each source's share is its weight within 1 %; the order is the
    seed's; two processes' slices make the one process's global batches; and each source keeps
    its own order (the first epoch of a source is a permutation of it)."""
    source = mixture.open_mixture(three_sources(tfds_dir, user_data), tfds_dir)
    which, own = source.source_of(tf.range(10_000, dtype=tf.int64), seed=3)
    shares = np.bincount(which.numpy(), minlength=3) / 10_000
    np.testing.assert_allclose(shares, [0.6, 0.3, 0.1], atol=0.01)
    assert source.counts_before(10_000, 3) == dict(zip(source.names, [6000, 3000, 1000]))
    assert sum(source.counts_before(1234, 3).values()) == 1234

    records = source.records_at(tf.range(10_000, dtype=tf.int64), 3, 0).numpy()
    first_epoch = records[(which.numpy() == 0) & (own.numpy() < 512)]
    assert sorted(first_epoch) == list(range(512))  # its own permutation of its 512 records
    assert not np.array_equal(records, source.records_at(tf.range(10_000, dtype=tf.int64), 4,
                                                         0).numpy())

    tokenizer = text_tokenizers.WordTokenizer(12, VOCABULARY)

    def ids(**kwargs):
        dataset = datasets.train_dataset(source, tokenizer, global_batch_size=16, image_size=16,
                                         seed=3, **kwargs)
        return np.stack([b["id"] for b, _ in zip(dataset.as_numpy_iterator(), range(12))])

    one = ids()
    halves = [ids(process_index=p, process_count=2) for p in (0, 1)]
    np.testing.assert_array_equal(one, np.concatenate(halves, axis=1))
    np.testing.assert_array_equal(ids(start_position=7 * 16)[:5], one[7:])
    # Every source appears, and the corrupt user images were replaced by their fallbacks.
    parts = np.searchsorted(source.offsets[1:], one.ravel(), side="right")
    assert set(parts) == {0, 1, 2}


def test_a_sigkilled_mixture_run_resumes_bitwise(tfds_dir, user_data, tmp_path):
    """Killed after step 7 (step 4's checkpoint is complete, step 6's requested) and run again
    with the same command: the losses equal an uninterrupted run's, and each source's count is
    logged."""
    spec = three_sources(tfds_dir, user_data)
    reference, crashed = str(tmp_path / "reference"), str(tmp_path / "crashed")
    # The user's captions have words beyond the shapes vocabulary: bytes read them all.
    flags = (f"--config.data.train={spec}", "--config.checkpoint_every_steps=2",
             "--config.tokenizer.name=bytes", "--config.tokenizer.context_length=64",
             "--config.evals=()")  # losses are what is compared: no evaluation at the end
    whole = start(reference, tfds_dir, *flags, devices=1)  # alongside the one to be killed
    process = start(crashed, tfds_dir, *flags, devices=1)
    run_until(process, "step      7/")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    process = start(crashed, tfds_dir, *flags, devices=1)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output[-3000:]
    assert re.search(r"Resuming from .* at step [46]\.", output), output[-3000:]
    reference_output = whole.communicate(timeout=300)[0]
    assert whole.returncode == 0, reference_output[-3000:]
    assert train_losses(crashed) == train_losses(reference)  # bitwise

    with open(os.path.join(reference, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f if '"data/source/' in line][-1]
    counts = {k.removeprefix("data/source/"): v for k, v in last.items()
              if k.startswith("data/source/")}
    assert sum(counts.values()) == 8 * 16 and len(counts) == 3, counts
