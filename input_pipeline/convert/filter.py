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
`metadata.json` with the counts removed and why. Records are embedded in chunks of 1,024, each
saved beside the output as it finishes, by `--workers` threads or, with `--engine=beam`, by an
Apache Beam pipeline (JAX in each worker; `--beam_options` as make_shards takes them, Dataflow
included). The output is the same bytes for any engine and number of workers, and an
interrupted run goes on from the chunks it finished.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import threading
import time
from multiprocessing.pool import ThreadPool

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf
from absl import app, flags
from array_record.python.array_record_module import ArrayRecordWriter

from input_pipeline import datasets, preprocess, shards
from input_pipeline.convert import beam
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


class ChunkEmbedder:
    """Embeds and scores one chunk of a source's records and saves it in `staging`; a chunk
    saved by an earlier, interrupted run is read back, not computed. Holds names only (the run,
    the data spec), so Beam's workers each build the model and open the source themselves."""

    def __init__(self, clip_workdir: str, spec: str, default_split: str, data_dir: str | None,
                 staging: str, *, with_text: bool = True, chunk_size: int = CHUNK):
        self.clip_workdir, self.spec, self.default_split = clip_workdir, spec, default_split
        self.data_dir, self.staging = data_dir, staging
        self.with_text, self.chunk_size = with_text, chunk_size
        self._opened, self._lock = None, threading.Lock()

    def __getstate__(self):
        return {k: v for k, v in vars(self).items() if k not in ("_opened", "_lock")}

    def __setstate__(self, state):
        vars(self).update(state, _opened=None, _lock=threading.Lock())

    def _open(self):
        with self._lock:
            if self._opened is None:
                source = datasets.open_source(datasets.parse_spec(self.spec, self.default_split),
                                              self.data_dir)
                source = source if self.with_text else _AsShards(source)
                self._opened = (source, _embedder(inference.load(self.clip_workdir)))
            return self._opened

    def num_chunks(self) -> int:
        return -(-self._open()[0].num_examples // self.chunk_size)

    def __call__(self, index: int) -> dict:
        path = paths.join(self.staging, f"chunk-{index:06d}.npz")
        if paths.exists(path):
            return dict(np.load(io.BytesIO(paths.read_bytes(path))))
        source, embed = self._open()
        stop = min(source.num_examples, (index + 1) * self.chunk_size)
        _, images, captions, keys = _records(source, index * self.chunk_size, stop)
        image, text, ok = embed(images, captions if self.with_text else None)
        result = {"image": image, "ok": ok, "keys": np.asarray(keys, dtype=object).astype(str)}
        if text is not None:
            result["score"] = np.where(ok, np.sum(image * text, axis=1), -np.inf)
        buffer = io.BytesIO()
        np.savez(buffer, **result)
        paths.write_bytes(path, buffer.getvalue())
        return result


def embed_set(chunks: ChunkEmbedder, workers: int = 1, engine: str = "threads",
              beam_options: list[str] = ()) -> dict:
    """Every record's embeddings (and scores), by `workers` threads of this process or, with
    engine "beam", by a Beam pipeline's workers (what they save is then read back here)."""
    paths.makedirs(chunks.staging)
    indices = range(chunks.num_chunks())
    if engine == "beam":
        todo = [i for i in indices
                if not paths.exists(paths.join(chunks.staging, f"chunk-{i:06d}.npz"))]
        beam.run_each(todo, chunks, list(beam_options), "embed and score")
    with ThreadPool(max(1, workers)) as pool:
        parts = pool.map(chunks, indices)
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
                  examples_per_shard: int = 10_000, engine: str = "threads",
                  beam_options: str | list[str] = (), quiet: bool = False) -> dict:
    """`engine`: "threads" (`workers` threads of this process) or "beam" (an Apache Beam
    pipeline embeds the chunks: its local runner on every core unless `beam_options` name
    another, Dataflow included); the output is the same bytes."""
    if (keep_fraction is None) == (min_score is None):
        raise ValueError("Give one of keep_fraction (the best share to keep) and min_score.")
    if engine not in ("threads", "beam"):
        raise ValueError(f"--engine={engine!r}: use 'threads' or 'beam'.")
    beam_options = beam.pipeline_options(beam_options)[0]
    # Chunks saved by an interrupted run of the same input, split, scorer and chunking; beside
    # the output, where every Beam worker sees them (a bucket for Dataflow).
    identity = hashlib.sha256(json.dumps([paths.absolute(input_dir), split, chunk_size,
                                          paths.absolute(clip_workdir)]).encode()).hexdigest()
    staging = paths.join(output_dir, f".partial-filter-{identity[:16]}")
    chunking = dict(data_dir=data_dir, chunk_size=chunk_size)
    started = time.perf_counter()
    pool = embed_set(ChunkEmbedder(clip_workdir, f"shards:{input_dir}:{split}", split,
                                   staging=paths.join(staging, "pool"), **chunking),
                     workers, engine, beam_options)
    seconds = time.perf_counter() - started
    duplicate = np.zeros(len(pool["ok"]), bool)
    near = np.zeros(len(pool["ok"]), bool)
    if duplicate_similarity is not None:
        # An undecodable image is no one's original.
        images = pool["image"] * pool["ok"][:, None]
        duplicate = near_duplicates(images, duplicate_similarity) & pool["ok"]
        for i, spec in enumerate(against):
            evaluation = embed_set(ChunkEmbedder(clip_workdir, spec, "test", with_text=False,
                                                 staging=paths.join(staging, f"against-{i}"),
                                                 **chunking), workers, engine, beam_options)
            near |= near_duplicates(pool["image"], duplicate_similarity,
                                    against=evaluation["image"][evaluation["ok"]])
    why = decide(pool["score"], pool["ok"], duplicate, near, keep_fraction=keep_fraction,
                 min_score=min_score)
    source = datasets.open_source(datasets.parse_spec(f"shards:{input_dir}:{split}", split),
                                  data_dir)
    metadata = _write(source, output_dir, pool, why, examples_per_shard, dict(
        input=paths.absolute(input_dir), split=split, clip_workdir=paths.absolute(clip_workdir),
        keep_fraction=keep_fraction, min_score=min_score,
        duplicate_similarity=duplicate_similarity, against=list(against)))
    paths.remove_tree(staging)
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
                  examples_per_shard=FLAGS.examples_per_shard, engine=FLAGS.engine,
                  beam_options=FLAGS.beam_options)


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
    flags.DEFINE_enum("engine", "threads", ["threads", "beam"], "threads: --workers threads of "
                      "this process embed the records; beam: an Apache Beam pipeline does (its "
                      "local runner on every core unless --beam_options name another).")
    flags.DEFINE_string("beam_options", "", "With --engine=beam: Beam pipeline options, e.g. "
                        "'--runner=DataflowRunner --project=P --region=R "
                        "--temp_location=gs://b/tmp' (then --output_dir in a bucket).")
    app.run(main)
