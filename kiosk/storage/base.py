"""The Bucket interface every storage backend implements, and the key rules they share."""

from __future__ import annotations

import shutil
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

MAX_KEY_LENGTH = 1024  # GCS's limit on object names, in bytes
COPY_CHUNK = 1024 * 1024


class InvalidKey(ValueError):
    """A key that could name something outside the bucket, or no object at all."""


class ObjectNotFound(FileNotFoundError):
    pass


@dataclass(frozen=True)
class ObjectInfo:
    """An object as a listing sees it."""

    key: str
    size: int
    modified: float
    """When it was last written, in seconds since the epoch."""


@dataclass(frozen=True)
class Deleted:
    """What a deletion removed."""

    files: int = 0
    bytes: int = 0

    def __add__(self, other: Deleted) -> Deleted:
        return Deleted(self.files + other.files, self.bytes + other.bytes)


def safe_key(key: str) -> str:
    """The key itself when it stays inside the bucket; :class:`InvalidKey` otherwise."""
    problem = key_problem(key)
    if problem:
        raise InvalidKey(f"invalid storage key {key!r}: {problem}")
    return key


def key_problem(key: str) -> str | None:
    if not isinstance(key, str) or not key:
        return "it is empty"
    if "\x00" in key:
        return "it contains a NUL byte"
    if any(unicodedata.category(ch) == "Cc" for ch in key):
        return "it contains control characters"
    if "\\" in key:
        return "use '/' to separate folders, not '\\'"
    if key.startswith("/"):
        return "absolute paths are not allowed; give a path inside the bucket"
    if len(key.encode()) > MAX_KEY_LENGTH:
        return f"it is longer than {MAX_KEY_LENGTH} bytes"
    parts = key.split("/")
    if ".." in parts:
        return "'..' is not allowed in a path"
    if any(part in ("", ".") for part in parts):
        return "empty or '.' path segments are not allowed"
    return None


class BucketWriter(ABC):
    """A streamed upload: nothing is visible under the key until :meth:`commit`."""

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...

    def __enter__(self) -> BucketWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class Bucket(ABC):
    """Objects by key. Implementations check every key with :func:`safe_key`."""

    url: str

    @abstractmethod
    def open_write(self, key: str) -> BucketWriter: ...

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A readable stream; :class:`ObjectNotFound` when there is no such object."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """Bytes in the object, or None when there is no such object."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove an object; False when there was none."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys of the objects whose key starts with ``prefix``."""

    @abstractmethod
    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """:meth:`list` with each object's size and last write time."""

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove these objects; ones already gone are skipped. Backends batch the requests."""
        for key in keys:
            self.delete(key)

    def delete_prefix(self, prefix: str) -> Deleted:
        """Remove every object under a folder (``prefix`` ends with '/'); what was removed."""
        if not prefix.endswith("/"):
            raise InvalidKey(f"invalid folder {prefix!r}: a folder prefix ends with '/'")
        found = list(self.list_objects(safe_key(prefix.rstrip("/")) + "/"))
        self.delete_many(info.key for info in found)
        return Deleted(len(found), sum(info.size for info in found))

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for the object when the bucket is a local directory."""
        return None

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def upload_file(self, path: str | Path, key: str) -> None:
        with open(path, "rb") as src, self.open_write(key) as dst:
            while chunk := src.read(COPY_CHUNK):
                dst.write(chunk)

    def download_file(self, key: str, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.open_read(key) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, COPY_CHUNK)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as dst:
            dst.write(data)

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as src:
            return src.read()
