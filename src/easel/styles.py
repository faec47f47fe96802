"""Prompt styles: AUTOMATIC1111's styles.csv, named text merged into the prompts.

A style has a prompt and a negative prompt. Applying it (A1111's semantics): where the
style's text holds `{prompt}`, the user's prompt is put there; otherwise the style's text is
appended after ", " (empty parts are skipped). Several styles apply in the order named, each to
the result of the one before. The engine expands them before anything else and the concrete
request it returns carries the expanded prompts with `styles` emptied, so an image replays
without the CSV (which may have changed since).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from easel.errors import InvalidRequest

PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class Style:
    """One row of styles.csv."""

    name: str
    prompt: str = ""
    negative_prompt: str = ""


def load_styles(path: Path) -> dict[str, Style]:
    """The styles in an A1111 styles.csv (columns name, prompt, negative_prompt; A1111's older
    `text` column is read as prompt); no file: no styles. Rows without a name are skipped, as
    A1111 skips them; a later row of the same name wins, as in A1111."""
    if not path.is_file():
        return {}
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle, skipinitialspace=True))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InvalidRequest(f"cannot read the styles file {path}: {error}", field="styles") from None
    styles: dict[str, Style] = {}
    for row in rows:
        name = (row.get("name") or "").strip()
        if not name:
            continue
        prompt = row.get("prompt") if row.get("prompt") is not None else row.get("text")
        styles[name] = Style(name, prompt or "", row.get("negative_prompt") or "")
    return styles


def merge_prompt(style_text: str, prompt: str) -> str:
    """One style's text applied to a prompt (A1111's merge_prompts)."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(
    names: list[str], prompt: str, negative_prompt: str, styles: dict[str, Style]
) -> tuple[str, str]:
    """The prompts with the named styles applied in order; an unknown name is an InvalidRequest
    naming `styles[i]` and listing the known ones."""
    for index, name in enumerate(names):
        style = styles.get(name)
        if style is None:
            known = ", ".join(repr(s) for s in styles) or "none (no styles file, or it is empty)"
            raise InvalidRequest(
                f"invalid styles[{index}]={name!r}: no such style; known styles: {known}",
                field=f"styles[{index}]",
                value=name,
            )
        prompt = merge_prompt(style.prompt, prompt)
        negative_prompt = merge_prompt(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt
