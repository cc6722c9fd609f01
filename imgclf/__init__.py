"""imgclf: the library behind the image-classification pipeline.

Importing it does no work: no tracking set-up, no model loading, no TensorFlow import.
"""
