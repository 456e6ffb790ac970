"""gRPC method paths of TensorFlow Serving, spelled with the official service names.

The messages live in the package ``kiosk.tfserving`` (see protos/tfserving.proto for why), so
generated service stubs would carry the wrong path; client and server both use these instead.
"""

from __future__ import annotations

from google.protobuf.message import Message

from kiosk.serving.protos import tfserving_pb2 as pb

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"

PREDICT = f"/{PREDICTION_SERVICE}/Predict"
GET_MODEL_METADATA = f"/{PREDICTION_SERVICE}/GetModelMetadata"
GET_MODEL_STATUS = f"/{MODEL_SERVICE}/GetModelStatus"

# The type_url TensorFlow Serving puts on metadata["signature_def"].
SIGNATURE_DEF_MAP_TYPE_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"

# (path, request message, response message) for every method Kiosk speaks.
METHODS: dict[str, tuple[type[Message], type[Message]]] = {
    PREDICT: (pb.PredictRequest, pb.PredictResponse),
    GET_MODEL_METADATA: (pb.GetModelMetadataRequest, pb.GetModelMetadataResponse),
    GET_MODEL_STATUS: (pb.GetModelStatusRequest, pb.GetModelStatusResponse),
}
