"""Build a Qwen-style byte-level BPE tokenizer offline, from a small word list.

Why: Z-Image (Qwen3 text encoder) and Qwen-Image (Qwen2.5-VL) read prompts through a Qwen2Tokenizer
and its ChatML chat template, but the real 151k-token vocabulary cannot be downloaded here. The 256
GPT-2 byte symbols plus merges that assemble a few whole words (with and without the leading space,
"Ġcat" and "cat") give word-level tokens for those words and byte-level fallback for everything
else; the special tokens the pipelines' templates use (`<|im_start|>`, `<|im_end|>`, and any
`extra_special` ones such as Qwen-Image's vision tokens) are single tokens, as in the real one.
"""

from __future__ import annotations

import tempfile
from typing import Any

from easel.testing.tokenizer import _bytes_to_unicode

END_OF_TEXT = "<|endoftext|>"  # Qwen's pad, end and unknown token
CHATML_SPECIAL = ("<|im_start|>", "<|im_end|>")
# ChatML, as Qwen's templates write a conversation (the generation prompt opens the assistant turn)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _word_merges(symbols: list[str]) -> list[tuple[str, str]]:
    """Left-to-right merges that assemble `symbols` into one."""
    merges = []
    while len(symbols) > 1:
        merges.append((symbols[0], symbols[1]))
        symbols = [symbols[0] + symbols[1], *symbols[2:]]
    return merges


def build_qwen_tokenizer(
    words: list[str], *, extra_special: tuple[str, ...] = (), model_max_length: int = 32768
) -> Any:
    """A Qwen2Tokenizer with whole-word tokens for `words` (bare and space-prefixed), the ChatML
    special tokens plus `extra_special`, and a ChatML chat_template; saved and loaded again, so it
    is what loading it from a repo gives."""
    from transformers import AutoTokenizer, Qwen2Tokenizer

    table = _bytes_to_unicode()
    vocab_list = [END_OF_TEXT, *table.values()]
    merges: list[tuple[str, str]] = []
    unique = list(dict.fromkeys(w.lower() for w in words))
    # the space-prefixed forms first: BPE applies merges by rank, so "Ġ"+"r" must come before "r"+"e"
    for text in [f" {word}" for word in unique] + unique:
        for merge in _word_merges([table[b] for b in text.encode("utf-8")]):
            if merge not in merges:
                merges.append(merge)
                vocab_list.append(merge[0] + merge[1])
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_list))}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        additional_special_tokens=[*CHATML_SPECIAL, *extra_special],
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer.save_pretrained(scratch)
        return AutoTokenizer.from_pretrained(scratch)
