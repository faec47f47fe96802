"""The worst case of the door's prompt check: `python benchmarks/prompt_checks.py [--seconds N]`.

Every prompt is checked before a job is queued (easel.prompts.checks): at most
MAX_PROMPT_CHARS characters, at most MAX_NESTING open brackets, parsed in its syntax. This
script times check_prompt on the prompts that cost the most within those limits (nesting at
the limit repeated to the full length, long plain text with one syntax character, random
syntax soup) in both syntaxes, and prints the slowest. The README's bound comes from here.
"""

from __future__ import annotations

import argparse
import random
import time

from easel.errors import InvalidRequest
from easel.prompts.checks import (
    MAX_COMPEL_SYNTAX_CHARS,
    MAX_NESTING,
    MAX_PROMPT_CHARS,
    check_prompt,
    compel_parser,
)


def fill(unit: str, limit: int = MAX_PROMPT_CHARS) -> str:
    """Whole copies of `unit` up to `limit` characters, the rest padded with spaces."""
    text = unit * (limit // len(unit))
    return text + " " * (limit - len(text))


def adversarial() -> dict[str, tuple[str, str]]:
    deep = "(" * MAX_NESTING + "a" + ")" * MAX_NESTING
    compel = MAX_COMPEL_SYNTAX_CHARS
    return {
        "compel: nesting at the limit, repeated": ("compel", fill(deep + " ", compel)),
        "compel: weighted nesting, repeated": ("compel", fill(deep + "1.1 ", compel)),
        "compel: unclosed nesting, repeated": ("compel", fill("(" * MAX_NESTING + "a) ", compel)),
        "compel: plain words and one +": ("compel", fill("a photo of a cat, ", compel - 1) + "+"),
        "compel: operators": ("compel", fill("a++ b-- ", compel)),
        "compel: quotes and escapes": ("compel", fill('"a" \\( ', compel)),
        "compel: plain words, full length": ("compel", fill("a photo of a cat, ")),
        "a1111: nesting at the limit, repeated": (
            "a1111",
            fill("(" * (MAX_NESTING - 1) + "(a:1.1)" + ")" * (MAX_NESTING - 1) + " "),
        ),
        "a1111: square nesting, repeated": ("a1111", fill("[" * MAX_NESTING + "a" + "]" * MAX_NESTING + " ")),
        "a1111: BREAK chunks": ("a1111", fill("(a cat:1.2) BREAK ")),
    }


def random_prompts(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """Random syntax soup that stays within the nesting limit (so it is parsed, not refused
    by the scan), Compel syntax at its own limit."""
    rng = random.Random(seed)
    pieces = {
        "compel": ["+", "-", '"', ".", ",", " ", "cat", "1.3", "++", "0.8"],
        "a1111": [":", " ", "cat", "1.3", "BREAK", ",", "|", ":0.5"],
    }
    prompts = []
    for index in range(count):
        syntax = "compel" if index % 2 == 0 else "a1111"
        limit = MAX_COMPEL_SYNTAX_CHARS if syntax == "compel" else MAX_PROMPT_CHARS
        text, depth = "", 0
        while len(text) < limit:
            roll = rng.random()
            if roll < 0.15 and depth < MAX_NESTING:
                text, depth = text + "(", depth + 1
            elif roll < 0.3 and depth:
                text, depth = text + ")", depth - 1
            else:
                text += rng.choice(pieces[syntax])
        prompts.append((syntax, text[:limit]))
    return prompts


def timed(text: str, syntax: str) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        check_prompt(text, syntax)
        outcome = "accepted"
    except InvalidRequest as error:
        outcome = "refused: " + str(error)[:60]
    return time.perf_counter() - started, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=20, help="random full-length prompts to add")
    arguments = parser.parse_args()
    compel_parser()  # imports Compel (and torch) outside the timings
    cases = list(adversarial().items())
    cases += [(f"random #{i} ({syntax})", (syntax, text)) for i, (syntax, text) in
              enumerate(random_prompts(arguments.random))]  # fmt: skip
    slowest = 0.0
    print(f"limits: {MAX_PROMPT_CHARS} characters, {MAX_COMPEL_SYNTAX_CHARS} with Compel syntax, "
          f"{MAX_NESTING} nested brackets")  # fmt: skip
    print(f"{'prompt':48} {'seconds':>8}  outcome")
    for name, (syntax, text) in cases:
        seconds, outcome = timed(text, syntax)
        slowest = max(slowest, seconds)
        print(f"{name:48} {seconds:8.3f}  {outcome}")
    print(f"slowest: {slowest:.3f} s")


if __name__ == "__main__":
    main()
