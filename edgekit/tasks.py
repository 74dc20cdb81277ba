"""Tasks: what a model kind computes, and the workload axes a profile sweeps for it.

A workload is a small dict such as {"seq_len": 4096, "batch_size": 1} or {"image_size": 448,
"batch_size": 64}. The task turns it into sizes for the symbolic axes of the model's inputs
(`edgekit.interface.TensorSpec.dims`) and says what one run produces (tokens, images, policy steps).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Mapping, Sequence

from edgekit.errors import ProfileError


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    axes: Mapping[str, tuple[str, ...]]  # workload key -> the symbolic input axes it sizes
    defaults: Mapping[str, tuple[int, ...]]  # workload key -> values a sweep uses when none are given
    unit: str  # throughput unit
    counted: tuple[str, ...]  # workload keys whose product is the number of units one run produces
    doc: str = ""
    implicit: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"batch_size": 1})
    # ^ keys left out of a workload unless swept (a batch of 1 is not worth a column in every table)
    # a small workload for correctness checks (quantize's and compile's agreement check, synthetic
    # calibration data): cheap, yet long enough that sparse attention takes its sparse path at small budgets
    check: Mapping[str, int] = dataclasses.field(default_factory=dict)
    sums: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # ^ axes sized as the sum of others (a decode step's cache holds the past and the new tokens)

    def value(self, workload: Mapping[str, int], key: str) -> int:
        return int(workload[key] if key in workload else self.implicit[key])

    def sizes(self, workload: Mapping[str, int]) -> dict[str, int]:
        sizes = {axis: self.value(workload, key) for key, axes in self.axes.items() for axis in axes
                 if key in workload or key in self.implicit}
        sizes.update({axis: sum(sizes[p] for p in parts) for axis, parts in self.sums.items()
                      if all(p in sizes for p in parts)})
        return sizes

    def items(self, workload: Mapping[str, int]) -> int:
        return math.prod(self.value(workload, k) for k in self.counted)

    def workloads(self, **values: Sequence[int] | None) -> list[dict[str, int]]:
        """Every combination of the given axis values (defaults for the others), in sweep order.

        An axis this task does not have is an error, so `--image-sizes` on an LLM says so.
        """
        foreign = [k for k, v in values.items() if v and k not in self.axes]
        if foreign:
            flags = ", ".join("--" + k.replace("_", "-") + "s" for k in foreign)
            raise ProfileError(f"{flags} does not apply to {self.name} models (axes: "
                               f"{', '.join(self.axes)})")
        grid = {k: tuple(values.get(k) or self.defaults[k]) for k in self.axes
                if values.get(k) or k not in self.implicit}
        for key, vals in grid.items():
            if not vals or min(vals) < 1:
                raise ProfileError(f"{key} values must be positive integers, got {list(vals)}")
        return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


TASKS = {t.name: t for t in (
    Task("text-generation", {"seq_len": ("sequence",), "batch_size": ("batch",), "past_len": ("past_sequence",)},
         {"seq_len": (1024, 4096, 8192)}, "tokens/s", ("batch_size", "seq_len"),
         "decoder LLM prefill: token ids -> last-token logits and the present key/value cache (a decode "
         "step also takes the cache: past_len tokens, and seq_len new ones, in buffers just that long)",
         implicit={"batch_size": 1, "past_len": 0}, check={"seq_len": 128, "batch_size": 1},
         sums={"total_sequence": ("past_sequence", "sequence"), "context": ("past_sequence", "sequence")}),
    Task("image-classification", {"image_size": ("height", "width"), "batch_size": ("batch",)},
         {"image_size": (224,)}, "images/s", ("batch_size",),
         "image backbone with a classification head: images -> class logits",
         check={"image_size": 224, "batch_size": 1}),
    Task("embodied-policy", {"batch_size": ("batch",)}, {"batch_size": (1,)}, "steps/s", ("batch_size",),
         "one policy step: observation + recurrent state -> action logits, value, new state", implicit={},
         check={"batch_size": 1}),
    Task("image-text-to-text", {"seq_len": ("sequence",), "batch_size": ("batch",)}, {"seq_len": (64,)},
         "prompts/s", ("batch_size",),
         "VLM prefill: image + prompt ids with one image slot -> last-token logits and the present key/value "
         "cache (the image size is fixed by the vision tower)", check={"seq_len": 64, "batch_size": 1}),
)}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ProfileError(f"unknown task '{name}'; known: {', '.join(TASKS)}") from None


def describe(workload: Mapping[str, int]) -> str:
    """A short label such as '4096 tokens' or '448 px, batch 64' for progress bars and messages."""
    labels = {"seq_len": "{} tokens", "image_size": "{} px", "batch_size": "batch {}"}
    parts = [labels.get(k, k + " {}").format(v) for k, v in workload.items()
             if not (k == "batch_size" and v == 1 and len(workload) > 1)]
    return ", ".join(parts)
