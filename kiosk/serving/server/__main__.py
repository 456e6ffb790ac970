"""``python -m kiosk.serving.server``: run the model server until SIGTERM or Ctrl-C."""

from __future__ import annotations

import sys

from kiosk.serving.server.app import main

if __name__ == "__main__":
    sys.exit(main())
