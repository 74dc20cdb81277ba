"""Image backbones (LITv2)."""
