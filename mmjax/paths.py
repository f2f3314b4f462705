"""One path library for local folders and cloud storage (gs://, s3://): every file mmjax reads
or writes goes through here, so a workdir, a data spec or a tokenizer file may live in a bucket
wherever a local folder works.

Built on `etils.epath` (what orbax uses). Cloud paths go through fsspec (gcsfs for gs://) even
where TensorFlow is installed: the same code path with or without TensorFlow (the GPU hosts have
none), and one that honours STORAGE_EMULATOR_HOST, so tests run against a local GCS emulator.
Set EPATH_USE_TF=true to send them through tf.io.gfile instead.
"""

from __future__ import annotations

import functools
import glob as globlib
import os
import posixpath
import time

os.environ.setdefault("EPATH_USE_TF", "false")

from etils import epath  # noqa: E402

Path = epath.Path


def is_cloud(path) -> bool:
    return "://" in os.fspath(path)


def absolute(path) -> str:
    """A local path made absolute; a cloud path as it is (os.path.abspath would turn gs://b/x
    into the local folder gs:/b/x)."""
    path = os.fspath(path)
    return path if is_cloud(path) else os.path.abspath(path)


def join(path, *parts: str) -> str:
    path = os.fspath(path)
    return posixpath.join(path, *parts) if is_cloud(path) else os.path.join(path, *parts)


def dirname(path) -> str:
    path = os.fspath(path).rstrip("/")
    return posixpath.dirname(path) if is_cloud(path) else os.path.dirname(path)


def basename(path) -> str:
    return posixpath.basename(os.fspath(path).rstrip("/"))


def exists(path) -> bool:
    return Path(path).exists()


def isfile(path) -> bool:
    path = Path(path)
    return path.exists() and not path.is_dir()


def isdir(path) -> bool:
    return Path(path).is_dir()


def open_file(path, mode: str = "rb"):
    """A file object, read or written in place (a bucket's object is streamed: tar members and
    parquet row groups are read as they are needed)."""
    return Path(path).open(mode)


def glob(pattern) -> list[str]:
    """Sorted paths matching `pattern`; in a bucket its wildcards must be in the last part
    (gs://b/laion/*.tar)."""
    pattern = os.fspath(pattern)
    if not is_cloud(pattern):
        return sorted(globlib.glob(pattern))
    return sorted(os.fspath(p) for p in Path(dirname(pattern)).glob(basename(pattern)))


def has_wildcards(path) -> bool:
    return globlib.has_magic(os.fspath(path))


def files_under(directory) -> list[str]:
    """Every file under a folder, in os.walk's order: a folder's files (sorted) before its
    sub-folders' (sorted), so a local and a bucket's copy list alike."""
    directory = os.fspath(directory)
    if is_cloud(directory):
        found = [os.fspath(p) for p in Path(directory).rglob("*") if not p.is_dir()]
    else:
        found = [os.path.join(root, name) for root, _, names in os.walk(directory)
                 for name in names]
    root = directory.rstrip("/")

    def walk_order(path: str):
        parts = path[len(root):].lstrip("/" + os.sep).replace(os.sep, "/").split("/")
        return [(1, part) for part in parts[:-1]] + [(0, parts[-1])]

    return sorted(found, key=walk_order)


def relative(path, start) -> str:
    """`path` relative to the folder `start`, with "/" between parts."""
    path, start = os.fspath(path), os.fspath(start)
    if not is_cloud(path):
        return os.path.relpath(path, start).replace(os.sep, "/")
    return path[len(start.rstrip("/")):].lstrip("/")


def signature(path) -> str:
    """What changes when a file does: its size and modification time (locally in ns)."""
    if not is_cloud(path):
        stat = os.stat(path)
        return f"{stat.st_size}|{stat.st_mtime_ns}"
    stat = Path(path).stat()
    return f"{stat.length}|{stat.mtime}"


def listdir(path) -> list[str]:
    """The names in a folder (empty if there is none)."""
    path = Path(path)
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def makedirs(path) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)


def read_text(path) -> str:
    return Path(path).read_text()


def read_bytes(path) -> bytes:
    return Path(path).read_bytes()


def write_text(path, text: str) -> None:
    """Whole or not at all: a local file through a temporary name and a rename; a cloud object
    is replaced whole by its upload anyway."""
    write_bytes(path, text.encode())


def write_bytes(path, data: bytes) -> None:
    """As write_text."""
    path = os.fspath(path)
    if is_cloud(path):
        Path(path).write_bytes(data)
        return
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


def copy(source, destination) -> None:
    """One file, across storages too (a local vocabulary into a bucket's workdir)."""
    Path(destination).write_bytes(Path(source).read_bytes())


def copy_tree(local_directory: str, destination) -> None:
    """Every file under a local folder to the same place under `destination` (a bucket's folder,
    for what is written locally first: TensorBoard events, profiles)."""
    for root, _, names in os.walk(local_directory):
        relative = os.path.relpath(root, local_directory)
        target = os.fspath(destination) if relative == "." else join(destination, relative)
        makedirs(target)
        for name in names:
            copy(os.path.join(root, name), join(target, name))


def rename(source, destination) -> None:
    """A file or folder moved within one storage (in a bucket: copied, then deleted)."""
    Path(source).rename(destination)


def append_bytes(path, data: bytes) -> None:
    """Adds `data` at the end of a file, creating it if missing. On gs:// only `data` is
    uploaded, as a part composed onto the object on the server (an object cannot be appended to
    in place), so a log written in N pieces uploads each byte once, not N/2 times."""
    path = os.fspath(path)
    if not is_cloud(path):
        with open(path, "ab") as f:
            f.write(data)
        return
    if not data:
        return
    blob = _gcs_blob(path)
    if not blob.exists() and create_new(path, data):  # asked first: a refused upload costs bytes
        return
    part = blob.bucket.blob(f"{blob.name}.part-{os.getpid()}-{time.monotonic_ns()}")
    part.upload_from_string(data, if_generation_match=0)
    try:
        blob.compose([blob, part])
    finally:
        part.delete()


def remove_tree(path) -> None:
    """A folder and all under it, local or in a bucket; nothing if there is none."""
    path = Path(path)
    if path.exists():
        path.rmtree()


def remove_empty_folder(path) -> None:
    """Removes a local folder if it holds nothing (a bucket has no empty folders)."""
    path = os.fspath(path)
    if not is_cloud(path) and os.path.isdir(path) and not os.listdir(path):
        os.rmdir(path)


def create_new(path, data: bytes) -> bool:
    """Writes `path` only where nothing is: True if this call created it. Atomic against another
    writer: O_EXCL on a local disk, the precondition "no generation yet" on gs://."""
    path = os.fspath(path)
    if is_cloud(path):
        try:
            _gcs_blob(path).upload_from_string(data, if_generation_match=0)
        except _gcs_exceptions().PreconditionFailed:
            return False
        return True
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "wb") as f:
        f.write(data)
    return True


def replace_if_unchanged(path, expected: str | None, data: bytes | None) -> bool:
    """Replaces `path` by `data` (None: deletes it) only if it still holds `expected` (None:
    whatever it holds); False, changing nothing, if another writer changed or removed it first.
    On gs:// the write is conditional on the generation read; on a local disk the file is first
    renamed to a name of this call's own (only one caller can), then checked."""
    path = os.fspath(path)
    if is_cloud(path):
        blob = _gcs_blob(path)
        errors = _gcs_exceptions()
        try:
            blob.reload()
            generation = blob.generation
            held = blob.download_as_bytes(if_generation_match=generation)
            if expected is not None and held.decode(errors="replace") != expected:
                return False
            if data is None:
                blob.delete(if_generation_match=generation)
            else:
                blob.upload_from_string(data, if_generation_match=generation)
        except (errors.PreconditionFailed, errors.NotFound):
            return False
        return True
    claimed = f"{path}.{os.getpid()}.{time.monotonic_ns()}"
    try:
        os.rename(path, claimed)
    except FileNotFoundError:
        return False
    with open(claimed, "rb") as f:
        held = f.read()
    if expected is not None and held.decode(errors="replace") != expected:
        try:  # put it back, unless someone has written a new one meanwhile
            os.link(claimed, path)
        except FileExistsError:
            pass
        os.remove(claimed)
        return False
    os.remove(claimed)
    return data is None or create_new(path, data)


@functools.cache
def _gcs_client():
    # google-cloud-storage is imported only for gs:// preconditions (the locks of cloud
    # workdirs); everything else goes through epath. It honours STORAGE_EMULATOR_HOST.
    from google.cloud import storage

    return storage.Client()


def _gcs_blob(path: str):
    bucket, _, name = path.removeprefix("gs://").partition("/")
    if not path.startswith("gs://"):
        raise ValueError(f"{path}: conditional writes are supported on local disks and gs://")
    return _gcs_client().bucket(bucket).blob(name)


def _gcs_exceptions():
    from google.api_core import exceptions

    return exceptions


def same(a, b) -> bool:
    return absolute(a) == absolute(b)
