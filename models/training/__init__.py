"""Training code of the bundled models (the only TensorFlow user besides the model server)."""
