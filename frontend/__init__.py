"""The HTTP frontend: the DeepCell-compatible /api routes, the versioned /api/v1 and files."""
