"""Long retrieval prompts: needles at chosen depths of filler text, a question, and a teacher-forced answer.

Every retrieval task (`edgekit passkey`, `edgekit eval retrieval`) builds its prompt here and is scored
the same way: the model sees prompt + answer[:-1] in one prefill, and an answer token counts as produced
iff the argmax of the logits at its position is that token, which is what greedy decoding would emit
given the answer so far. An answer may hold several values (partial credit: each value whose every token
is produced counts).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from edgekit.errors import EdgekitError

FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")


@dataclasses.dataclass(frozen=True)
class Prompt:
    """Token ids of one prompt; `model_input` is what a model sees (prompt + answer, teacher-forced)."""

    ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    parts: tuple[tuple[int, int], ...]  # [start, end) of each value inside answer_ids
    needle_starts: tuple[int, ...]  # token index where each needle begins, in the order they were given

    @property
    def model_input(self) -> np.ndarray:
        """The last answer token is never an input: nothing is predicted after it."""
        return np.array([self.ids + self.answer_ids[:-1]], dtype=np.int64)  # (1, S)

    @property
    def needle_start(self) -> int:
        return self.needle_starts[0]


@dataclasses.dataclass(frozen=True)
class Score:
    """A teacher-forced answer: all tokens right, which values were right, and the argmax tokens."""

    correct: bool
    parts_correct: tuple[bool, ...]
    predicted: list[int]

    @property
    def partial(self) -> float:
        return sum(self.parts_correct) / len(self.parts_correct)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def filler_sentences(tokenizer, budget: int) -> list[list[int]]:
    """Whole filler sentences, cycled, whose tokens fit in `budget`."""
    pieces = [encode(tokenizer, " " + s) for s in FILLER]
    sentences, used = [], 0
    while used + len(pieces[len(sentences) % len(pieces)]) <= budget:
        sentences.append(pieces[len(sentences) % len(pieces)])
        used += len(sentences[-1])
    return sentences


def split_space(tokenizer, ids: list[int]) -> tuple[list[int], list[int]]:
    """Leading whitespace-only tokens (SmolLM2's " " before digits) join the prompt, not the answer.

    Otherwise the first scored token is a choice of phrasing (" the", " a" or " " after "The pass key
    is"), not of retrieval: dense SmolLM2 sometimes says "is the 60494" and would score as not found.
    """
    n = 0
    while n < len(ids) - 1 and not tokenizer.decode(ids[: n + 1]).strip():
        n += 1
    return ids[:n], ids[n:]


def answer_tokens(tokenizer, values: Sequence[str], separator: str) -> tuple[list[int], list[int], list[tuple]]:
    """(space that joins the prompt, answer ids, each value's span): " v1" + sep + " v2" + ..., piece by piece.

    Pieces are encoded apart so each value's span is exact; a tokenizer that merges across them would score
    a tokenization the model never sees, so that is refused.
    """
    ids, parts = [], []
    for i, value in enumerate(values):
        ids += encode(tokenizer, separator) if i else []
        piece = encode(tokenizer, " " + value)
        parts.append((len(ids), len(ids) + len(piece)))
        ids += piece
    whole = encode(tokenizer, " " + (separator + " ").join(values))
    if ids != whole:
        raise EdgekitError(f"the tokenizer merges tokens across the answer's values ({values!r}): "
                           f"their spans cannot be scored apart")
    space, _ = split_space(tokenizer, ids)
    return space, ids[len(space):], [(max(0, a - len(space)), b - len(space)) for a, b in parts]


def build(tokenizer, length: int, *, intro: str, needles: Sequence[tuple[str, float]], question: str,
          answer_prefix: str, values: Sequence[str], separator: str = ",", name: str = "prompt") -> Prompt:
    """A prompt whose model input is at most `length` tokens (short by less than one filler sentence).

    `needles` are (text, depth in [0, 1]); the answer is " v1, v2, ..." after `answer_prefix`.
    """
    start = encode(tokenizer, intro)
    pieces = [encode(tokenizer, " " + text) for text, _ in needles]
    space, answer, parts = answer_tokens(tokenizer, values, separator)
    end = encode(tokenizer, " " + question + " " + answer_prefix) + space
    budget = length - len(start) - sum(map(len, pieces)) - len(end) - (len(answer) - 1)
    sentences = filler_sentences(tokenizer, budget)
    if not sentences:
        raise EdgekitError(f"{name} length {length} is too short: the fixed text alone takes "
                           f"{length - budget} tokens")
    order = sorted(range(len(needles)), key=lambda i: needles[i][1])  # stable: equal depths keep their order
    ids, starts, used = list(start), [0] * len(needles), 0
    for i in order:
        split = max(used, round(needles[i][1] * len(sentences)))
        ids += [t for s in sentences[used:split] for t in s]
        starts[i], used = len(ids), split
        ids += pieces[i]
    ids += [t for s in sentences[used:] for t in s] + end
    return Prompt(tuple(ids), tuple(answer), tuple(map(tuple, parts)), tuple(starts))


def score(logits: np.ndarray, prompt: Prompt, hint: str = "") -> Score:
    """Teacher-forced score of `prompt`'s answer from the logits of the model input's last rows.

    `logits` (N, vocab) belong to the last N inputs of prompt + answer[:-1]: row -len(answer) predicts
    the first answer token, the last row the last one.
    """
    n = len(prompt.answer_ids)
    if logits.ndim != 2 or logits.shape[0] < n:
        raise EdgekitError(f"scoring a {n}-token answer needs logits of its {n} positions, got shape "
                           f"{tuple(logits.shape)}{hint}")
    predicted = logits[-n:].argmax(axis=-1).tolist()
    right = [p == a for p, a in zip(predicted, prompt.answer_ids)]
    return Score(all(right), tuple(all(right[a:b]) for a, b in prompt.parts), predicted)
