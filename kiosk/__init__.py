"""Kiosk's shared core: settings, the job record, the queue protocol, storage, the CLI.

Imported by every service; imports none of them, and never TensorFlow.
"""

__version__ = "0.1.0"
