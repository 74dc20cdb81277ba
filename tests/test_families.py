"""Every registered family of a kind other than LLMs (those have tests/test_exporters.py), every method,
through the public `export` and `Session`: parametrised from the registry, so a new family or method is
exported, checked against PyTorch and run the day it lands."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgekit.exporting import export
from edgekit.exporters import families
from edgekit.interface import Interface
from edgekit.session import Session
from edgekit.tasks import get_task

OTHER_KINDS = [f for f in families() if f.task != "text-generation"]
ROWS = [pytest.param(f, m, id=f"{f.__name__}-{m}") for f in OTHER_KINDS for m in f.methods]


def tiny_preset(family) -> str:
    names = [n for n in family.presets if n.endswith("-tiny")]
    assert names, f"{family.__name__} needs a '-tiny' preset for the tests"
    return names[0]


def test_every_kind_is_registered():
    assert {f.task for f in families()} >= {"text-generation", "image-classification", "embodied-policy"}


@pytest.mark.parametrize("family, method", ROWS)
def test_export_records_the_interface_and_session_runs_it(family, method, tmp_path):
    path = tmp_path / f"{method}.onnx"
    result = export(tiny_preset(family), str(path), method=method)
    assert result.task == family.task and result.max_abs_error <= result.tolerance
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    interface = Interface.from_metadata(meta)
    assert (interface.task, interface.method, interface.family) == (family.task, method, family.__name__)
    assert json.loads(meta["edgekit.options"]) == result.options
    session = Session(str(path))
    feeds = interface.example_inputs(get_task(family.task).sizes(result.check_workload), seed=1)
    out = session.run(feeds)
    assert [o.name for o in session.outputs] == list(out)
    sizes = {d: n for s in session.inputs for d, n in zip(s.dims, feeds[s.name].shape) if isinstance(d, str)}
    for spec in session.outputs:  # every output has the shape its declared dims give
        assert out[spec.name].shape == spec.shape_for(sizes), spec.name
        assert np.isfinite(out[spec.name]).all()
