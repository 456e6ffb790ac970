"""``python -m model_server``: run the model server until SIGTERM or Ctrl-C."""

from __future__ import annotations

import sys

from model_server.app import main

if __name__ == "__main__":
    sys.exit(main())
