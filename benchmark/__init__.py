"""Benchmarks: each measures Kiosk against a baseline taken in the same run (`make bench`)."""
