"""Image backbones (task `image-classification`): one module per family."""

from . import litv2  # noqa: F401  (registers the family)
