"""Curates a shard set with a trained contrastive run, as DataComp's baselines do: every
image-caption pair is scored by the run's image-text similarity, near-duplicates (within the set,
and of named evaluation sets' images) are removed, and the best pairs are kept.

    python -m input_pipeline.convert.filter --input=/data/pool --clip_workdir=/runs/clip \
        --output_dir=/data/pool_filtered --keep_fraction=0.7 \
        --against=tfds:mmjax_shapes:test --duplicate_similarity=0.95

Scores: the cosine similarity of a record's image and its first caption under the run's towers
(its eval preprocessing and tokenizer). Near-duplicates: two images whose embeddings' cosine
similarity reaches `duplicate_similarity`; found exactly, block by block of the similarity
matrix (no approximation: N² work, minutes on a CPU for a few hundred thousand images); of a
group within the set the first in input order stays. Then of what is left the `keep_fraction`
with the highest scores stay (ties: the earlier), or those scoring at least `min_score`.

OUT holds the kept records as shards (ids renumbered, all else as it was: any reader of shards
reads it), `scores.parquet` (every input record: index, key, score, kept, why not) and
`metadata.json` with the counts removed and why. Records are embedded in chunks of 1,024 by
`--workers` threads, each chunk saved as it finishes: the output is the same bytes for any
number of workers, and an interrupted run goes on from the chunks it finished.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import time
from multiprocessing.pool import ThreadPool

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf
from absl import app, flags
from array_record.python.array_record_module import ArrayRecordWriter

from input_pipeline import datasets, preprocess, shards
from mmjax import inference, paths

CHUNK = 1024
REASONS = ("undecodable", "duplicate", "near_evaluation", "low_score")


def _embedder(model: inference.InferenceModel):
    config = model.config
    media = preprocess.image_media(config.data.eval_preprocess, image_size=model.image_size,
                                   normalization=config.data.get("normalization",
                                                                 "minus_one_one"))
    decode = tf.function(lambda encoded: media(encoded, tf.constant([0, 0], tf.int64)))

    def embed(images: list[bytes], captions: list[str] | None):
        """(unit image embeddings [n, d], unit caption embeddings or None, decodable [n])."""
        pixels, ok = [], []
        for encoded in images:
            try:
                pixels.append(decode(tf.constant(encoded)).numpy())
                ok.append(True)
            except (tf.errors.InvalidArgumentError, ValueError):
                pixels.append(np.zeros((model.image_size, model.image_size, 3), np.uint8))
                ok.append(False)
        image = _unit(model.encode_image(np.stack(pixels)))
        text = _unit(model.encode_text(captions)) if captions is not None else None
        return image, text, np.asarray(ok)

    return embed


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _records(source: datasets.RecordSource, start: int, stop: int):
    """(serialized records, images, first captions, keys) of records [start, stop)."""
    serialized = list(source.fetch(np.arange(start, stop)))
    examples = [tf.train.Example.FromString(r).features.feature for r in serialized]
    images = [f["image"].bytes_list.value[0] if f["image"].bytes_list.value else b""
              for f in examples]
    captions = [f["captions"].bytes_list.value[0].decode("utf-8") for f in examples]
    keys = [f["key"].bytes_list.value[0].decode("utf-8") for f in examples]
    return serialized, images, captions, keys


def embed_set(source, embed, staging: str, workers: int = 1, with_text: bool = True,
              chunk_size: int = CHUNK) -> dict:
    """Every record's embeddings and score, a saved chunk at a time (a chunk saved by an earlier,
    interrupted run is read back, not computed)."""
    paths.makedirs(staging)
    count = source.num_examples

    def chunk(index: int) -> dict:
        path = paths.join(staging, f"chunk-{index:06d}.npz")
        if paths.exists(path):
            return dict(np.load(io.BytesIO(paths.read_bytes(path))))
        _, images, captions, keys = _records(source, index * chunk_size,
                                             min(count, (index + 1) * chunk_size))
        image, text, ok = embed(images, captions if with_text else None)
        result = {"image": image, "ok": ok, "keys": np.asarray(keys, dtype=object).astype(str)}
        if text is not None:
            result["score"] = np.where(ok, np.sum(image * text, axis=1), -np.inf)
        buffer = io.BytesIO()
        np.savez(buffer, **result)
        paths.write_bytes(path, buffer.getvalue())
        return result

    with ThreadPool(max(1, workers)) as pool:
        parts = pool.map(chunk, range(-(-count // chunk_size)))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def near_duplicates(embeddings: np.ndarray, threshold: float, against: np.ndarray | None = None,
                    block: int = 4096) -> np.ndarray:
    """Without `against`: whether each row is as similar as `threshold` to an earlier row. With
    it: whether each row is to any row of `against`. Exact, a block of rows at a time."""
    found = np.zeros(len(embeddings), bool)
    for start in range(0, len(embeddings), block):
        rows = embeddings[start:start + block]
        if against is not None:
            found[start:start + block] = (rows @ against.T).max(axis=1, initial=-1) >= threshold
            continue
        earlier = embeddings[:start + len(rows)]
        similar = rows @ earlier.T >= threshold
        # Only earlier rows count: mask the block's diagonal and what lies after it.
        similar[:, start:] &= np.tri(len(rows), len(rows), -1, dtype=bool)
        found[start:start + block] = similar.any(axis=1)
    return found


def decide(scores: np.ndarray, ok: np.ndarray, duplicate: np.ndarray, near: np.ndarray, *,
           keep_fraction: float | None, min_score: float | None) -> np.ndarray:
    """Each record's reason to go ('' to stay), in REASONS' order of precedence."""
    why = np.full(len(scores), "", dtype=object)
    why[~ok] = "undecodable"
    why[(why == "") & duplicate] = "duplicate"
    why[(why == "") & near] = "near_evaluation"
    left = np.flatnonzero(why == "")
    if min_score is not None:
        why[left[scores[left] < min_score]] = "low_score"
    elif keep_fraction is not None:
        kept = int(round(keep_fraction * len(left)))
        order = left[np.lexsort((left, -scores[left]))]  # best first; ties: the earlier
        why[order[kept:]] = "low_score"
    return why


def filter_shards(input_dir: str, output_dir: str, clip_workdir: str, *, split: str = "train",
                  keep_fraction: float | None = 0.7, min_score: float | None = None,
                  duplicate_similarity: float | None = 0.95, against: tuple[str, ...] = (),
                  data_dir: str | None = None, workers: int = 1, chunk_size: int = CHUNK,
                  examples_per_shard: int = 10_000, quiet: bool = False) -> dict:
    if (keep_fraction is None) == (min_score is None):
        raise ValueError("Give one of keep_fraction (the best share to keep) and min_score.")
    model = inference.load(clip_workdir)
    embed = _embedder(model)
    source = datasets.open_source(datasets.parse_spec(f"shards:{input_dir}:{split}", split),
                                  data_dir)
    # Chunks saved by an interrupted run of the same input, split, scorer and chunking.
    identity = hashlib.sha256(json.dumps([paths.absolute(input_dir), split, chunk_size,
                                          paths.absolute(clip_workdir)]).encode()).hexdigest()
    staging = paths.join(tempfile.gettempdir(), f"mmjax_filter_{identity[:16]}")
    started = time.perf_counter()
    pool = embed_set(source, embed, paths.join(staging, "pool"), workers,
                     chunk_size=chunk_size)
    seconds = time.perf_counter() - started
    duplicate = np.zeros(len(pool["ok"]), bool)
    near = np.zeros(len(pool["ok"]), bool)
    if duplicate_similarity is not None:
        # An undecodable image is no one's original.
        images = pool["image"] * pool["ok"][:, None]
        duplicate = near_duplicates(images, duplicate_similarity) & pool["ok"]
        for i, spec in enumerate(against):
            reference = datasets.open_source(datasets.parse_spec(spec, "test"), data_dir)
            evaluation = embed_set(_AsShards(reference), embed,
                                   paths.join(staging, f"against-{i}"), workers, with_text=False,
                                   chunk_size=chunk_size)
            near |= near_duplicates(pool["image"], duplicate_similarity,
                                    against=evaluation["image"][evaluation["ok"]])
    why = decide(pool["score"], pool["ok"], duplicate, near, keep_fraction=keep_fraction,
                 min_score=min_score)
    metadata = _write(source, output_dir, pool, why, examples_per_shard, dict(
        input=paths.absolute(input_dir), split=split, clip_workdir=paths.absolute(clip_workdir),
        keep_fraction=keep_fraction, min_score=min_score,
        duplicate_similarity=duplicate_similarity, against=list(against)))
    shutil.rmtree(staging)
    if not quiet:
        print(json.dumps(metadata["filter"]["counts"]))
        print(f"scored {len(why)} pairs in {seconds:.1f} s: {len(why) / seconds:.1f} pairs/s "
              "(chunks saved by an interrupted run are read, not scored)")
    return metadata


class _AsShards:
    """A TFDS or shards evaluation source read as records with `image`, `captions`, `key`."""

    def __init__(self, source: datasets.RecordSource):
        self.source, self.num_examples = source, source.num_examples

    def fetch(self, indices: np.ndarray) -> list[bytes]:
        out = []
        for index, record in zip(indices, self.source.fetch(indices)):
            example = self.source.decode(tf.constant(record), tf.constant(int(index), tf.int64))
            out.append(shards.encode_record(example["image"].numpy(), [""], int(index),
                                            str(int(index))))
        return out


def _write(source, output_dir: str, pool: dict, why: np.ndarray, examples_per_shard: int,
           options: dict) -> dict:
    kept = np.flatnonzero(why == "")
    count = -(-len(kept) // examples_per_shard) if len(kept) else 0
    names = [shards.shard_name("train", i, count) for i in range(count)]
    paths.makedirs(output_dir)
    captions = 0
    with tempfile.TemporaryDirectory() as local:
        for i, name in enumerate(names):
            writer = ArrayRecordWriter(f"{local}/{name}", shards.WRITER_OPTIONS)
            part = kept[i * examples_per_shard:(i + 1) * examples_per_shard]
            for new_id, record in zip(range(i * examples_per_shard, len(kept)),
                                      source.fetch(part)):
                example = tf.train.Example.FromString(record)
                example.features.feature["id"].int64_list.value[:] = [new_id]
                captions += len(example.features.feature["captions"].bytes_list.value)
                writer.write(example.SerializeToString(deterministic=True))
            writer.close()
            paths.copy(f"{local}/{name}", paths.join(output_dir, name))
    table = pa.table({"index": np.arange(len(why)), "key": pool["keys"].astype(str),
                      "score": pool["score"].astype(np.float32), "kept": why == "",
                      "why": why.astype(str)})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    paths.write_bytes(paths.join(output_dir, "scores.parquet"), buffer.getvalue())
    metadata = {
        "format": shards.FORMAT, "version": shards.VERSION,
        "splits": {"train": {"num_examples": int(len(kept)), "num_captions": captions,
                             "files": names}},
        "left_out": {},
        "filter": {**options, "counts": {"input": int(len(why)), "kept": int(len(kept)),
                                         **{r: int(np.sum(why == r)) for r in REASONS}}},
    }
    paths.write_text(paths.join(output_dir, shards.METADATA), json.dumps(metadata, indent=2))
    return metadata


FLAGS = flags.FLAGS


def main(argv) -> None:
    del argv
    filter_shards(FLAGS.input, FLAGS.output_dir, FLAGS.clip_workdir, split=FLAGS.split,
                  keep_fraction=None if FLAGS.min_score is not None else FLAGS.keep_fraction,
                  min_score=FLAGS.min_score, duplicate_similarity=FLAGS.duplicate_similarity,
                  against=tuple(FLAGS.against), data_dir=FLAGS.data_dir, workers=FLAGS.workers,
                  examples_per_shard=FLAGS.examples_per_shard)


if __name__ == "__main__":
    flags.DEFINE_string("input", None, "A shard set's folder (make_shards' output).",
                        required=True)
    flags.DEFINE_string("split", "train", "Its split to filter.")
    flags.DEFINE_string("output_dir", None, "Where the kept shards go.", required=True)
    flags.DEFINE_string("clip_workdir", None, "A trained contrastive run (its workdir) that "
                        "scores the pairs and embeds the images.", required=True)
    flags.DEFINE_float("keep_fraction", 0.7, "Keep this share of the best-scoring pairs.")
    flags.DEFINE_float("min_score", None, "Keep pairs scoring at least this (instead).")
    flags.DEFINE_float("duplicate_similarity", 0.95, "Images this similar are duplicates.")
    flags.DEFINE_list("against", [], "Evaluation sets (data specs) whose near-copies go.")
    flags.DEFINE_string("data_dir", None, "TFDS data_dir of the evaluation sets.")
    flags.DEFINE_integer("workers", 1, "Threads embedding chunks.")
    flags.DEFINE_integer("examples_per_shard", 10_000, "Records per output shard.")
    app.run(main)
