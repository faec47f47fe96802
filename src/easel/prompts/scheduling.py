"""Prompt editing and alternation: which text conditions each denoising step.

AUTOMATIC1111's prompt grammar lets a prompt change while the image forms:

- ``[from:to:when]`` reads ``from`` up to step ``when`` and ``to`` after it; ``[to:when]`` adds
  ``to`` at ``when``; ``[from::when]`` removes ``from`` at ``when``. ``when`` with a decimal
  point is a fraction of the steps (``0.5``: half way), without one a step number (``10``), as
  A1111 reads it since 1.6 (its default; "old scheduling", where any ``when < 1`` is a fraction
  and ``2.0`` is step 2, is not offered). Nesting is allowed.
- ``[a|b|c]`` alternates: ``a`` on one step, ``b`` on the next, ...

The schedule is A1111's exactly (``prompt_parser.get_learned_conditioning_prompt_schedules``):
a list of ``(end_step, text)``, ``end_step`` in 1..steps, and the step with 0-based index ``i``
uses the first entry whose ``end_step >= i`` (A1111's ``reconstruct_cond_batch``; it makes
``[a:b:5]`` read ``a`` for six steps and ``[a|b]`` read ``a, a, b, a, b, ...``). easel counts the
steps the pipeline runs (A1111's k-diffusion samplers count model evaluations instead, so for
two-evaluation samplers such as Heun and DPM2 A1111 switches about twice as early).

Both weighting syntaxes read it: in A1111 syntax strictly (a ``[`` with ``:`` or ``|`` that is
not a well-formed edit or alternation is an error at its position); in Compel syntax, where
``[ ]`` has no meaning, only well-formed ``[from:to:when]`` and ``[a|b]`` are read, and any
other bracket stays text. Everything else (weights, BREAK, escapes) is left in the texts for
the weighting parser. Parsing is linear (each ``[`` is read once) and nesting is bounded.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from easel.prompts.a1111 import PromptSyntaxError

MAX_DEPTH = 10  # as easel.prompts.checks.MAX_NESTING: deeper brackets are refused
_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*")


@dataclass(frozen=True)
class Scheduled:
    """``[before:after:when]`` (``before`` None for ``[after:when]``)."""

    before: tuple[Node, ...] | None
    after: tuple[Node, ...]
    when: str  # the number as written: a '.' makes it a fraction of the steps


@dataclass(frozen=True)
class Alternate:
    """``[a|b|...]``: option ``(step - 1) % len`` on step ``step``."""

    options: tuple[tuple[Node, ...], ...]


Node = str | Scheduled | Alternate
Schedule = list[tuple[int, str]]


class _Reader:
    """Recursive descent over one prompt; `strict` is A1111 syntax."""

    def __init__(self, prompt: str, strict: bool) -> None:
        self.prompt, self.strict = prompt, strict
        self.brackets: dict[int, tuple[Node | None, int]] = {}  # '[' position -> (node, end)
        self.found = False

    def sequence(self, start: int, stops: str, depth: int) -> tuple[tuple[Node, ...], int]:
        """Nodes from `start` up to (not including) a character of `stops` at this level, or the end."""
        prompt, nodes, text, i = self.prompt, [], [], start
        while i < len(prompt) and prompt[i] not in stops:
            char = prompt[i]
            if char == "\\" and i + 1 < len(prompt):
                text.append(prompt[i : i + 2])
                i += 2
            elif char == "[":
                node, end = self.bracket(i, depth + 1)
                if node is None:  # not an edit: the '[' is text (Compel syntax) or an emphasis group
                    text.append(char)
                    i += 1
                    continue
                if isinstance(node, str):
                    text.append(node)
                else:
                    if text:
                        nodes.append("".join(text))
                        text = []
                    nodes.append(node)
                i = end
            elif char == "(" and self.strict:
                if depth + 1 > MAX_DEPTH:
                    raise PromptSyntaxError(f"brackets nested more than {MAX_DEPTH} deep", prompt, i)
                inner, end = self.sequence(i + 1, ")", depth + 1)
                if end >= len(prompt):
                    raise PromptSyntaxError("unbalanced '('", prompt, i)
                if text:
                    nodes.append("".join(text))
                    text = []
                nodes.extend(("(", *inner, ")"))
                i = end + 1
            else:
                text.append(char)
                i += 1
        if text:
            nodes.append("".join(text))
        return _joined(nodes), i

    def bracket(self, start: int, depth: int) -> tuple[Node | None, int]:
        """The '[' at `start` and where it ends: an edit, an alternation, an A1111 emphasis
        group (its nodes, brackets included, for the weighting parser), or None: the '[' is
        text (Compel syntax only; A1111 syntax raises instead)."""
        if start in self.brackets:
            return self.brackets[start]
        if depth > MAX_DEPTH:
            raise PromptSyntaxError(f"brackets nested more than {MAX_DEPTH} deep", self.prompt, start)
        result = self._read_bracket(start, depth)
        self.brackets[start] = result
        return result

    def _read_bracket(self, start: int, depth: int) -> tuple[Node | None, int]:
        prompt = self.prompt
        parts: list[tuple[Node, ...]] = []
        separators: list[tuple[str, int]] = []
        i = start + 1
        while True:
            part, i = self.sequence(i, "]:|", depth)
            parts.append(part)
            if i >= len(prompt):
                if self.strict:
                    raise PromptSyntaxError("unbalanced '['", prompt, start)
                return None, start + 1
            if prompt[i] == "]":
                break
            separators.append((prompt[i], i))
            i += 1
        end = i + 1
        kinds = {kind for kind, _ in separators}
        if not kinds:  # an emphasis group: text for the weighting parser, edits inside kept
            if not self.strict:
                return None, start + 1
            return _Group(("[", *parts[0], "]")), end
        if kinds == {"|"}:
            self.found = True
            return Alternate(tuple(parts)), end
        if kinds == {":"} and len(separators) <= 2:
            when = parts[-1]
            number = _NUMBER.fullmatch(when[0]) if len(when) == 1 and isinstance(when[0], str) else None
            if number is None:
                return self._not_an_edit(start, separators[-1][1] + 1, "expected a number (when) before ']'")
            self.found = True
            before = parts[0] if len(separators) == 2 else None
            after = parts[1] if len(separators) == 2 else parts[0]
            return Scheduled(before, after, number.group(1)), end
        if kinds == {":"}:
            return self._not_an_edit(start, separators[2][1], "more than two ':' in one '[ ]'")
        position = next(pos for kind, pos in separators if kind != separators[0][0])
        return self._not_an_edit(start, position, "':' and '|' mixed in one '[ ]'")

    def _not_an_edit(self, start: int, position: int, reason: str) -> tuple[None, int]:
        if self.strict:
            raise PromptSyntaxError(
                f"{reason} (prompt editing is '[from:to:when]', alternation '[a|b]')",
                self.prompt,
                position,
            )
        return None, start + 1


@dataclass(frozen=True)
class _Group:
    """An A1111 emphasis group ``[...]`` (or ``(...)``) whose inside holds edits: its nodes."""

    nodes: tuple[Node, ...]


def _joined(nodes: list[Node | _Group] | tuple[Node | _Group, ...]) -> tuple[Node, ...]:
    """Flatten groups into the sequence and merge neighbouring strings."""
    out: list[Node] = []
    for node in nodes:
        for item in node.nodes if isinstance(node, _Group) else (node,):
            if isinstance(item, str) and out and isinstance(out[-1], str):
                out[-1] += item
            elif item != "":
                out.append(item)
    return tuple(out)


def parse_schedule(prompt: str, syntax: str) -> tuple[Node, ...] | None:
    """The prompt's edits and alternations as a tree, or None when it has none (plain syntax
    never has any). Raises PromptSyntaxError (A1111 syntax) for a malformed one."""
    if syntax == "plain" or "[" not in prompt:
        return None
    reader = _Reader(prompt, strict=syntax == "a1111")
    nodes, _ = reader.sequence(0, "", 0)
    return nodes if reader.found else None


def _when(node: Scheduled, steps: int) -> int:
    """A1111 (new scheduling): a decimal point makes `when` a fraction of the steps."""
    value = float(node.when)
    value = value * steps if "." in node.when else value
    if not math.isfinite(value):  # 1e999: never (A1111 would fail)
        return steps if value > 0 else 0
    return min(steps, int(value))


def _collect(nodes: tuple[Node, ...], steps: int, found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, Scheduled):
            when = _when(node, steps)
            if when >= 1:
                found.add(when)
            _collect(node.before or (), steps, found)
            _collect(node.after, steps, found)
        elif isinstance(node, Alternate):
            found.update(range(1, steps + 1))
            for option in node.options:
                _collect(option, steps, found)


def _render(nodes: tuple[Node, ...], step: int, steps: int) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, Scheduled):
            chosen = (node.before or ()) if step <= _when(node, steps) else node.after
            parts.append(_render(chosen, step, steps))
        else:
            parts.append(_render(node.options[(step - 1) % len(node.options)], step, steps))
    return "".join(parts)


def prompt_schedule(prompt: str, syntax: str, steps: int) -> Schedule:
    """A1111's schedule for `prompt` over `steps` steps: [(end_step, text), ...]; one entry,
    the prompt itself, when it has no edits."""
    tree = parse_schedule(prompt, syntax)
    if tree is None:
        return [(steps, prompt)]
    found = {steps}
    _collect(tree, steps, found)
    return [(step, _render(tree, step, steps)) for step in sorted(found)]


def text_at(schedule: Schedule, index: int) -> str:
    """The text of the step with 0-based `index` (A1111's reconstruct_cond_batch)."""
    for end, text in schedule:
        if index <= end:
            return text
    return schedule[-1][1]


def every_branch(prompt: str, syntax: str) -> str:
    """The prompt with every edit's and alternation's branches side by side (space-separated):
    text whose weighting syntax is valid exactly when every text the schedule can produce is,
    for checking at the door without knowing the steps."""
    tree = parse_schedule(prompt, syntax)
    return prompt if tree is None else _branches(tree)


def _branches(nodes: tuple[Node, ...]) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, Scheduled):
            parts.append(" ".join(_branches(branch) for branch in (node.before or (), node.after)))
        else:
            parts.append(" ".join(_branches(option) for option in node.options))
    return "".join(parts)
