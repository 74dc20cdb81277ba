"""A model's interface as data: typed input/output specs that the ONNX file carries in its metadata.

The exporter writes them; `Session`, `profile` and `quantize` read them back instead of assuming token
ids, so one mechanism serves every model kind. Torch-free: runtime code imports it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Mapping, Sequence

import numpy as np

from edgekit.errors import ShapeError

Dim = int | str  # a fixed size, the name of a symbolic axis ("batch", "sequence", ...), or "axis+N" (an
# output N longer than an input axis: a VLM's cache holds the prompt plus its visual tokens)


def dim_size(dim: Dim, sizes: Mapping[str, int]) -> int:
    if isinstance(dim, int):
        return dim
    name, _, extra = dim.partition("+")
    return int(sizes[name]) + int(extra or 0)

# metadata keys every edgekit model carries
TASK, METHOD, OPTIONS, MODEL, FAMILY = "edgekit.task", "edgekit.method", "edgekit.options", "edgekit.model", \
    "edgekit.family"
INPUTS, OUTPUTS, RECURRENT, LIMITS = "edgekit.inputs", "edgekit.outputs", "edgekit.recurrent", "edgekit.limits"
MULTIPLES = "edgekit.multiples"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, dtype, dims; integer inputs also declare their valid range [low, high)."""

    name: str
    dtype: str  # numpy dtype name: "float32", "int64", ...
    dims: tuple[Dim, ...]
    low: int | None = None
    high: int | None = None
    doc: str = ""
    slot: int | None = None  # a token id outside [low, high) that every row holds exactly once (an image slot)

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, "")}

    @classmethod
    def from_json(cls, data: Mapping) -> "TensorSpec":
        return cls(**{**data, "dims": tuple(data["dims"])})

    def shape_for(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """Concrete shape, with every symbolic axis taken from `sizes`."""
        missing = [d for d in self.dims if isinstance(d, str) and d.partition("+")[0] not in sizes]
        if missing:
            raise ShapeError(f"input '{self.name}' needs a size for axis {', '.join(missing)}")
        return tuple(dim_size(d, sizes) for d in self.dims)

    def synthesize(self, sizes: Mapping[str, int], rng: np.random.Generator) -> np.ndarray:
        """A seeded example: integers uniform in [low, high), floats standard normal."""
        shape = self.shape_for(sizes)
        if np.issubdtype(np.dtype(self.dtype), np.integer):
            value = rng.integers(self.low or 0, self.high or 2, size=shape, dtype=self.dtype)
            if self.slot is not None:  # the slot an eighth into every row: some text before it, most after
                value[..., shape[-1] // 8] = self.slot
            return value
        return rng.standard_normal(shape).astype(self.dtype)

    def validate(self, value: np.ndarray) -> np.ndarray:
        """The value as this input's dtype; wrong rank, fixed dims or out-of-range integers raise ShapeError."""
        if not isinstance(value, np.ndarray):
            raise ShapeError(f"input '{self.name}' must be a numpy array, got {type(value).__name__}")
        if value.ndim != len(self.dims):
            raise ShapeError(f"input '{self.name}' must have {len(self.dims)} dims {list(self.dims)}, "
                             f"got shape {list(value.shape)}")
        for axis, (want, got) in enumerate(zip(self.dims, value.shape)):
            if isinstance(want, int) and want != got:
                raise ShapeError(f"input '{self.name}' dim {axis} must be {want}, got shape {list(value.shape)}")
        return self._cast(value)

    def _cast(self, value: np.ndarray) -> np.ndarray:
        want = np.dtype(self.dtype)
        if np.issubdtype(want, np.integer):
            if not np.issubdtype(value.dtype, np.integer):
                raise ShapeError(f"input '{self.name}' must hold integers, got {value.dtype}")
            text = value if self.slot is None else self._check_slot(value)
            if text.size and self.low is not None and int(text.min()) < self.low:
                raise ShapeError(f"input '{self.name}' values must be >= {self.low}, got {int(text.min())}")
            if text.size and self.high is not None and int(text.max()) >= self.high:
                raise ShapeError(f"input '{self.name}' values must be < {self.high}, got {int(text.max())}")
        elif not np.issubdtype(value.dtype, np.floating):
            raise ShapeError(f"input '{self.name}' must hold floats, got {value.dtype}")
        return value.astype(want, copy=False)

    def _check_slot(self, value: np.ndarray) -> np.ndarray:
        """Every row holds the slot token once; returns the value with the slots masked for the range check."""
        counts = (value == self.slot).sum(-1).reshape(-1)
        bad = np.flatnonzero(counts != 1)
        if bad.size:
            raise ShapeError(f"input '{self.name}' row {int(bad[0])} holds the slot token {self.slot} "
                             f"{int(counts[bad[0]])} times; put it exactly once where the image goes")
        return np.where(value == self.slot, self.low or 0, value)


@dataclasses.dataclass(frozen=True)
class Interface:
    """What an exported file declares: task, method, options, inputs, outputs, recurrent pairs, limits."""

    task: str
    method: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    options: Mapping = dataclasses.field(default_factory=dict)
    model: str = ""
    family: str = ""
    recurrent: Mapping[str, str] = dataclasses.field(default_factory=dict)  # output name -> input it feeds
    limits: Mapping[str, int] = dataclasses.field(default_factory=dict)  # axis -> largest size that is valid
    multiples: Mapping[str, int] = dataclasses.field(default_factory=dict)  # axis -> it must be a multiple of

    def to_metadata(self) -> dict[str, str]:
        return {TASK: self.task, METHOD: self.method, OPTIONS: json.dumps(dict(self.options)),
                MODEL: self.model, FAMILY: self.family,
                INPUTS: json.dumps([s.to_json() for s in self.inputs]),
                OUTPUTS: json.dumps([s.to_json() for s in self.outputs]),
                RECURRENT: json.dumps(dict(self.recurrent)), LIMITS: json.dumps(dict(self.limits)),
                MULTIPLES: json.dumps(dict(self.multiples))}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> "Interface | None":
        """None for a file edgekit did not export (no task / inputs in its metadata)."""
        if TASK not in meta or INPUTS not in meta:
            return None
        specs = lambda key: tuple(TensorSpec.from_json(s) for s in json.loads(meta.get(key, "[]")))  # noqa: E731
        return cls(task=meta[TASK], method=meta.get(METHOD, "?"), inputs=specs(INPUTS), outputs=specs(OUTPUTS),
                   options=json.loads(meta.get(OPTIONS, "{}")), model=meta.get(MODEL, ""),
                   family=meta.get(FAMILY, ""), recurrent=json.loads(meta.get(RECURRENT, "{}")),
                   limits=json.loads(meta.get(LIMITS, "{}")), multiples=json.loads(meta.get(MULTIPLES, "{}")))

    def example_inputs(self, sizes: Mapping[str, int], seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {s.name: s.synthesize(sizes, rng) for s in self.inputs}

    def check_sizes(self, sizes: Mapping[str, int]) -> None:
        """Axes that must be multiples of a stride (an image side of a 32-stride backbone) raise ShapeError."""
        bad = [f"{axis} {sizes[axis]} is not a multiple of {m}" for axis, m in self.multiples.items()
               if axis in sizes and sizes[axis] % m]
        if bad:
            raise ShapeError(f"{'; '.join(bad)} (the model's {self.family or 'family'} needs it)")

    def over_limits(self, sizes: Mapping[str, int]) -> list[str]:
        """Axes whose size passes what the model was trained for (e.g. max_position_embeddings)."""
        return [f"{axis} {sizes[axis]} > {limit}" for axis, limit in self.limits.items()
                if axis in sizes and sizes[axis] > limit]


def specs_by_name(specs: Sequence[TensorSpec]) -> dict[str, TensorSpec]:
    return {s.name: s for s in specs}
