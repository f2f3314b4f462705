"""Weighted mixtures of training sources: `mix(SPEC=WEIGHT, SPEC=WEIGHT, ...)`.

    --config.data.train='mix(tfds:mmjax_shapes:train=0.6, shards:gs://b/cc12m:train=0.3,
                             shards:/data/laion:train=0.1)'

The mixture keeps the single source's guarantee: the example at global position `i` is a
function of the seed and `i` alone, so resuming needs only the position (in the checkpoint) and
the global batch is the same for any number of processes. Positions go in blocks of
`BLOCK` = 1,000; each block holds exactly each source's share of them (largest remainders),
in an order permuted by (seed, block). Position `i` of source `s`'s share is that source's own
position (its own epochs and permutations, as when it is read alone). So over any 1,000
consecutive positions each source's share is its weight to within 0.1 %, and a small source
simply repeats its epochs sooner.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from input_pipeline import datasets
from input_pipeline.adapters import Adapter
from mmjax.conventions import is_mixture, parse_mixture

BLOCK = 1000
# The permutation that orders a block's slots, apart from every source's record permutations.
_SLOT_STREAM = 1 << 20


def block_counts(weights) -> np.ndarray:
    """Each source's positions in a block of BLOCK: the weights' shares, rounded by largest
    remainders so they sum to BLOCK, at least one each."""
    shares = np.asarray(weights, np.float64) / np.sum(weights) * BLOCK
    counts = np.maximum(np.floor(shares).astype(np.int64), 1)
    for i in np.argsort(-(shares - np.floor(shares)), kind="stable"):
        if counts.sum() >= BLOCK:
            break
        counts[i] += 1
    while counts.sum() > BLOCK:  # minimums of 1 took too many: from the largest
        counts[np.argmax(counts)] -= 1
    return counts


class MixtureSource(datasets.RecordSource):
    """Several sources as one: record indices run through each source's in turn."""

    def __init__(self, spec: str, parts: list[tuple[datasets.RecordSource, float]]):
        self.sources = [source for source, _ in parts]
        self.counts = block_counts([w for _, w in parts])
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])  # slots of each source
        self.offsets = np.concatenate([[0], np.cumsum([s.num_examples for s in self.sources])])
        self.num_examples = int(self.offsets[-1])
        self.spec = datasets.DatasetSpec("mix", spec.strip(), "train")
        names = [s.spec.short_name for s in self.sources]
        self.names = [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]
        tokenized = [s.tokenized_with for s in self.sources]
        self.tokenized_with = tokenized[0] if all(t == tokenized[0] for t in tokenized) else None
        self.adapter = Adapter(to_example=None)  # decode() reads each source's own
        self.keys = self._common_keys()

    def source_of(self, positions: tf.Tensor, seed: int) -> tuple[tf.Tensor, tf.Tensor]:
        """In-graph: (the source, the source's own position) of each global position."""
        blocks, offsets = positions // BLOCK, positions % BLOCK
        slots = datasets.permute(offsets, seed, blocks, BLOCK, _SLOT_STREAM)
        which = tf.searchsorted(tf.constant(self.starts[1:-1]), slots, side="right")
        counts, starts = tf.constant(self.counts), tf.constant(self.starts[:-1])
        return which, (blocks * tf.gather(counts, which) + slots - tf.gather(starts, which))

    def records_at(self, positions: tf.Tensor, seed: int, attempt: int) -> tf.Tensor:
        which, own = self.source_of(positions, seed)
        records = tf.zeros_like(positions)
        for i, source in enumerate(self.sources):
            # Each source's own order, apart from the others' (two of one size differ).
            mine = source.records_at(own, seed + 7919 * (i + 1), attempt) + int(self.offsets[i])
            records = tf.where(tf.equal(which, i), mine, records)
        return records

    def counts_before(self, position: int, seed: int) -> dict[str, int]:
        """Each source's examples among global positions [0, position)."""
        full, rest = divmod(int(position), BLOCK)
        seen = self.counts * full
        if rest:
            which, _ = self.source_of(tf.range(full * BLOCK, full * BLOCK + rest, dtype=tf.int64),
                                      seed)
            seen = seen + np.bincount(which.numpy(), minlength=len(self.sources))
        return dict(zip(self.names, (int(n) for n in seen)))

    def _common_keys(self) -> list[str]:
        """The example keys every source's first record decodes to (an empty image or sound is
        absent), with `caption_tokens` only where all were tokenized alike."""
        common = None
        for source in self.sources:
            record = tf.constant(source.fetch(np.array([0]))[0])
            example = source.decode(record, tf.constant(0, tf.int64))
            present = {k for k, v in example.items()
                       if not (v.dtype == tf.string and v.shape.rank == 0 and not len(v.numpy()))}
            common = present if common is None else common & present
        keys = [k for k in ("image", "audio", "captions") if k in common]
        if self.tokenized_with and "caption_tokens" in common:
            keys.append("caption_tokens")
        return keys

    def _part(self, indices: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets[1:], indices, side="right")

    def fetch(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, np.int64)
        which, out = self._part(indices), np.empty(indices.shape, dtype=object)
        for i, source in enumerate(self.sources):
            chosen = which == i
            if chosen.any():
                out[chosen] = source.fetch(indices[chosen] - self.offsets[i])
        return out

    def decode(self, serialized: tf.Tensor, index: tf.Tensor) -> dict[str, tf.Tensor]:
        """What every source's examples hold (image or audio, captions, label), and the record's
        mixture index as its id."""
        which = tf.searchsorted(tf.constant(self.offsets[1:]), index[None], side="right")[0]

        def branch(i):
            def decoded():
                example = self.sources[i].decode(serialized, index - int(self.offsets[i]))
                return {**{key: example[key] for key in self.keys},
                        "label": tf.cast(example["label"], tf.int64)}
            return decoded

        example = tf.switch_case(tf.cast(which, tf.int32),
                                 [branch(i) for i in range(len(self.sources))])
        return {**example, "id": tf.cast(index, tf.int64)}

    def describe(self, index: int) -> str:
        i = int(self._part(np.asarray([index]))[0])
        return f"{self.names[i]}: {self.sources[i].describe(index - int(self.offsets[i]))}"


def open_mixture(spec: str, data_dir: str | None) -> MixtureSource:
    parts = [(datasets.open_source(datasets.parse_spec(s, "train"), data_dir), w)
             for s, w in parse_mixture(spec)]
    return MixtureSource(spec, parts)


def open_spec(spec: str, default_split: str, data_dir: str | None) -> datasets.RecordSource:
    """The source a data spec names: one dataset, or a mixture (config.data.train's only)."""
    if is_mixture(spec):
        return open_mixture(spec, data_dir)
    return datasets.open_source(datasets.parse_spec(spec, default_split), data_dir)
