"""The standard gRPC health service (``grpc.health.v1.Health/Check``) without grpcio-health.

Kubernetes gRPC probes and ``grpc_health_probe`` speak it. Its two tiny messages are built
from a descriptor in a private pool, so they cannot clash with grpcio-health-checking's should
that ever be installed. Watch is not offered (answered UNIMPLEMENTED by gRPC itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from kiosk.serving import methods

SERVICE = "grpc.health.v1.Health"
SERVING, NOT_SERVING = 1, 2
KNOWN_SERVICES = frozenset({"", methods.PREDICTION_SERVICE, methods.MODEL_SERVICE})


def _messages() -> tuple[type[Any], type[Any]]:  # classes built at run time: no static fields
    file = descriptor_pb2.FileDescriptorProto(
        name="kiosk/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3"
    )
    request = file.message_type.add(name="HealthCheckRequest")
    request.field.add(
        name="service",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    response = file.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status.value.add(name=name, number=number)
    response.field.add(
        name="status",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    request_cls = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")
    )
    response_cls = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")
    )
    return request_cls, response_cls


HealthCheckRequest, HealthCheckResponse = _messages()


def health_handler(ready: Callable[[], bool]) -> grpc.GenericRpcHandler:
    """SERVING while ``ready()`` (every model has a version AVAILABLE), NOT_SERVING before."""

    def check(request: Any, context: grpc.ServicerContext) -> object:
        service = request.service
        if service not in KNOWN_SERVICES:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service!r}")
        return HealthCheckResponse(status=SERVING if ready() else NOT_SERVING)

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check,
                request_deserializer=HealthCheckRequest.FromString,
                response_serializer=HealthCheckResponse.SerializeToString,
            )
        },
    )
