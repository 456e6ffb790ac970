"""Peers' sides of the peer benchmarks, each run in the peer's own virtual environment."""
