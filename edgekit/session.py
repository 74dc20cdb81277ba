"""`Session`: run any exported edgekit model (edgekit ops included) on an execution-provider profile.

The model's interface (task, typed inputs and outputs) comes from its metadata, so the same class runs
an LLM prefill, an image backbone or a policy step, and checks what it is fed before ONNX Runtime does.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
import onnxruntime as ort

from edgekit.ep_profiles import Profile, load_profile
from edgekit.errors import EdgekitWarning, ModelLoadError, ShapeError, first_line
from edgekit.interface import Interface, TensorSpec

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(double)": "float64"}


class Session:
    """An ONNX Runtime session on an edgekit profile, with one-line errors for bad models and inputs.

    >>> s = Session("model.onnx", ep="cpu")
    >>> s.inputs          # [TensorSpec(name='input_ids', dtype='int64', dims=('batch', 'sequence'), ...)]
    >>> logits = s.run({"input_ids": ids})["logits"]
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, ep: str | Profile = "cpu",
                 threads: int | None = None, profile_prefix: str | None = None):
        if threads is not None and threads < 1:
            raise ShapeError(f"threads must be >= 1, got {threads}")
        self.profile = ep if isinstance(ep, Profile) else load_profile(ep)
        options = self.profile.session_options(threads)
        if profile_prefix is not None:  # ORT's per-node profile (edgekit.breakdown), ended by end_profiling()
            options.enable_profiling, options.profile_file_prefix = True, profile_prefix
        providers = self.profile.providers()
        source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else _checked_path(model)
        try:
            self._session = ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"ONNX Runtime cannot load {_name(model)}: {first_line(exc)}") from None
        meta = self._session.get_modelmeta().custom_metadata_map
        self.interface: Interface | None = Interface.from_metadata(meta)  # None: not exported by edgekit
        self.metadata: dict[str, str] = dict(meta)

    def end_profiling(self) -> str:
        """Stop ORT's per-node profiling (a session made with `profile_prefix`); returns the JSON file."""
        return self._session.end_profiling()

    @property
    def task(self) -> str | None:
        return self.interface.task if self.interface else None

    @property
    def method(self) -> str:
        return self.interface.method if self.interface else "onnx"

    @property
    def inputs(self) -> list[TensorSpec]:
        """Names, dims (symbolic axes by name) and dtypes of the inputs, with valid ranges where declared."""
        if self.interface:
            return list(self.interface.inputs)
        return [_spec_of(arg) for arg in self._session.get_inputs()]

    @property
    def outputs(self) -> list[TensorSpec]:
        if self.interface:
            return list(self.interface.outputs)
        return [_spec_of(arg) for arg in self._session.get_outputs()]

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self._session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    def run(self, feeds: Mapping[str, np.ndarray] | np.ndarray,
            outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model; returns {output name: array}. Wrong names, dtypes, shapes or ranges raise ShapeError.

        A model with one input also takes the bare array.
        """
        feeds = self._checked_feeds(feeds)
        names = outputs or self.output_names
        unknown = sorted(set(names) - set(self.output_names))
        if unknown:
            raise ShapeError(f"unknown model output(s): {', '.join(unknown)}; outputs: {', '.join(self.output_names)}")
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # ORT would also log a failed run on stderr; the ShapeError says it once
        try:
            values = self._session.run(names, feeds, quiet)
        except Exception as exc:
            raise ShapeError(f"ONNX Runtime rejected the inputs: {first_line(exc)}") from None
        return dict(zip(names, values))

    def run_bound(self, feeds: Mapping[str, "np.ndarray | ort.OrtValue"],
                  outputs: Mapping[str, "ort.OrtValue"] | None = None) -> list["ort.OrtValue"]:
        """Run with IO binding, unchecked (a decode loop checks its own inputs): OrtValue inputs are used in
        place, outputs named in `outputs` are written into the OrtValues given (ONNX Runtime allocates the
        others), and every output comes back as an OrtValue, in output order."""
        binding = self.io_binding()
        for name, value in feeds.items():
            bind_input(binding, name, value)
        for name in self.output_names:
            if outputs and name in outputs:
                binding.bind_ortvalue_output(name, outputs[name])
            else:
                binding.bind_output(name)
        self.run_binding(binding)
        return binding.get_outputs()

    def io_binding(self) -> "ort.IOBinding":
        """A fresh IO binding of this session, for a caller that keeps its buffers bound across runs."""
        return self._session.io_binding()

    def run_binding(self, binding: "ort.IOBinding") -> None:
        try:
            self._session.run_with_iobinding(binding)
        except Exception as exc:
            raise ShapeError(f"ONNX Runtime rejected the inputs: {first_line(exc)}") from None

    def _checked_feeds(self, feeds) -> dict[str, np.ndarray]:
        if isinstance(feeds, np.ndarray) and len(self.input_names) == 1:
            feeds = {self.input_names[0]: feeds}
        if not isinstance(feeds, Mapping):
            raise ShapeError(f"feeds must be a dict of input name -> numpy array (inputs: "
                             f"{', '.join(self.input_names)}), got {type(feeds).__name__}")
        missing = sorted(set(self.input_names) - set(feeds))
        extra = sorted(set(feeds) - set(self.input_names))
        if missing or extra:
            what = "missing model input(s): " + ", ".join(missing) if missing else \
                "unknown model input(s): " + ", ".join(extra)
            raise ShapeError(f"{what}; inputs: {', '.join(self.input_names)}")
        checked = {s.name: s.validate(feeds[s.name]) for s in self.inputs}
        self._check_sizes(checked)
        return checked

    def _check_sizes(self, feeds: dict[str, np.ndarray]) -> None:
        if not self.interface:
            return
        sizes = {d: n for s in self.interface.inputs for d, n in zip(s.dims, feeds[s.name].shape)
                 if isinstance(d, str)}
        self.interface.check_sizes(sizes)
        over = self.interface.over_limits(sizes)
        if over:
            warnings.warn(f"{'; '.join(over)}: past what the model was trained for (results may degrade)",
                          EdgekitWarning, stacklevel=3)


def bind_input(binding: "ort.IOBinding", name: str, value: "np.ndarray | ort.OrtValue") -> None:
    """An OrtValue is bound as it is (no copy); a numpy array through ONNX Runtime's CPU binding."""
    if isinstance(value, ort.OrtValue):
        binding.bind_ortvalue_input(name, value)
    else:
        binding.bind_cpu_input(name, value)


def load_model(path: str | os.PathLike, load_external_data: bool = True) -> onnx.ModelProto:
    """The ONNX model at `path` (with its external data); a missing or unreadable file is a ModelLoadError."""
    try:
        return onnx.load(str(_checked_path(path)), load_external_data=load_external_data)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable ONNX model: {first_line(exc, 200)}") from None


def file_bytes(path: str | os.PathLike, model: onnx.ModelProto) -> int:
    """The model file plus the external data files its initializers name (`model` loaded without them)."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = Path(path)
    data = {ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)}
    return path.stat().st_size + sum((path.parent / d).stat().st_size for d in data if (path.parent / d).exists())


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """A model file's metadata without its weights; ORT-format files (no protobuf) through ONNX Runtime."""
    if Path(path).suffix == ".ort":
        return Session(path).metadata
    return {p.key: p.value for p in load_model(path, load_external_data=False).metadata_props}


def _spec_of(arg) -> TensorSpec:
    dims = tuple(d if isinstance(d, int) else str(d) for d in (arg.shape or []))
    return TensorSpec(arg.name, _ORT_DTYPES.get(arg.type, arg.type), dims)


def _checked_path(model: str | os.PathLike) -> str:
    path = Path(model)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    return str(path)


def _name(model) -> str:
    return "the in-memory model" if isinstance(model, onnx.ModelProto) else str(model)
