"""The vocabulary a written GGUF carries, so llama.cpp tokenizes text the way the source model does.

A GGUF source already holds llama.cpp's tokenizer metadata: it is copied as it is. A Hugging Face folder's
tokenizer files are read with the `gguf` package's vocab classes. A preset has no tokenizer: it gets a
placeholder vocabulary of the right size, enough for prompts of token ids.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import ModelLoadError, first_line

TOKENIZER_PREFIX = "tokenizer."
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")  # a folder with none has no tokenizer


def tokenizer_writer(source: Path | None, vocab_size: int):
    """(a function adding the vocabulary to a GGUFWriter, what it is) for a model's tokenizer source."""
    if source is None:
        return (lambda writer: add_placeholder_vocab(writer, vocab_size)), "placeholder vocabulary"
    if source.suffix == ".gguf":
        fields = gguf_tokenizer_fields(source, vocab_size)
        return (lambda writer: _add_fields(writer, fields)), f"tokenizer of {source.name}"
    if not any((source / name).is_file() for name in HF_TOKENIZER_FILES):
        return (lambda writer: add_placeholder_vocab(writer, vocab_size)), "placeholder vocabulary"
    vocab = hf_vocab(source, vocab_size)
    pre = vocab[3]
    note = "" if pre != "default" else " (pre-tokenizer not recognised: llama.cpp splits text its default way)"
    return (lambda writer: _add_hf_vocab(writer, *vocab)), f"tokenizer of {source.name}/{note}"


def add_placeholder_vocab(writer, vocab_size: int) -> None:
    """Tokens llama.cpp's SentencePiece loader accepts: <unk> <s> </s>, byte tokens, fillers.

    <|endoftext|> too: llama.cpp sets attributes on it by text for a model whose name says phi3.
    """
    from gguf import TokenType

    specials = [("<unk>", TokenType.UNKNOWN), ("<s>", TokenType.CONTROL), ("</s>", TokenType.CONTROL),
                ("<|endoftext|>", TokenType.CONTROL)]
    entries = (specials + [(f"<0x{b:02X}>", TokenType.BYTE) for b in range(256)])[:vocab_size]
    entries += [(f"[tok{i}]", TokenType.NORMAL) for i in range(len(entries), vocab_size)]
    writer.add_tokenizer_model("llama")
    writer.add_token_list([text for text, _ in entries])
    writer.add_token_scores([0.0] * vocab_size)
    writer.add_token_types([int(kind) for _, kind in entries])
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)


# ---------------------------------------------------------------------------------------------------
# from a GGUF file
# ---------------------------------------------------------------------------------------------------

def gguf_tokenizer_fields(path: Path, vocab_size: int) -> list[tuple[str, object, list]]:
    """Every tokenizer.* field of a GGUF file: (key, value, GGUF value types)."""
    from gguf import GGUFReader

    fields = [(name, field.contents(), list(field.types)) for name, field in GGUFReader(str(path)).fields.items()
              if name.startswith(TOKENIZER_PREFIX)]
    tokens = next((value for name, value, _ in fields if name == "tokenizer.ggml.tokens"), [])
    if len(tokens) != vocab_size:
        raise ModelLoadError(f"{path} holds {len(tokens)} tokens, the model's vocabulary has {vocab_size}")
    return fields


def _add_fields(writer, fields) -> None:
    for name, value, types in fields:
        writer.add_key_value(name, value, types[0], sub_type=types[-1] if len(types) > 1 else None)


# ---------------------------------------------------------------------------------------------------
# from a Hugging Face folder
# ---------------------------------------------------------------------------------------------------

def hf_vocab(folder: Path, vocab_size: int):
    """(vocab, special vocab, size, llama.cpp pre-tokenizer, added tokens) of a folder's tokenizer files:
    byte-level BPE or SentencePiece."""
    from gguf.vocab import BpeVocab, LlamaHfVocab, SpecialVocab

    errors = []
    for kind in (BpeVocab, LlamaHfVocab):
        try:
            vocab = kind(folder)
            break
        except Exception as exc:  # each class raises its own kind for "not my format"
            errors.append(f"{kind.name}: {first_line(exc)}")
    else:
        raise ModelLoadError(f"cannot read the tokenizer in {folder} ({'; '.join(errors)})")
    if vocab.vocab_size > vocab_size:
        raise ModelLoadError(f"the tokenizer in {folder} has {vocab.vocab_size} tokens, the model {vocab_size}")
    special = SpecialVocab(folder, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=vocab_size)
    config = _tokenizer_json(folder)
    added = {item["content"]: item.get("special", False) for item in config.get("added_tokens", [])}
    return vocab, special, vocab_size, pre_tokenizer(config) if vocab.tokenizer_model == "gpt2" else None, added


def _tokenizer_json(folder: Path) -> dict:
    import json

    path = folder / "tokenizer.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def pre_tokenizer(config: dict) -> str:
    """llama.cpp's name for a byte-level BPE's pre-tokenizer: GPT-2's regex split alone is "gpt-2"; others
    are not recognised here ("default")."""
    pre = config.get("pre_tokenizer") or {}
    return "gpt-2" if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) else "default"


def _add_hf_vocab(writer, vocab, special, vocab_size: int, pre: str | None, added: dict[str, bool]) -> None:
    """Tokens padded to the model's vocabulary with unused ones, as llama.cpp's converter pads; added
    tokens typed as control (special) or user-defined, so llama.cpp matches them whole."""
    from gguf import TokenType

    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        if text in added:
            kind = TokenType.CONTROL if added[text] else TokenType.USER_DEFINED
        tokens.append(text)
        scores.append(float(score))
        types.append(int(kind))
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(int(TokenType.UNUSED))
    writer.add_tokenizer_model(vocab.tokenizer_model)
    if pre:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special.add_to_gguf(writer, quiet=True)
