"""Tests for focuslib.core.targets: ICL prompt, parsing, keyword fallback, extract_targets policy."""
import pytest

from focuslib.core.targets import (
    TargetSpec,
    extract_targets,
    icl_prompt,
    keyword_targets,
    occurs_in,
    parse_targets,
    strip_options,
)

VSTAR = (
    "What is the color of the woman's umbrella?\n(A) red\n(B) blue\n(C) white\n(D) green\n"
    "Answer with the option's letter from the given choices directly."
)
HRBENCH = "What is the number on the white bus?\nA. 12\nB. 21\nC. 7\nD. 71\nAnswer the option letter directly."

# ---------------------------------------------------------------------------------------- parse


def test_parse_multiple_targets():
    spec = parse_targets(' the red backpack; a man and "bench".\n')
    assert spec.targets == ["red backpack", "man", "bench"]
    assert spec.qtype == 1 and spec.source == "icl"


def test_parse_all_marks_type2():
    spec = parse_targets(" all bicycles")
    assert spec.targets == ["bicycles"] and spec.qtype == 2
    assert parse_targets("All the windows, door").targets == ["windows", "door"]
    assert parse_targets("All the windows, door").qtype == 2


def test_parse_drops_pronouns_and_dedupes():
    spec = parse_targets(" it; kite, the kite, object")
    assert spec.targets == ["kite"]


@pytest.mark.parametrize("junk", ["", "   \n ", "???", "it; them", "\nQuestion: What is this?", None, "none"])
def test_parse_junk_is_none(junk):
    assert parse_targets(junk) is None


def test_parse_ignores_extra_lines():
    spec = parse_targets(" lamp post; bus\n\nQuestion: How many cars?\nTargets: all cars")
    assert spec.targets == ["lamp post", "bus"] and spec.qtype == 1
    assert parse_targets("Targets: dog").targets == ["dog"]  # repeated cue tolerated


def test_parse_rejects_sentences():
    assert parse_targets("I am sorry but I cannot identify any objects in this question") is None


# ---------------------------------------------------------------------------------------- strip


def test_strip_options_vstar():
    assert strip_options(VSTAR) == "What is the color of the woman's umbrella?"


def test_strip_options_hrbench():
    assert strip_options(HRBENCH) == "What is the number on the white bus?"


def test_strip_options_variants():
    assert strip_options("Is it day?\nA: yes\nB: no\nAnswer the question using a single word or phrase.") == "Is it day?"
    assert strip_options("What is on the table? (A) cup (B) plate") == "What is on the table?"
    assert strip_options("There is a kite.\nWhat shape is it?") == "There is a kite. What shape is it?"
    assert strip_options("A.M. or P.M. on the clock?") == "A.M. or P.M. on the clock?"
    assert strip_options("") == "" and strip_options(None) == ""


# ---------------------------------------------------------------------------------------- prompt


def test_icl_prompt_format():
    p = icl_prompt(VSTAR)
    assert p.endswith("Question: What is the color of the woman's umbrella?\nTargets:")
    assert "(A)" not in p and "Answer with the option" not in p
    lines = p.splitlines()
    q_lines = [ln for ln in lines if ln.startswith("Question: ")]
    t_lines = [ln for ln in lines if ln.startswith("Targets:")]
    assert 9 <= len(q_lines) <= 11 and len(t_lines) == len(q_lines)
    assert any(ln.startswith("Targets: all ") for ln in t_lines)
    # every example's answer parses back to names that occur in its question
    for q, t in zip(q_lines[:-1], t_lines[:-1]):
        spec = parse_targets(t[len("Targets:"):])
        assert spec is not None
        assert all(occurs_in(x, q) for x in spec.targets), (q, t)


# ---------------------------------------------------------------------------------------- keywords

KEYWORD_CASES = [
    (VSTAR, ["woman's umbrella"], 1),
    ("What is the material of the glove?", ["glove"], 1),
    ("Is the red backpack on the left or right side of the man?", ["red backpack", "man"], 1),
    ("Is the flag to the left of the white truck?", ["flag", "white truck"], 1),
    ("How many people are there in the boat?", ["people"], 2),
    ("What is the color of the umbrella held by the woman on the bridge?", ["umbrella"], 1),
    ("What is written on the blue sign?", ["blue sign"], 1),
    ("What color is the dog's collar?", ["dog's collar"], 1),
    ("Count the number of yellow taxis in the street.", ["yellow taxis"], 2),
    ("Are all the lights in the tunnel turned on?", ["lights"], 2),
    ("What is the relative position of the bench to the fountain?", ["bench", "fountain"], 1),
    (HRBENCH, ["white bus"], 1),
    ("What kind of bird is sitting on the fence?", ["bird"], 1),
]


@pytest.mark.parametrize("question,targets,qtype", KEYWORD_CASES)
def test_keyword_targets(question, targets, qtype):
    spec = keyword_targets(question)
    assert (spec.targets, spec.qtype, spec.source) == (targets, qtype, "keyword")
    assert "fallback" in spec.note


@pytest.mark.parametrize("question", ["What is it?", "", "???", "\n(A) red\n(B) blue"])
def test_keyword_targets_empty(question):
    spec = keyword_targets(question)
    assert spec.targets == [] and spec.source == "none"


# ---------------------------------------------------------------------------------------- extract


def _fake(text):
    calls = []

    def generate(prompt: str) -> str:
        calls.append(prompt)
        return text

    generate.calls = calls
    return generate


def test_extract_icl_good():
    gen = _fake(" red backpack; man\nQuestion: junk")
    spec = extract_targets("Is the red backpack on the left or right side of the man?\n(A) left\n(B) right", gen)
    assert spec.source == "icl" and spec.targets == ["red backpack", "man"] and spec.qtype == 1
    assert spec.raw.startswith(" red backpack")
    assert gen.calls[0].endswith("of the man?\nTargets:") and "(A)" not in gen.calls[0]


def test_extract_icl_type2_and_plural_match():
    spec = extract_targets("How many bicycles are in the image?", _fake(" all bicycle"))
    assert spec.source == "icl" and spec.targets == ["bicycle"] and spec.qtype == 2
    # model forgot "all": counting keywords still make it type 2
    spec = extract_targets("How many bicycles are in the image?", _fake(" bicycles"))
    assert spec.qtype == 2 and "keyword" in spec.note


def test_extract_garbage_falls_back():
    spec = extract_targets("What is the color of the clock?", _fake("???"))
    assert spec.source == "keyword" and spec.targets == ["clock"]
    assert "not parseable" in spec.note and spec.raw == "???"


def test_extract_hallucination_falls_back():
    spec = extract_targets("What is the color of the clock?", _fake(" giraffe"))
    assert spec.source == "keyword" and spec.targets == ["clock"]
    assert "not in the question" in spec.note and "giraffe" in spec.note


def test_extract_partial_hallucination_keeps_grounded():
    spec = extract_targets("What is the man holding?", _fake(" man; cup"))
    assert spec.source == "icl" and spec.targets == ["man"] and "cup" in spec.note


def test_extract_passes_max_new_tokens_when_accepted():
    seen = {}

    def gen(prompt, max_new_tokens=0):
        seen["n"] = max_new_tokens
        return " clock"

    assert extract_targets("What is the color of the clock?", gen, max_new_tokens=7).targets == ["clock"]
    assert seen["n"] == 7


def test_extract_user_wins():
    gen = _fake(" clock")
    spec = extract_targets("What is the color of the clock?", gen, user_targets=["all wall clocks", "tower"])
    assert spec.source == "user" and spec.targets == ["wall clocks", "tower"] and spec.qtype == 2
    assert gen.calls == []
    assert extract_targets("", user_targets=["dog"]).targets == ["dog"]


def test_extract_without_model_and_odd_strings():
    assert extract_targets("What is the breed of the dog?").source == "keyword"
    for q in ["", "   ", None, "\n(A) x\n(B) y"]:
        spec = extract_targets(q, _fake(" dog"))
        assert isinstance(spec, TargetSpec) and spec.targets == [] and spec.source == "none"
    spec = extract_targets("What is it?", _fake(None))  # model returned a non-string
    assert spec.targets == [] and spec.source == "none" and "fallback" in spec.note


# ------------------------------------------------------------------- per-target type (D8, ZoomEye)


@pytest.mark.parametrize("raw,types", [
    (" all bicycles; car", [2, 1]),        # the model marks the counted target only
    (" bicycles; car", [2, 1]),            # no mark: the counting cue governs "bicycles", not "car"
])
def test_type2_is_decided_per_target(raw, types):
    spec = extract_targets("How many bicycles are there left of the car?", generate=lambda p: raw)
    assert spec.targets == ["bicycles", "car"] and spec.types == types and spec.qtype == 2
    assert [spec.query(i) for i in range(2)] == ["bicycle", "car"]


def test_keyword_and_user_types_per_target():
    assert keyword_targets("How many red cars are parked?").types == [2]
    spec = extract_targets("Is the dog left of the cats?", user_targets=["dog", "all cats"])
    assert spec.types == [1, 2] and spec.qtype == 2 and spec.query(1) == "cat"
    spec = extract_targets("What colour is the bus?", user_targets=["bus"])
    assert spec.types == [1] and spec.qtype == 1 and spec.query(0) == "bus"
    assert parse_targets(" lamp post; all windows").types == [1, 2]


@pytest.mark.parametrize("plural,singular", [
    ("bicycles", "bicycle"), ("red cars", "red car"), ("buses", "bus"), ("boxes", "box"), ("berries", "berry"),
    ("horses", "horse"), ("people wearing hats", "person wearing hats"), ("knives", "knife"), ("sheep", "sheep"),
    ("glass", "glass"), ("watches", "watch"), ("cars on the left", "car on the left"), ("movies", "movie"),
])
def test_singular_phrase(plural, singular):
    from focuslib.core.targets import singular_phrase
    assert singular_phrase(plural) == singular
