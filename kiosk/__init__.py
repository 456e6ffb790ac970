"""Kiosk's shared core: settings, names and the job record, the queue protocol and its janitor,
storage, the model server's wire protocol and client, process supervision.

Imported by every service; imports none of them, and never TensorFlow.
"""

__version__ = "0.1.0"
