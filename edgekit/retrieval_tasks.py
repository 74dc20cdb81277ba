"""Synthetic long-context retrieval tasks in the style of RULER, generated locally from a seed.

One class per task, its wording as data; `TASKS` is the registry. Each task draws one sample from a
`random.Random` and builds it with `haystack.build`: needles at random depths of filler text, a question,
and the answer the model must produce after the answer prefix (teacher-forced, see haystack.py). The answer
prefix repeats the needle's own words, so finding the value is a matter of retrieval, not of phrasing.

- passkey: one 5-digit key in the filler.
- multikey: several "special magic number for the <key>" needles; the question names one key.
- multivalue: one key with several values; all must be given, in the order they appear.
- vartrack: a chain of assignments (VAR A = 12345, VAR B = A, ...) beside a distractor chain; name every
  variable that holds the value, in chain order.
"""

from __future__ import annotations

import dataclasses
import random
import string
from typing import ClassVar

from edgekit.errors import EdgekitError
from edgekit.haystack import Prompt, build

ADJECTIVES = ("red", "blue", "green", "silver", "golden", "quiet", "brave", "hidden", "frozen", "ancient", "lucky",
              "crooked")
NOUNS = ("door", "river", "garden", "tower", "lamp", "bridge", "forest", "engine", "castle", "mirror", "harbor",
         "violin")


@dataclasses.dataclass(frozen=True)
class Sample:
    """One prompt with what it asks for: `values` in answer order (several: partial credit applies)."""

    task: str
    prompt: Prompt
    values: tuple[str, ...]
    question: str
    needles: tuple[str, ...]  # in the order given to haystack.build (prompt.needle_starts follows it)


def number(rng: random.Random, taken: set) -> str:
    """A fresh 5-digit number (distinct within one sample: no needle answers for another)."""
    while (value := str(rng.randint(10000, 99999))) in taken:
        pass
    taken.add(value)
    return value


def depths(rng: random.Random, n: int) -> list[float]:
    """n needle depths in [0.05, 0.95]: away from the edges, where retrieval is easiest."""
    return [rng.uniform(0.05, 0.95) for _ in range(n)]


class Task:
    """A retrieval task: `make` draws one sample of `length` tokens (model input, at most)."""

    name: ClassVar[str]
    doc: ClassVar[str]
    intro: ClassVar[str]

    def make(self, tokenizer, length: int, rng: random.Random) -> Sample:
        raise NotImplementedError

    def _sample(self, tokenizer, length, needles, question, answer_prefix, values, separator=",") -> Sample:
        prompt = build(tokenizer, length, intro=self.intro, needles=needles, question=question,
                       answer_prefix=answer_prefix, values=values, separator=separator, name=self.name)
        return Sample(self.name, prompt, tuple(values), question, tuple(text for text, _ in needles))


class Passkey(Task):
    name = "passkey"
    doc = "one 5-digit pass key hidden in filler text"
    intro = ("A pass key is hidden somewhere in the long text below. Find it and remember it: "
             "you will be asked for it at the end.")
    needle = "The pass key is {key}. Remember it. {key} is the pass key."
    question = "What is the pass key?"
    answer_prefix = "The pass key is"

    def prompt(self, tokenizer, length: int, key: str, depth: float) -> Sample:
        """The `edgekit passkey` sweep chooses the depth; `make` draws it."""
        return self._sample(tokenizer, length, [(self.needle.format(key=key), depth)], self.question,
                            self.answer_prefix, [key])

    def make(self, tokenizer, length, rng):
        return self.prompt(tokenizer, length, number(rng, set()), rng.uniform(0.0, 1.0))


class MultiKey(Task):
    name = "multikey"
    doc = "one key's number among several key-number needles"
    intro = ("Special magic numbers for several things are hidden in the long text below. Remember them: "
             "you will be asked for one of them at the end.")
    needle = "The special magic number for the {key} is {value}."
    question = "What is the special magic number for the {key}?"
    answer_prefix = "The special magic number for the {key} is"
    keys = 4  # needles: the asked one and 3 distractors

    def make(self, tokenizer, length, rng):
        names = rng.sample([f"{a} {n}" for a in ADJECTIVES for n in NOUNS], self.keys)
        taken: set = set()
        values = [number(rng, taken) for _ in names]
        needles = [(self.needle.format(key=k, value=v), d) for k, v, d in zip(names, values, depths(rng, self.keys))]
        asked = rng.randrange(self.keys)
        return self._sample(tokenizer, length, needles, self.question.format(key=names[asked]),
                            self.answer_prefix.format(key=names[asked]), [values[asked]])


class MultiValue(Task):
    name = "multivalue"
    doc = "every number of one key (several needles), in the order they appear"
    intro = ("Special magic numbers are hidden in the long text below. Remember all of them: "
             "you will be asked for them at the end.")
    needle = "One of the special magic numbers for the {key} is {value}."
    question = "What are all the special magic numbers for the {key}?"
    answer_prefix = "The special magic numbers for the {key} are"
    values = 4

    def make(self, tokenizer, length, rng):
        key = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
        taken: set = set()
        values = [number(rng, taken) for _ in range(self.values)]
        at = sorted(depths(rng, self.values))  # values[i] is the i-th to appear: the answer's order
        needles = [(self.needle.format(key=key, value=v), d) for v, d in zip(values, at)]
        return self._sample(tokenizer, length, needles, self.question.format(key=key),
                            self.answer_prefix.format(key=key), values)


class VarTrack(Task):
    name = "vartrack"
    doc = "every variable of an assignment chain that holds a value, beside a distractor chain"
    intro = "Memorize and track the chains of variable assignments hidden in the long text below."
    assign = "VAR {name} = {value}."
    question = "Which variables are assigned the value {value}?"
    answer_prefix = "The variables assigned the value {value} are"
    hops = 3  # assignments after the first: 4 variables hold the value

    def make(self, tokenizer, length, rng):
        taken: set = set()
        names = [self._name(rng, taken) for _ in range(2 * (self.hops + 1))]
        chain, other = names[: self.hops + 1], names[self.hops + 1:]
        numbers: set = set()
        value, decoy = number(rng, numbers), number(rng, numbers)
        needles = self._chain(chain, value, sorted(depths(rng, len(chain))))
        needles += self._chain(other, decoy, sorted(depths(rng, len(other))))
        return self._sample(tokenizer, length, needles, self.question.format(value=value),
                            self.answer_prefix.format(value=value), chain)

    def _chain(self, names: list[str], value: str, at: list[float]) -> list[tuple[str, float]]:
        sources = [value] + names[:-1]  # VAR A = 12345, VAR B = A, VAR C = B, ...
        return [(self.assign.format(name=n, value=s), d) for n, s, d in zip(names, sources, at)]

    @staticmethod
    def _name(rng: random.Random, taken: set) -> str:
        while (name := "".join(rng.choices(string.ascii_uppercase, k=5))) in taken:
            pass
        taken.add(name)
        return name


TASKS: dict[str, Task] = {t.name: t for t in (Passkey(), MultiKey(), MultiValue(), VarTrack())}


def get_tasks(names) -> list[Task]:
    """Tasks by name; an unknown name is one error listing the known ones."""
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise EdgekitError(f"unknown task '{unknown[0] if unknown else ''}'; known: {', '.join(TASKS)}")
    return [TASKS[n] for n in names]


def make_cases(tokenizer, tasks, lengths, samples: int, seed: int) -> list[dict]:
    """`samples` prompts per (task, length), each (task, length) from its own seeded stream: adding a task
    or a length leaves the others' prompts as they were, and every model sees the same prompts."""
    cases = []
    for task in tasks:
        for length in lengths:
            rng = random.Random(f"{seed}/{task.name}/{length}")
            cases += [{"task": task.name, "seq_len": length, "index": i, "sample": task.make(tokenizer, length, rng)}
                      for i in range(samples)]
    return cases
