"""Model architectures (Keras 3)."""
