"""Where model versions are found: ``{bucket}/models/{Name}/{version}/`` in TF Serving layout.

Only numeric version folders holding a ``saved_model.pb`` (or ``.pbtxt``) count, as in TF
Serving. Each version comes with a fingerprint of its files, so the manager can tell a version
still being copied in (the fingerprint moves) from a settled one, and retry a version that
failed to load once its files change. A ``file://`` bucket is read in place; any other bucket
is copied version by version into a local cache first, because TensorFlow reads only local
paths (no ``gs://`` without tensorflow-io).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Hashable, Iterable
from pathlib import Path

from kiosk.storage import Bucket, InvalidKey

MODELS_PREFIX = "models"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
_CACHE_MARKER = ".kiosk-fingerprint.json"

Fingerprint = Hashable
Listing = dict[int, Fingerprint]


def parse_version(name: str) -> int | None:
    """The version a folder name stands for, or None for anything TF Serving would skip."""
    if name.isascii() and name.isdigit():
        return int(name)
    return None


class ModelRepository:
    """Lists models and versions in a bucket and gives a local path for each version."""

    def __init__(self, bucket: Bucket, cache_dir: str | Path) -> None:
        self.bucket = bucket
        self.cache_dir = Path(cache_dir)
        self.where = f"{bucket.url.rstrip('/')}/{MODELS_PREFIX}/"
        self._root = bucket.local_path(MODELS_PREFIX)

    @property
    def in_place(self) -> bool:
        """True when versions are loaded where they lie (a local-directory bucket)."""
        return self._root is not None

    def model_names(self) -> list[str]:
        """Every model folder under ``models/``."""
        if self._root is not None:
            if not self._root.is_dir():
                return []
            return sorted(
                e.name for e in os.scandir(self._root) if e.is_dir() and not e.name.startswith(".")
            )
        names = set()
        for key in self.bucket.list(f"{MODELS_PREFIX}/"):
            parts = key.split("/")
            if len(parts) >= 4:
                names.add(parts[1])
        return sorted(names)

    def versions(self, name: str) -> Listing:
        """Loadable versions of ``name`` with a fingerprint of their files; {} when none."""
        try:
            prefix = f"{MODELS_PREFIX}/{name}"
            root = self.bucket.local_path(prefix)
        except InvalidKey:
            return {}
        if self._root is not None:
            return _local_versions(root) if root is not None else {}
        return _remote_versions(self.bucket.list(f"{prefix}/"), len(prefix) + 1)

    def local_path(self, name: str, version: int) -> Path:
        """A local directory holding the version: in place, or a cached copy of the bucket's."""
        key = f"{MODELS_PREFIX}/{name}/{version}"
        if self._root is not None:
            path = self.bucket.local_path(key)
            assert path is not None
            return path
        return self._cached_copy(name, version, key)

    def _cached_copy(self, name: str, version: int, key: str) -> Path:
        keys = sorted(self.bucket.list(f"{key}/"))
        if not keys:
            raise FileNotFoundError(f"no files under {self.bucket.url}/{key}/")
        target = self.cache_dir / name / str(version)
        marker = target / _CACHE_MARKER
        if marker.is_file() and json.loads(marker.read_text()) == keys:
            return target
        partial = self.cache_dir / name / f".partial-{version}-{uuid.uuid4().hex}"
        try:
            for item in keys:
                self.bucket.download_file(item, partial / item[len(key) + 1 :])
            (partial / _CACHE_MARKER).write_text(json.dumps(keys))
            if target.exists():
                shutil.rmtree(target)
            partial.rename(target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return target


def _local_versions(root: Path) -> Listing:
    if not root.is_dir():
        return {}
    found: Listing = {}
    for entry in os.scandir(root):
        version = parse_version(entry.name)
        if version is None or not entry.is_dir():
            continue
        folder = Path(entry.path)
        if not any((folder / f).is_file() for f in SAVED_MODEL_FILES):
            continue
        files = []
        for dirpath, _dirs, names in os.walk(folder):
            for file in names:
                stat = os.stat(os.path.join(dirpath, file))
                rel = os.path.relpath(os.path.join(dirpath, file), folder)
                files.append((rel, stat.st_size, stat.st_mtime_ns))
        found[version] = tuple(sorted(files))
    return found


def _remote_versions(keys: Iterable[str], skip: int) -> Listing:
    by_version: dict[int, list[str]] = {}
    for key in keys:
        rest = key[skip:]
        folder, _, file = rest.partition("/")
        version = parse_version(folder)
        if version is not None and file:
            by_version.setdefault(version, []).append(file)
    return {
        version: tuple(sorted(files))
        for version, files in by_version.items()
        if any(f in files for f in SAVED_MODEL_FILES)
    }
