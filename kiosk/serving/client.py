"""gRPC client of a TensorFlow-Serving-compatible model server (TF Serving or ``kiosk serve``).

Why it looks the way it does:

* One channel per target and options, shared by every client in the process: a channel is a
  connection pool with its own reconnect logic, and opening one per call costs a TCP (and
  HTTP/2) handshake per image.
* Calls are spread over every address the target resolves to (``round_robin``), so a
  ``dns:///`` target naming a headless Service reaches every model-server pod. gRPC resolves a
  name again only when a connection breaks, so a channel is renewed once it is
  ``channel_max_age`` seconds old, and while UNAVAILABLE lasts: pods the HPA added (or the
  first pod after 0 -> 1) are found within that time. A renewed channel is closed once the
  last call that started on it ends.
* Message limits are raised: gRPC's 4 MiB default is smaller than one 1024x1024 float32 tensor.
* Tensors travel as ``tensor_content`` (see :mod:`kiosk.serving.tensors`).
* Every call has a deadline. RESOURCE_EXHAUSTED (GPU memory, queue full) and DEADLINE_EXCEEDED are
  retried with exponential backoff and full jitter; UNAVAILABLE is what a model server that is
  still starting (a GPU node booting) answers, so it is waited out for up to ``cold_start_wait``
  seconds. Everything else is a mistake that retrying cannot fix and raises at once, with a
  message that says what to do.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import grpc
import numpy as np

from kiosk.serving import methods
from kiosk.serving.protos import tfserving_pb2 as pb
from kiosk.serving.tensors import UnsupportedTensor, numpy_dtype, to_ndarray, to_tensor_proto

if TYPE_CHECKING:
    from kiosk.settings import PredictSettings

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024**2

# Keepalive pings only while a call is in flight: they notice a dead peer (a preempted node)
# before the deadline does. gRPC servers (TF Serving included) count pings closer than 5 min
# apart without data as "strikes" and hang up after two; gRPC's client default of at most two
# pings without data (grpc.http2.max_pings_without_data) keeps a long Predict under that line.
KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000
# gRPC backs off reconnecting up to 120 s by default; a model server that has just come up
# should be found within the client's own backoff cap instead.
MAX_RECONNECT_BACKOFF_MS = 10_000

# Codes that mean "try again later" for Predict and the metadata calls.
_RETRIED = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED})
_REFUSED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)

# ------------------------------------------------------------------------------------------
# Errors


class PredictError(Exception):
    """A call to the model server failed; the message says what happened and what to do.

    ``transient`` tells a consumer whether handing the job back (to try later) can help.
    """

    transient: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        version: int | None = None,
        target: str | None = None,
        code: grpc.StatusCode | None = None,
        details: str = "",
        retries: int = 0,
    ) -> None:
        super().__init__(message)
        self.model = model
        self.version = version
        self.target = target
        self.code = code
        self.details = details
        self.retries = retries


class ModelNotFound(PredictError):
    """The model server does not serve this model or version (NOT_FOUND)."""


class InvalidRequest(PredictError, ValueError):
    """The request cannot succeed as sent: wrong input names, types or shapes, too large."""


class ModelServerUnavailable(PredictError):
    """Nothing answered at the target for ``cold_start_wait`` seconds (UNAVAILABLE)."""

    transient = True


class ModelServerBusy(PredictError):
    """RESOURCE_EXHAUSTED on every try: the server is out of memory or overloaded."""

    transient = True


class PredictTimeout(PredictError):
    """DEADLINE_EXCEEDED on every try: the model takes longer than the deadline."""

    transient = True


# ------------------------------------------------------------------------------------------
# Channels


def channel_options(
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> tuple[tuple[str, int | str], ...]:
    """The options every Kiosk channel is opened with."""
    return (
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ("grpc.lb_policy_name", "round_robin"),
    )


# Renew a channel at most this often while its target answers UNAVAILABLE: a fresh channel
# resolves the name at once, where gRPC's own re-resolution backs off up to two minutes.
RENEW_WHILE_UNAVAILABLE_S = 5.0

_ChannelKey = tuple[int, str, tuple[tuple[str, Any], ...]]


class Connection:
    """One channel and its method callables, with a count of the calls using it, so that a
    renewed channel is closed only once its last call has ended."""

    def __init__(self, target: str, options: tuple[tuple[str, Any], ...]) -> None:
        self.channel = grpc.insecure_channel(target, options=list(options))
        self.calls = {
            path: self.channel.unary_unary(
                path,
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )
            for path, (request, response) in methods.METHODS.items()
        }
        self.opened_at = time.monotonic()
        self.in_flight = 0
        self.retired = False


class _Channels:
    """The process's connections, one current per target and options."""

    def __init__(self) -> None:
        self._current: dict[_ChannelKey, Connection] = {}
        self._lock = threading.Lock()

    def current(
        self, target: str, options: Iterable[tuple[str, Any]], max_age: float = 0.0
    ) -> Connection:
        """The current connection, opened on first use or when older than ``max_age`` s
        (0: never renewed)."""
        with self._lock:
            return self._current_locked(target, tuple(sorted(options)), max_age)

    @contextmanager
    def use(
        self, target: str, options: Iterable[tuple[str, Any]], max_age: float = 0.0
    ) -> Iterator[Connection]:
        """The current connection, counted as in use until the block ends."""
        with self._lock:
            connection = self._current_locked(target, tuple(sorted(options)), max_age)
            connection.in_flight += 1
        try:
            yield connection
        finally:
            with self._lock:
                connection.in_flight -= 1
                if connection.retired and connection.in_flight == 0:
                    connection.channel.close()

    def renew(self, connection: Connection) -> None:
        """Stop handing out ``connection``: the next call opens a fresh channel."""
        with self._lock:
            self._retire(connection)

    def close_all(self) -> None:
        with self._lock:
            for key in [key for key in self._current if key[0] == os.getpid()]:
                self._retire(self._current[key], force=True)

    def _current_locked(
        self, target: str, options: tuple[tuple[str, Any], ...], max_age: float
    ) -> Connection:
        # Keyed by process id too: a gRPC channel must not be used across a fork.
        key = (os.getpid(), target, options)
        connection = self._current.get(key)
        if connection is not None and 0 < max_age <= time.monotonic() - connection.opened_at:
            self._retire(connection)
            connection = None
        if connection is None:
            connection = self._current[key] = Connection(target, options)
        return connection

    def _retire(self, connection: Connection, force: bool = False) -> None:
        """Close now if unused (or ``force``), else when its last call ends."""
        if connection.retired and not force:
            return
        connection.retired = True
        for key in [key for key, c in self._current.items() if c is connection]:
            del self._current[key]
        if force or connection.in_flight == 0:
            connection.channel.close()


_channels = _Channels()


def get_channel(target: str, options: Iterable[tuple[str, Any]] | None = None) -> grpc.Channel:
    """The process's current channel to ``target`` with ``options``, opened on first use."""
    return _channels.current(target, options if options is not None else channel_options()).channel


def close_channels() -> None:
    """Close every cached channel of this process (at shutdown, or between tests)."""
    _channels.close_all()


def backoff_delay(
    attempt: int, base: float, cap: float, rng: Callable[[float, float], float] = random.uniform
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)].

    Full jitter spreads the retries of many consumers hit by the same failure.
    """
    return rng(0.0, min(cap, base * 2 ** min(attempt, 32)))


# ------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Prediction:
    """A Predict answer. Arrays may be read-only views of the response bytes (no copy)."""

    outputs: dict[str, np.ndarray]
    model_version: int | None  # the version that answered (None if the server did not say)
    retries: int  # calls re-sent after RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED or UNAVAILABLE
    seconds: float  # wall time of the call, retries and waits included


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a signature. ``shape`` uses -1 for any size; None is any rank."""

    name: str
    dtype: np.dtype | None  # None: a type Kiosk does not carry (e.g. DT_STRING)
    type_name: str  # TensorFlow's name of the type, e.g. DT_FLOAT
    shape: tuple[int, ...] | None

    def accepts(self, array: np.ndarray) -> str | None:
        """Why ``array`` does not fit this input, or None when it does."""
        if self.dtype is not None and array.dtype != self.dtype:
            return (
                f"input {self.name!r} takes {self.dtype} ({self.type_name}) but got "
                f"{array.dtype}; convert it with .astype({self.dtype.name!r})"
            )
        if self.shape is None:
            return None
        if len(self.shape) != array.ndim or any(
            want not in (-1, got) for want, got in zip(self.shape, array.shape, strict=True)
        ):
            hint = ""
            if len(self.shape) == array.ndim and self.shape[-1] not in (-1, array.shape[-1]):
                hint = f" (the model expects {self.shape[-1]} channels, got {array.shape[-1]})"
            return (
                f"input {self.name!r} takes shape {_shape_text(self.shape)} but got "
                f"{_shape_text(array.shape)}{hint}"
            )
        return None


@dataclass(frozen=True)
class Signature:
    """A SignatureDef: what to send (inputs) and what comes back (outputs)."""

    name: str
    method_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    def check(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Raise :class:`InvalidRequest` naming every input that does not fit."""
        problems = []
        missing = sorted(set(self.inputs) - set(inputs))
        extra = sorted(set(inputs) - set(self.inputs))
        if missing:
            problems.append(f"missing input(s) {', '.join(map(repr, missing))}")
        if extra:
            problems.append(f"unknown input(s) {', '.join(map(repr, extra))}")
        for name, array in inputs.items():
            if name in self.inputs and (why := self.inputs[name].accepts(np.asarray(array))):
                problems.append(why)
        if problems:
            raise InvalidRequest(
                f"signature {self.name!r} (inputs {', '.join(map(repr, sorted(self.inputs)))}): "
                + "; ".join(problems)
            )


@dataclass(frozen=True)
class ModelMetadata:
    """The signatures one model version serves."""

    model: str
    version: int | None
    signatures: dict[str, Signature] = field(default_factory=dict)

    def signature(self, name: str = DEFAULT_SIGNATURE) -> Signature:
        try:
            return self.signatures[name]
        except KeyError:
            raise InvalidRequest(
                f"model {self.model!r} version {self.version} has no signature {name!r}; "
                f"it has {', '.join(map(repr, sorted(self.signatures))) or 'none'}",
                model=self.model,
                version=self.version,
            ) from None


class VersionStatus(NamedTuple):
    """One version's state as GetModelStatus reports it; ``error`` is None when OK."""

    version: int
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END or UNKNOWN
    error: str | None


# ------------------------------------------------------------------------------------------
# Requests (module-level so that tests can put them on the wire without a server)


def _model_spec(spec: pb.ModelSpec, model: str, version: int | None, signature: str) -> None:
    spec.name = model
    if version is not None:
        spec.version.value = int(version)
    if signature:
        spec.signature_name = signature


def build_predict_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    version: int | None = None,
    signature_name: str = DEFAULT_SIGNATURE,
    output_filter: Sequence[str] | None = None,
) -> pb.PredictRequest:
    """A PredictRequest with every input as ``tensor_content``."""
    request = pb.PredictRequest()
    _model_spec(request.model_spec, model, version, signature_name)
    for name, array in inputs.items():
        try:
            to_tensor_proto(np.asarray(array), request.inputs[name])
        except UnsupportedTensor as error:
            raise InvalidRequest(f"input {name!r}: {error}", model=model, version=version) from None
    request.output_filter.extend(output_filter or ())
    return request


def build_metadata_request(model: str, version: int | None = None) -> pb.GetModelMetadataRequest:
    request = pb.GetModelMetadataRequest(metadata_field=["signature_def"])
    _model_spec(request.model_spec, model, version, "")
    return request


def build_status_request(model: str, version: int | None = None) -> pb.GetModelStatusRequest:
    request = pb.GetModelStatusRequest()
    _model_spec(request.model_spec, model, version, "")
    return request


def parse_metadata(model: str, response: pb.GetModelMetadataResponse) -> ModelMetadata:
    """Signatures from metadata["signature_def"], an Any holding a SignatureDefMap."""
    version = response.model_spec.version.value if response.model_spec.HasField("version") else None
    entry = response.metadata.get("signature_def")
    if entry is None or not entry.type_url.endswith(".SignatureDefMap"):
        found = entry.type_url if entry is not None else "nothing"
        raise PredictError(
            f"model {model!r}: the model server's metadata has no SignatureDefMap under "
            f"'signature_def' (found {found}); is it a TensorFlow Serving compatible server?",
            model=model,
            version=version,
        )
    defs = pb.SignatureDefMap.FromString(entry.value).signature_def
    return ModelMetadata(
        model=model,
        version=version,
        signatures={
            name: Signature(
                name=name,
                method_name=sig.method_name,
                inputs={key: _tensor_spec(key, info) for key, info in sig.inputs.items()},
                outputs={key: _tensor_spec(key, info) for key, info in sig.outputs.items()},
            )
            for name, sig in defs.items()
        },
    )


def _tensor_spec(name: str, info: pb.TensorInfo) -> TensorSpec:
    try:
        dtype: np.dtype | None = numpy_dtype(info.dtype)
    except UnsupportedTensor:
        dtype = None
    type_name = pb.DataType.Name(info.dtype) if info.dtype in pb.DataType.values() else "?"
    shape = None
    if info.HasField("tensor_shape") and not info.tensor_shape.unknown_rank:
        shape = tuple(int(d.size) for d in info.tensor_shape.dim)
    return TensorSpec(name=name, dtype=dtype, type_name=type_name, shape=shape)


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join("?" if n == -1 else str(n) for n in shape) + ")"


def _version_text(version: int | None) -> str:
    return "(latest version)" if version is None else f"version {version}"


# ------------------------------------------------------------------------------------------
# The client


class ServingClient:
    """Predict, GetModelMetadata and GetModelStatus against one model server.

    Thread-safe; cheap to construct (channels are shared, see :func:`get_channel`).
    """

    def __init__(
        self,
        target: str = "127.0.0.1:8500",
        *,
        timeout: float = 60.0,
        retries: int = 5,
        cold_start_wait: float = 300.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        models_location: str | None = None,
        backoff_base: float = 0.25,
        backoff_cap: float = 10.0,
        latest_metadata_ttl: float = 60.0,
        channel_max_age: float = 0.0,
    ) -> None:
        """``models_location`` (e.g. ``gs://bucket/models``) only makes errors more helpful.

        Metadata of an explicit version never changes and is kept; that of the latest version
        is kept ``latest_metadata_ttl`` seconds, since a new version may be deployed.
        ``channel_max_age`` > 0 renews the channel that often (see the module docstring).
        """
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.cold_start_wait = cold_start_wait
        self.max_message_bytes = max_message_bytes
        self.models_location = models_location.rstrip("/") if models_location else None
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.latest_metadata_ttl = latest_metadata_ttl
        self.channel_max_age = channel_max_age
        self._options = channel_options(max_message_bytes)
        self._metadata: dict[tuple[str, int | None], tuple[float, ModelMetadata]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: PredictSettings, **overrides: Any) -> ServingClient:
        """A client configured by ``KIOSK_MODEL_SERVER``, ``KIOSK_PREDICT_*`` and friends."""
        options: dict[str, Any] = {
            "timeout": settings.predict_timeout,
            "retries": settings.predict_retries,
            "cold_start_wait": settings.cold_start_wait,
            "max_message_bytes": settings.grpc_max_message_bytes,
            "channel_max_age": settings.grpc_channel_max_age,
            "models_location": f"{settings.bucket.rstrip('/')}/models",
        }
        return cls(settings.model_server, **{**options, **overrides})

    def __repr__(self) -> str:
        return f"ServingClient({self.target!r}, timeout={self.timeout})"

    @property
    def channel(self) -> grpc.Channel:
        """The channel the next call goes out on."""
        return _channels.current(self.target, self._options, self.channel_max_age).channel

    # -- the three methods ---------------------------------------------------------------

    def predict(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray] | np.ndarray,
        *,
        version: int | None = None,
        signature_name: str = DEFAULT_SIGNATURE,
        output_filter: Sequence[str] | None = None,
        check: bool = False,
        timeout: float | None = None,
    ) -> Prediction:
        """Run the model on ``inputs`` (a bare array goes to the signature's only input).

        ``check`` compares the inputs with the signature first (metadata is cached), which turns
        a server-side INVALID_ARGUMENT into an error that names the input and the shape wanted.
        """
        started = time.monotonic()
        if isinstance(inputs, np.ndarray) or check:
            signature = self.metadata(model, version).signature(signature_name)
            if isinstance(inputs, np.ndarray):
                if len(signature.inputs) != 1:
                    raise InvalidRequest(
                        f"model {model!r} signature {signature_name!r} takes inputs "
                        f"{', '.join(map(repr, sorted(signature.inputs)))}; pass a dict of arrays",
                        model=model,
                        version=version,
                    )
                inputs = {next(iter(signature.inputs)): inputs}
            if check:
                try:
                    signature.check(inputs)
                except InvalidRequest as error:
                    raise InvalidRequest(
                        f"model {model!r} {_version_text(version)}: {error}",
                        model=model,
                        version=version,
                    ) from None
        request = build_predict_request(model, inputs, version, signature_name, output_filter)
        response, retries = self._call(methods.PREDICT, request, model, version, timeout)
        try:
            outputs = {name: to_ndarray(tensor) for name, tensor in response.outputs.items()}
        except (UnsupportedTensor, ValueError) as error:
            raise PredictError(
                f"model {model!r} {_version_text(version)} answered an output Kiosk cannot "
                f"read: {error}",
                model=model,
                version=version,
                target=self.target,
            ) from None
        spec = response.model_spec
        return Prediction(
            outputs=outputs,
            model_version=spec.version.value if spec.HasField("version") else None,
            retries=retries,
            seconds=time.monotonic() - started,
        )

    def metadata(
        self, model: str, version: int | None = None, *, refresh: bool = False
    ) -> ModelMetadata:
        """The model's signatures (input and output names, dtypes, shapes), cached."""
        key = (model, version)
        now = time.monotonic()
        with self._lock:
            cached = self._metadata.get(key)
        if cached and not refresh and (version is not None or now < cached[0]):
            return cached[1]
        response, _ = self._call(
            methods.GET_MODEL_METADATA, build_metadata_request(model, version), model, version
        )
        result = parse_metadata(model, response)
        with self._lock:
            self._metadata[key] = (now + self.latest_metadata_ttl, result)
            if result.version is not None:
                self._metadata[(model, result.version)] = (float("inf"), result)
        return result

    def status(self, model: str, version: int | None = None) -> list[VersionStatus]:
        """Every version the server knows of ``model`` (or just ``version``), with its state."""
        response, _ = self._call(
            methods.GET_MODEL_STATUS, build_status_request(model, version), model, version
        )
        return _version_statuses(response)

    def wait_until_available(
        self, model: str, timeout: float, *, version: int | None = None, poll: float = 1.0
    ) -> int:
        """Block until a version of ``model`` is AVAILABLE; return that version.

        Meant for start-up: while the server is unreachable or still loading the model (TF
        Serving answers NOT_FOUND until the first version is loaded) it keeps asking.
        """
        deadline = time.monotonic() + timeout
        attempt = 0
        last, not_found = "no answer yet", False
        while True:
            left = deadline - time.monotonic()
            try:
                response, _ = self._call(
                    methods.GET_MODEL_STATUS,
                    build_status_request(model, version),
                    model,
                    version,
                    timeout=max(0.05, min(self.timeout, left)),
                    cold_start_wait=0.0,
                    retries=0,
                )
            except (ModelServerUnavailable, ModelNotFound, PredictTimeout, ModelServerBusy) as e:
                last, not_found = str(e), isinstance(e, ModelNotFound)
            else:
                states = _version_statuses(response)
                ready = [s.version for s in states if s.state == "AVAILABLE"]
                if ready:
                    return max(ready)
                last, not_found = (
                    "; ".join(
                        f"version {s.version} {s.state}" + (f" ({s.error})" if s.error else "")
                        for s in states
                    ),
                    False,
                )
            left = deadline - time.monotonic()
            if left <= 0:
                kind = ModelNotFound if not_found else ModelServerUnavailable
                raise kind(
                    f"model {model!r} {_version_text(version)} was not available at "
                    f"{self.target} within {timeout:g} s; last: {last}",
                    model=model,
                    version=version,
                    target=self.target,
                )
            time.sleep(min(left, poll, backoff_delay(attempt, self.backoff_base, poll) + 0.01))
            attempt += 1

    def forget(self, model: str | None = None) -> None:
        """Drop cached metadata (of one model, or all), e.g. after deploying a new version."""
        with self._lock:
            for key in [k for k in self._metadata if model is None or k[0] == model]:
                del self._metadata[key]

    # -- the retry loop ------------------------------------------------------------------

    def _call(
        self,
        path: str,
        request: Any,
        model: str,
        version: int | None,
        timeout: float | None = None,
        *,
        cold_start_wait: float | None = None,
        retries: int | None = None,
    ) -> tuple[Any, int]:
        """Send ``request`` with a deadline; retry as the module docstring says.

        Returns the response and how many times the request was re-sent.
        """
        timeout = self.timeout if timeout is None else timeout
        max_retries = self.retries if retries is None else retries
        wait = self.cold_start_wait if cold_start_wait is None else cold_start_wait
        resent = busy = unavailable = 0
        unavailable_since: float | None = None
        renewed = time.monotonic()
        while True:
            with _channels.use(self.target, self._options, self.channel_max_age) as connection:
                try:
                    return connection.calls[path](request, timeout=timeout), resent
                except grpc.RpcError as error:
                    code, details = error.code(), error.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE and (
                time.monotonic() - renewed >= RENEW_WHILE_UNAVAILABLE_S
            ):
                _channels.renew(connection)  # resolve the target afresh
                renewed = time.monotonic()
            if code in _RETRIED and "larger than max" not in details:
                if busy >= max_retries:
                    raise self._error(path, code, details, model, version, resent, timeout, wait)
                delay = backoff_delay(busy, self.backoff_base, self.backoff_cap)
                busy += 1
            elif code == grpc.StatusCode.UNAVAILABLE:
                now = time.monotonic()
                unavailable_since = unavailable_since or now
                left = unavailable_since + wait - now
                if left <= 0:
                    raise self._error(path, code, details, model, version, resent, timeout, wait)
                delay = min(left, backoff_delay(unavailable, self.backoff_base, self.backoff_cap))
                unavailable += 1
            else:
                if code == grpc.StatusCode.NOT_FOUND and path == methods.PREDICT:
                    self.forget(model)
                raise self._error(path, code, details, model, version, resent, timeout, wait)
            log.warning(
                "%s %s %s at %s: %s (%s); retry %d in %.2f s",
                path.rsplit("/", 1)[-1],
                model,
                _version_text(version),
                self.target,
                code.name,
                details,
                resent + 1,
                delay,
            )
            time.sleep(delay)
            resent += 1

    def _error(
        self,
        path: str,
        code: grpc.StatusCode,
        details: str,
        model: str,
        version: int | None,
        retries: int,
        timeout: float,
        wait: float,
    ) -> PredictError:
        what = f"model {model!r} {_version_text(version)}"
        method = path.rsplit("/", 1)[-1]
        server_said = f" (server: {details})" if details else ""
        kind: type[PredictError]
        if code == grpc.StatusCode.NOT_FOUND:
            kind = ModelNotFound
            where = (
                f"models are read from {self.models_location}/{{Name}}/{{version}}/"
                if self.models_location
                else "check the model server's model config"
            )
            message = (
                f"{what} is not served by {self.target}{server_said}; {where} "
                "(a version directory holds saved_model.pb); check the name and version"
            )
        elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
            kind = InvalidRequest
            message = (
                f"{method} of {what}: a message exceeds the gRPC size limit{server_said}; raise "
                f"KIOSK_GRPC_MAX_MESSAGE_BYTES (now {self.max_message_bytes}) or send smaller "
                "tiles"
            )
        elif code in _REFUSED:
            kind = InvalidRequest
            message = (
                f"{what} refused the request ({code.name}){server_said}; check the input names, "
                "types and shapes against the model's signature (ServingClient.metadata)"
            )
        elif code == grpc.StatusCode.UNAVAILABLE:
            kind = ModelServerUnavailable
            message = (
                f"model server {self.target} was unavailable for {wait:g} s while calling "
                f"{method} for {what}{server_said}; is it running? (`kiosk up` starts one; in a "
                "cluster the GPU node may still be starting: raise KIOSK_COLD_START_WAIT)"
            )
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            kind = PredictTimeout
            message = (
                f"{method} of {what} took longer than {timeout:g} s on {retries + 1} tries at "
                f"{self.target}; raise KIOSK_PREDICT_TIMEOUT or send smaller tiles"
            )
        elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            kind = ModelServerBusy
            message = (
                f"{method} of {what} was refused for lack of resources on {retries + 1} tries at "
                f"{self.target}{server_said}; send smaller tiles or add model servers"
            )
        else:
            kind = PredictError
            message = f"{method} of {what} at {self.target} failed with {code.name}{server_said}"
        return kind(
            message,
            model=model,
            version=version,
            target=self.target,
            code=code,
            details=details,
            retries=retries,
        )


def _version_statuses(response: pb.GetModelStatusResponse) -> list[VersionStatus]:
    return [
        VersionStatus(
            version=int(status.version),
            state=pb.ModelVersionStatus.State.Name(status.state)
            if status.state in pb.ModelVersionStatus.State.values()
            else str(status.state),
            error=_status_error(status.status),
        )
        for status in response.model_version_status
    ]


def _status_error(status: pb.StatusProto) -> str | None:
    if status.error_code == pb.OK:
        return status.error_message or None
    code = status.error_code
    name = pb.ErrorCode.Name(code) if code in pb.ErrorCode.values() else f"error {code}"
    return f"{name}: {status.error_message}" if status.error_message else name
