"""Exporter tests, parametrised from the family registry: every family's "-tiny" presets, dense and DHSA.

Each export (~5-10 s) happens once per module and is shared by the tests that inspect it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir
import pytest
import torch

import edgekit.exporting as export_module
from edgekit.errors import (EdgekitError, ExportParityError, InvalidAttributeError, ModelLoadError, OutputError,
                            UnsupportedModelError)
from edgekit.exporting import export
from edgekit.exporters import families, presets
from edgekit.runtime_ops import DOMAIN, DOMAIN_OPSET, get_op
from edgekit.session import Session

# small DHSA options so that check_tokens=150 runs the sparse path (budget 64 < 150 tokens)
DHSA_OPTIONS = dict(block_size=16, chunk_size=8, budget_tokens=64, sink_tokens=8, local_tokens=16)
METHOD_OPTIONS = {"dense": {}, "dhsa": DHSA_OPTIONS}
CHECK_TOKENS = 150

LLMS = families("text-generation")  # other kinds have their own tests (tests/test_policy.py)
TINY = [(family, name) for family in LLMS for name in family.presets if name.endswith("-tiny")]
ROWS = [pytest.param(family, name, method, id=f"{name}-{method}") for family, name in TINY for method in METHOD_OPTIONS]


def test_every_family_has_a_tiny_preset():
    assert {f for f, _ in TINY} == set(LLMS) and len(LLMS) >= 3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(preset, method) -> (ExportResult, path); each export runs once for the module."""
    cache = {}

    def get(name: str, method: str):
        if (name, method) not in cache:
            path = tmp_path_factory.mktemp("export") / f"{name}-{method}.onnx"
            result = export(name, str(path), method=method, check_tokens=CHECK_TOKENS, **METHOD_OPTIONS[method])
            cache[name, method] = result, path
        return cache[name, method]

    return get


def torch_logits(family, name, method, ids: torch.Tensor, logits_to_keep: int = 1) -> np.ndarray:
    """Logits of the PyTorch prefill graph the export was made from (same seeded weights)."""
    options = family.split_options(method, METHOD_OPTIONS[method])[0]
    graph = family.prepare(family.from_preset(name), method, options, logits_to_keep=logits_to_keep)
    with torch.no_grad():
        return graph(ids)[0].numpy()


def assert_logits_close(got, expected):
    limit = 1e-4 * max(1.0, float(np.abs(expected).max()))
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= limit


@pytest.mark.parametrize("family, name, method", ROWS)
def test_export_writes_a_checked_model(exported, family, name, method):
    result, path = exported(name, method)
    assert path.is_file() and result.path == str(path)
    assert (result.model, result.method, result.check_tokens) == (name, method, CHECK_TOKENS)
    assert result.max_abs_error <= result.tolerance
    assert result.options == ({**DHSA_OPTIONS, "adaptive_chunks": 1, "length_scaled": 1, "chunk_score": 2} if method == "dhsa" else {})
    assert not [p for p in path.parent.iterdir() if p != path], "export left extra files beside the output"


@pytest.mark.parametrize("family, name, method", ROWS)
def test_written_file_matches_pytorch_at_two_lengths(exported, family, name, method):
    _, path = exported(name, method)
    session = Session(path, ep="cpu")
    vocab = family.presets[name]["vocab_size"]
    for length in (23, 170):  # below and above the DHSA budget; 170 is past Gemma2's window too
        ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(length))
        outputs = session.run({"input_ids": ids.numpy()})
        assert_logits_close(outputs["logits"], torch_logits(family, name, method, ids))
        assert outputs["present.0.key"].shape[-1] == outputs["present.0.value"].shape[-1]


@pytest.mark.parametrize("family, name, method", ROWS)
def test_batch_rows_are_independent_and_match_the_declared_shapes(exported, family, name, method):
    """A batch of 3 prompts (sparse path for DHSA) gives each row what that prompt gives alone."""
    _, path = exported(name, method)
    session = Session(path, ep="cpu")
    ids = torch.randint(0, family.presets[name]["vocab_size"], (3, 90), generator=torch.Generator().manual_seed(3))
    batched = session.run({"input_ids": ids.numpy()})
    declared = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
                for o in onnx.load(str(path), load_external_data=False).graph.output}
    for out_name, value in batched.items():
        dims = declared[out_name]
        assert dims[0] == "batch" and value.shape[0] == 3
        assert all(d == v for d, v in zip(dims, value.shape) if isinstance(d, int)), (out_name, dims, value.shape)
    for row in range(3):
        alone = session.run({"input_ids": ids[row:row + 1].numpy()})
        for out_name, value in alone.items():
            np.testing.assert_allclose(batched[out_name][row:row + 1], value, rtol=0, atol=1e-4)


@pytest.mark.parametrize("family, name, method", ROWS)
def test_graph_structure(exported, family, name, method):
    _, path = exported(name, method)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    layers = family.presets[name]["num_hidden_layers"]
    nodes = [(n.domain, n.op_type) for n in model.graph.node]
    imports = {o.domain: o.version for o in model.opset_import}
    props = {p.key: p.value for p in model.metadata_props}
    assert props["edgekit.model"] == name and props["edgekit.method"] == method
    windowed = nodes.count((DOMAIN, "SlidingWindowAttention"))
    assert windowed == sliding_layers(family.from_preset(name))
    functions = [(f.domain, f.name) for f in model.functions]
    if windowed:
        assert (DOMAIN, "SlidingWindowAttention") in functions
    if method == "dhsa" and windowed == layers:  # every layer is windowed (Mistral): nothing left for DHSA
        assert (DOMAIN, "DHSAAttention") not in nodes and ("", "Attention") not in nodes
    elif method == "dhsa":
        assert nodes.count((DOMAIN, "DHSAAttention")) + windowed == layers
        assert ("", "Attention") not in nodes
        assert (DOMAIN, "DHSAAttention") in functions
        assert imports[DOMAIN] == DOMAIN_OPSET
        node = next(n for n in model.graph.node if n.op_type == "DHSAAttention")
        version = get_op("DHSAAttention").version
        assert {p.key: p.value for p in node.metadata_props}["edgekit.version"] == str(version)
        assert json.loads(props["edgekit.ops"])["DHSAAttention"] == version
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert {k: attrs[k] for k in DHSA_OPTIONS} == DHSA_OPTIONS
        assert json.loads(props["edgekit.options"])["budget_tokens"] == 64
    else:
        assert nodes.count(("", "Attention")) + windowed == layers
        assert [n for n in nodes if n[0] == DOMAIN] == [(DOMAIN, "SlidingWindowAttention")] * windowed
        assert functions == [(DOMAIN, "SlidingWindowAttention")] * bool(windowed)
        assert (DOMAIN in imports) == bool(windowed)


def sliding_layers(model) -> int:
    """Layers whose Hugging Face attention has a sliding window (Gemma2/3's local layers, Mistral's)."""
    def window(attn):
        return getattr(attn, "sliding_window", None) or (
            getattr(model.config, "sliding_window", None) if type(model).__name__.startswith("Mistral") else None)
    return sum(bool(window(layer.self_attn)) for layer in model.model.layers)


# Config values that make a feature matter with tiny random weights (a softcap of 50 barely bends logits of ~1).
STRESS = {"attn_logit_softcapping": 1.0, "sliding_window": 16}


@pytest.mark.parametrize("family, name, method", ROWS)
def test_swapped_attention_matches_hugging_face_eager(monkeypatch, family, name, method):
    """The attention edgekit swaps in (dense, or DHSA with budget >= S) computes what the model's own eager
    attention computes, at every position. Export parity alone cannot show this: PyTorch and ONNX
    Runtime would share a wrong mask or a dropped softcap."""
    stressed = {k: v for k, v in STRESS.items() if k in family.presets[name]}
    monkeypatch.setitem(family.presets, name, {**family.presets[name], **stressed})
    ids = torch.randint(0, family.presets[name]["vocab_size"], (1, 60), generator=torch.Generator().manual_seed(0))
    eager = family.from_preset(name)
    eager.set_attn_implementation("eager")
    options = family.split_options(method, METHOD_OPTIONS[method])[0]
    graph = family.prepare(family.from_preset(name), method, options, logits_to_keep=60)
    with torch.no_grad():
        expected = eager(input_ids=ids).logits
        got = graph(ids)[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", METHOD_OPTIONS)
def test_sliding_layers_run_the_window_op_and_global_layers_keep_the_softcap(exported, method):
    name = next((n for _, n in TINY if n.startswith("gemma2")), None)
    assert name, "the Gemma2 family lost its tiny preset"
    model = onnx.load(exported(name, method)[1])
    config = presets()[name][1]
    attrs = [(n.op_type, {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute})
             for n in model.graph.node if n.op_type in ("SlidingWindowAttention", "DHSAAttention", "Attention")]
    windowed = [a for op_type, a in attrs if op_type == "SlidingWindowAttention"]
    assert windowed and {a["window"] for a in windowed} == {config["sliding_window"]}
    assert {round(a["softcap"], 4) for _, a in attrs} == {config["attn_logit_softcapping"]}
    assert len(windowed) < len(attrs)  # Gemma2 alternates: some layers are global


def test_export_from_hugging_face_folder(tmp_path):
    family, _ = presets()["llama-tiny"]
    model = family.from_preset("llama-tiny", seed=1)  # not the preset's seed-0 weights
    model.save_pretrained(tmp_path / "my-llama")
    out = tmp_path / "out" / "folder.onnx"
    result = export(str(tmp_path / "my-llama"), str(out), check_tokens=16)
    assert result.model == "my-llama" and out.is_file()
    ids = torch.randint(0, 512, (1, 20), generator=torch.Generator().manual_seed(0))
    graph = family.prepare(model, "dense", {})
    with torch.no_grad():
        expected = graph(ids)[0].numpy()
    assert_logits_close(Session(out).run({"input_ids": ids.numpy()})["logits"], expected)


def test_logits_to_keep(tmp_path):
    family, _ = presets()["llama-tiny"]
    out = tmp_path / "keep4.onnx"
    export("llama-tiny", str(out), check_tokens=16, logits_to_keep=4)
    ids = torch.randint(0, 512, (1, 30), generator=torch.Generator().manual_seed(0))
    logits = Session(out).run({"input_ids": ids.numpy()})["logits"]
    assert logits.shape == (1, 4, 512)
    assert_logits_close(logits, torch_logits(family, "llama-tiny", "dense", ids, logits_to_keep=4))


# ---------------------------------------------------------------------------------------------------
# errors: typed, helpful, and no output file left behind


def _assert_nothing_written(directory: Path):
    assert not directory.exists() or not list(directory.iterdir()), f"left {list(directory.iterdir())}"


@pytest.fixture
def gpt2_folder(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32,
                                       bos_token_id=0, eos_token_id=0))
    model.save_pretrained(tmp_path / "gpt2-tiny")
    return tmp_path / "gpt2-tiny"


def test_unknown_preset(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown model 'llama-huge'") as info:
        export("llama-huge", str(tmp_path / "out" / "m.onnx"))
    assert "llama-tiny" in str(info.value)  # lists what exists
    _assert_nothing_written(tmp_path / "out")


def test_folder_without_config(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match="config.json"):
        export(str(tmp_path / "weights"), str(tmp_path / "out" / "m.onnx"))
    _assert_nothing_written(tmp_path / "out")


def test_unsupported_architecture(gpt2_folder, tmp_path):
    with pytest.raises(UnsupportedModelError) as info:
        export(str(gpt2_folder), str(tmp_path / "out" / "m.onnx"))
    message = str(info.value)
    assert "GPT2LMHeadModel" in message
    for family in families():
        for architecture in family.architectures:
            assert architecture in message
    assert "exporters/" in message  # says what to do next
    _assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("options, error, named", [
    (dict(budget_tokens=0), InvalidAttributeError, "budget_tokens"),
    (dict(block_size=0), InvalidAttributeError, "block_size"),
    (dict(budget_tokens=100, sink_tokens=64, local_tokens=64), InvalidAttributeError, "budget_tokens"),
    (dict(chunk_size=2.5), InvalidAttributeError, "chunk_size"),
    (dict(softcap=1.0), EdgekitError, "softcap"),  # set by the model, not the user
    (dict(bogus=1), EdgekitError, "bogus"),
], ids=["budget0", "block0", "budget_lt_forced", "float_chunk", "model_owned_softcap", "unknown"])
def test_impossible_dhsa_options_fail_before_loading(monkeypatch, tmp_path, options, error, named):
    def no_loading(spec, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(export_module.sources, "load", no_loading)
    with pytest.raises(error, match=named):
        export("llama-tiny", str(tmp_path / "out" / "m.onnx"), method="dhsa", **options)
    _assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("kwargs, named", [
    (dict(method="flash"), "flash"),
    (dict(method="dense", budget_tokens=64), "budget_tokens"),
    (dict(logits_to_keep=-1), "logits_to_keep"),
    (dict(check_tokens=2, logits_to_keep=4), "logits_to_keep"),
], ids=["unknown_method", "dense_with_options", "keep_negative", "keep_gt_check"])
def test_bad_export_arguments(monkeypatch, tmp_path, kwargs, named):
    monkeypatch.setattr(export_module.sources, "load", lambda spec, **kwargs: pytest.fail("loaded the model"))
    with pytest.raises(EdgekitError, match=named):
        export("llama-tiny", str(tmp_path / "out" / "m.onnx"), **kwargs)
    _assert_nothing_written(tmp_path / "out")


@pytest.fixture
def fast_export(monkeypatch, exported):
    """Real export() with the slow torch.onnx step replaced by the file the module already exported."""
    family, _ = presets()["llama-tiny"]
    _, path = exported("llama-tiny", "dense")
    monkeypatch.setattr(family, "to_onnx_ir", classmethod(lambda cls, *args, **kwargs: onnx_ir.load(str(path))))
    return export


def test_parity_failure_writes_nothing(fast_export, tmp_path):
    with pytest.raises(ExportParityError) as info:
        fast_export("llama-tiny", str(tmp_path / "out" / "m.onnx"), check_tokens=8, tolerance=1e-12)
    assert info.value.output == "logits" and info.value.max_abs_error > info.value.tolerance
    assert "tolerance" in str(info.value)
    _assert_nothing_written(tmp_path / "out")


def test_parity_check_catches_a_wrong_graph(fast_export, monkeypatch, tmp_path):
    """A graph whose weights differ from PyTorch's must fail the check, whatever the tolerance slack."""
    family, _ = presets()["llama-tiny"]
    monkeypatch.setattr(export_module.sources, "load",
                        lambda spec, **kwargs: (family, family.from_preset(spec, seed=1), spec))
    with pytest.raises(ExportParityError):
        fast_export("llama-tiny", str(tmp_path / "out" / "m.onnx"), check_tokens=8)
    _assert_nothing_written(tmp_path / "out")


def test_failed_write_leaves_no_partial_or_temp_file(fast_export, monkeypatch, tmp_path):
    def broken_save(proto, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "write_self_contained", broken_save)
    with pytest.raises(OutputError, match="disk full"):
        fast_export("llama-tiny", str(tmp_path / "out" / "m.onnx"), check_tokens=8)
    _assert_nothing_written(tmp_path / "out")


def test_fast_export_writes_the_file(fast_export, tmp_path):
    """The control for the two tests above: the same path succeeds when nothing is broken."""
    result = fast_export("llama-tiny", str(tmp_path / "out" / "m.onnx"), check_tokens=8)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["m.onnx"]
    assert result.max_abs_error <= result.tolerance


def test_export_check_runs_the_sparse_path(monkeypatch, tmp_path):
    """The check must reach DHSA's sparse selection, not only its dense branch (S <= budget). If the
    checked file kept its 2048-token budget, ONNX Runtime would attend densely to the 160-token path check
    while PyTorch selects keys, and the check must fail: proof that the sparse path is compared."""
    monkeypatch.setattr(export_module, "with_op_attributes", lambda proto, op, attrs: proto)
    with pytest.raises(ExportParityError):
        export("llama-tiny", str(tmp_path / "out" / "m.onnx"), method="dhsa")
    _assert_nothing_written(tmp_path / "out")


def test_export_check_covers_every_output_at_batch_2(exported):
    result, _ = exported("llama-tiny", "dense")
    assert result.check_workload == {"seq_len": CHECK_TOKENS, "batch_size": 2}
    assert result.worst_output == "logits" or result.worst_output.startswith("present.")


def test_large_models_are_written_with_external_data(monkeypatch, tmp_path):
    """Past protobuf's 2 GB limit the weights go to `<name>.data`; the check runs the written pair and the
    two appear together. The threshold is lowered so a tiny model takes the same path."""
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_BYTES", 0)
    out = tmp_path / "out" / "m.onnx"
    result = export("llama-tiny", str(out), method="dhsa", **DHSA_OPTIONS, check_tokens=16)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert out.stat().st_size < 0.2 * (out.parent / "m.onnx.data").stat().st_size
    assert result.size_mb * 1e6 == pytest.approx(sum(p.stat().st_size for p in out.parent.iterdir()))
    ids = np.arange(40, dtype=np.int64)[None] % 512
    expected = torch_logits(presets()["llama-tiny"][0], "llama-tiny", "dhsa", torch.from_numpy(ids))
    assert_logits_close(Session(str(out)).run(ids)["logits"], expected)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_damaged_external_data_is_one_error(monkeypatch, tmp_path, damage):
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_BYTES", 0)
    out = tmp_path / "m.onnx"
    export("llama-tiny", str(out), check_tokens=16)
    data = tmp_path / "m.onnx.data"
    if damage == "missing":
        data.unlink()
    else:
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="m.onnx"):
        Session(str(out))
