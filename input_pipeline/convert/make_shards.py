"""Converts users' captioned images and sounds into mmjax shards (see input_pipeline/shards.py).

    python -m input_pipeline.convert.make_shards --input=captions.csv --output_dir=/data/my_shards
    python -m input_pipeline.convert.make_shards --input='/data/laion/*.tar'
    --output_dir=/data/laion \
        --beam_options='--direct_num_workers=16'

Inputs (input_pipeline/convert/readers.py): a CSV or JSONL table, a folder of images or sounds
with .txt captions, webdataset .tar shards as img2dataset writes them, or parquet files, on a
local disk or in a bucket (--input='gs://b/laion/*.tar', read through mmjax.paths). Sounds are
stored as 16-bit PCM WAV, which tf.data decodes: FLAC, OGG, MP3 and other WAV encodings are
converted here, once; a sound that does not decode is left out and counted as undecodable.

Examples stream from the reader to the shard writer a window at a time, so memory does not grow
with the dataset. Images are copied as they are (never re-encoded); by default each is decoded
once (at a reduced scale) to leave out those that cannot be, and the training pipeline still
skips, counting, any it cannot decode. What is left out is counted and named in metadata.json.

The shards depend only on the input and the options: files are read by parallel threads but
written in input order, so any number of workers gives byte-identical shards. Shards are written
to a staging folder named by the input's fingerprint; an interrupted run, started again, goes on
from its last finished shard; at the end they move into place, metadata.json last, so the output
never holds a mix. A run whose input has not changed since the last complete one does nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from multiprocessing.pool import ThreadPool

from input_pipeline import shards
from input_pipeline.convert import beam, readers, video_files
from mmjax import paths, text_tokenizers

PROGRESS = "progress.json"


def _fingerprint(input_path: str, files: list[str], options: dict) -> str:
    """Changes when the input (the table, or any file it is made of) or an option changes."""
    digest = hashlib.sha256(json.dumps([paths.absolute(input_path), options],
                                       sort_keys=True).encode())
    for path in files:
        digest.update(f"{path}|{paths.signature(path)}".encode())
    return digest.hexdigest()


class Progress:
    def __init__(self, total: int | None, stream=sys.stderr):
        self.total, self.done, self.stream, self.started = total, 0, stream, time.time()
        self.last_print = 0.0

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.time()
        if now - self.last_print > 0.5 or self.done == self.total:
            self.last_print = now
            rate = self.done / max(now - self.started, 1e-9)
            if self.total:
                eta = (self.total - self.done) / max(rate, 1e-9)
                filled = int(30 * self.done / max(self.total, 1))
                self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/"
                                  f"{self.total} examples, {rate:.0f}/s, ETA {eta:.0f}s ")
            else:
                self.stream.write(f"\r{self.done} examples, {rate:.0f}/s ")
            self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")


class SplitWriter:
    """One split's shards, `examples_per_shard` each, written in input order; after each
    finished shard the progress (input items consumed, ids given, what was left out) is saved,
    which is where a restarted run goes on from."""

    def __init__(self, staging: str, split: str, examples_per_shard: int, state: dict,
                 save_progress, tokenizer=None):
        self.staging, self.split, self.examples_per_shard = staging, split, examples_per_shard
        self.state, self.save_progress, self.tokenizer = state, save_progress, tokenizer
        self.writer = None

    def add(self, data: bytes, example: readers.Example) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        if self.writer is None:
            name = f"{self.split}-{len(self.state['shards']):05d}.array_record"
            self.writer = ArrayRecordWriter(os.path.join(self.staging, name),
                                            shards.WRITER_OPTIONS)
        tokens = self.tokenizer(example.captions) if self.tokenizer else None
        self.writer.write(shards.encode_record(data, example.captions, self.state["written"],
                                               example.key, example.label, tokens,
                                               modality=example.modality))
        self.state["written"] += 1
        self.state["captions"] += len(example.captions)
        if self.state["written"] % self.examples_per_shard == 0:
            self.finish_shard()

    def finish_shard(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.state["shards"].append(self.state["written"])
        self.save_progress()


def _convert_split(source, split: str, writer: SplitWriter, pool: ThreadPool, window: int,
                   check_images: bool, progress: Progress | None,
                   video: video_files.VideoSettings) -> None:
    state = writer.state
    items = itertools.islice(source.stream(split), state["consumed"], None)
    while True:
        chunk = list(itertools.islice(items, window))  # bounded: a window of images at a time
        if not chunk:
            break
        examples = [item for item in chunk if isinstance(item, readers.Example)]
        loaded = iter(
            pool.map(lambda e: readers.load_example(e, check_images, video), examples,
                     chunksize=4)
        )
        for item in chunk:
            state["consumed"] += 1  # before add(): a shard finished here includes this item
            if isinstance(item, readers.LeftOut):
                state["left_out"][item.reason].append(item.what)
                continue
            data, reason, why = next(loaded)
            if data is None:
                state["left_out"][reason].append(why)
            else:
                writer.add(data, item)
            if progress:
                progress.advance()
    writer.finish_shard()


def make_shards(input_path: str, output_dir: str, *, examples_per_shard: int = 10_000,
                workers: int | None = None, overwrite: bool = False, quiet: bool = False,
                check_images: bool = True, columns: readers.ParquetColumns | None = None,
                tokenizer: dict | None = None, engine: str = "threads",
                beam_options: str | list[str] = (),
                video: video_files.VideoSettings | None = None) -> dict:
    """Writes the shards and returns the metadata (also in output_dir/metadata.json).

    `tokenizer` (a config.tokenizer: name, context_length, vocabulary_file): also store every
    caption's token ids, so training reads them instead of tokenizing (the tokenizer is
    recorded; a run with another one is refused by the preflight).
    `engine`: "threads" (this process; the command line's default is "beam") or "beam" (Apache
    Beam, input_pipeline/convert/beam.py: its local runner on every core unless `beam_options`
    name another); the shards are the same.
    `video`: how videos are sampled (frames a second, how many at most, their size)."""
    video = video or video_files.VideoSettings()
    if engine not in ("threads", "beam"):
        raise ValueError(f"--engine={engine!r}: use 'threads' or 'beam'.")
    pipeline_options, runner = beam.pipeline_options(beam_options)
    if engine == "beam" and paths.is_cloud(output_dir) and runner != "DirectRunner":
        # A bucket output is staged on local disk, which only the local runner's workers see.
        raise ValueError(f"--beam_options runs {runner}, whose workers share no local disk, and "
                         f"{output_dir} is a bucket (staged locally). Mount the bucket (gcsfuse) "
                         "and give the mount as --output_dir, or convert with the local runner.")

    source = readers.open_input(input_path, columns)
    tokenizer = text_tokenizers.build_tokenizer(tokenizer) if tokenizer else None
    identity = text_tokenizers.identity(tokenizer) if tokenizer else None
    options = {"examples_per_shard": examples_per_shard, "check_images": check_images,
               "video": dataclasses.asdict(video),
               "columns": vars(columns or readers.ParquetColumns()), "tokenizer": identity}
    fingerprint = _fingerprint(input_path, source.files, options)
    metadata_path = paths.join(output_dir, shards.METADATA)
    if paths.exists(metadata_path) and not overwrite:
        previous = json.loads(paths.read_text(metadata_path))
        if previous.get("input_fingerprint") == fingerprint:
            if not quiet:
                print(f"{output_dir} is up to date with {input_path}; nothing to do "
                      "(--overwrite to write it again).")
            return previous

    paths.makedirs(output_dir)
    # Beside the output, or in the local temporary folder for a bucket; named by the
    # fingerprint, so a run of the same conversion finds it again.
    staging = (os.path.join(tempfile.gettempdir(), f"mmjax_shards_{fingerprint[:16]}")
               if paths.is_cloud(output_dir)
               else os.path.join(output_dir, f".partial-{fingerprint[:16]}"))
    progress_path = os.path.join(staging, PROGRESS)

    def save_progress():
        paths.write_text(progress_path, json.dumps(states))  # whole or not at all

    if overwrite or not os.path.exists(progress_path):
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        states = {}
        save_progress()  # the staging folder is this conversion's from now on
    else:
        with open(progress_path) as f:
            states = json.load(f)
        if not quiet:
            print(f"Resuming the conversion in {staging}.")

    total = (len(source.examples) + len(source.left_out)
             if isinstance(source, readers.ListedSource) else None)
    progress = None if quiet else Progress(total)
    with ThreadPool(workers or 2 * (os.cpu_count() or 1)) as pool:
        for split in source.splits():
            state = states.setdefault(
                split,
                {
                    "consumed": 0,
                    "written": 0,
                    "captions": 0,
                    "shards": [],
                    "left_out": {k: [] for k in readers.LEFT_OUT},
                    "done": False,
                },
            )
            if state["done"]:
                continue
            if engine == "beam":

                states[split] = beam.convert_split(
                    source, split, staging, examples_per_shard=examples_per_shard,
                    check_images=check_images, tokenizer_config=tokenizer, video=video,
                    beam_options=pipeline_options)
                save_progress()
                continue
            writer = SplitWriter(staging, split, examples_per_shard, state, save_progress,
                                 tokenizer)
            _convert_split(source, split, writer, pool, 64 * (workers or os.cpu_count() or 1),
                           check_images, progress, video)
            state["done"] = True
            save_progress()
    if progress:
        progress.close()
    if sum(s["written"] for s in states.values()) == 0:
        raise ValueError(f"{input_path} has no usable captioned images, sounds or videos.")
    return _move_into_place(input_path, output_dir, staging, states, fingerprint, identity,
                            quiet, video)


def _move_into_place(input_path, output_dir, staging, states, fingerprint, identity,
                     quiet, video) -> dict:
    split_info, left_out = {}, {k: [] for k in readers.LEFT_OUT}
    renames = {}
    for split, state in sorted(states.items()):
        count = len(state["shards"])
        names = [shards.shard_name(split, i, count) for i in range(count)]
        renames.update({f"{split}-{i:05d}.array_record": n for i, n in enumerate(names)})
        split_info[split] = {"num_examples": state["written"], "num_captions": state["captions"],
                             "files": names}
        for reason, names_left_out in state["left_out"].items():
            left_out[reason] += names_left_out
    metadata = {
        "format": shards.FORMAT, "version": shards.VERSION,
        "input": paths.absolute(input_path), "input_fingerprint": fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "splits": split_info, "left_out": left_out,
        **({"tokenizer": identity} if identity else {}),
        # How videos were sampled (their records' frames are `fps` apart).
        "video": dataclasses.asdict(video),
    }
    # Swap in: old shard files go, new ones move in, metadata.json last.
    metadata_path = paths.join(output_dir, shards.METADATA)
    if paths.exists(metadata_path):
        paths.Path(metadata_path).unlink()
    for name in paths.listdir(output_dir):
        if name.endswith(".array_record"):
            paths.Path(paths.join(output_dir, name)).unlink()
    for staged, name in renames.items():
        if paths.is_cloud(output_dir):
            paths.copy(os.path.join(staging, staged), paths.join(output_dir, name))
        else:
            os.replace(os.path.join(staging, staged), os.path.join(output_dir, name))
    shutil.rmtree(staging)
    paths.write_text(metadata_path, json.dumps(metadata, indent=2))
    if not quiet:
        for split, info in sorted(split_info.items()):
            print(f"{split}: {info['num_examples']} examples, {info['num_captions']} captions, "
                  f"{len(info['files'])} file(s)")
        for what, keys in left_out.items():
            if keys:
                print(f"left out ({what.replace('_', ' ')}): {len(keys)}, first: {keys[:3]}")
        print(f"wrote {output_dir}; train on it with --config.data.train=shards:{output_dir}:train")
    return metadata


def main(argv) -> None:
    del argv
    columns = readers.ParquetColumns(FLAGS.image_column, FLAGS.caption_column, FLAGS.key_column)
    tokenizer = FLAGS.tokenizer and {"name": FLAGS.tokenizer,
                                     "context_length": FLAGS.context_length,
                                     "vocabulary_file": FLAGS.vocabulary_file}
    make_shards(FLAGS.input, FLAGS.output_dir, examples_per_shard=FLAGS.examples_per_shard,
                workers=FLAGS.workers, overwrite=FLAGS.overwrite, check_images=FLAGS.check_images,
                columns=columns, tokenizer=tokenizer, engine=FLAGS.engine,
                beam_options=FLAGS.beam_options, video=video_files.VideoSettings(
                    FLAGS.video_fps, FLAGS.video_max_frames, FLAGS.video_max_side))


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("input", None, "A .csv or .jsonl file, a folder of images with .txt "
                        "captions, or webdataset .tar / .parquet files (a folder or a glob).",
                        required=True)
    flags.DEFINE_string("output_dir", None, "Where the shards go (a folder or gs://...).",
                        required=True)
    flags.DEFINE_integer("examples_per_shard", 10_000, "Images per ArrayRecord file.")
    flags.DEFINE_integer("workers", None, "Reader threads (default: two per core).")
    flags.DEFINE_enum("engine", "beam", ["beam", "threads"], "beam: an Apache Beam pipeline "
                      "(input_pipeline/convert/beam.py), Beam's local runner on every core in "
                      "processes unless --beam_options name another; threads: this process "
                      "alone (quicker to start for a small input). The shards are the same.")
    flags.DEFINE_string("beam_options", "", "With --engine=beam: Beam pipeline options, e.g. "
                        "'--direct_num_workers=4' or '--runner=DataflowRunner --project=P "
                        "--region=R --temp_location=gs://b/tmp'.")
    flags.DEFINE_bool("overwrite", False, "Write again even if the input has not changed.")
    flags.DEFINE_bool("check_images", True, "Leave out images that do not decode.")
    flags.DEFINE_float("video_fps", 8.0, "Videos: frames kept a second (the first frame at or "
                       "after each instant).")
    flags.DEFINE_integer("video_max_frames", 64, "Videos: at most this many frames a record.")
    flags.DEFINE_integer("video_max_side", 256, "Videos: frames scaled so their shorter side is "
                         "at most this (0: as decoded).")
    flags.DEFINE_string("image_column", "jpg", "Parquet: the column of image bytes (a column "
                        "named for a video or sound format, such as mp4, holds those).")
    flags.DEFINE_string("caption_column", "caption", "Parquet: the caption column.")
    flags.DEFINE_string("key_column", "key", "Parquet: the column naming each row (if any).")
    flags.DEFINE_string("tokenizer", None, "Also store the captions' token ids from this "
                        "tokenizer (as config.tokenizer.name, e.g. clip_bpe): training then "
                        "reads them instead of tokenizing.")
    flags.DEFINE_integer("context_length", 77, "With --tokenizer: its context length.")
    flags.DEFINE_string("vocabulary_file", None, "With --tokenizer: its vocabulary file.")
    FLAGS = flags.FLAGS
    app.run(main)
