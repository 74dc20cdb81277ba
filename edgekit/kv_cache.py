"""`KVCache`: the decode graph's pre-allocated key/value cache, kept for a Generator's whole session.

One float32 (1, Hkv, context, D) buffer per past input, allocated once (numpy memory: pages the model
never reaches stay untouched). Each buffer is bound both as its past input and as its present output,
so GroupQueryAttention sees one buffer and writes the step's new rows in place: a decode step moves no
cache data. The prefill's cache (S rows) is copied in once per prompt.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edgekit.errors import EdgekitError, ShapeError
from edgekit.session import Session, bind_input


class KVCache:
    """The buffers, the step binding that holds them, and how many rows are filled (`length`)."""

    def __init__(self, decode: Session, context: int):
        self.decode, self.context, self.length = decode, context, 0
        self.generation = 0  # counts prompts: a stream whose prompt is no longer the cache's must stop
        self.present = {past: present for present, past in decode.interface.recurrent.items()}  # past -> present
        past = [s for s in decode.inputs if s.name in self.present]
        self.arrays = {s.name: np.zeros(s.shape_for({"batch": 1, "context": context}), np.float32) for s in past}
        self.values = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in self.arrays.items()}
        self.ones = np.ones((1, context), np.int64)  # attention_mask: a view of its first `length` columns
        self.logits = np.zeros((1, decode.outputs[0].dims[-1]), np.float32)
        self.binding = decode.io_binding()
        for name, value in self.values.items():
            self.binding.bind_ortvalue_input(name, value)
            self.binding.bind_ortvalue_output(self.present[name], value)
        self.binding.bind_ortvalue_output(decode.output_names[0], ort.OrtValue.ortvalue_from_numpy(self.logits))

    def prefill_buffers(self, rows: int) -> dict[str, np.ndarray]:
        """present.* -> a (1, Hkv, rows, D) array for a prefill of `rows` tokens to write its cache into."""
        if rows > self.context:
            raise ShapeError(f"a prompt of {rows} tokens does not fit the cache's context of {self.context}")
        return {self.present[name]: np.empty((*a.shape[:2], rows, a.shape[3]), np.float32)
                for name, a in self.arrays.items()}

    def fill(self, present: dict[str, np.ndarray]) -> None:
        """Rows [0, S) of every buffer from the prefill's present (1, Hkv, S, D) each: the one copy per prompt."""
        for name, array in self.arrays.items():
            rows = present[self.present[name]].shape[2]
            array[:, :, :rows] = present[self.present[name]]
        self.length, self.generation = rows, self.generation + 1

    def step(self, token: int, generation: int | None = None) -> np.ndarray:
        """One decode step: the token's row is written in place; returns its logits (vocab,). `generation`:
        the prompt the caller continues (`self.generation` when it filled the cache)."""
        if generation is not None and generation != self.generation:
            raise EdgekitError("another generation has since taken this Generator's cache: run one stream at a "
                               "time (or one Generator each)")
        if self.length >= self.context:
            raise ShapeError(f"the cache is full: its context is {self.context} tokens (prompt + generated); "
                             "raise it with Generator(context=...) / --context")
        bind_input(self.binding, "input_ids", np.array([[token]], np.int64))
        bind_input(self.binding, "attention_mask", self.ones[:, :self.length + 1])
        self.decode.run_binding(self.binding)
        self.length += 1
        return self.logits[0]

