"""Prompt checks at the door: bounded time, clear refusals, nothing malformed reaches a worker."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from easel.errors import InvalidRequest
from easel.prompts.checks import (
    MAX_COMPEL_SYNTAX_CHARS,
    MAX_NESTING,
    MAX_PROMPT_CHARS,
    check_prompt,
    compel_parser,
)
from easel.prompts.encoding import plan_prompt
from easel.request import GenerationRequest

COMPEL_PIECES = ["(", ")", "+", "-", '"', "\\", ".", ",", " ", "a", "cat", "1.3", ".blend(", ".and(",
                 ".swap(", "0.5", "e"]  # fmt: skip
A1111_PIECES = ["(", ")", "[", "]", ":", "|", "\\", " ", "a", "cat", "1.3", "BREAK", ",", "0.5", "AND",
                "<lora:x:1>", "-", "+"]  # fmt: skip


def nested(depth: int) -> str:
    return "(" * depth + "a" + ")" * depth


@pytest.mark.parametrize("syntax", ["compel", "a1111"])
@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 200, 800, (MAX_PROMPT_CHARS - 1) // 2])
def test_deep_nesting_is_refused_before_any_parser_runs(syntax: str, depth: int) -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidRequest, match=f"nested {depth} deep") as caught:
        check_prompt(nested(depth), syntax, field="negative_prompt")
    assert caught.value.field == "negative_prompt"
    assert time.perf_counter() - started < 1.0  # a linear scan, not a parse


@pytest.mark.parametrize("syntax", ["compel", "a1111"])
def test_nesting_at_the_limit_parses_in_polynomial_time(syntax: str) -> None:
    """`((((((((((a))))))))))` held the only worker for minutes (exponential backtracking in
    pyparsing); with packrat parsing it is a few milliseconds, and a prompt of many such
    groups stays within seconds. The bound is a regression guard, not a benchmark."""
    compel_parser()  # importing Compel (and torch) is not part of the parse
    started = time.perf_counter()
    check_prompt(nested(MAX_NESTING), syntax)
    check_prompt((nested(MAX_NESTING) + " ") * 20, syntax)
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize("syntax", ["compel", "a1111", "plain"])
def test_prompt_length_is_limited_in_every_syntax(syntax: str) -> None:
    check_prompt("a" * MAX_PROMPT_CHARS, syntax)
    with pytest.raises(InvalidRequest, match=f"{MAX_PROMPT_CHARS + 1} characters is more than the limit"):
        check_prompt("a" * (MAX_PROMPT_CHARS + 1), syntax)
    with pytest.raises(InvalidRequest, match="at most 4000 characters") as caught:
        GenerationRequest(prompt="x", negative_prompt="b" * 1_000_000, prompt_syntax=syntax)
    assert caught.value.field == "negative_prompt"
    assert len(str(caught.value)) < 300  # the megabyte is not echoed back


def test_compel_syntax_has_its_own_length_limit_and_a1111_has_the_full_one() -> None:
    """Compel's parser costs about a millisecond per character; easel's A1111 reader does not."""
    weighted = "a (red)1.2 cat, " * 200
    check_prompt(weighted[:MAX_COMPEL_SYNTAX_CHARS], "compel")
    with pytest.raises(InvalidRequest, match="write longer weighted prompts in A1111 syntax"):
        check_prompt(weighted[: MAX_COMPEL_SYNTAX_CHARS + 1], "compel")
    check_prompt(("a photo of a cat, " * 300)[:MAX_PROMPT_CHARS], "compel")  # no syntax: no parser
    started = time.perf_counter()
    check_prompt(("(" * MAX_NESTING + "a" + ")" * MAX_NESTING + " BREAK ") * 120, "a1111")
    assert time.perf_counter() - started < 5  # linear: a few milliseconds


@pytest.mark.parametrize(
    ("text", "syntax", "reason"),
    [
        ('("a","b").blend(1)', "compel", "not valid Compel syntax"),
        ('"\u000b\\\u0014t"', "compel", "not valid Compel syntax"),
        ("(a)" + "9" * 400, "compel", "a weight in it is not a finite number"),
        ("(a:2", "a1111", "unbalanced"),
        ("(a:1e999)", "a1111", "not a number"),
        ("(((((((((((a:1e300))))))))))", "a1111", "nested 11 deep"),
    ],
)
def test_malformed_prompts_are_invalid_requests(text: str, syntax: str, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason) as caught:
        check_prompt(text, syntax)
    assert caught.value.field == "prompt"


@pytest.mark.slow  # over 4 s: the quick set stays under 8 minutes
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(COMPEL_PIECES), max_size=60).map("".join))
def test_any_compel_prompt_is_accepted_or_refused_cleanly(text: str) -> None:
    """Never an exception other than InvalidRequest; and what passes parses for the encoder."""
    try:
        check_prompt(text, "compel")
    except InvalidRequest:
        return
    compel_parser().parse_conjunction(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(A1111_PIECES), max_size=60).map("".join))
def test_any_a1111_prompt_is_accepted_or_refused_cleanly(text: str) -> None:
    """What passes is planned for the encoder without error, already parsed (no worker failure,
    and Compel's parser never runs on it): every text its edits and alternations give a step, as
    the engine plans them (hypothesis found '[a|b]' planned whole: plan_prompt never sees that)."""
    from easel.prompts.scheduling import prompt_schedule

    try:
        check_prompt(text, "a1111")
    except InvalidRequest:
        return
    for _, scheduled in prompt_schedule(text, "a1111", 150):
        plan = plan_prompt(scheduled, "a1111")
        assert plan.fragments is not None and len(plan.fragments) == len(plan.chunks)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.sampled_from(["compel", "a1111"]))
def test_any_nesting_depth_is_answered_quickly(depth: int, syntax: str) -> None:
    started = time.perf_counter()
    try:
        check_prompt(nested(depth) + " b++ (c)1.2" * (syntax == "compel"), syntax)
    except InvalidRequest:
        assert depth > MAX_NESTING
    else:
        assert depth <= MAX_NESTING
    assert time.perf_counter() - started < 5


PARSE_PROMPTS = [
    "a cat++ on a (red)1.3 mat",
    '("a cat", "a dog").blend(0.7, 0.3)',
    '("a red cat", "playing with a ball").and()',
    "a (fluffy (cat)-)++ sci-fi",
    'a "quoted (text)" \\(literal\\)',
    "((((((((((a))))))))))",
]


def test_packrat_parsing_does_not_change_what_compel_reads() -> None:
    """The same parse trees with pyparsing's packrat memoisation as without it."""
    import pyparsing

    with_packrat = [repr(compel_parser().parse_conjunction(p)) for p in PARSE_PROMPTS]
    pyparsing.ParserElement.disable_memoization()
    try:
        from compel.prompt_parser import PromptParser

        without = [repr(PromptParser().parse_conjunction(p)) for p in PARSE_PROMPTS[:-1]]
    finally:
        compel_parser()  # switched on again, as every other test expects
    assert pyparsing.ParserElement._packratEnabled
    assert without == with_packrat[:-1]
