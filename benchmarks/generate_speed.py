"""Smoke benchmark of `edgekit.Generator`: TTFT, pp and tg tokens/s after random prompts of given lengths.

    python benchmarks/generate_speed.py MODEL_DIR 1024,8000 32

MODEL_DIR comes from `edgekit export MODEL --with-decode -o MODEL_DIR`. One warm-up generation first;
one timed generation per length (a smoke run: `edgekit profile MODEL_DIR --decode-tokens N` repeats).
"""

import sys

import numpy as np

from edgekit.generation import Generator


def main(folder: str, lengths: str, new_tokens: str) -> None:
    sizes = [int(n) for n in lengths.split(",")]
    g = Generator(folder, context=max(sizes) + int(new_tokens))  # one cache for every length
    for length in sizes:
        ids = np.random.default_rng(0).integers(0, g.vocab_size, length).tolist()
        g.generate(ids[:64], 4, ignore_eos=True)  # warm-up
        r = g.generate(ids, int(new_tokens), ignore_eos=True)
        print(f"{folder} context {length}: TTFT {r.ttft_s * 1000:.0f} ms (pp {r.prefill_tokens_per_s:.0f} tok/s), "
              f"tg {r.decode_tokens_per_s:.1f} tok/s over {len(r.token_ids)} tokens", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
