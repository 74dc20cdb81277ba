"""Model families, registered by Hugging Face architecture name (one class per family)."""

from __future__ import annotations

from edgekit.errors import UnsupportedModelError

_FAMILIES: dict[str, type] = {}


def register(*architectures: str):
    """Class decorator: route these Hugging Face architectures (and their model_type) to a family."""

    def wrap(cls):
        for name in (*architectures, cls.model_type):
            if name in _FAMILIES:
                raise ValueError(f"architecture {name} is registered twice")
            _FAMILIES[name] = cls
        cls.architectures = architectures
        return cls

    return wrap


def families() -> list[type]:
    return list(dict.fromkeys(_FAMILIES.values()))


def family_for(architecture: str) -> type:
    """The family class for an architecture or model_type name."""
    try:
        return _FAMILIES[architecture]
    except KeyError:
        supported = ", ".join(a for f in families() for a in f.architectures)
        raise UnsupportedModelError(
            f"no exporter for architecture '{architecture}'; supported: {supported}. "
            "Add a module to exporters/ registering it"
        ) from None


def presets() -> dict[str, tuple[type, dict]]:
    """Every built-in preset name -> (family, config overrides)."""
    return {name: (family, cfg) for family in families() for name, cfg in family.presets.items()}
