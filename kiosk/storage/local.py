"""``file://DIR``: a bucket that is a local directory (the local stack's default)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from kiosk.storage.base import Bucket, BucketWriter, InvalidKey, ObjectNotFound, safe_key

_PARTIAL = ".partial-"


class _LocalWriter(BucketWriter):
    """Writes beside the target and renames on commit, so readers never see half a file."""

    def __init__(self, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self._target = target
        self._partial = target.with_name(f"{_PARTIAL}{uuid.uuid4().hex}-{target.name}")
        self._file = open(self._partial, "wb")  # noqa: SIM115 - closed in commit/abort

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
        path = self._path(key)
        if not path.is_file():
            return False
        path.unlink()
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        for dirpath, _dirs, files in os.walk(self.root):
            for name in sorted(files):
                if name.startswith(_PARTIAL):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key
