"""Routers: ``legacy`` (the DeepCell Kiosk's /api), ``v1`` (/api/v1) and ``files``."""
