"""Embodied policies (task `embodied-policy`): one module per family, one exported graph per policy step."""

from . import embclip  # noqa: F401  (registers the families)
