"""Image backbones (task `image-classification`): one module per family."""
