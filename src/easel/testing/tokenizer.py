"""Build a real CLIP byte-level BPE tokenizer offline, from a small word list.

Why: the tests and the bundled demo model need a CLIPTokenizer that behaves exactly like
the one in Stable Diffusion checkpoints (same class, same special tokens, same 77-token
window), but the real 49k-token vocabulary cannot be downloaded here. A vocabulary of the
256 byte symbols (plain and end-of-word) plus merges that assemble a few whole words gives
word-level tokens for those words and byte-level fallback for everything else.
"""

from __future__ import annotations

from pathlib import Path

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2/CLIP reversible byte -> printable character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def _merges_for_word(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that assemble `word` + end-of-word into one symbol."""
    table = _bytes_to_unicode()
    symbols = [table[b] for b in word.encode("utf-8")]
    symbols[-1] += "</w>"
    merges = []
    while len(symbols) > 1:
        merges.append((symbols[0], symbols[1]))
        symbols = [symbols[0] + symbols[1], *symbols[2:]]
    return merges


def write_clip_tokenizer(directory: Path, words: list[str], model_max_length: int = 77) -> Path:
    """Save a CLIPTokenizer whose vocabulary has whole-word tokens for `words` into `directory`."""
    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    byte_symbols = list(_bytes_to_unicode().values())
    vocab_list = byte_symbols + [s + "</w>" for s in byte_symbols]
    merges: list[tuple[str, str]] = []
    for word in sorted({w.lower() for w in words}):
        for merge in _merges_for_word(word):
            if merge not in merges:
                merges.append(merge)
                vocab_list.append(merge[0] + merge[1])
    vocab_list += [START_TOKEN, END_TOKEN]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_list))}
    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=model_max_length,
    )
    tokenizer.save_pretrained(directory)
    return directory
