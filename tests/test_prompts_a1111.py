"""Tests for the AUTOMATIC1111 -> Compel prompt translator (easel.prompts.a1111).

The translation table pins the exact Compel strings; the Compel round-trip test then feeds every
translated string to Compel's own parser (no model needed) and checks that Compel reads back the
same text at the same weights, so the table cannot drift into strings Compel misreads.
"""

from __future__ import annotations

import pickle
import random
import re

import pytest

from easel.prompts.a1111 import PromptSyntaxError, WeightedSpan, a1111_to_compel, parse_a1111

W1 = 1.1
W2 = round(1.1**2, 10)
W3 = round(1.1**3, 10)
D1 = round(1 / 1.1, 10)
D2 = round(1 / 1.1**2, 10)

# (A1111 prompt, expected Compel strings, one per BREAK chunk)
TRANSLATIONS: list[tuple[str, list[str]]] = [
    # plain text and whitespace
    ("a photo of an astronaut", ["a photo of an astronaut"]),
    ("  a   photo\n of\tan astronaut  ", ["a photo of an astronaut"]),
    ("", [""]),
    ("   ", [""]),
    # round brackets
    ("a (red) cat", ["a (red)1.1 cat"]),
    ("a ((red)) cat", ["a (red)1.21 cat"]),
    ("a (((red))) cat", ["a (red)1.331 cat"]),
    ("(red cat)", ["(red cat)1.1"]),
    # explicit weights
    ("a (red:1.3) cat", ["a (red)1.3 cat"]),
    ("a (red:0.5) cat", ["a (red)0.5 cat"]),
    ("(red cat:1.3) on a mat", ["(red cat)1.3 on a mat"]),
    ("(red: 1.3 )", ["(red)1.3"]),
    ("(red:.5)", ["(red)0.5"]),
    ("(red:+2)", ["(red)2"]),
    ("(red:1.)", ["red"]),
    ("(red:0)", ["(red)0"]),
    ("(red:1.23456)", ["(red)1.2346"]),
    # nesting multiplies
    ("((a (b:1.5)):1.2)", ["(a)1.32 (b)1.98"]),
    ("((a:2):0.5)", ["a"]),
    ("(a (b) c)", ["(a)1.1 (b)1.21 (c)1.1"]),
    # square brackets
    ("a [blurry] photo", ["a (blurry)0.9091 photo"]),
    ("[[blurry]]", ["(blurry)0.8264"]),
    ("([a] b)", ["a (b)1.1"]),
    ("[(a) b]", ["a (b)0.9091"]),
    ("[(x:1.5)]", ["(x)1.3636"]),
    # merging of adjacent equal weights
    ("(a) (b)", ["(a b)1.1"]),
    ("(a)(b)", ["(ab)1.1"]),
    ("(a)[b]c", ["(a)1.1 (b)0.9091 c"]),
    ("(a:1.1) (b)", ["(a b)1.1"]),
    # escapes: literal brackets, escaped for Compel
    (r"a \(literal\) bracket", [r"a \(literal\) bracket"]),
    (r"\[not weaker\]", ["[not weaker]"]),
    (r"(\(x\) y:1.2)", [r"(\(x\) y)1.2"]),
    (r"a \\ b", [r"a \ b"]),
    (r"(x\\)", [r"(x\ )1.1"]),
    (r"C:\path", [r"C:\path"]),
    (r"a\\\(b", [r"a\ \(b"]),
    (r"(x\\\):2)", [r"(x\ \))2"]),
    ('say "hi"', [r"say \"hi\""]),
    ('(say "hi")', [r"(say \"hi\")1.1"]),
    # BREAK
    ("a cat BREAK a dog", ["a cat", "a dog"]),
    ("a BREAK b BREAK c", ["a", "b", "c"]),
    ("BREAK a cat", ["a cat"]),
    ("a cat BREAK", ["a cat"]),
    ("a BREAK BREAK b", ["a", "b"]),
    ("BREAK", [""]),
    ("(a BREAK b)", ["(a)1.1", "(b)1.1"]),
    ("a,BREAK,b", ["a,", ",b"]),
    ("a break b", ["a break b"]),
    ("BREAKFAST", ["BREAKFAST"]),
    # punctuation and commas
    ("masterpiece, (best quality:1.2), 8k", ["masterpiece, (best quality)1.2 , 8k"]),
    ("(masterpiece, best quality, ultra-detailed:1.2)", ["(masterpiece, best quality, ultra-detailed)1.2"]),
    ("style: anime; ratio 16:9!", ["style: anime; ratio 16:9!"]),
    # unicode
    ("一只(红色的猫:1.3)", ["一只 (红色的猫)1.3"]),
    ("a cat 🐱 ((🌸))", ["a cat 🐱 (🌸)1.21"]),
    ("(Ünïcödé wörds)", ["(Ünïcödé wörds)1.1"]),
    # + and - that Compel would read as weight operators
    ("C++ code", ["C ++ code"]),
    ("well- done", ["well - done"]),
    ("a - b, -5 degrees, well-lit", ["a - b, -5 degrees, well-lit"]),
    ("(a - b)", ["(a -b)1.1"]),
    ("(-5 degrees, well-lit:1.2)", ["(-5 degrees, well-lit)1.2"]),
    # x = y is plain text at weight 1
    ("x = y", ["x = y"]),
]


@pytest.mark.parametrize(("prompt", "expected"), TRANSLATIONS)
def test_a1111_to_compel(prompt: str, expected: list[str]) -> None:
    assert a1111_to_compel(prompt) == expected


def _spans(*pairs: tuple[str, float]) -> list[WeightedSpan]:
    return [WeightedSpan(text, weight) for text, weight in pairs]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("", [[]]),
        ("a cat", [_spans(("a cat", 1.0))]),
        ("(a)", [_spans(("a", W1))]),
        ("((a))", [_spans(("a", W2))]),
        ("(((a)))", [_spans(("a", W3))]),
        ("[a]", [_spans(("a", D1))]),
        ("[[a]]", [_spans(("a", D2))]),
        ("[(a)]", [_spans(("a", 1.0))]),
        ("(a:-0.5) b", [_spans(("a", -0.5), ("b", 1.0))]),
        ("((a:-2))", [_spans(("a", -2.2))]),
        ("((a:-1):-1)", [_spans(("a", 1.0))]),
        ("(a:.25)", [_spans(("a", 0.25))]),
        ("(red cat:1.3) BREAK [dog]", [_spans(("red cat", 1.3)), _spans(("dog", D1))]),
        (r"\(\)\[\]\\", [_spans(("()[]\\", 1.0))]),
    ],
)
def test_parse_a1111_weights(prompt: str, expected: list[list[WeightedSpan]]) -> None:
    assert parse_a1111(prompt) == expected


def test_parse_a1111_weights_are_free_of_float_noise() -> None:
    assert parse_a1111("((x))") == [_spans(("x", 1.21))]
    assert parse_a1111("((a (b:1.5)):1.2)") == [_spans(("a", 1.32), ("b", 1.98))]
    assert parse_a1111("[(a)] b") == [_spans(("a b", 1.0))]


# (prompt, position of the offending character, words the message must contain)
MALFORMED: list[tuple[str, int, str]] = [
    ("a (red cat", 2, "unbalanced '('"),
    ("((a) b", 0, "unbalanced '('"),
    ("a red) cat", 5, "unbalanced ')'"),
    ("[a", 0, "unbalanced '['"),
    ("a]", 1, "unbalanced ']'"),
    ("(a]", 2, "mismatched ']'"),
    ("[a)", 2, "mismatched ')'"),
    ("(red:abc)", 5, "not a number"),
    ("(red: abc)", 6, "not a number"),
    ("(red:)", 4, "empty weight"),
    ("(red:  )", 4, "empty weight"),
    ("(red:1.2.3)", 5, "not a number"),
    ("(red:1.2 cat)", 5, "not a number"),
    ("(a:b:1.2)", 3, "not a number"),
    ("(red:1.2", 0, "unbalanced '('"),
    ("(red:1.2]", 8, "expected a number and ')'"),
    ("(red:(1.2))", 5, "expected a number and ')'"),
    (r"\((a", 2, "unbalanced '('"),
    (r"(a\)", 0, "unbalanced '('"),
    ("[cat:dog:0.5]", 4, "prompt editing"),
    ("[cat|dog]", 4, "alternation"),
    ("a cat AND a dog", 6, "AND"),
    ("a cat <lora:detail:0.8>", 6, "extra-network"),
]


@pytest.mark.parametrize(("prompt", "position", "words"), MALFORMED)
def test_malformed_prompts_raise_with_position(prompt: str, position: int, words: str) -> None:
    for parse in (parse_a1111, a1111_to_compel):
        with pytest.raises(PromptSyntaxError) as caught:
            parse(prompt)
        error = caught.value
        assert isinstance(error, ValueError)
        assert error.position == position
        assert error.prompt == prompt
        assert words in error.message
        assert f"at position {position} in prompt:" in str(error)
        assert ">>>" + prompt[position : position + 3] in error.message


@pytest.mark.parametrize(
    ("prompt", "position", "words"),
    [
        ("a (cat:-0.5)", 3, "negative"),
        ("[(cat:-1)]", 2, "negative"),
        ("(a = b)", 3, "'='"),
        ("(C++)", 2, "weight operator"),
        ("(well- , done)", 5, "weight operator"),
        ("(a -)", 3, "weight operator"),
    ],
)
def test_content_compel_cannot_express_is_refused(prompt: str, position: int, words: str) -> None:
    parse_a1111(prompt)  # valid A1111
    with pytest.raises(PromptSyntaxError) as caught:
        a1111_to_compel(prompt)
    assert caught.value.position == position
    assert words in caught.value.message


def test_error_message_points_at_position_and_pickles() -> None:
    with pytest.raises(PromptSyntaxError) as caught:
        a1111_to_compel("a photo of (a red cat")
    error = caught.value
    assert error.message == "unbalanced '(' at position 11 in prompt: 'a photo of >>>(a red cat'"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.message, copy.prompt, copy.position) == (error.message, error.prompt, error.position)


def test_long_prompt_excerpt_is_shortened() -> None:
    prompt = "word " * 40 + "(oops"
    with pytest.raises(PromptSyntaxError) as caught:
        parse_a1111(prompt)
    assert caught.value.position == 200
    assert len(caught.value.message) < 120


# --- Compel reads the translations back --------------------------------------------------------------


@pytest.fixture(scope="module")
def compel_parser():
    module = pytest.importorskip("compel.prompt_parser")
    return module.PromptParser()


def _squash(pairs: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Whitespace-free text per weight, adjacent equal weights merged: what the encoder tokens depend on.

    Compel fuses fragments with spaces and splits '.'/',' inside weighted spans into separate words;
    CLIP's tokenizer splits words from punctuation anyway, so only the characters and weights matter.
    """
    merged: list[tuple[str, float]] = []
    for text, weight in pairs:
        text = re.sub(r"\s+", "", text)
        weight = round(weight, 4)
        if not text:
            continue
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    return merged


def _compel_reads(parser, compel_prompt: str) -> list[tuple[str, float]]:
    from compel.prompt_parser import Fragment

    conjunction = parser.parse_conjunction(compel_prompt)
    assert len(conjunction.prompts) == 1, conjunction
    fragments = conjunction.prompts[0].children
    assert all(type(f) is Fragment for f in fragments), fragments
    assert not conjunction.lora_weights
    return _squash([(f.text, f.weight) for f in fragments])


def _assert_compel_agrees(parser, prompt: str) -> None:
    chunks = parse_a1111(prompt)
    translated = a1111_to_compel(prompt)
    assert len(chunks) == len(translated)
    for spans, compel_prompt in zip(chunks, translated, strict=True):
        expected = _squash([(s.text, s.weight) for s in spans])
        assert _compel_reads(parser, compel_prompt) == expected, (prompt, compel_prompt)


@pytest.mark.parametrize(("prompt", "expected"), TRANSLATIONS)
def test_compel_parser_reads_translation_back(compel_parser, prompt: str, expected: list[str]) -> None:
    _assert_compel_agrees(compel_parser, prompt)


def test_compel_misreads_untranslated_a1111() -> None:
    """The reason this module exists: without translation Compel turns the weight into text."""
    module = pytest.importorskip("compel.prompt_parser")
    fragments = module.PromptParser().parse_conjunction("(red cat:1.3)").prompts[0].children
    assert [(f.text, f.weight) for f in fragments] != [("red cat", 1.3)]


def test_random_prompts_translate_exactly_or_raise(compel_parser) -> None:
    """Fuzz: every prompt either raises PromptSyntaxError or round-trips through Compel exactly."""
    rng = random.Random(1234)
    alphabet = (
        "a|b|cat| | |(|)|[|]|:1.3|:0.5|:-1|:|\\(|\\)|\\\\|\\|,|.|+|-|=|\"|BREAK| BREAK |猫|1|'s|C++".split(
            "|"
        )
    )
    alphabet += ["|", " AND ", "<lora:x:1>"]
    translated = 0
    for _ in range(400):
        prompt = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        try:
            _assert_compel_agrees(compel_parser, prompt)
        except PromptSyntaxError as error:
            assert 0 <= error.position <= len(prompt)
        else:
            translated += 1
    assert translated > 100
