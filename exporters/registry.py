"""Model families, registered by architecture name (one class per family, one module per family)."""

from __future__ import annotations

from edgekit.errors import UnsupportedModelError

_FAMILIES: dict[str, type] = {}


def register(*architectures: str):
    """Class decorator: route these architecture names (and the family's model_type, if any) to a family."""

    def wrap(cls):
        for name in (*architectures, *([cls.model_type] if cls.model_type else [])):
            if name in _FAMILIES:
                raise ValueError(f"architecture {name} is registered twice")
            _FAMILIES[name] = cls
        cls.architectures = architectures
        return cls

    return wrap


def families(task: str | None = None) -> list[type]:
    found = list(dict.fromkeys(_FAMILIES.values()))
    return [f for f in found if task is None or f.task == task]


def tasks() -> list[str]:
    return list(dict.fromkeys(f.task for f in families()))


def family_for(architecture: str) -> type:
    """The family class for an architecture or model_type name."""
    try:
        return _FAMILIES[architecture]
    except KeyError:
        supported = ", ".join(a for f in families() for a in f.architectures)
        raise UnsupportedModelError(
            f"no exporter for architecture '{architecture}'; supported: {supported}. "
            "Add a module to exporters/<kind>/ registering it"
        ) from None


def presets() -> dict[str, tuple[type, dict]]:
    """Every built-in preset name -> (family, config overrides)."""
    return {name: (family, cfg) for family in families() for name, cfg in family.presets.items()}
