"""The embedded TensorFlow-Serving-compatible model server (``kiosk serve``).

The only part of ``kiosk`` that imports TensorFlow, and only in :mod:`.model` (loaded lazily by
:mod:`.app`), so that the rest of the package, its pure parts (version policy, batching, input
checks, metrics) and ``kiosk serve --help`` stay fast and testable without TensorFlow.
"""
