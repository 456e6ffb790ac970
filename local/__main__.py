"""``python -m local``: the same as the ``kiosk`` command."""

from local.cli import main

main()
