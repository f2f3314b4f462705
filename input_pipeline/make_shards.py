"""Converts users' captioned images into mmjax shards (see input_pipeline/shards.py).

    python -m input_pipeline.make_shards --input=captions.csv --output_dir=/data/my_shards

Inputs:
- CSV with a header: columns `image` (a path relative to the CSV file) and `caption`; optional
  `split` (default "train") and `label` (an integer). Several rows with one image give it several
  captions.
- JSONL: one object per line with the same keys; `caption` may also be a list (or use `captions`).
- A folder: every image (jpg, jpeg, png, gif, bmp, webp) with a same-named .txt beside it, one
  caption per line. Images under a top-level train/, validation/ or test/ folder go to that split.

Images are copied as they are (never decoded or re-encoded here): the training pipeline decodes
them and skips, counting, those it cannot. Missing or unreadable files are left out and listed in
metadata.json. Files are read in parallel threads; everything is written to a temporary folder and moved
into place at the end, metadata.json last, so an interrupted or repeated run never leaves a mix;
a run whose input has not changed since the last complete one does nothing.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from multiprocessing.pool import ThreadPool
import os
import shutil
import sys
import tempfile
import time

from input_pipeline import shards
from mmjax import paths

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
SPLIT_FOLDERS = ("train", "validation", "test")


@dataclasses.dataclass
class Example:
    image_path: str  # absolute
    key: str  # as the input named it
    captions: list[str]
    split: str = "train"
    label: int = -1


def _add(examples: dict, key, image_path: str, captions, split: str, label) -> None:
    split = split or "train"
    example = examples.setdefault((split, key), Example(image_path, key, [], split))
    example.captions.extend(captions)
    if label not in (None, ""):
        example.label = int(label)


def read_table(path: str) -> list[Example]:
    """Rows of a CSV or JSONL file, merged per (split, image), in first-appearance order."""
    base = os.path.dirname(os.path.abspath(path))
    examples: dict = {}
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"image", "caption"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{path} lacks the column(s) {sorted(missing)}; it has "
                                 f"{reader.fieldnames}. Name them image and caption (optional: "
                                 "split, label).")
            for row in reader:
                _add(examples, row["image"], os.path.join(base, row["image"]), [row["caption"]],
                     row.get("split"), row.get("label"))
    elif path.endswith((".jsonl", ".json")):
        with open(path, encoding="utf-8") as f:
            for line_number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                captions = row.get("captions", row.get("caption"))
                if "image" not in row or captions is None:
                    raise ValueError(f"{path}:{line_number} needs the keys image and caption "
                                     f"(or captions); it has {sorted(row)}.")
                captions = [captions] if isinstance(captions, str) else list(captions)
                _add(examples, row["image"], os.path.join(base, row["image"]), captions,
                     row.get("split"), row.get("label"))
    else:
        raise ValueError(f"{path}: give a .csv or .jsonl file, or a folder of images with "
                         ".txt captions.")
    return list(examples.values())


def read_folder(directory: str) -> tuple[list[Example], list[str]]:
    """Images with a same-named .txt; the second list names images that have none."""
    examples, uncaptioned = [], []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            stem, extension = os.path.splitext(name)
            if extension.lower() not in IMAGE_EXTENSIONS:
                continue
            image_path = os.path.join(root, name)
            key = os.path.relpath(image_path, directory)
            caption_path = os.path.join(root, stem + ".txt")
            if not os.path.exists(caption_path):
                uncaptioned.append(key)
                continue
            with open(caption_path, encoding="utf-8") as f:
                captions = [line.strip() for line in f if line.strip()]
            top = key.split(os.sep)[0]
            examples.append(Example(image_path, key, captions,
                                    top if top in SPLIT_FOLDERS and top != key else "train"))
    return examples, uncaptioned


def _read_image(example: Example) -> tuple[bytes | None, str]:
    try:
        with open(example.image_path, "rb") as f:
            return f.read(), ""
    except OSError as e:
        return None, f"{example.key}: {e.strerror or e}"


def _fingerprint(input_path: str, examples_per_shard: int) -> str:
    """Changes when the input (the table, or any file of the folder) changes."""
    digest = hashlib.sha256(f"{os.path.abspath(input_path)}|{examples_per_shard}".encode())
    paths = [input_path] if os.path.isfile(input_path) else sorted(
        os.path.join(root, name) for root, _, names in os.walk(input_path) for name in names)
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


class Progress:
    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream, self.started = total, 0, stream, time.time()
        self.last_print = 0.0

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.time()
        if now - self.last_print > 0.5 or self.done == self.total:
            rate = self.done / max(now - self.started, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
                              f" images, {rate:.0f}/s, ETA {eta:.0f}s ")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()
            self.last_print = now


def make_shards(input_path: str, output_dir: str, *, examples_per_shard: int = 10_000,
                workers: int | None = None, overwrite: bool = False, quiet: bool = False) -> dict:
    """Writes the shards and returns the metadata (also in output_dir/metadata.json)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    if not os.path.exists(input_path):
        raise FileNotFoundError(f"--input {input_path} does not exist.")
    fingerprint = _fingerprint(input_path, examples_per_shard)
    metadata_path = paths.join(output_dir, shards.METADATA)
    if paths.exists(metadata_path) and not overwrite:
        previous = json.loads(paths.read_text(metadata_path))
        if previous.get("input_fingerprint") == fingerprint:
            if not quiet:
                print(f"{output_dir} is up to date with {input_path}; nothing to do "
                      "(--overwrite to write it again).")
            return previous

    if os.path.isdir(input_path):
        examples, uncaptioned = read_folder(input_path)
    else:
        examples, uncaptioned = read_table(input_path), []
    if not examples:
        raise ValueError(f"{input_path} has no captioned images.")

    splits: dict[str, list[Example]] = {}
    for example in examples:
        splits.setdefault(example.split, []).append(example)
    paths.makedirs(output_dir)
    # Written locally, then moved in: beside the output, or in a temporary folder for a bucket.
    staging = (tempfile.mkdtemp(prefix="mmjax_shards_") if paths.is_cloud(output_dir)
               else os.path.join(output_dir, f".partial-{os.getpid()}"))
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    unreadable: list[str] = []
    split_info = {}
    progress = None if quiet else Progress(len(examples))
    # Threads: reading files releases the GIL, and nothing here is decoded.
    with ThreadPool(workers or 2 * (os.cpu_count() or 1)) as pool:
        for split, members in sorted(splits.items()):
            # Unreadable files are dropped before ids are given, so ids stay contiguous.
            readable = []
            for example, (data, error) in zip(
                    members, pool.imap(_read_image, members, chunksize=16)):
                if data is None:
                    unreadable.append(error)
                else:
                    readable.append((example, data))
                if progress:
                    progress.advance()
            count = max(1, -(-len(readable) // examples_per_shard))
            names = [shards.shard_name(split, i, count) for i in range(count)]
            for index, name in enumerate(names):
                writer = ArrayRecordWriter(os.path.join(staging, name), shards.WRITER_OPTIONS)
                first = index * examples_per_shard
                for example_id in range(first, min(first + examples_per_shard, len(readable))):
                    example, data = readable[example_id]
                    writer.write(shards.encode_record(data, example.captions, example_id,
                                                      example.key, example.label))
                writer.close()
            split_info[split] = {
                "num_examples": len(readable),
                "num_captions": sum(len(e.captions) for e, _ in readable),
                "files": names,
            }

    metadata = {
        "format": shards.FORMAT, "version": shards.VERSION,
        "input": os.path.abspath(input_path), "input_fingerprint": fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "splits": split_info,
        "left_out": {"unreadable": unreadable, "no_caption_file": uncaptioned},
    }
    # Swap in: old shard files go, new ones move in, metadata.json last.
    if paths.exists(metadata_path):
        paths.Path(metadata_path).unlink()
    for name in paths.listdir(output_dir):
        if name.endswith(".array_record"):
            paths.Path(paths.join(output_dir, name)).unlink()
    for name in os.listdir(staging):
        if paths.is_cloud(output_dir):
            paths.copy(os.path.join(staging, name), paths.join(output_dir, name))
            os.remove(os.path.join(staging, name))
        else:
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    os.rmdir(staging)
    paths.write_text(metadata_path, json.dumps(metadata, indent=2))
    if not quiet:
        for split, info in sorted(split_info.items()):
            print(f"{split}: {info['num_examples']} images, {info['num_captions']} captions, "
                  f"{len(info['files'])} file(s)")
        for what, keys in metadata["left_out"].items():
            if keys:
                print(f"left out ({what.replace('_', ' ')}): {len(keys)}, first: {keys[:3]}")
        print(f"wrote {output_dir}; train on it with --config.data.train=shards:{output_dir}:train")
    return metadata


def main(argv) -> None:
    del argv
    make_shards(FLAGS.input, FLAGS.output_dir, examples_per_shard=FLAGS.examples_per_shard,
                workers=FLAGS.workers, overwrite=FLAGS.overwrite)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("input", None, "A .csv or .jsonl file, or a folder of images with .txt "
                        "captions.", required=True)
    flags.DEFINE_string("output_dir", None, "Where the shards go.", required=True)
    flags.DEFINE_integer("examples_per_shard", 10_000, "Images per ArrayRecord file.")
    flags.DEFINE_integer("workers", None, "Reader threads (default: two per core).")
    flags.DEFINE_bool("overwrite", False, "Write again even if the input has not changed.")
    FLAGS = flags.FLAGS
    app.run(main)
