"""mmjax's own image-text shards: ArrayRecord files of tf.train.Example records plus metadata.json.

    DIR/metadata.json                      counts per split, the files, what the converter skipped
    DIR/train-00000-of-00004.array_record  records in id order: id i is record i of the split

A record holds `image` (the original encoded bytes, never re-encoded) or, for a sound, `audio`
(16-bit PCM WAV: WAV files as they are, other formats converted) or, for a video, `video` (its
sampled frames as JPEGs), `video_timestamps` (seconds) and its soundtrack in `audio`, `captions`
(one or more),
`id` (its index in the split), `key` (where it came from: the image path) and `label` (-1 when
the source has none). `python -m input_pipeline.convert.make_shards` writes them.
"""

from __future__ import annotations

import json

import tensorflow as tf

from mmjax import paths

FORMAT = "mmjax_shards"
VERSION = 1
METADATA = "metadata.json"
# One record per chunk: random access reads exactly the records it needs.
WRITER_OPTIONS = "group_size:1"

FEATURES = {
    # One of the two per record; the other reads as empty.
    "image": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "audio": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "video": tf.io.VarLenFeature(tf.string),
    "video_timestamps": tf.io.VarLenFeature(tf.float32),
    "captions": tf.io.VarLenFeature(tf.string),
    "id": tf.io.FixedLenFeature([], tf.int64),
    "key": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    # Token ids of every caption, [captions x context_length] flattened, in shards tokenized at
    # conversion (make_shards --tokenizer); metadata.json names the tokenizer.
    "tokens": tf.io.VarLenFeature(tf.int64),
}


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.array_record"


def encode_record(media, captions: list[str], example_id: int, key: str,
                  label: int = -1, tokens=None, modality: str = "image") -> bytes:
    """`media`: the encoded image, WAV bytes with modality="audio", or a video clip
    (convert.video_files.Clip: frames, timestamps, soundtrack) with modality="video"."""
    feature = tf.train.Feature
    extra = {} if tokens is None else {
        "tokens": feature(int64_list=tf.train.Int64List(value=[int(t) for t in tokens.ravel()]))}
    if modality == "video":
        extra.update(
            video=feature(bytes_list=tf.train.BytesList(value=media.frames)),
            video_timestamps=feature(float_list=tf.train.FloatList(value=media.timestamps)))
        if media.audio is not None:
            extra["audio"] = feature(bytes_list=tf.train.BytesList(value=[media.audio]))
    else:
        extra[modality] = feature(bytes_list=tf.train.BytesList(value=[media]))
    return tf.train.Example(features=tf.train.Features(feature={
        **extra,
        "captions": feature(bytes_list=tf.train.BytesList(value=[c.encode("utf-8")
                                                                   for c in captions])),
        "id": feature(int64_list=tf.train.Int64List(value=[example_id])),
        "key": feature(bytes_list=tf.train.BytesList(value=[key.encode("utf-8")])),
        "label": feature(int64_list=tf.train.Int64List(value=[label])),
    # Map entries in key order: the default order varies from one process to the next, and
    # shards must not (the same input gives the same bytes, whoever converts it).
    })).SerializeToString(deterministic=True)


def decode_record(serialized: tf.Tensor, context_length: int | None = None
                  ) -> dict[str, tf.Tensor]:
    """In-graph: a serialized record -> image (encoded), audio (WAV) and video (JPEG frames
    [T], video_timestamps [T]; those the record lacks empty), captions [K], id, key, label, and
    with
    the shards' `context_length` (tokenized shards), caption_tokens [K, context_length]."""
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    for name in ("captions", "video", "video_timestamps"):
        parsed[name] = tf.sparse.to_dense(parsed[name])
    tokens = tf.sparse.to_dense(parsed.pop("tokens"))
    if context_length:
        parsed["caption_tokens"] = tf.reshape(tf.cast(tokens, tf.int32), [-1, context_length])
    return parsed


def record_key(serialized: bytes) -> str:
    """A record's `key` in plain Python (for error messages naming bad examples)."""
    example = tf.train.Example.FromString(serialized)
    return example.features.feature["key"].bytes_list.value[0].decode("utf-8", "replace")


def read_metadata(directory: str) -> dict:
    path = paths.join(directory, METADATA)
    if not paths.exists(path):
        raise FileNotFoundError(
            f"{directory} holds no mmjax shards ({METADATA} is missing). Write them with "
            "`python -m input_pipeline.convert.make_shards --input=FILE_OR_DIR "
            f"--output_dir={directory}`."
        )
    metadata = json.loads(paths.read_text(path))
    if metadata.get("format") != FORMAT or metadata.get("version", 0) > VERSION:
        raise ValueError(f"{path} is not mmjax shards metadata of version <= {VERSION}.")
    return metadata


class ShardsReader:
    """Random access to one split's records across its files."""

    def __init__(self, directory: str, split: str):
        from array_record.python import array_record_data_source

        metadata = read_metadata(directory)
        if split not in metadata["splits"]:
            raise ValueError(f"Shards at {directory} have no split {split!r}; they have "
                             f"{sorted(metadata['splits'])}.")
        info = metadata["splits"][split]
        files = [paths.join(directory, name) for name in info["files"]]
        missing = [p for p in files if not paths.exists(p)]
        if missing:
            raise FileNotFoundError(f"Shard files listed in {directory}/{METADATA} are missing "
                                    f"(first: {missing[0]}); run make_shards again.")
        # gs:// files are read by ArrayRecord's own GCS reader.
        self.source = array_record_data_source.ArrayRecordDataSource(files)
        self.tokenized_with = metadata.get("tokenizer")  # None: captions only
        if len(self.source) != info["num_examples"]:
            raise ValueError(f"{directory}: the {split} files hold {len(self.source)} records, "
                             f"{METADATA} says {info['num_examples']}; run make_shards again.")

    def __len__(self) -> int:
        return len(self.source)

    def __getitems__(self, indices):
        return self.source.__getitems__(indices)
