"""Thin DVC stage entry points: `python -m stages.<name>` reads params, calls imgclf, writes."""

import os

# Stages are command-line programs: keep TensorFlow's C++ start-up chatter out of their output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
