"""Real photographs offline: the sample images inside scikit-image's wheel, as policy inputs.

Only the PNG files are read (with Pillow), so `pip install --no-deps scikit-image` is enough.
"""

from __future__ import annotations

import importlib.metadata

import numpy as np

from edgekit.errors import ModelLoadError

PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "motorcycle_left", "rocket")  # colour scenes, no scans
INSTALL_HINT = "pip install --no-deps scikit-image"


def photograph(name: str, size: int) -> np.ndarray:
    """One photograph resized to (3, size, size), RGB in [0, 1], float32."""
    from PIL import Image

    try:
        dist = importlib.metadata.distribution("scikit-image")
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(f"real photographs come from the package scikit-image: {INSTALL_HINT}") from None
    found = [f for f in dist.files or [] if f.parent.name == "data" and f.stem == name
             and f.suffix in (".png", ".jpg")]
    if not found:
        raise ModelLoadError(f"scikit-image has no sample image '{name}'")
    image = Image.open(dist.locate_file(found[0])).convert("RGB").resize((size, size), Image.BILINEAR)
    return (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)  # (3, size, size)


def photographs(size: int, names=PHOTOGRAPHS) -> np.ndarray:
    return np.stack([photograph(n, size) for n in names])  # (N, 3, size, size)
