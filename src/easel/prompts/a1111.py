"""Translate AUTOMATIC1111 prompt-weighting syntax into Compel syntax, exactly and strictly.

Why this exists: users coming from AUTOMATIC1111 ("A1111") write ``(red cat:1.3)``, ``((x))`` and
``[x]``. Compel has its own syntax (``(red cat)1.3``, ``x++``) and does not reject A1111 syntax; it
misreads it into text ("red cat:1 . 3"). Feeding A1111 prompts to Compel therefore silently changes
the image. This module parses the A1111 syntax itself and emits Compel strings that Compel reads back
as the same text at the same weights.

A1111 rules implemented (as in A1111's ``parse_prompt_attention``):

* ``(x)`` multiplies the weight of ``x`` by 1.1, ``[x]`` divides it by 1.1; nesting multiplies, so
  ``((x))`` is 1.21 and ``[[x]]`` is 1/1.21.
* ``(x:1.3)`` multiplies by the explicit weight 1.3 instead of 1.1 (``(x:-0.5)``, ``(x:.5)`` allowed).
* ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters; any other backslash is literal too.
* ``BREAK`` (uppercase, a whole word) starts a new 75-token chunk, also inside brackets.
* Adjacent text with equal weight is merged, as A1111 does.

Where this module is stricter than A1111 (A1111 silently reinterprets these as text; we raise
:class:`PromptSyntaxError` with the position instead):

* unbalanced or mismatched brackets (``(a``, ``a)``, ``(a]``);
* a ``:`` inside ``( )`` that is not followed by a number and ``)``: ``(red:abc)``, ``(red:)``,
  ``(a:b:1.2)``, ``(a:1.2 b)``;
* prompt editing and alternation inside ``[ ]`` (``[a:b:0.5]``, ``[a|b]``), composable diffusion
  (``AND``) and extra-network tags (``<lora:name:0.8>``): A1111 gives them meaning that one weighted
  text cannot carry, so they are refused rather than passed on as text. They are read before this
  module sees a prompt: edits and alternations by easel.prompts.scheduling (which hands this module
  each step's text), ``<lora:...>`` tags by easel.prompts.extra_networks; ``AND`` is not built.

Compel cannot express everything, so :func:`a1111_to_compel` also refuses (again with
:class:`PromptSyntaxError`) a negative effective weight, ``=``, and a ``+``/``-`` that Compel would read
as a weight operator inside a weighted span (``(C++:1.2)``). To keep Compel from reading text as
syntax, the translation may change whitespace next to ``+``/``-``/``\\`` (``C++ code`` becomes
``C ++ code``; ``(a - b)`` becomes ``(a -b)1.1``); CLIP's tokenizer splits letters from punctuation
anyway, so the tokens are unchanged. Compel itself also reads ``.`` and ``,`` inside a weighted span as
separate words ("3.14" reaches the encoder as "3 . 14"); that is Compel's behaviour, not ours.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

ROUND_BRACKET_MULTIPLIER = 1.1
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1
BREAK_KEYWORD = "BREAK"
AND_KEYWORD = "AND"

# Weights are products of floats; rounding them removes the noise (1.1 * 1.1 = 1.2100000000000002,
# 1.1 / 1.1 != 1.0) so that equal weights compare equal and merge, as a person reading the prompt expects.
_WEIGHT_DECIMALS = 10
# Compel weights are written compactly: round(w, 4) with trailing zeros stripped.
_COMPEL_WEIGHT_DECIMALS = 4
_WEIGHT_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_WORD_CHAR_RE = re.compile(r"\w")
_EXTRA_NETWORK_RE = re.compile(r"<(\w+):[^<>]*>")
_A1111_ESCAPABLE = frozenset("()[]\\")
# Characters that Compel escapes with a backslash and then unescapes in the text (``\(`` -> ``(``).
_COMPEL_UNESCAPED = frozenset('()"')
# Characters that end a Compel word or start Compel syntax; a '+'/'-' followed by one of these (or by
# whitespace or the end) is a weight operator for Compel, not text.
_COMPEL_SYNTAX_CHARS = frozenset(',.+-="()')
_EXCERPT_CHARS = 24


class PromptSyntaxError(ValueError):
    """A prompt that cannot be read (or translated) exactly.

    Kept a plain ``ValueError`` subclass so that callers can map it onto their own error tree.

    Attributes:
        message: the full human-readable message, naming the position and showing the prompt there.
        reason: the short reason, without the position (e.g. "unbalanced '('").
        prompt: the prompt as given.
        position: 0-based index of the offending character in ``prompt`` (``len(prompt)`` for "at the end").
    """

    def __init__(self, reason: str, prompt: str, position: int) -> None:
        self.reason = reason
        self.prompt = prompt
        self.position = position
        self.message = f"{reason} at position {position} in prompt: {_excerpt(prompt, position)}"
        super().__init__(self.message)

    def __reduce__(self) -> tuple[type[PromptSyntaxError], tuple[str, str, int]]:
        # The default reduce would call cls(message) and fail; process pools and Ray pickle exceptions.
        return (type(self), (self.reason, self.prompt, self.position))


@dataclass(frozen=True)
class WeightedSpan:
    """A run of prompt text with one effective weight (1.0 = unweighted)."""

    text: str
    weight: float


@dataclass
class _Char:
    """One literal character of the prompt, with where it came from and its effective weight so far."""

    char: str
    position: int
    weight: float = 1.0


@dataclass(frozen=True)
class _Break:
    """A ``BREAK`` keyword: the boundary between two chunks."""

    position: int


@dataclass(frozen=True)
class _OpenBracket:
    """An opened ``(`` or ``[`` whose closing bracket has not been seen yet."""

    bracket: str
    position: int
    first_item: int  # index into the item list of the first item inside the brackets


@dataclass
class _Span:
    """Internal span: keeps each character's source position so later errors can point at it."""

    chars: list[_Char]
    weight: float

    @property
    def text(self) -> str:
        return "".join(c.char for c in self.chars)


def parse_a1111(prompt: str) -> list[list[WeightedSpan]]:
    """Parse an A1111 prompt into chunks (split at ``BREAK``) of merged spans with effective weights.

    Whitespace inside a span is collapsed to single spaces and spans carry no leading or trailing
    whitespace. Empty chunks are dropped; a prompt with no text at all gives one empty chunk ``[[]]``.

    Raises:
        PromptSyntaxError: malformed or unsupported syntax, with the offending position.
    """
    return [[WeightedSpan(span.text, span.weight) for span in chunk] for chunk in _parse(prompt)]


def a1111_to_compel(prompt: str) -> list[str]:
    """Translate an A1111 prompt into one Compel prompt string per ``BREAK`` chunk.

    Spans of weight 1.0 are written plainly, others as ``(text)w`` with ``w`` rounded to 4 decimals
    and trailing zeros stripped (``(red cat)1.3``, ``(x)0.9091``). Literal ``(``, ``)`` and ``"`` are
    escaped for Compel. An empty prompt gives ``[""]``.

    Raises:
        PromptSyntaxError: malformed A1111 syntax, or content Compel cannot express exactly (a negative
            weight, ``=`` or a ``+``/``-`` operator-like character inside a weighted span).
    """
    return [" ".join(_render_span(prompt, span) for span in chunk) for chunk in _parse(prompt)]


# --- parsing -----------------------------------------------------------------------------------------


def _parse(prompt: str) -> list[list[_Span]]:
    """Parse ``prompt`` into chunks of internal spans (the shared core of both public functions)."""
    items = _scan(prompt)
    chunks: list[list[_Char]] = [[]]
    for item in items:
        if isinstance(item, _Break):
            chunks.append([])
        else:
            chunks[-1].append(item)
    spans = [_merge_spans(chars) for chars in chunks]
    return [chunk for chunk in spans if chunk] or [[]]


def _scan(prompt: str) -> list[_Char | _Break]:
    """Read the prompt left to right with a bracket stack, like A1111 does.

    Weights are applied when a bracket closes (the explicit weight of ``(x:1.3)`` is only known at its
    end), by multiplying every character inside; nesting therefore multiplies naturally.
    """
    items: list[_Char | _Break] = []
    stack: list[_OpenBracket] = []
    length = len(prompt)
    i = 0
    while i < length:
        ch = prompt[i]
        if ch == "\\":
            if i + 1 < length and prompt[i + 1] in _A1111_ESCAPABLE:
                items.append(_Char(prompt[i + 1], i))
                i += 2
            else:  # A1111 keeps a backslash that escapes nothing as a literal backslash
                items.append(_Char("\\", i))
                i += 1
        elif ch in "([":
            stack.append(_OpenBracket(ch, i, len(items)))
            i += 1
        elif ch in ")]":
            opened = _pop_matching(prompt, stack, ch, i)
            multiplier = ROUND_BRACKET_MULTIPLIER if ch == ")" else SQUARE_BRACKET_MULTIPLIER
            _multiply(items, opened.first_item, multiplier)
            i += 1
        elif ch == ":" and stack and stack[-1].bracket == "(":
            opened = stack.pop()
            weight, i = _read_weight(prompt, i, opened)
            _multiply(items, opened.first_item, weight)
        elif ch == ":" and stack:
            raise PromptSyntaxError(
                "prompt editing '[from:to:when]' is not supported (':' inside '[ ]')", prompt, i
            )
        elif ch == "|" and stack and stack[-1].bracket == "[":
            raise PromptSyntaxError("alternation '[a|b]' is not supported ('|' inside '[ ]')", prompt, i)
        elif _is_keyword_at(prompt, i, BREAK_KEYWORD):
            items.append(_Break(i))
            i += len(BREAK_KEYWORD)
        elif _is_keyword_at(prompt, i, AND_KEYWORD):
            raise PromptSyntaxError("composable diffusion 'AND' is not supported", prompt, i)
        elif ch == "<" and (tag := _EXTRA_NETWORK_RE.match(prompt, i)):
            raise PromptSyntaxError(f"extra-network tag {tag.group(0)!r} is not supported", prompt, i)
        else:
            items.append(_Char(ch, i))
            i += 1
    if stack:
        opened = stack[-1]
        raise PromptSyntaxError(f"unbalanced {opened.bracket!r}", prompt, opened.position)
    return items


def _pop_matching(prompt: str, stack: list[_OpenBracket], closing: str, position: int) -> _OpenBracket:
    """Pop the bracket that ``closing`` closes; a stray or mismatched closing bracket is an error."""
    expected_opening = "(" if closing == ")" else "["
    if not stack:
        raise PromptSyntaxError(f"unbalanced {closing!r} (nothing to close)", prompt, position)
    if stack[-1].bracket != expected_opening:
        opened = stack[-1]
        raise PromptSyntaxError(
            f"mismatched {closing!r} (the innermost open bracket is {opened.bracket!r} "
            f"at position {opened.position})",
            prompt,
            position,
        )
    return stack.pop()


def _read_weight(prompt: str, colon: int, opened: _OpenBracket) -> tuple[float, int]:
    """Read the ``:weight)`` that ends ``opened``; return the weight and the index after the ``)``.

    Strict on purpose: in A1111 a ``:`` that is not followed by a number silently becomes text, which
    hides typos such as ``(red:l.2)``. Here everything between the ``:`` and the ``)`` must be a number.
    """
    end = colon + 1
    while end < len(prompt) and prompt[end] not in "()[]":
        end += 1
    if end == len(prompt):
        raise PromptSyntaxError("unbalanced '('", prompt, opened.position)
    if prompt[end] != ")":
        raise PromptSyntaxError(f"expected a number and ')' after ':', found {prompt[end]!r}", prompt, end)
    raw = prompt[colon + 1 : end]
    text = raw.strip()
    if not text:
        raise PromptSyntaxError("empty weight after ':'", prompt, colon)
    if not _WEIGHT_RE.fullmatch(text):
        start = colon + 1 + (len(raw) - len(raw.lstrip()))
        raise PromptSyntaxError(f"weight {text!r} is not a number", prompt, start)
    weight = float(text)
    if not math.isfinite(weight):
        raise PromptSyntaxError(f"weight {text!r} is too large", prompt, colon + 1)
    return weight, end + 1


def _is_keyword_at(prompt: str, i: int, keyword: str) -> bool:
    """True when ``keyword`` starts at ``i`` as a whole word (A1111 uses ``\\bBREAK\\b``)."""
    if not prompt.startswith(keyword, i):
        return False
    before = prompt[i - 1] if i > 0 else " "
    after_index = i + len(keyword)
    after = prompt[after_index] if after_index < len(prompt) else " "
    return not _WORD_CHAR_RE.match(before) and not _WORD_CHAR_RE.match(after)


def _multiply(items: list[_Char | _Break], first_item: int, factor: float) -> None:
    """Multiply the weight of every character from ``first_item`` on (the inside of a closed bracket)."""
    for item in items[first_item:]:
        if isinstance(item, _Char):
            item.weight *= factor


def _merge_spans(chars: list[_Char]) -> list[_Span]:
    """Group one chunk's characters into spans of equal weight, normalising whitespace.

    Whitespace carries no tokens, so its own weight is ignored: ``(a) (b)`` is one span "a b" at 1.1,
    and whitespace between spans of different weights only separates them. Runs of whitespace become
    one space; spans never start or end with whitespace.
    """
    spans: list[_Span] = []
    pending_space: _Char | None = None
    for c in chars:
        if c.char.isspace():
            if pending_space is None:
                pending_space = _Char(" ", c.position, c.weight)
            continue
        weight = round(c.weight, _WEIGHT_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
        if spans and spans[-1].weight == weight:
            if pending_space is not None:
                spans[-1].chars.append(pending_space)
            spans[-1].chars.append(_Char(c.char, c.position, weight))
        else:
            spans.append(_Span([_Char(c.char, c.position, weight)], weight))
        pending_space = None
    return spans


# --- rendering as Compel -----------------------------------------------------------------------------


def _render_span(prompt: str, span: _Span) -> str:
    """Write one span in Compel syntax: plainly at weight 1.0, else as ``(text)w``."""
    if span.weight == 1.0:
        return _render_text(prompt, span.chars, weighted=False)
    if span.weight < 0:
        raise PromptSyntaxError(
            f"weight {span.weight:g} of {span.text!r} is negative; Compel cannot express negative weights",
            prompt,
            span.chars[0].position,
        )
    if not math.isfinite(span.weight):
        raise PromptSyntaxError(f"weight of {span.text!r} is too large", prompt, span.chars[0].position)
    return f"({_render_text(prompt, span.chars, weighted=True)}){_format_weight(span.weight)}"


def compel_weight(weight: float) -> float:
    """The weight Compel reads back from the translation (``_format_weight``'s text)."""
    return float(_format_weight(weight))


def _format_weight(weight: float) -> str:
    """Compact Compel weight: ``1.1``, ``1.21``, ``0.9091``, ``2``."""
    return f"{round(weight, _COMPEL_WEIGHT_DECIMALS):.{_COMPEL_WEIGHT_DECIMALS}f}".rstrip("0").rstrip(".")


def _render_text(prompt: str, chars: list[_Char], *, weighted: bool) -> str:
    """Escape literal text so that Compel reads it back as the same text.

    Compel's grammar (compel/prompt_parser.py) differs in the two places text can appear:

    * plain text is split at whitespace and each word is text unless it is a word followed by a run
      of ``+``/``-`` (``C++`` = "C" at 1.21) or contains quotes or brackets;
    * inside ``( )w`` every character must belong to a Compel word: ``=`` never does, and a ``+``/``-``
      only when a character that is not whitespace or syntax follows it (``-b``, ``well-lit``).

    Compel unescapes ``\\(`` ``\\)`` ``\\"`` in its text (repeatedly, so a literal backslash before
    them gets a space) but keeps the backslash of ``\\+`` ``\\-`` ``\\=`` ``\\,`` ``\\.``, so a literal
    backslash before one of those already reads back exactly.
    """
    text = [c.char for c in chars]
    out: list[str] = []
    k = 0
    while k < len(text):
        ch = text[k]
        escaped = k > 0 and text[k - 1] == "\\"
        if ch in _COMPEL_UNESCAPED:
            out.append("\\" + ch)
        elif ch == "\\":
            out.append("\\")
            next_char = text[k + 1] if k + 1 < len(text) else None
            if next_char in _COMPEL_UNESCAPED or (weighted and next_char is None):
                # Compel unescapes "\(" once per Fragment it builds (several times), so a literal
                # backslash cannot touch a literal bracket or quote, nor the closing ")" of a span.
                out.append(" ")
        elif ch in "+-" and not escaped:
            end = k
            while end < len(text) and text[end] in "+-":
                end += 1
            if weighted:
                k = _render_operator_chars_in_weighted(prompt, chars, k, end, out)
                continue
            before = text[k - 1] if k > 0 else " "
            after = text[end] if end < len(text) else None
            reads_as_operator = (end - k > 1) or not _is_word_continuation(after)
            # An unescaped "." "," "=" ends the Compel word before the run; anything else (including an
            # escaped "\." and the escaped brackets we write) makes the run a weight on that word.
            ends_word = before in ".,=" and not (k > 1 and text[k - 2] == "\\")
            if not before.isspace() and not ends_word and reads_as_operator:
                out.append(" ")  # "C++" -> "C ++": the run stops being a weight on "C"
            out.append("".join(text[k:end]))
            k = end
            continue
        elif ch == "=" and weighted and not escaped:
            raise PromptSyntaxError(
                "'=' cannot be expressed inside a weighted span in Compel syntax", prompt, chars[k].position
            )
        else:
            out.append(ch)
        k += 1
    return "".join(out)


def _render_operator_chars_in_weighted(
    prompt: str, chars: list[_Char], start: int, end: int, out: list[str]
) -> int:
    """Write a run ``chars[start:end]`` of ``+``/``-`` inside ``( )w``; return the next index to render.

    Compel accepts it only as a single character glued to a following word character. A single
    ``-`` followed by a space and a letter or digit is glued to it (``a - b`` -> ``a -b``: the same CLIP
    tokens); anything else cannot be said in Compel without changing the text, so it is refused.
    """
    text = [c.char for c in chars]
    if end - start > 1:
        raise PromptSyntaxError(
            f"{''.join(text[start:end])!r} inside a weighted span would be read by Compel as a weight "
            "operator",
            prompt,
            chars[start].position,
        )
    after = text[end] if end < len(text) else None
    if _is_word_continuation(after):
        out.append(text[start])
        return end
    if after == " " and end + 1 < len(text) and text[end + 1].isalnum():
        out.append(text[start])
        return end + 1  # drop the space: "-" now continues the next word
    raise PromptSyntaxError(
        f"{text[start]!r} inside a weighted span would be read by Compel as a weight operator",
        prompt,
        chars[start].position,
    )


def _is_word_continuation(char: str | None) -> bool:
    """Whether a ``+``/``-`` followed by ``char`` stays part of a Compel word (not an operator)."""
    return char is not None and not char.isspace() and char not in _COMPEL_SYNTAX_CHARS - _COMPEL_UNESCAPED


def _excerpt(prompt: str, position: int) -> str:
    """Show the prompt around ``position`` with a ``>>>`` marker, shortened for long prompts."""
    start = max(0, position - _EXCERPT_CHARS)
    end = min(len(prompt), position + _EXCERPT_CHARS)
    before = ("..." if start > 0 else "") + prompt[start:position]
    after = prompt[position:end] + ("..." if end < len(prompt) else "")
    return repr(before + ">>>" + after)
