"""Model architectures (Keras 3).

Importing the package registers the custom layer saved classifiers may hold (`layers`), so a model
loads wherever any architecture module was imported (`load_classifier`, MLflow's loader).
"""

from imgclf.model.architectures import layers  # noqa: F401  (registers HorizontalFlip)
