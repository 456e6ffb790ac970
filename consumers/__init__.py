"""Consumers: the worker loop and the job types it runs."""
