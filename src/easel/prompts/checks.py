"""Prompt checks that finish in bounded time, run at every door before a job is queued.

Why this exists: Compel's parser (pyparsing) backtracks exponentially on nested brackets
(`((((((((((a))))))))))` took minutes in the parser alone) and costs about a millisecond per
character even on plain text, and a malformed Compel prompt used to fail only inside the
worker. So every prompt is checked once at the door, with three bounds that make the worst
case small and known:

- length: at most MAX_PROMPT_CHARS characters per prompt field (any syntax);
- nesting: at most MAX_NESTING open brackets at once, found by a linear scan before any
  parser sees the text;
- Compel syntax is parsed with pyparsing's packrat memoisation switched on, which turns the
  exponential backtracking into polynomial work (see compel_parser), and is limited to
  MAX_COMPEL_SYNTAX_CHARS characters: Compel's parser is the one part whose cost per
  character is high. A1111 and plain prompts are read by easel's own linear parser and
  reach Compel already parsed (easel.prompts.encoding), so their limit is the full length.

The worst case of check_prompt over prompts within these limits is measured by
`python benchmarks/prompt_checks.py` (README, "Reliability"). Errors are InvalidRequest
naming the field; the CLI exits 2 and the HTTP doors answer 422.
"""

from __future__ import annotations

import math
import re
from typing import Any

from easel.errors import InvalidRequest

MAX_PROMPT_CHARS = 4000  # ~1000 CLIP tokens, 13 chunks: far beyond what a CLIP prompt can use
# Compel syntax goes through Compel's parser, the one slow part; A1111 and plain prompts,
# and Compel-syntax prompts without syntax characters, never reach it (easel reads them).
MAX_COMPEL_SYNTAX_CHARS = 1000
MAX_NESTING = 10  # (x) nested ten deep is weight 1.1**10 = 2.6 already
PACKRAT_CACHE = 2**16  # entries of pyparsing's memo; bounded, so memory stays bounded too
COMPEL_SPECIAL = re.compile(r'[()+\-"\\]|\.(?:and|blend|swap)\(')  # Compel's syntax characters


def check_prompt(text: str, syntax: str, *, field: str = "prompt") -> None:
    """Refuse a prompt that is too long, nested too deep or malformed in `syntax`."""
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            f"invalid {field}: {len(text)} characters is more than the limit of {MAX_PROMPT_CHARS}",
            field=field,
            value=f"{len(text)} characters",
        )
    if syntax == "plain":
        return
    depth, position = _deepest_nesting(text, "([" if syntax == "a1111" else "(")
    if depth > MAX_NESTING:
        raise InvalidRequest(
            f"invalid {field}: brackets nested {depth} deep at position {position}; "
            f"at most {MAX_NESTING} levels are read",
            field=field,
            value=_excerpt(text, position),
        )
    text = _every_branch(text, syntax, field)  # prompt editing: every text it can produce, checked
    if syntax == "a1111":
        _check_a1111(text, field)
    elif syntax == "compel":
        _check_lora_tags(text, field)
        _check_compel(text, field)


def _every_branch(text: str, syntax: str, field: str) -> str:
    """Read prompt editing and alternation (easel.prompts.scheduling); malformed ones are
    refused at their position (A1111 syntax)."""
    from easel.prompts.a1111 import PromptSyntaxError
    from easel.prompts.scheduling import every_branch

    try:
        return every_branch(text, syntax)
    except PromptSyntaxError as error:
        raise InvalidRequest(f"invalid {field}: {error}", field=field, value=_excerpt(text, 0)) from None


def _check_lora_tags(text: str, field: str) -> None:
    """A `<lora:name:w>` tag in a Compel prompt would reach the encoder as text: the LoRA
    would silently not apply. Say how to ask for it instead."""
    from easel.prompts.extra_networks import TAG

    if (tag := TAG.search(text)) is not None:
        raise InvalidRequest(
            f"invalid {field}: {tag.group(0)!r} is A1111 syntax, which Compel prompts do not read; "
            "give LoRAs as loras=[{'name': ..., 'weight': ...}] (CLI --lora NAME:WEIGHT), or use "
            "prompt_syntax='a1111'",
            field=field,
            value=tag.group(0),
        )


def check_prompts(request: Any) -> None:
    """Both prompt fields of a GenerationRequest."""
    check_prompt(request.prompt, request.prompt_syntax, field="prompt")
    check_prompt(request.negative_prompt, request.prompt_syntax, field="negative_prompt")
    hires = getattr(request, "hires", None)
    for name in ("prompt", "negative_prompt") if hires is not None else ():
        text = getattr(hires, name)
        if text is None:
            continue
        check_prompt(text, request.prompt_syntax, field=f"hires.{name}")
        from easel.prompts.extra_networks import TAG

        if (tag := TAG.search(text)) is not None:  # the request's LoRAs apply to both passes
            raise InvalidRequest(
                f"invalid hires.{name}: {tag.group(0)!r}: LoRAs apply to both passes of the hires fix; "
                "give them in prompt (or loras), not in the hires prompt",
                field=f"hires.{name}",
                value=tag.group(0),
            )


def enable_packrat() -> None:
    """Switch on pyparsing's packrat memoisation, which Compel's parser needs to stay polynomial.

    It is a switch on pyparsing's ParserElement class (process-wide): turning it on is
    idempotent and changes nothing a grammar accepts or returns, only how often a
    sub-expression is re-tried at one position. Compel builds a new PromptParser for every
    prompt it encodes, so the switch is the one way to reach the parser inside Compel too.
    """
    import pyparsing

    if not pyparsing.ParserElement._packratEnabled:
        pyparsing.ParserElement.enable_packrat(PACKRAT_CACHE)


def compel_parser() -> Any:
    """Compel's PromptParser, with packrat parsing on."""
    from compel.prompt_parser import PromptParser

    enable_packrat()
    return PromptParser()


def _deepest_nesting(text: str, openers: str) -> tuple[int, int]:
    """(deepest level, where it was reached), skipping backslash-escaped characters."""
    closers = {"(": ")", "[": "]"}
    closing = {closers[o] for o in openers}
    depth = deepest = where = 0
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in openers:
            depth += 1
            if depth > deepest:
                deepest, where = depth, index
        elif char in closing and depth:
            depth -= 1
    return deepest, where


def _check_a1111(text: str, field: str) -> None:
    """Parse A1111 syntax and translate it as the encoder will (the translation refuses what
    Compel cannot weight, such as a negative weight), so a prompt that passes here cannot fail
    on syntax inside the worker. The encoder hands Compel the parsed runs, not the text."""
    from easel.prompts.a1111 import PromptSyntaxError, a1111_to_compel, parse_a1111

    try:
        chunks = parse_a1111(text)
        for span in (span for chunk in chunks for span in chunk):
            if not math.isfinite(span.weight):
                raise InvalidRequest(
                    f"invalid {field}: the weight of {span.text[:40]!r} is not a finite number",
                    field=field,
                    value=_excerpt(text, 0),
                )
        a1111_to_compel(text)
    except PromptSyntaxError as error:
        raise InvalidRequest(f"invalid {field}: {error}", field=field, value=_excerpt(text, 0)) from None


def _check_compel(text: str, field: str) -> None:
    """Parse with Compel's own grammar; any failure of the parser is the prompt's fault."""
    if not COMPEL_SPECIAL.search(text):
        return  # no Compel syntax at all: read as written, Compel's parser never sees it
    if len(text) > MAX_COMPEL_SYNTAX_CHARS:
        raise InvalidRequest(
            f"invalid {field}: {len(text)} characters with Compel syntax is more than the limit of "
            f"{MAX_COMPEL_SYNTAX_CHARS} (Compel's parser takes about a millisecond per character); "
            "write longer weighted prompts in A1111 syntax (--syntax a1111, prompt_syntax 'a1111'; "
            f"up to {MAX_PROMPT_CHARS})",
            field=field,
            value=f"{len(text)} characters",
        )
    try:
        conjunction = compel_parser().parse_conjunction(text)
    except RecursionError:
        raise InvalidRequest(
            f"invalid {field}: Compel syntax nested too deeply to read", field=field, value=_excerpt(text, 0)
        ) from None
    except Exception as error:  # pyparsing's ParseException, Compel's own, IndexError, ...
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise InvalidRequest(
            f"invalid {field}: not valid Compel syntax ({reason}); to send the text as written use "
            "the plain syntax (--syntax plain, prompt_syntax 'plain')",
            field=field,
            value=_excerpt(text, 0),
        ) from None
    weights = [*getattr(conjunction, "weights", [])]
    for prompt in getattr(conjunction, "prompts", []):
        weights += [getattr(child, "weight", 1.0) for child in getattr(prompt, "children", [])]
        weights += list(getattr(prompt, "weights", []))
    if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
        raise InvalidRequest(
            f"invalid {field}: a weight in it is not a finite number", field=field, value=_excerpt(text, 0)
        )


def _excerpt(text: str, position: int, width: int = 40) -> str:
    start = max(0, position - width // 2)
    excerpt = text[start : start + width]
    return ("…" if start else "") + excerpt + ("…" if start + width < len(text) else "")
