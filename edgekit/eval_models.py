"""The models an accuracy evaluation runs: checked before any long run, each DHSA model at every budget asked.

A DHSA model is evaluated at another `budget_tokens` without re-exporting: the attribute of every
`edgekit::DHSAAttention` node is overridden in the loaded proto (validated by the op's own schema) before
the session is created. ONNX Runtime inlines the op's function body with the node's attributes when the
session starts, so the new budget is all that changes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import onnx

from edgekit.errors import EdgekitError, ModelLoadError, first_line
from edgekit.interface import Interface

DHSA_OP = "DHSAAttention"
BUDGET = "budget_tokens"


@dataclasses.dataclass(frozen=True)
class EvalModel:
    """One model at one budget (None: as exported). `logits_rows` None: logits of every position."""

    path: str
    method: str
    interface: Interface
    metadata: dict
    logits_rows: int | None
    budget: int | None = None
    exported_budget: int | None = None

    @property
    def label(self) -> str:
        return f"{Path(self.path).name} ({self.method}" + (f", budget {self.budget})" if self.budget else ")")

    @property
    def context(self) -> int | None:
        return self.interface.limits.get("sequence")

    def session(self, ep: str, threads: int | None):
        """An ONNX Runtime session of this variant (the budget written into the proto first)."""
        from edgekit.session import Session

        if self.budget is None:
            return Session(self.path, ep=ep, threads=threads)
        return Session(with_budget(onnx.load(self.path), self.budget), ep=ep, threads=threads)


def _dhsa_nodes(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    from edgekit.runtime_ops import DOMAIN
    from edgekit.runtime_ops.attach import all_nodes

    return [n for n in all_nodes(proto) if n.domain == DOMAIN and n.op_type == DHSA_OP]


def with_budget(proto: onnx.ModelProto, budget: int) -> onnx.ModelProto:
    """The proto (changed in place) with `budget_tokens = budget` on every DHSA node, each checked by the op."""
    from edgekit.runtime_ops import get_op

    op = get_op(DHSA_OP)
    nodes = _dhsa_nodes(proto)
    if not nodes:
        raise EdgekitError("a budget applies to DHSA models only: this model has no DHSAAttention node")
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        op.resolve(**{**attrs, BUDGET: budget})  # the op's bounds (>= 1, >= sink + local + block)
        for a in node.attribute:
            if a.name == BUDGET:
                a.i = budget
    return proto


def load_models(paths: Sequence[str], budgets: Sequence[int] | None = None) -> list[EvalModel]:
    """Every model checked (edgekit text-generation exports); DHSA models once per budget, others once.

    Budgets are validated now against each DHSA model's nodes, so a bad one fails before any long run.
    """
    if not paths:
        raise EdgekitError("no models to evaluate")
    models = [_inspect(p) for p in paths]
    if not budgets:
        return models
    if not any(m.exported_budget for m in models):
        raise EdgekitError(f"--budgets applies to DHSA models; {', '.join(m.label for m in models)} "
                           f"{'has' if len(models) == 1 else 'have'} no DHSA node")
    out = []
    for m in models:
        if m.exported_budget is None:
            out.append(m)
            continue
        proto = onnx.load(m.path, load_external_data=False)
        for budget in budgets:
            with_budget(proto, budget)
            out.append(dataclasses.replace(m, budget=budget))
    return out


def _inspect(path: str) -> EvalModel:
    if Path(path).is_dir():
        raise EdgekitError(f"{path} is a folder: give its prefill .onnx file")
    if not Path(path).is_file():
        raise EdgekitError(f"model file not found: {path}")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable ONNX model: {first_line(exc)}") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    interface = Interface.from_metadata(meta)
    if interface is None or interface.task != "text-generation" or interface.recurrent:
        raise EdgekitError(f"{path} is not an edgekit LLM prefill export (`edgekit export MODEL -o FILE.onnx`)")
    budgets = {onnx.helper.get_attribute_value(a) for n in _dhsa_nodes(proto) for a in n.attribute
               if a.name == BUDGET}
    return EvalModel(path, interface.method, interface, meta, _logits_rows(interface),
                     exported_budget=min(budgets) if budgets else None)


def _logits_rows(interface: Interface) -> int | None:
    """Positions the logits output covers: None = every one, else the last N (1: last token only)."""
    dims = next(s.dims for s in interface.outputs if s.name == "logits")
    if len(dims) == 2:
        return 1
    return None if isinstance(dims[1], str) else int(dims[1])


def vocab_size(model: EvalModel) -> int:
    return int(model.interface.inputs[0].high)


def check_lengths(models: Sequence[EvalModel], lengths: Sequence[int]) -> None:
    """Positive lengths, none past a model's context (max_position_embeddings)."""
    if not lengths or min(lengths) < 2:
        raise EdgekitError(f"lengths must be integers >= 2, got {list(lengths)}")
    for m in models:
        if m.context and max(lengths) > m.context:
            raise EdgekitError(f"length {max(lengths)} is beyond the context of {m.path} ({m.context} tokens)")


def recorded_tokenizer(metadata: dict[str, str], interface) -> str | None:
    """The tokenizer an exported model records (`edgekit.tokenizer`), else its packaged model's name."""
    from edgekit.exporters.sources import PACKAGED
    from edgekit.exporting import TOKENIZER

    model = interface.model if interface else None
    return metadata.get(TOKENIZER) or (model if model in PACKAGED else None)


def tokenizer_spec(models: Sequence[EvalModel], override: str | None) -> str:
    """The tokenizer every model shares: --tokenizer, else the one recorded at export (or a packaged name)."""
    if override:
        return override
    specs = {recorded_tokenizer(m.metadata, m.interface) for m in models}
    if None in specs:
        bare = next(m for m in models if recorded_tokenizer(m.metadata, m.interface) is None)
        raise EdgekitError(f"{bare.path} ({bare.interface.model or 'unknown model'}) records no tokenizer (a "
                           f"random-weight preset has none): give --tokenizer SPEC, or token ids")
    if len(specs) > 1:
        raise EdgekitError(f"the models use different tokenizers ({', '.join(sorted(specs))}): they must see the "
                           f"same tokens; evaluate them apart")
    return specs.pop()


def load_checked_tokenizer(models: Sequence[EvalModel], override: str | None):
    """The shared tokenizer, loaded; its vocabulary must fit every model's."""
    from edgekit.passkey import load_tokenizer

    spec = tokenizer_spec(models, override)
    try:
        tokenizer = load_tokenizer(spec)
    except EdgekitError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer {spec}: {first_line(exc)}") from None
    for m in models:
        if len(tokenizer) > vocab_size(m):
            raise EdgekitError(f"{m.path} has a vocabulary of {vocab_size(m)} tokens but the tokenizer {spec} has "
                               f"{len(tokenizer)}: use the tokenizer of the model that was exported")
    return tokenizer, spec
