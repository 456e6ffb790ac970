"""The embedded TensorFlow-Serving-compatible model server (``kiosk serve``, ``python -m
model_server``).

The only service that imports TensorFlow, and only in :mod:`.model` (loaded lazily by
:mod:`.app`), so that its pure parts (version policy, batching, input checks, metrics) and
``kiosk serve --help`` stay fast and testable without TensorFlow. It speaks the protocol of
:mod:`kiosk.serving`, which the consumers use as clients.
"""
