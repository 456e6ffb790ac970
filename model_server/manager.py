"""Which model versions are loaded, and the thread that keeps them in step with the bucket.

The policy is TF Serving's ``latest(1)``, with two additions for a bucket people copy into:

* Requests without a version go to the newest version that loaded. A new version is loaded
  (and warmed up) first, then requests switch to it, then the old one is drained and unloaded.
  A version that fails to load is reported (END with its error) and the previous one stays
  served; it is tried again once its files change.
* A request that pins another version loads it on demand; it stays loaded while pinned
  requests keep coming and is unloaded after ``PINNED_IDLE`` seconds without one.

A version seen for the first time while running is loaded only once two looks in a row find
its files unchanged, so a version still being copied in is not loaded half-written.
"""

from __future__ import annotations

import enum
import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import numpy as np

from kiosk.serving.protos import tfserving_pb2 as pb
from model_server.batching import Batcher
from model_server.errors import ServingError, as_serving_error
from model_server.metrics import ServerMetrics
from model_server.repository import Fingerprint, Listing, ModelRepository

log = logging.getLogger(__name__)

PINNED_IDLE = 300.0  # seconds a version loaded for pinned requests outlives its last request
LOAD_WAIT = 60.0  # most seconds a request without a deadline waits for a version to load

Arrays = dict[str, np.ndarray]


class Servable(Protocol):
    """A loaded, warmed-up model version (see :mod:`.model`)."""

    @property
    def signature_defs(self) -> Mapping[str, pb.SignatureDef]:
        """Every signature, as metadata shows them."""

    @property
    def runnable(self) -> frozenset[str]:
        """The signatures Predict may call."""

    def run(self, signature: str, inputs: Arrays) -> Arrays: ...

    @property
    def parallel_runs(self) -> int:
        """Inferences worth running at once on this runtime and device, where the model
        server's ``inference_workers`` leaves it to the servable (0)."""


Loader = Callable[[Path], Servable]


class State(enum.Enum):
    """TF Serving's ModelVersionStatus states (names match the proto's)."""

    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass
class LoadedVersion:
    name: str
    version: int
    servable: Servable
    batcher: Batcher


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: State
    error: ServingError | None = None


@dataclass
class _Version:
    version: int
    state: State
    fingerprint: Fingerprint
    error: ServingError | None = None
    loaded: LoadedVersion | None = None
    last_pinned: float = 0.0

    def failed(self, fingerprint: Fingerprint | None) -> bool:
        return self.error is not None and self.fingerprint == fingerprint


@dataclass
class _Model:
    name: str
    listing: Listing | None = None  # versions in the bucket at the last look; None: not yet
    stable: Listing = field(default_factory=dict)  # ... of those, the ones safe to load
    versions: dict[int, _Version] = field(default_factory=dict)
    default: int | None = None
    demanded: set[int] = field(default_factory=set)

    def available(self, version: int) -> LoadedVersion | None:
        entry = self.versions.get(version)
        if entry is None or entry.state is not State.AVAILABLE:
            return None
        return entry.loaded


class ModelManager:
    """Loads, serves and unloads model versions; answers lookups from request threads."""

    def __init__(
        self,
        repository: ModelRepository,
        loader: Loader,
        metrics: ServerMetrics,
        *,
        models: tuple[str, ...] = (),
        poll_interval: float = 2.0,
        max_batch_size: int = 32,
        batch_timeout: float = 0.0,
        inference_workers: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repository = repository
        self._loader = loader
        self.metrics = metrics
        self.configured = models
        self.poll_interval = poll_interval
        self.max_batch_size = max_batch_size
        self.batch_timeout = batch_timeout
        self.inference_workers = inference_workers
        self._clock = clock
        self._cond = threading.Condition()
        self._models: dict[str, _Model] = {name: _Model(name) for name in models}
        self._listed = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Look at the bucket now and every ``poll_interval`` seconds, on a thread."""
        self._thread = threading.Thread(target=self._run, name="model-poller", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop looking, then drain and unload every version."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            models = list(self._models.values())
        for model in models:
            for version in list(model.versions):
                self._unload(model, version, collect=False)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.poll_once()
            except Exception:
                log.exception("looking for model versions failed; trying again")
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    # ------------------------------------------------------------------ one look

    def poll_once(self) -> None:
        """List every model's versions, then load and unload to match the policy."""
        names = self.configured
        if not names:
            try:
                names = tuple(self.repository.model_names())
            except Exception as exc:
                log.warning("cannot list models in %s: %s", self.repository.where, exc)
                names = ()
        listings: dict[str, Listing | None] = {}
        for name in {*names, *self._models}:
            try:
                listings[name] = self.repository.versions(name)
            except Exception as exc:
                log.warning(
                    "cannot list versions of %s in %s: %s", name, self.repository.where, exc
                )
                listings[name] = None  # keep serving what is loaded
        with self._cond:
            for name, listing in listings.items():
                if listing is not None:
                    self._note_listing(self._models.setdefault(name, _Model(name)), listing)
            self._cond.notify_all()
        self._listed.set()
        for name, listing in sorted(listings.items()):
            if listing is not None and not self._stopping.is_set():
                self._reconcile(self._models[name])

    def _note_listing(self, model: _Model, listing: Listing) -> None:
        previous = model.listing
        model.stable = {
            v: fp for v, fp in listing.items() if previous is None or previous.get(v) == fp
        }
        if previous is not None:
            for version in sorted(set(listing) - set(previous)):
                log.info("found version %d of %s", version, model.name)
        model.listing = listing

    def _reconcile(self, model: _Model) -> None:
        with self._cond:
            candidates = sorted(
                (v for v, fp in model.stable.items() if not self._failed(model, v, fp)),
                reverse=True,
            )
        for version in candidates:  # newest first, until one is (or gets) loaded
            if model.available(version) or self._load(model, version, model.stable[version]):
                break
        with self._cond:
            listed = model.listing or {}
            loaded = [v for v in listed if model.available(v)]
            default = max(loaded, default=None)
            if default != model.default and default is not None:
                log.info("serving version %d of %s by default", default, model.name)
            model.default = default
            demanded, model.demanded = model.demanded, set()
            self._cond.notify_all()
        for version in sorted(demanded):
            fp = model.stable.get(version)
            if fp is not None and not model.available(version):
                if not self._failed(model, version, fp):
                    self._load(model, version, fp, pinned=True)
            elif fp is None and version in listed:
                with self._cond:
                    model.demanded.add(version)  # still being copied in: look again next time
        now = self._clock()
        for version, entry in list(model.versions.items()):
            if entry.loaded is None or version == model.default:
                continue
            if version not in listed or now - entry.last_pinned > PINNED_IDLE:
                self._unload(model, version)
        with self._cond:
            count = sum(1 for v in model.versions if model.available(v))
        self.metrics.loaded_versions.labels(model.name).set(count)

    def _failed(self, model: _Model, version: int, fingerprint: Fingerprint) -> bool:
        entry = model.versions.get(version)
        return entry is not None and entry.failed(fingerprint)

    def _load(
        self, model: _Model, version: int, fingerprint: Fingerprint, pinned: bool = False
    ) -> bool:
        """Load and warm up a version; a pinned one counts as just used, a default one not."""
        last_pinned = self._clock() if pinned else float("-inf")
        entry = _Version(version, State.LOADING, fingerprint, last_pinned=last_pinned)
        with self._cond:
            model.versions[version] = entry
            self._cond.notify_all()
        log.info("loading version %d of %s", version, model.name)
        started = time.perf_counter()
        try:
            path = self.repository.local_path(model.name, version)
            servable = self._loader(path)
        except Exception as exc:
            error = as_serving_error(exc)
            current = model.default
            log.error(
                "version %d of %s failed to load: %s (%s)",
                version,
                model.name,
                error.message,
                f"still serving version {current}" if current is not None else "no version served",
            )
            with self._cond:
                entry.state, entry.error = State.END, error
                self._cond.notify_all()
            return False
        if self._stopping.is_set():
            return False
        batcher = Batcher(
            self._timed_run(model.name, servable),
            self.max_batch_size,
            self.batch_timeout,
            name=f"{model.name}-{version}",
            on_batch=self.metrics.batch_size.labels(model.name).observe,
            workers=self.inference_workers or servable.parallel_runs,
        )
        with self._cond:
            entry.loaded = LoadedVersion(model.name, version, servable, batcher)
            entry.state = State.AVAILABLE
            self._cond.notify_all()
        log.info(
            "version %d of %s is AVAILABLE (loaded and warmed up in %.1f s)",
            version,
            model.name,
            time.perf_counter() - started,
        )
        return True

    def _timed_run(self, name: str, servable: Servable) -> Callable[[str, Arrays], Arrays]:
        def run(signature: str, inputs: Arrays) -> Arrays:
            with self.metrics.inference(name):
                return servable.run(signature, inputs)

        return run

    def _unload(self, model: _Model, version: int, collect: bool = True) -> None:
        with self._cond:
            entry = model.versions.get(version)
            if entry is None or entry.loaded is None:
                return
            loaded, entry.loaded = entry.loaded, None
            entry.state = State.UNLOADING
            if model.default == version:
                model.default = None
            self._cond.notify_all()
        loaded.batcher.close()
        with self._cond:
            entry.state = State.END
            self._cond.notify_all()
        del loaded
        if collect:
            gc.collect()  # hand the version's memory back now, not at some later collection
        log.info("unloaded version %d of %s", version, model.name)

    # ------------------------------------------------------------------ lookups

    def resolve(self, name: str, version: int | None, wait: float | None) -> LoadedVersion:
        """The loaded version a request goes to, loading a pinned one on demand.

        Waits at most ``wait`` seconds (``LOAD_WAIT`` when None) for a version that is loading;
        NOT_FOUND, FAILED_PRECONDITION or UNAVAILABLE otherwise, each saying why.
        """
        deadline = self._clock() + (LOAD_WAIT if wait is None else max(0.0, wait))
        if not self._listed.wait(max(0.0, deadline - self._clock())):
            raise self._starting()
        with self._cond:
            while True:
                model = self._models.get(name)
                if model is None:
                    raise self._unknown_model(name)
                found = self._lookup(model, version)
                if found is not None:
                    return found
                remaining = deadline - self._clock()
                if remaining <= 0:
                    what = f"version {version} of {name}" if version is not None else name
                    raise ServingError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"model {what} is still loading; try again shortly",
                    )
                self._cond.wait(min(remaining, 1.0))

    def _starting(self) -> ServingError:
        return ServingError(
            grpc.StatusCode.UNAVAILABLE,
            f"the model server is starting: still looking for models in {self.repository.where}",
        )

    def _lookup(self, model: _Model, version: int | None) -> LoadedVersion | None:
        """The version to serve now, None to wait, or a ServingError for a lasting refusal."""
        listing = model.listing
        if version is None:
            if model.default is not None:
                return model.available(model.default)
            if listing is not None and not listing:
                raise self._no_versions(model.name)
            if listing and all(self._failed(model, v, fp) for v, fp in listing.items()):
                raise ServingError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"no version of model {model.name} could be loaded: "
                    + "; ".join(
                        f"version {v}: {_error(model.versions[v])}"
                        for v in sorted(listing, reverse=True)
                    ),
                )
            return None
        loaded = model.available(version)
        if loaded is not None:
            model.versions[version].last_pinned = self._clock()
            return loaded
        if listing is not None and version not in listing:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND,
                f"model {model.name} has no version {version} under "
                f"{self.repository.where}{model.name}/ (versions there: "
                f"{', '.join(map(str, sorted(listing))) or 'none'})",
            )
        entry = model.versions.get(version)
        if listing is not None and entry is not None and entry.failed(listing.get(version)):
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"version {version} of model {model.name} failed to load: {_error(entry)}",
            )
        if entry is None or entry.state is not State.LOADING:
            model.demanded.add(version)
            self._wake.set()
        return None

    def _unknown_model(self, name: str) -> ServingError:
        served = sorted(n for n, m in self._models.items() if m.listing)
        return ServingError(
            grpc.StatusCode.NOT_FOUND,
            f"model {name!r} not found: models are read from {self.repository.where} "
            f"(serving: {', '.join(served) or 'none'})",
        )

    def _no_versions(self, name: str) -> ServingError:
        return ServingError(
            grpc.StatusCode.NOT_FOUND,
            f"model {name} has no versions: put a SavedModel in "
            f"{self.repository.where}{name}/VERSION/ (VERSION a number)",
        )

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Every version of a model the server has handled, newest first (GetModelStatus)."""
        if not self._listed.is_set():
            raise self._starting()
        with self._cond:
            model = self._models.get(name)
            if model is None:
                raise self._unknown_model(name)
            versions = sorted(model.versions.values(), key=lambda e: e.version, reverse=True)
            if version is not None:
                versions = [e for e in versions if e.version == version]
                if not versions:
                    raise ServingError(
                        grpc.StatusCode.NOT_FOUND,
                        f"version {version} of model {name} has not been loaded",
                    )
            if not versions and model.listing == {}:
                raise self._no_versions(name)
            return [VersionStatus(e.version, e.state, e.error) for e in versions]

    def ready(self) -> tuple[bool, dict[str, str]]:
        """Whether every model has a version AVAILABLE, and each model's state in words."""
        with self._cond:
            names = self.configured or tuple(n for n, m in self._models.items() if m.listing)
            states = {name: self._describe(self._models.get(name)) for name in names}
            ok = bool(names) and all(
                (m := self._models.get(n)) is not None and m.default is not None for n in names
            )
        if not names:
            states["*"] = f"no models under {self.repository.where}"
        return ok, states

    def _describe(self, model: _Model | None) -> str:
        if model is None or model.listing is None:
            return "looking for versions"
        if model.default is not None:
            return f"AVAILABLE: version {model.default}"
        if not model.listing:
            return f"no versions under {self.repository.where}{model.name}/"
        loading = [v for v, e in model.versions.items() if e.state is State.LOADING]
        if loading:
            return f"LOADING: version {max(loading)}"
        failed = [e for e in model.versions.values() if e.error is not None]
        if failed:
            last = max(failed, key=lambda e: e.version)
            return f"version {last.version} failed to load: {_error(last)}"
        return "waiting for its files to settle"

    def model_names(self) -> list[str]:
        with self._cond:
            return sorted(self._models)


def _error(entry: _Version) -> str:
    return entry.error.message if entry.error is not None else "unknown error"
