"""What `make_shards` reads: captioned images, sounds and videos in the layouts users and real
datasets have them.

- A CSV table with a header: `image` (a path relative to the file), `audio` (a sound file's) or
  `video` (a video file's), and `caption`; optional `split` (default "train") and `label` (an
  integer). Rows naming one file give it several captions.
- JSONL: one object per line with the same keys; `caption` may be a list (or use `captions`).
- Karpathy's caption splits (`dataset_flickr30k.json`, `dataset_coco.json`): a .json beside
  the images; its splits (train, val, test, restval) and five captions per image come along.
- A folder: every image (jpg, jpeg, png, gif, bmp, webp), sound (wav, flac, ogg, mp3) or video
  (mp4, webm, mkv, mov, avi) with a same-named .txt beside it, one caption per line; files
  under a top-level train/, validation/ or test/ folder go there.
- webdataset `.tar` shards as img2dataset writes them (`KEY.jpg|png|webp`, or a sound
  `KEY.flac|wav|...`, or a video `KEY.mp4|webm|...`, + `KEY.txt`, optional `KEY.json`): a
  folder of them or a glob. Streamed member by member.
- Parquet files (a file, a folder or a glob) with image bytes and caption columns, img2dataset's
  names by default (`jpg`, `caption`, `key`; a media column named for a video or sound format,
  such as video2dataset's `mp4`, holds videos or sounds). Streamed a row group at a time.

Each source gives its splits and, per split, a deterministic stream of `Example`s and
`LeftOut`s (what cannot be used, named), in input order.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import posixpath
import re
import tarfile
from collections.abc import Iterator

from input_pipeline.convert import video_files
from mmjax import paths

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
SPLIT_FOLDERS = ("train", "validation", "test")


@dataclasses.dataclass
class Example:
    key: str  # as the input names it
    captions: list[str]
    split: str = "train"
    label: int = -1
    path: str | None = None  # read when loaded, or
    data: bytes | None = None  # already read (tar members, parquet cells)
    modality: str = "image"  # or "audio", "video"

    def load(self) -> bytes:
        if self.data is not None:
            return self.data
        return paths.read_bytes(self.path)


@dataclasses.dataclass
class LeftOut:
    reason: str  # a metadata.json "left_out" list: unreadable, undecodable, no_caption_file
    what: str


@dataclasses.dataclass
class ParquetColumns:
    image: str = "jpg"
    caption: str = "caption"
    key: str = "key"


@dataclasses.dataclass(frozen=True)
class Unit:
    """A part of a split that one worker reads on its own (a distributed conversion's unit of
    work): one tar or parquet file, or a run of a listed source's items. A split's stream is
    its units' items, in unit order."""

    kind: str  # "listed", "tar" or "parquet"
    path: str = ""
    items: tuple = ()
    columns: ParquetColumns | None = None


def read_unit(unit: Unit) -> Iterator[Example | LeftOut]:
    if unit.kind == "listed":
        return iter(unit.items)
    if unit.kind == "tar":
        return read_tar(unit.path)
    return read_parquet(unit.path, unit.columns)


class ListedSource:
    """A table or a folder: the examples' metadata is listed up front (no image is read)."""

    ITEMS_PER_UNIT = 1000

    def __init__(self, examples: list[Example], left_out: list[LeftOut], files: list[str]):
        self.examples, self.left_out, self.files = examples, left_out, files

    def splits(self) -> list[str]:
        return sorted({e.split for e in self.examples})

    def stream(self, split: str) -> Iterator[Example | LeftOut]:
        if split == self.splits()[0]:
            yield from self.left_out  # found while listing: reported once, with the first split
        yield from (e for e in self.examples if e.split == split)

    def units(self, split: str) -> list[Unit]:
        items = list(self.stream(split))
        return [Unit("listed", items=tuple(items[i:i + self.ITEMS_PER_UNIT]))
                for i in range(0, len(items), self.ITEMS_PER_UNIT)]


class StreamedSource:
    """Files read one after another (tar shards, parquet files): one split, "train"."""

    def __init__(self, files: list[str], kind: str, columns: ParquetColumns | None = None):
        self.files, self.kind, self.columns = files, kind, columns

    def splits(self) -> list[str]:
        return ["train"]

    def units(self, split: str) -> list[Unit]:
        return [Unit(self.kind, path=path, columns=self.columns) for path in self.files]

    def stream(self, split: str) -> Iterator[Example | LeftOut]:
        for unit in self.units(split):
            yield from read_unit(unit)


def open_input(input_path: str, columns: ParquetColumns | None = None):
    """The source for a table, a folder (of images, of .tar or of .parquet files) or a glob."""
    files = paths.glob(input_path) if paths.has_wildcards(input_path) else (
        [input_path] if paths.isfile(input_path) else sorted(paths.files_under(input_path)))
    if not files:
        raise FileNotFoundError(f"--input {input_path} does not exist or matches no file.")
    tars = [f for f in files if f.endswith(".tar")]
    if tars:  # img2dataset writes NNNNN.parquet and NNNNN_stats.json metadata beside its tars
        return StreamedSource(tars, "tar")
    if all(f.endswith(".parquet") for f in files):
        return StreamedSource(files, "parquet", columns or ParquetColumns())
    if paths.isdir(input_path):
        examples, uncaptioned = read_folder(input_path)
        return ListedSource(examples, [LeftOut("no_caption_file", k) for k in uncaptioned], files)
    if len(files) == 1 and files[0].endswith((".csv", ".jsonl", ".json")):
        return ListedSource(read_table(files[0]), [], files)
    raise ValueError(f"{input_path}: give a .csv or .jsonl file, a folder of images with .txt "
                     "captions, or webdataset .tar / .parquet files (a folder or a glob).")


def _add(examples: dict, key, base: str, captions, split: str, label,
         modality: str = "image") -> None:
    split = split or "train"
    example = examples.setdefault((split, key), Example(key, [], split, modality=modality,
                                                        path=paths.join(base, key)))
    example.captions.extend(captions)
    if label not in (None, ""):
        example.label = int(label)


def read_karpathy(path: str, data: dict) -> list[Example]:
    """Karpathy's caption splits (dataset_flickr30k.json, dataset_coco.json, ...): `images`, each
    with its `filename` (under `filepath`, for COCO), `split` (train, val, test, restval) and
    `sentences` (their `raw` text: five per image). Image paths are relative to the JSON's
    folder: put it beside flickr30k's images, or above COCO's train2014/ and val2014/."""
    base = paths.dirname(paths.absolute(path))
    examples: dict = {}
    for image in data["images"]:
        key = posixpath.join(image.get("filepath", ""), image["filename"])
        captions = [s["raw"].strip() for s in image.get("sentences", []) if s["raw"].strip()]
        _add(examples, key, base, captions, image.get("split"), None)
    return list(examples.values())


def read_table(path: str) -> list[Example]:
    """Rows of a CSV or JSONL file, merged per (split, file), in first-appearance order; a
    .json of Karpathy's caption splits (Flickr30k, COCO) is read as such. A row names its file
    in `image` or, for a sound, `audio`, for a video, `video`."""
    base = paths.dirname(paths.absolute(path))
    examples: dict = {}
    if path.endswith(".json"):
        with _open_text(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError:
                data = None  # JSON lines, read below
        if isinstance(data, dict) and isinstance(data.get("images"), list):
            return read_karpathy(path, data)
    if path.endswith(".csv"):
        with _open_text(path) as f:
            reader = csv.DictReader(f)
            modality = _media_key(reader.fieldnames or ())
            if modality is None or "caption" not in (reader.fieldnames or ()):
                raise ValueError(f"{path} needs the columns image (or audio, or video) and "
                                 f"caption; it has {reader.fieldnames}. Optional: split, label.")
            for row in reader:
                _add(examples, row[modality], base, [row["caption"]], row.get("split"),
                     row.get("label"), modality)
    else:
        with _open_text(path) as f:
            for line_number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                captions = row.get("captions", row.get("caption"))
                modality = _media_key(row)
                if modality is None or captions is None:
                    raise ValueError(f"{path}:{line_number} needs the keys image (or audio, or "
                                     f"video) and caption (or captions); it has {sorted(row)}.")
                captions = [captions] if isinstance(captions, str) else list(captions)
                _add(examples, row[modality], base, captions, row.get("split"),
                     row.get("label"), modality)
    return list(examples.values())


def _open_text(path: str):
    """A table as text (UTF-8, newlines as written: csv needs them untranslated)."""
    return io.TextIOWrapper(paths.open_file(path, "rb"), encoding="utf-8", newline="")


def _media_key(keys) -> str | None:
    """Which of `image`, `audio` and `video` a table's rows name their file in (None: none)."""
    return next((k for k in ("image", "audio", "video") if k in keys), None)


def read_folder(directory: str) -> tuple[list[Example], list[str]]:
    """Images and sounds with a same-named .txt; the second list names those that have none."""
    examples, uncaptioned = [], []
    files = paths.files_under(directory)
    present = set(files)
    for file_path in files:
        stem, extension = posixpath.splitext(file_path)
        modality = _modality_of(extension)
        if modality is None:
            continue
        key = paths.relative(file_path, directory)
        if stem + ".txt" not in present:
            uncaptioned.append(key)
            continue
        captions = [line.strip() for line in paths.read_bytes(stem + ".txt").decode(
            "utf-8").splitlines() if line.strip()]
        top = key.split("/")[0]
        split = top if top in SPLIT_FOLDERS and top != key else "train"
        examples.append(Example(key, captions, split, path=file_path, modality=modality))
    return examples, uncaptioned


def _modality_of(extension: str) -> str | None:
    extension = extension.lower()
    return ("image" if extension in IMAGE_EXTENSIONS else
            "audio" if extension in AUDIO_EXTENSIONS else
            "video" if extension in video_files.VIDEO_EXTENSIONS else None)


def read_tar(path: str) -> Iterator[Example | LeftOut]:
    """One webdataset shard: members grouped by key (the path up to the basename's first dot),
    as they come. A truncated or corrupt member ends the shard (nothing after it can be found),
    named as unreadable."""
    name = paths.basename(path)
    group_key, group = None, {}
    try:
        # A stream: members are read in order, once (from a bucket as they download).
        with paths.open_file(path, "rb") as stream, tarfile.open(fileobj=stream,
                                                                 mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                directory, base = posixpath.split(member.name)
                stem, _, extension = base.partition(".")
                key = posixpath.join(directory, stem)
                if key != group_key:
                    yield from _tar_example(name, group_key, group)
                    group_key, group = key, {}
                group[extension.lower()] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        yield LeftOut("unreadable", f"{name}: {e} (after {group_key or 'the start'})")
        return
    yield from _tar_example(name, group_key, group)


def _tar_example(tar_name: str, key: str | None, group: dict) -> Iterator[Example | LeftOut]:
    if key is None:
        return
    media = next(((group[e], _modality_of("." + e)) for e in group if _modality_of("." + e)),
                 None)
    if media is None:
        return  # neither an image nor a sound (webdataset shards may hold other members)
    captions = []
    if "txt" in group:
        captions = [line.strip() for line in group["txt"].decode("utf-8", "replace").splitlines()
                    if line.strip()]
    elif "json" in group:
        caption = json.loads(group["json"]).get("caption")
        captions = [caption] if caption else []
    if not captions:
        yield LeftOut("no_caption_file", f"{tar_name}/{key}")
        return
    yield Example(f"{tar_name}/{key}", captions, data=media[0], modality=media[1])


def read_parquet(path: str, columns: ParquetColumns) -> Iterator[Example | LeftOut]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(paths.open_file(path, "rb"))
    names = parquet.schema_arrow.names
    missing = [c for c in (columns.image, columns.caption) if c not in names]
    if missing:
        raise ValueError(f"{path} has no column(s) {missing}; it has {names}. Name them with "
                         "--image_column / --caption_column.")
    wanted = [columns.image, columns.caption] + ([columns.key] if columns.key in names else [])
    name, row = paths.basename(path), 0
    modality = _modality_of("." + columns.image) or "image"
    for batch in parquet.iter_batches(batch_size=256, columns=wanted):
        table = batch.to_pydict()
        for index in range(batch.num_rows):
            key = str(table[columns.key][index]) if columns.key in table else str(row)
            image, caption = table[columns.image][index], table[columns.caption][index]
            row += 1
            if not image:
                yield LeftOut("unreadable", f"{name}/{key}: no image bytes")
            elif not caption:
                yield LeftOut("no_caption_file", f"{name}/{key}")
            else:
                yield Example(f"{name}/{key}", [caption], data=bytes(image), modality=modality)


def check_decodes(data: bytes) -> str | None:
    """None if the image decodes, else why not. JPEGs are decoded at a reduced scale (fast,
    and still every byte is read)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (64, 64))
            image.load()
    except Exception as e:  # PIL raises many kinds for bad data
        # Without the BytesIO's address, so the same input gives the same metadata.json.
        return f"{type(e).__name__}: " + re.sub(r" <[^>]* at 0x[0-9a-f]+>", "", str(e))
    return None


def as_wav(data: bytes) -> tuple[bytes | None, str | None]:
    """(16-bit PCM WAV bytes, None), or (None, why not) for audio that does not decode or holds
    no samples. A 16-bit PCM WAV comes back as it is; any other format libsndfile reads (FLAC,
    OGG, MP3, float or 24-bit WAV) is decoded and written as 16-bit PCM WAV, which tf.data
    decodes, at its own rate and channels (the pipeline resamples and mixes down)."""
    import soundfile

    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            if f.frames == 0:
                return None, "no samples"
            samples = f.read(dtype="int16", always_2d=True)
            rate, kind = f.samplerate, (f.format, f.subtype)
    except Exception as e:  # libsndfile's errors come as several kinds
        return None, f"{type(e).__name__}: {e}"
    if len(samples) == 0:
        return None, "no samples"
    if kind == ("WAV", "PCM_16"):
        return data, None
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue(), None


LEFT_OUT = ("unreadable", "undecodable", "no_caption_file")


def load_example(example: Example, check_images: bool,
                 video: video_files.VideoSettings = video_files.VideoSettings(),
                 ) -> tuple[bytes | video_files.Clip | None, str, str]:
    """(what the record stores or None, the left_out list it goes to, why). Sounds are always
    decoded: those that are not 16-bit PCM WAV are converted to it. Videos are decoded and
    sampled by `video`, their frames stored as JPEGs (video_files.Clip)."""
    try:
        data = example.load()
    except OSError as e:
        return None, "unreadable", f"{example.key}: {e.strerror or e}"
    if example.modality == "audio":
        data, problem = as_wav(data)
    elif example.modality == "video":
        data, problem = video_files.decode_video(data, video)
    else:
        problem = check_decodes(data) if check_images else None
    if problem:
        return None, "undecodable", f"{example.key}: {problem}"
    return data, "", ""
