"""Input pipelines (the only package that imports TensorFlow)."""
