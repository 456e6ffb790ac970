"""Kiosk's local tools: the ``kiosk`` command (:mod:`.cli`), its HTTP client (:mod:`.client`),
``kiosk up`` (:mod:`.stack`, the local stack as supervised processes) and the demo samples."""
