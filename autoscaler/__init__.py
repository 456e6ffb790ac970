"""Autoscaler services: the janitor (and, with the autoscaling work, the scaling controller)."""
