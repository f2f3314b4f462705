"""Dataset specs, sources and the deterministic train / eval pipelines.

A spec names a dataset: `tfds:NAME[:SPLIT]` reads TFDS's prepared files from
`config.data.tfds_data_dir` (nothing is ever downloaded; the embedded `mmjax_shapes` is generated
on first use); `shards:DIR[:SPLIT]` reads mmjax shards (input_pipeline/convert/make_shards.py).

Both have random access (ArrayRecord), which gives a global order that depends only on the seed:
the example at global position `i` of the run is record `index_shuffle(i mod N, seed=(seed,
epoch))`, and a run that starts at position `p` with global batch `B` reads positions
`[p + s * B, p + (s + 1) * B)` at its step `s`. Each process reads its own contiguous slice of
that batch, so the global batch does not depend on the number of processes, and resuming needs
only the position (saved with each checkpoint).

Bad examples (undecodable, truncated or zero-sized images, no non-empty caption) never stop the
run: the position takes the next of a few fallback records, each a function of the position
alone (so the substitution, too, is the same for any number of processes), and the batch
reports how many records each position skipped and which.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import preprocess, shards, text
from input_pipeline.adapters import (
    ADAPTERS,
    EMBEDDED_DATASET,
    GENERATED_DATASETS,
    Adapter,
    infer_adapter,
)
from mmjax import conventions, paths, text_tokenizers

# Views of the embedded dataset's records under another name (same files, other examples).
EMBEDDED_VIEWS = {"mmjax_shapes_vqa": EMBEDDED_DATASET, "mmjax_clips_objects": "mmjax_clips"}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    kind: str
    name: str
    split: str

    @property
    def dataset(self) -> str:
        """The TFDS name without its config (mmjax_shapes), or the shards' folder name."""
        return paths.basename(self.name) if self.kind == "shards" else self.name.split("/")[0]

    @property
    def short_name(self) -> str:
        """For metric names: `eval/<short_name>/...`."""
        return self.dataset + ("" if self.split in ("test", "validation") else f"_{self.split}")


def parse_spec(spec: str, default_split: str) -> DatasetSpec:
    kind, _, rest = spec.partition(":")
    scheme, separator, location = rest.partition("://")  # shards:gs://bucket/dir:train
    if not separator:
        scheme, location = "", rest
    name, _, split = location.partition(":")
    if conventions.is_mixture(spec):
        raise ValueError(f"Dataset spec {spec!r}: a mixture is for config.data.train only; "
                         "evaluate on one dataset.")
    if kind not in ("tfds", "shards") or not name or ":" in split or (scheme and kind != "shards"):
        raise ValueError(
            f"Dataset spec {spec!r} is not of the form 'tfds:NAME[:SPLIT]' or "
            "'shards:DIR[:SPLIT]', for example 'tfds:mmjax_shapes:train', "
            "'shards:/data/my_shards:train' or 'shards:gs://bucket/my_shards:train'."
        )
    return DatasetSpec(kind=kind, name=scheme + separator + name, split=split or default_split)


class RecordSource:
    """Serialized records by index (`records` has __getitems__) and how to read one: `parse`
    gives the stored features, the adapter maps them to mmjax's example."""

    spec: DatasetSpec
    adapter: Adapter
    num_examples: int
    tokenized_with: dict | None = None  # shards tokenized at conversion: that tokenizer

    def stored_tokens(self, tokenizer) -> bool:
        """Whether examples carry `caption_tokens` that `tokenizer` would give."""
        return self.tokenized_with is not None and (
            self.tokenized_with == text_tokenizers.identity(tokenizer))

    def fetch(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self.records.__getitems__([int(i) for i in indices]), dtype=object)

    def records_at(self, positions: tf.Tensor, seed: int, attempt: int) -> tf.Tensor:
        """In-graph: the record at each global position (int64 [n]), or its fallback number
        `attempt`. Each epoch is its own permutation, keyed by (seed, epoch); fallback k of a
        position is its record in permutation k."""
        return permute(positions % self.num_examples, seed, positions // self.num_examples,
                        self.num_examples, attempt)

    def decode(self, serialized: tf.Tensor, index: tf.Tensor) -> dict[str, tf.Tensor]:
        # Images stay encoded here: the preprocessing ops decode them (and can reject bad ones).
        return self.adapter.to_example(self.parse(serialized), index)


def fetch_records(source: RecordSource, indices: tf.Tensor) -> tf.Tensor:
    """In-graph: serialized records at `indices` (any shape)."""
    return tf.ensure_shape(tf.numpy_function(source.fetch, [indices], tf.string, stateful=False),
                           indices.shape)


class TfdsSource(RecordSource):
    """A TFDS split stored as ArrayRecord."""

    def __init__(self, spec: DatasetSpec, data_dir: str | None):
        base_name = spec.name.split("/")[0]
        stored_name = spec.name.replace(base_name, EMBEDDED_VIEWS.get(base_name, base_name), 1)
        if stored_name.split("/")[0] in GENERATED_DATASETS:
            config = spec.name.split("/")[1] if "/" in spec.name else "default"
            builder = GENERATED_DATASETS[stored_name.split("/")[0]](data_dir, config)
        else:
            try:
                builder = tfds.builder(spec.name, data_dir=data_dir)
            except tfds.core.registered.DatasetNotFoundError:
                builder = None
            if builder is None or not paths.exists(
                    paths.join(builder.data_dir, "dataset_info.json")):
                where = builder.data_dir if builder is not None else (data_dir or "TFDS_DATA_DIR")
                raise FileNotFoundError(
                    f"TFDS dataset {spec.name!r} is not prepared under {where}. mmjax never "
                    "downloads: prepare it with `tfds build --file_format=array_record` and point "
                    "config.data.tfds_data_dir (or TFDS_DATA_DIR) at its folder."
                )
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
        self.adapter = ADAPTERS.get(base_name) or infer_adapter(spec.name, builder.info.features)
        self.records = tfds.data_source(stored_name, split=spec.split,
                                        data_dir=data_dir).data_source
        self.num_examples = len(self.records)

    def parse(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        features = self.builder.info.features
        return features.deserialize_example(serialized, decoders={
            "image": tfds.decode.SkipDecoding()} if "image" in features else None)

    def describe(self, index: int) -> str:
        return f"record {index} of {self.spec.name}:{self.spec.split}"


class ShardsSource(RecordSource):
    """mmjax shards (input_pipeline/shards.py): a split of `shards:DIR[:SPLIT]`."""

    def __init__(self, spec: DatasetSpec):
        self.spec = spec
        self.records = shards.ShardsReader(spec.name, spec.split)
        self.num_examples = len(self.records)
        self.tokenized_with = self.records.tokenized_with
        # Records carry their id (and, tokenized, their captions' ids); no class names.
        keys = ("image", "audio", "video", "captions", "label", "id") + (
            ("caption_tokens",) if self.tokenized_with else ())
        self.adapter = Adapter(to_example=lambda record, index: {k: record[k] for k in keys})

    def parse(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return shards.decode_record(serialized, (self.tokenized_with or {}).get("context_length"))

    def describe(self, index: int) -> str:
        key = shards.record_key(self.fetch(np.array([index]))[0])
        return f"id {index} ({key})"


class SubsetSource(RecordSource):
    """The records of another source whose stored boolean feature `where` is true ("not NAME":
    false), in their order; found by reading every record once (meant for eval splits)."""

    def __init__(self, source: RecordSource, where: str):
        negate = where.startswith("not ")
        feature = where.removeprefix("not ").strip()
        kept = []
        for start in range(0, source.num_examples, 1024):
            indices = np.arange(start, min(start + 1024, source.num_examples))
            for index, record in zip(indices, source.fetch(indices)):
                stored = source.parse(tf.constant(record))
                if feature not in stored:
                    raise ValueError(f"{source.spec.name}:{source.spec.split} has no feature "
                                     f"{feature!r} to select examples by (it has "
                                     f"{sorted(stored)}).")
                if bool(stored[feature].numpy()) != negate:
                    kept.append(index)
        self.indices = np.asarray(kept, np.int64)
        self.source, self.spec, self.adapter = source, source.spec, source.adapter
        self.tokenized_with = source.tokenized_with
        self.num_examples = len(kept)

    def fetch(self, indices: np.ndarray) -> np.ndarray:
        return self.source.fetch(self.indices[np.asarray(indices, np.int64)])

    def parse(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.source.parse(serialized)

    def describe(self, index: int) -> str:
        return self.source.describe(int(self.indices[index]))


def open_source(spec: DatasetSpec, data_dir: str | None,
                where: str | None = None) -> RecordSource:
    source = ShardsSource(spec) if spec.kind == "shards" else TfdsSource(spec, data_dir)
    return SubsetSource(source, where) if where else source


# Records tried per position before giving up: the position's own and fallbacks.
MAX_ATTEMPTS = 8


def permute(offsets, seed: int, epochs, num_examples: int, alternative: int = 0):
    """offsets [n] -> their places in the permutation of range(num_examples) keyed by (seed,
    epoch, alternative), one epoch per offset."""
    epochs = tf.cast(epochs, tf.int64)
    # The raw op, with a seed per index: TF 2.21's wrapper mis-pads vector seeds.
    return tf.raw_ops.RandomIndexShuffle(
        index=offsets, seed=tf.stack([tf.fill(tf.shape(epochs), tf.constant(seed, tf.int64)),
                                      epochs, tf.fill(tf.shape(epochs),
                                                      tf.constant(alternative, tf.int64))],
                                     axis=-1),
        max_index=tf.constant(num_examples - 1, tf.int64), rounds=4)


def _robust_map(source: RecordSource, dataset: tf.data.Dataset, process_fn,
                fallback_fn) -> tf.data.Dataset:
    """(positions [b], candidates [b, K]) -> one processed example per position, in order.

    `process_fn(example, position, attempt, candidates)` builds the output; a record whose
    processing raises is skipped for the next candidate; when all fail, `fallback_fn(...)` stands
    in (with attempt = K), so every position yields exactly one element and order is kept.
    """
    def fetch(positions, candidates):
        return positions, candidates, fetch_records(source, candidates[:, 0])

    def one_position(position, candidates, serialized):
        num_candidates = candidates.shape[0]
        tries = tf.data.Dataset.from_tensors((tf.constant(0, tf.int64), serialized))
        if num_candidates > 1:
            tries = tries.concatenate(tf.data.Dataset.range(1, num_candidates).map(
                lambda k: (k, fetch_records(source, candidates[k][None])[0])))
        processed = tries.map(lambda k, record: process_fn(
            source.decode(record, candidates[k]), position, k, candidates)).ignore_errors(
                log_warning=True)
        stand_in = tf.data.Dataset.from_tensors(fallback_fn(position, candidates))
        return processed.concatenate(stand_in).take(1)

    dataset = dataset.map(fetch).unbatch()
    # Each position's own little dataset, several in flight; deterministic, and each yields one
    # element, so the output order is the input order.
    return dataset.interleave(one_position, cycle_length=16, block_length=1,
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _skip_record(attempt, candidates):
    """Which records a position skipped: the first `attempt` candidates, -1 for the rest."""
    return tf.where(tf.range(tf.shape(candidates)[0], dtype=tf.int64) < attempt, candidates,
                    tf.constant(-1, tf.int64))


def _caption_ids(source: RecordSource, tokenizer):
    """(example, caption index) -> that caption's ids: read from tokenized shards (no tokenizer
    in the loop), else tokenized here."""
    if source.stored_tokens(tokenizer):
        return lambda example, index: example["caption_tokens"][index]
    tokenize = text.make_tokenize_fn(tokenizer)
    return lambda example, index: tokenize(example["captions"][index])


def train_dataset(source: RecordSource, tokenizer, *, global_batch_size: int, image_size: int,
                  seed: int, start_position: int = 0, process_index: int = 0,
                  process_count: int = 1, normalization: str = "minus_one_one",
                  preprocess_ops: str = "decode|resize", max_attempts: int = MAX_ATTEMPTS,
                  media: dict[str, preprocess.Media] | None = None) -> tf.data.Dataset:
    """Endless batches of positions start_position + s * B, ...; this process's slice of each.

    Besides the model inputs (tokens, label, id and each of `media`'s entries: by default the
    image through `preprocess_ops`) each row has `attempt` (records skipped at its position)
    and `skipped` [max_attempts] (their record indices, -1 padded).
    """
    if global_batch_size % process_count:
        raise ValueError(f"Global batch size {global_batch_size} is not divisible by the "
                         f"{process_count} processes.")
    local_batch_size = global_batch_size // process_count
    if local_batch_size > source.num_examples:
        raise ValueError(f"The per-process batch ({local_batch_size}) is larger than the dataset "
                         f"{source.spec.name}:{source.spec.split} ({source.num_examples} "
                         "examples).")
    caption_ids = _caption_ids(source, tokenizer)
    media = media if media is not None else {"image": preprocess.image_media(
        preprocess_ops, image_size=image_size, normalization=normalization)}

    def local_positions(step):
        first = start_position + step * global_batch_size + process_index * local_batch_size
        positions = tf.ensure_shape(tf.range(first, first + local_batch_size, dtype=tf.int64),
                                    [local_batch_size])
        candidates = tf.stack([source.records_at(positions, seed, k)
                               for k in range(max_attempts)], axis=1)
        return positions, candidates

    def process(example, position, attempt, candidates):
        example_seed = tf.stack([tf.cast(seed, tf.int64), position])
        choice = preprocess.caption_choice(example["captions"], example_seed)
        return {
            **{key: entry(example[key], example_seed) for key, entry in media.items()},
            "tokens": caption_ids(example, choice),
            "label": tf.cast(example["label"], tf.int32),
            "id": tf.cast(example["id"], tf.int64),
            "attempt": attempt,
            "skipped": _skip_record(attempt, candidates),
        }

    def stand_in(position, candidates):
        return {**{key: entry.stand_in() for key, entry in media.items()},
                "tokens": tf.zeros([tokenizer.context_length], tf.int32),
                "label": tf.constant(-1), "id": tf.constant(-1, tf.int64),
                "attempt": tf.constant(max_attempts, tf.int64), "skipped": candidates}

    steps = tf.data.Dataset.range(np.iinfo(np.int64).max // global_batch_size - 1)
    dataset = _robust_map(source, steps.map(local_positions), process, stand_in)
    return dataset.batch(local_batch_size, drop_remainder=True).prefetch(2)


def eval_dataset(source: RecordSource, tokenizer, *, global_batch_size: int, image_size: int,
                 process_index: int = 0, process_count: int = 1,
                 normalization: str = "minus_one_one", max_examples: int | None = None,
                 preprocess_ops: str = "decode|resize", captions_per_image: int = 1,
                 media: dict[str, preprocess.Media] | None = None):
    """One pass in order over the first `max_examples` (all if None); the last global batch is
    padded. `media`: as for train_dataset. `valid` is False for padding and for bad examples
    (`skipped` True), which are left out of the metrics. `tokens` is an image's first caption;
    with `captions_per_image` K > 1, also `all_tokens` [K, L] (its first K captions) and
    `all_valid` [K]."""
    local_batch_size = global_batch_size // process_count
    num_examples = min(source.num_examples, max_examples or source.num_examples)
    num_batches = -(-num_examples // global_batch_size)
    caption_ids = _caption_ids(source, tokenizer)
    stored = source.stored_tokens(tokenizer)
    tokenize = text.make_tokenize_fn(tokenizer)
    empty_row = tf.constant(tokenizer([""])[0]) if stored else None
    media = media if media is not None else {"image": preprocess.image_media(
        preprocess_ops, image_size=image_size, normalization=normalization)}

    def local_positions(batch_index):
        first = batch_index * global_batch_size + process_index * local_batch_size
        positions = tf.range(first, first + local_batch_size, dtype=tf.int64)
        return positions, (positions % num_examples)[:, None]

    def process(example, position, attempt, candidates):
        del attempt, candidates
        seed = tf.stack([tf.constant(0, tf.int64), position])
        return {
            **{key: entry(example[key], seed) for key, entry in media.items()},
            "tokens": caption_ids(example, 0),
            "label": tf.cast(example["label"], tf.int32),
            "id": tf.cast(example["id"], tf.int64),
            "valid": position < num_examples,
            "skipped": False,
            **all_captions(example),
        }

    def all_captions(example):
        if captions_per_image == 1:
            return {}
        k = captions_per_image
        captions = tf.concat([example["captions"][:k], tf.fill([k], "")], 0)[:k]
        if stored:  # missing captions as the tokenizer writes "": bos, eot, padding
            rows = tf.concat([example["caption_tokens"][:k], tf.tile(empty_row[None], [k, 1])],
                             0)[:k]
        else:
            rows = tf.map_fn(tokenize, captions, fn_output_signature=tf.TensorSpec(
                [tokenizer.context_length], tf.int32))
        return {"all_tokens": rows,
                "all_valid": tf.strings.length(tf.strings.strip(captions)) > 0}

    def stand_in(position, candidates):
        return {**{key: entry.stand_in() for key, entry in media.items()},
                "tokens": tf.zeros([tokenizer.context_length], tf.int32),
                "label": tf.constant(-1), "id": candidates[0], "valid": False,
                "skipped": position < num_examples,
                **({} if captions_per_image == 1 else {
                    "all_tokens": tf.zeros([captions_per_image, tokenizer.context_length],
                                           tf.int32),
                    "all_valid": tf.zeros([captions_per_image], tf.bool)})}

    batches = tf.data.Dataset.range(num_batches).map(local_positions)
    dataset = _robust_map(source, batches, process, stand_in)
    return dataset.batch(local_batch_size, drop_remainder=True).prefetch(2)

