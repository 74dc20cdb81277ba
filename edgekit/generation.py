"""`Generator`: text generation with an edgekit model folder (prefill graph once, then cached decode steps).

The prompt runs through `prefill.onnx` (dense or DHSA); every new token then runs through `decode.onnx`
over a cache allocated once for the session at the context length (`KVCache`): its buffers are bound
as both the past inputs and the present outputs, so a step writes only its own row. The prefill's cache
is copied in once per prompt. Greedy by default; temperature / top-k / top-p sampling with a seed.

>>> g = Generator("out/smollm2")
>>> g.generate("The capital of France is", max_new_tokens=16).text
>>> for piece in g.stream("Tell me a story", chat=True): ...
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edgekit.errors import EdgekitError, ShapeError
from edgekit.model_folder import DECODE, PREFILL, TOKENIZER, read_manifest


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0: greedy (top-k / top-p then do not apply); top_k 0 and top_p 1: no truncation."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not self.temperature >= 0:
            raise EdgekitError(f"temperature must be >= 0 (0: greedy), got {self.temperature:g}")
        if self.top_k < 0:
            raise EdgekitError(f"top-k must be >= 0 (0: off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise EdgekitError(f"top-p must be in (0, 1], got {self.top_p:g}")

    def pick(self, logits: np.ndarray, rng: np.random.Generator) -> int:
        """One token from last-token logits (vocab,)."""
        if self.temperature == 0:
            return int(logits.argmax())
        z = logits.astype(np.float64) / self.temperature
        if 0 < self.top_k < z.size:
            z[z < np.partition(z, -self.top_k)[-self.top_k]] = -np.inf
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        if self.top_p < 1:
            order = np.argsort(-probs)
            before = np.cumsum(probs[order]) - probs[order]  # mass of the tokens ranked above each
            probs[order[before >= self.top_p]] = 0.0
            probs /= probs.sum()
        return int(rng.choice(probs.size, p=probs))


@dataclasses.dataclass
class Generation:
    """One generation's tokens, text and timings (filled in while `stream` runs)."""

    prompt_tokens: int
    token_ids: list[int] = dataclasses.field(default_factory=list)
    text: str | None = None  # None: the model has no tokenizer
    finish_reason: str = ""  # "stop" (a stop token or string), "length" (max_new_tokens)
    ttft_s: float = 0.0  # prompt in -> first new token out (prefill + sampling)
    decode_s: float = 0.0  # the decode steps after the first token

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.ttft_s if self.ttft_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        steps = len(self.token_ids) - 1
        return steps / self.decode_s if steps > 0 and self.decode_s else 0.0


class Generator:
    """An edgekit model folder (`edgekit export MODEL --with-decode -o DIR`) ready to generate."""

    def __init__(self, model_dir: str | Path, ep: str = "cpu", threads: int | None = None,
                 context: int | None = None):
        """`context`: tokens the cache holds (prompt + generated); default the manifest's (export --context)."""
        from edgekit.kv_cache import KVCache
        from edgekit.session import Session

        self.folder = Path(model_dir)
        self.manifest = read_manifest(self.folder)
        self.context = check_context(context or self.manifest.context, self.manifest.max_context,
                                     f"this folder's limit of {self.manifest.max_context} tokens (the model's "
                                     f"positions, or the context it was exported with past them)")
        self.prefill = Session(self.folder / PREFILL, ep=ep, threads=threads)
        self.decode = Session(self.folder / DECODE, ep=ep, threads=threads)
        self.tokenizer = _load_tokenizer(self.folder / TOKENIZER) if self.manifest.files.get("tokenizer") else None
        self.vocab_size = self.prefill.interface.inputs[0].high
        self.cache = KVCache(self.decode, self.context)  # kept for the session: every generation reuses it
        self.last: Generation | None = None  # the latest generation (stream fills it in as it goes)

    # --- prompts ---------------------------------------------------------------------------------------
    def encode(self, prompt: str | Sequence[int], chat: bool = False) -> list[int]:
        """Token ids of a prompt: text through the model's tokenizer (chat: its chat template), or ids as given."""
        if isinstance(prompt, str):
            ids = self._encode_text(prompt, chat)
        else:
            ids = [int(t) for t in prompt]
            if chat:
                raise EdgekitError("chat=True needs a text prompt (the chat template is applied to text)")
        if not ids:
            raise EdgekitError("the prompt is empty")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ShapeError(f"prompt token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        if len(ids) >= self.context:
            raise ShapeError(f"the prompt has {len(ids)} tokens; the context is {self.context}: shorten it or "
                             "raise the context (Generator(context=...) / --context)")
        return ids

    def _encode_text(self, text: str, chat: bool) -> list[int]:
        if self.tokenizer is None:
            raise EdgekitError(f"{self.manifest.model} has no tokenizer (random-weight preset): pass token ids")
        if not chat:
            return self.tokenizer.encode(text, add_special_tokens=False) if text else []
        if not self.manifest.chat_template:
            raise EdgekitError(f"{self.manifest.model}'s tokenizer has no chat template: drop chat / --chat")
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    # --- the loop ----------------------------------------------------------------------------------------
    def token_stream(self, ids: list[int], max_new_tokens: int, sampling: Sampling = Sampling(),
                     stop_token_ids: Sequence[int] = (), ignore_eos: bool = False) -> Iterator[int]:
        """New token ids, one per step, up to a stop token (yielded too) or max_new_tokens (the prompt plus
        max_new_tokens must fit the context). One stream at a time per Generator: they share its cache."""
        if max_new_tokens < 1:
            raise EdgekitError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if len(ids) + max_new_tokens > self.context:
            raise ShapeError(f"a prompt of {len(ids)} tokens + {max_new_tokens} new ones exceeds the context of "
                             f"{self.context} tokens: generate at most {max(self.context - len(ids), 0)} or raise "
                             "the context (Generator(context=...) / --context)")
        stops = self.stop_ids(stop_token_ids, ignore_eos)
        rng = np.random.default_rng(sampling.seed)
        logits = self._prefill(ids)
        ticket = self.cache.generation
        for step in range(max_new_tokens):
            token = sampling.pick(logits, rng)
            yield token
            if token in stops or step == max_new_tokens - 1:
                return
            logits = self.cache.step(token, ticket)

    def _prefill(self, ids: list[int]) -> np.ndarray:
        """The prompt through the prefill graph; its cache lands in the session's buffers. Returns (vocab,) logits."""
        import onnxruntime as ort

        present = self.cache.prefill_buffers(len(ids))
        bound = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in present.items()}
        outputs = self.prefill.run_bound({"input_ids": np.array([ids], dtype=np.int64)}, bound)
        self.cache.fill(present)
        return outputs[0].numpy()[0]

    def stop_ids(self, stop_token_ids: Sequence[int] = (), ignore_eos: bool = False) -> set[int]:
        return set(stop_token_ids) | (set() if ignore_eos else set(self.manifest.eos_token_ids))

    def stream(self, prompt: str | Sequence[int], max_new_tokens: int = 128, *, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] = (),
               stop_token_ids: Sequence[int] = (), chat: bool = False, ignore_eos: bool = False) -> Iterator:
        """Text pieces as they are generated (token ids for a model without a tokenizer).

        A stop string ends the text before it; text that might still become one is held back until it cannot.
        """
        sampling = Sampling(temperature, top_k, top_p, seed)
        if any(not s for s in stop):
            raise EdgekitError("stop strings must not be empty")
        if stop and self.tokenizer is None:
            raise EdgekitError(f"stop strings need a tokenizer; {self.manifest.model} has none: use stop_token_ids")
        ids = self.encode(prompt, chat)
        self.last = record = Generation(prompt_tokens=len(ids))
        tokens = self.token_stream(ids, max_new_tokens, sampling, stop_token_ids, ignore_eos)
        pieces = _timed(tokens, record) if self.tokenizer is None else self._texts(_timed(tokens, record), record, stop)
        yield from pieces
        if not record.finish_reason:
            ended = record.token_ids and record.token_ids[-1] in self.stop_ids(stop_token_ids, ignore_eos)
            record.finish_reason = "stop" if ended else "length"

    def _texts(self, tokens: Iterator[int], record: Generation, stop: Sequence[str]) -> Iterator[str]:
        """Decoded text pieces; cut at the first stop string. Holds back a partial UTF-8 character too."""
        hold, sent, text = max((len(s) for s in stop), default=1) - 1, 0, ""
        for _ in tokens:
            text = self.tokenizer.decode(record.token_ids, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
            if cut >= 0:
                text, record.finish_reason = text[:cut], "stop"
                tokens.close()
                break
            safe = len(text.rstrip("\ufffd")) - hold
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        record.text = text
        if len(text) > sent:
            yield text[sent:]

    def generate(self, prompt: str | Sequence[int], max_new_tokens: int = 128, **options) -> Generation:
        """The whole generation at once (the pieces of `stream`, joined); options as for `stream`."""
        for _ in self.stream(prompt, max_new_tokens, **options):
            pass
        return self.last


def check_context(context: int, max_context: int, limit: str | None = None) -> int:
    """The cache's context: at least 2 tokens, and within `max_context` (0: no limit known), which `limit`
    names in the error (default: the positions the model was trained for)."""
    if context < 2:
        raise EdgekitError(f"the context must be >= 2 tokens, got {context}")
    if max_context and context > max_context:
        limit = limit or (f"the model's {max_context} positions (export --with-decode --beyond-positions "
                          f"allows more)")
        raise EdgekitError(f"a context of {context} tokens exceeds {limit}")
    return int(context)


def _timed(tokens: Iterator[int], record: Generation) -> Iterator[int]:
    """Pass tokens through, recording them, the time to the first one and the decode time."""
    start = time.perf_counter()
    first = None
    try:
        for token in tokens:
            now = time.perf_counter()
            if first is None:
                first, record.ttft_s = now, now - start
            record.token_ids.append(token)
            record.decode_s = now - first
            yield token
    finally:
        tokens.close()


def _load_tokenizer(path: Path):
    import os

    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(path)
