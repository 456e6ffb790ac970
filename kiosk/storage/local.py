"""``file://DIR``: a bucket that is a local directory (the local stack's default)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from kiosk.storage.base import (
    Bucket,
    BucketWriter,
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    key_problem,
    safe_key,
)

_PARTIAL = ".partial-"


class _LocalWriter(BucketWriter):
    """Writes beside the target and renames on commit, so readers never see half a file."""

    def __init__(self, target: Path) -> None:
        self._target = target
        self._partial = target.with_name(f"{_PARTIAL}{uuid.uuid4().hex}-{target.name}")
        for attempt in range(3):  # a deletion may remove the emptied folder in between
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._file = open(self._partial, "wb")  # noqa: SIM115 - closed in commit/abort
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def commit(self) -> None:
        self._file.close()
        os.replace(self._partial, self._target)

    def abort(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)


class LocalBucket(Bucket):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        path = self.root / safe_key(key)
        # a symlink inside the bucket must not lead out of it
        real = Path(os.path.realpath(path))
        if real != self.root and self.root not in real.parents:
            raise InvalidKey(f"invalid storage key {key!r}: it leads outside the bucket")
        return path

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def open_write(self, key: str) -> BucketWriter:
        return _LocalWriter(self._path(key))

    def open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"no object {key!r} in {self.url}")
        return open(path, "rb")

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    def delete(self, key: str) -> bool:
        """Also removes the folders the deletion left empty, below the top-level one
        (``output/{job}/`` goes with its last file; ``output/`` and ``uploads/`` stay)."""
        path = self._path(key)
        if not path.is_file():
            return False
        path.unlink(missing_ok=True)
        folder = path.parent
        while folder.parent != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty (or just refilled): it stays
                break
            folder = folder.parent
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        for key, _path in self._walk(prefix, partial=False):
            yield key

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        yield from self._stat(prefix, partial=False)

    def list_partials(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Writes in progress, or abandoned by a process that died mid-write (the janitor
        removes those once they are older than the retention)."""
        yield from self._stat(prefix, partial=True)

    def _stat(self, prefix: str, *, partial: bool) -> Iterator[ObjectInfo]:
        for key, path in self._walk(prefix, partial=partial):
            try:
                stat = path.stat()
            except FileNotFoundError:  # deleted or committed while listing
                continue
            yield ObjectInfo(key, stat.st_size, stat.st_mtime)

    def _walk(self, prefix: str, *, partial: bool) -> Iterator[tuple[str, Path]]:
        """Files under the folder the prefix names (not the whole bucket), with their keys."""
        folder = prefix.rpartition("/")[0]
        if folder and key_problem(folder) is not None:
            return  # no key can start with it ('..', an absolute path): nothing to list
        start = self._path(folder) if folder else self.root
        for dirpath, dirs, files in os.walk(start):
            dirs.sort()
            for name in sorted(files):
                if name.startswith(_PARTIAL) != partial:
                    continue
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix) and key_problem(key) is None:
                    yield key, path
