"""One path library for local folders and cloud storage (gs://, s3://): every file mmjax reads
or writes goes through here, so a workdir, a data spec or a tokenizer file may live in a bucket
wherever a local folder works.

Built on `etils.epath` (what orbax uses). Cloud paths go through fsspec (gcsfs for gs://) even
where TensorFlow is installed: the same code path with or without TensorFlow (the GPU hosts have
none), and one that honours STORAGE_EMULATOR_HOST, so tests run against a local GCS emulator.
Set EPATH_USE_TF=true to send them through tf.io.gfile instead.
"""

from __future__ import annotations

import os
import posixpath

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


def same(a, b) -> bool:
    return absolute(a) == absolute(b)
