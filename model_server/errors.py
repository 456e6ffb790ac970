"""One exception that carries the gRPC status a refusal is answered with."""

from __future__ import annotations

import grpc

_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """A request, load or lookup that failed with a gRPC status and a message for the user."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def status_code(number: int) -> grpc.StatusCode:
    """The gRPC status for a TensorFlow error code (the two share their numbers)."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def as_serving_error(exc: BaseException) -> ServingError:
    """Any exception as a :class:`ServingError`, keeping a TensorFlow error's own code."""
    if isinstance(exc, ServingError):
        return exc
    number = getattr(exc, "error_code", None)  # tf.errors.OpError, without importing TF
    code = status_code(number) if isinstance(number, int) else grpc.StatusCode.UNKNOWN
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return ServingError(code, f"{type(exc).__name__}: {message}")
