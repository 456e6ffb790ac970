"""Real servers and processes for the tests: redis-server, the GCS emulator, Kiosk services."""
