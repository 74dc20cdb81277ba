"""How closely a transformed model (quantized, compiled) follows the model it came from, on seeded inputs.

The inputs come from the model's interface (its metadata) at its task's small check workload; a file
edgekit did not export is described by its graph's inputs, every symbolic axis of size 1.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from edgekit.interface import TensorSpec
from edgekit.session import Session
from edgekit.tasks import TASKS

CHECK_SAMPLES = 32  # inputs per check: last-token logits give one row each, and top-1 needs rows
TOP1_OUTPUT = "logits"  # the output whose argmax is the model's answer (next token, class)


@dataclasses.dataclass
class Agreement:
    """Max |candidate - reference| per output over the check inputs; top-1 agreement of the logits."""

    max_abs_error: dict[str, float]
    top1: float | None  # share of logits rows (positions, batch rows, samples) with the same argmax
    samples: int
    sizes: dict[str, int]  # the symbolic axes of the check inputs
    inputs: str = "seeded inputs"  # what they were ("text windows" for a language model with a tokenizer)

    def worst(self) -> tuple[str, float]:
        return max(self.max_abs_error.items(), key=lambda item: item[1], default=("", 0.0))

    def describe(self) -> str:
        shown = dict([self.worst()] + [(k, v) for k, v in self.max_abs_error.items() if k == TOP1_OUTPUT])
        errors = ", ".join(f"{name} {error:.2e}" for name, error in shown.items())
        top1 = f"; top-1 agreement {self.top1:.3f}" if self.top1 is not None else ""
        axes = ", ".join(f"{k} {v}" for k, v in self.sizes.items())
        return f"max |diff| {errors} (worst output first){top1}; {self.samples} {self.inputs} ({axes})"


def check_sizes(session: Session) -> dict[str, int]:
    """Sizes for every symbolic input axis (and no others): the task's check workload, 1 for axes it does
    not size."""
    interface = session.interface
    task = TASKS.get(interface.task) if interface else None
    sized = task.sizes(task.check) if task else {}
    axes = dict.fromkeys(d for spec in session.inputs for d in spec.dims if isinstance(d, str))
    limits = interface.limits if interface else {}
    return {axis: min(sized.get(axis, 1), limits.get(axis, sized.get(axis, 1))) for axis in axes}


def check_feeds(specs: Sequence[TensorSpec], sizes: dict[str, int], seed: int,
                count: int = CHECK_SAMPLES) -> list[dict[str, np.ndarray]]:
    """`count` seeded inputs, one seed each (seed, seed + 1, ...)."""
    return [{s.name: s.synthesize(sizes, rng) for s in specs}
            for rng in (np.random.default_rng(seed + i) for i in range(count))]


def agreement_feeds(session: Session, sizes: dict[str, int], seed: int,
                    count: int = CHECK_SAMPLES) -> tuple[list[dict[str, np.ndarray]], str]:
    """The inputs a transformed model is checked on, and what they are. A language model whose tokenizer
    is known reads windows of real text (random token ids give flat logits, whose argmax flips on any
    rounding: top-1 agreement on them says little); anything else gets seeded synthetic inputs."""
    windows = _text_windows(session, sizes, seed, count)
    if windows is not None:
        return windows, "text windows"
    return check_feeds(session.inputs, sizes, seed, count), "seeded inputs"


def _text_windows(session: Session, sizes: dict[str, int], seed: int, count: int) -> list[dict] | None:
    """`count` consecutive windows of pydoc's topics text (starting `seed` windows in), batch 1."""
    from edgekit.eval_models import recorded_tokenizer

    interface = session.interface
    if interface is None or interface.task != "text-generation" or [s.name for s in session.inputs] != ["input_ids"]:
        return None
    spec = recorded_tokenizer(session.metadata, interface)
    if spec is None:
        return None
    from edgekit.passkey import load_tokenizer
    from edgekit.perplexity import default_text

    length = sizes.get("sequence", 1)
    ids = load_tokenizer(spec)(default_text(), add_special_tokens=False)["input_ids"]
    if (seed + count) * length > len(ids) or max(ids) >= (session.inputs[0].high or np.inf):
        return None  # too short a text, or a tokenizer larger than the model's vocabulary
    spec_ids = session.inputs[0]
    return [{"input_ids": spec_ids.validate(np.asarray(ids[(seed + i) * length:(seed + i + 1) * length],
                                                       dtype=np.int64)[None])} for i in range(count)]


def compare(reference: Session, candidate: Session, feeds: list[dict[str, np.ndarray]],
            sizes: dict[str, int], inputs: str = "seeded inputs") -> Agreement:
    """Run both sessions on every feed; errors in float64, over the outputs both models have."""
    names = [n for n in reference.output_names if n in candidate.output_names]
    errors = dict.fromkeys(names, 0.0)
    same, rows = 0, 0
    for feed in feeds:
        want, got = reference.run(feed, names), candidate.run(feed, names)
        for name in names:
            if want[name].size:
                diff = float(np.abs(want[name].astype(np.float64) - got[name].astype(np.float64)).max())
                errors[name] = max(errors[name], diff if np.isfinite(diff) else np.inf)  # NaN counts as inf
        if TOP1_OUTPUT in want and want[TOP1_OUTPUT].size:
            same += int((want[TOP1_OUTPUT].argmax(-1) == got[TOP1_OUTPUT].argmax(-1)).sum())
            rows += want[TOP1_OUTPUT][..., 0].size
    return Agreement(errors, same / rows if rows else None, len(feeds), sizes, inputs)
