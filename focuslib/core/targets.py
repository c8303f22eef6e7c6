"""Step (I) of FOCUS: which object(s) does a question ask about?

The paper (Sec. 3.2, following ZoomEye) asks the MLLM itself, text only and greedy, with a few
in-context examples; the extracted names later fill the template "Is there a {target} in the image?".
A question is type-1 (single instance(s): colour, position, text of one object) or type-2 (all
instances of an object type: counting, "all the X"); Sec. A.5 routes the final VQA input by this type.

Here:
- `icl_prompt` builds our own few-shot prompt (one "Question:" / "Targets:" pair per example,
  type-2 targets written as "all X"), `parse_targets` reads a model's continuation back;
- `keyword_targets` is a model-free heuristic fallback;
- `extract_targets` ties them together and never raises on odd strings: a bad or hallucinated model
  answer falls back to the heuristic, with the reason recorded in `TargetSpec.note`.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

# --------------------------------------------------------------------------------------------------
# data


@dataclass
class TargetSpec:
    """The target objects of one question and how they were obtained."""

    targets: list[str] = field(default_factory=list)
    qtype: int = 1  # 1 = single instance(s); 2 = some target is about all instances of a type (counting)
    types: list[int] = field(default_factory=list)  # per target, as ZoomEye decides it (decisions.md D8)
    source: str = "none"  # "icl" | "keyword" | "user" | "none"
    raw: str = ""  # the model's raw continuation, "" when no model was asked
    note: str = ""  # human-readable why (fallback reason, dropped targets, ...)

    def type_of(self, i: int) -> int:
        """Type of target i: 2 = every instance matters (verify all ROIs), 1 = one instance."""
        return self.types[i] if i < len(self.types) else self.qtype

    def query(self, i: int) -> str:
        """The name the existence prompt uses: a type-2 target in the singular ("Is there a bicycle")."""
        return singular_phrase(self.targets[i]) if self.type_of(i) == 2 else self.targets[i]


# --------------------------------------------------------------------------------------------------
# removing multiple-choice scaffolding

# "(A) red", "(b) blue", "A. red", "A: red", "A) red" -- a letter alone, so "A.M. is ..." survives
_OPTION_LINE = re.compile(r"^\s*(?:\(\s*[A-Ha-h]\s*\)|[A-H][.:)](?=\s|$))")
# options written inline after the question: "... cup? (A) red (B) blue"
_INLINE_OPTIONS = re.compile(r"\s*\(\s*A\s*\)\s.*\(\s*B\s*\)", re.S)
# harness instructions (V*Bench, HR-Bench, MME-RealWorld, GQA, ...); matched on a whole line
_INSTRUCTION_LINE = re.compile(
    r"^\s*(?:"
    r"answer\s+(?:with|the|using|in)\b"
    r"|(?:please\s+)?(?:select|choose|pick)\s+(?:the\s+)?(?:best|correct|right)\s+(?:answer|option|choice)"
    r"|respond\s+with\b"
    r"|(?:the\s+)?(?:options|choices)\b(?:\s+are)?(?:\s+listed\s+below)?\s*:"
    r"|(?:the\s+)?(?:best|correct)\s+(?:answer|option)\s+is\s*:?\s*$"
    r")",
    re.I,
)


def strip_options(question: str) -> str:
    """Drop option lines and answer-format instructions, keeping the question sentence(s).

    The remaining lines are joined with single spaces so the result fits on one prompt line.
    """
    if not isinstance(question, str):
        return ""
    kept = []
    for line in question.splitlines():
        if not line.strip() or _OPTION_LINE.match(line) or _INSTRUCTION_LINE.match(line):
            continue
        m = _INLINE_OPTIONS.search(line)
        if m:
            line = line[: m.start()]
        kept.append(line.strip())
    return " ".join(" ".join(kept).split())


# --------------------------------------------------------------------------------------------------
# in-context prompt (our own examples; ZoomEye's idea, not its wording)

_ICL_HEADER = (
    "Each question below is asked about an image. Name the objects that have to be located in the "
    "image to answer it, separated by semicolons. Copy the names from the question and keep their "
    "describing words; replace a pronoun by the object it refers to. Put \"all\" before an object "
    "when every instance of it matters, as in counting."
)

# (question, targets) -- covers attribute, relative position, counting, "all the X", adjective+noun,
# text reading, pronoun resolution and a two-object comparison
ICL_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("What is the color of the backpack?", "backpack"),
    ("Is the lamp post on the left or right side of the bus?", "lamp post; bus"),
    ("How many bicycles are parked in the picture?", "all bicycles"),
    ("Are all the windows of the house closed?", "all windows"),
    ("Which brand is the red car?", "red car"),
    ("What is written on the sign above the shop door?", "sign"),
    ("There is a kite in the sky. What shape is it?", "kite"),
    ("What is the relative position of the brown dog to the white van?", "brown dog; white van"),
    ("What time does the clock tower show?", "clock tower"),
    ("Which one is taller, the green vase or the wooden chair?", "green vase; wooden chair"),
)


def icl_prompt(question: str) -> str:
    """Text-only few-shot prompt ending in "Question: {question}\\nTargets:" for a model to continue.

    Options and answer instructions are stripped here too, so raw benchmark prompts are safe.
    """
    shots = "\n\n".join(f"Question: {q}\nTargets: {t}" for q, t in ICL_EXAMPLES)
    return f"{_ICL_HEADER}\n\n{shots}\n\nQuestion: {strip_options(question)}\nTargets:"


# --------------------------------------------------------------------------------------------------
# parsing a model's continuation

_PRONOUNS = frozenset(
    "it its them this that these those he she they him her one ones object objects thing things "
    "image picture photo photograph scene none nothing".split()
)
_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.I)
_ALL = re.compile(r"^all\s+(?:of\s+)?(?:the\s+)?", re.I)
_SPLIT = re.compile(r"\s*;\s*|\s*,\s*|\s+and\s+", re.I)
_EDGE_CHARS = " \t\"'`\u201c\u201d\u2018\u2019*[]().,;:!?-"
_MAX_TARGET_WORDS = 6  # longer pieces are sentences (refusals, explanations), not object names


def _clean_piece(piece: str) -> tuple[str, bool]:
    """One split piece -> (object name, marked 'all'); "" when unusable."""
    s = piece.strip(_EDGE_CHARS)
    is_all = bool(_ALL.match(s))
    s = _ALL.sub("", s)
    s = _ARTICLE.sub("", s).strip(_EDGE_CHARS)
    s = " ".join(s.split())
    if not re.search(r"[A-Za-z]", s) or s.lower() in _PRONOUNS or len(s.split()) > _MAX_TARGET_WORDS:
        return "", is_all
    return s, is_all


def parse_targets(text: str) -> Optional[TargetSpec]:
    """Parse the continuation of `icl_prompt`: first non-empty line, items split on ";", "," and " and ".

    A leading "all " marks a type-2 question and is removed; articles, quotes, trailing punctuation,
    pronouns and generic words ("object", "image") are dropped; duplicates removed in order.
    Returns None when nothing usable is left.
    """
    if not isinstance(text, str):
        return None
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if re.match(r"^question\s*:", line, re.I):  # the model skipped the answer and began a new shot
        return None
    line = re.sub(r"^targets?\s*:\s*", "", line, flags=re.I)  # model repeated the cue
    targets: list[str] = []
    types: list[int] = []
    for piece in _SPLIT.split(line):
        name, is_all = _clean_piece(piece)
        if not name:
            continue
        low = [t.lower() for t in targets]
        if name.lower() not in low:
            targets.append(name)
            types.append(2 if is_all else 1)
        elif is_all:
            types[low.index(name.lower())] = 2
    if not targets:
        return None
    return TargetSpec(targets=targets, qtype=max(types), types=types, source="icl", raw=text,
                      note="in-context learning")


# --------------------------------------------------------------------------------------------------
# keyword heuristic (no model)

_TYPE2 = re.compile(r"\b(?:how many|number of|count|counting|all the|all of the|every)\b", re.I)

# words that end a noun phrase: prepositions, verbs, conjunctions, wh-words
_NP_STOP = frozenset(
    """
    on in at of to from with by near behind under above below over inside outside next beside besides
    between for into onto along across around through against beneath underneath toward towards
    is are was were be been being am do does did has have had can could will would should may might
    held holding wearing worn sitting standing parked hanging located placed shown written made seen
    visible lying located placed printed painted displayed carrying riding using facing showing say
    says said appear appears look looks there here
    and or but that which who whose whom where when while than as if
    what how why left right side
    """.split()
)
_DETERMINERS = frozenset(
    "the a an this that these those any some its his her their my your our each every all both".split()
)
# nouns naming a property rather than an object ("the colour of ...")
_NON_OBJECTS = _PRONOUNS | frozenset(
    """
    color colour material shape brand breed type kind sort size pattern style species make model
    number numbers name text word words letter letters time logo position relative location
    image picture photo photograph scene view
    """.split()
)
_MAX_NP_WORDS = 3  # keep "small red car", not a whole clause

_SIDE = r"(?:left|right)(?:\s+(?:hand\s+)?side)?"
_RELATIONS = (
    rf"(?:on|to)\s+the\s+{_SIDE}(?:\s+or\s+(?:the\s+)?{_SIDE})?\s+of"
    r"|above\s+or\s+below|below\s+or\s+above|in\s+front\s+of\s+or\s+behind|behind\s+or\s+in\s+front\s+of"
    r"|in\s+front\s+of|next\s+to|above|below|under|behind|beneath"
)

# (pattern, groups holding noun phrases); the first pattern that yields a target wins
_KEYWORD_PATTERNS: tuple[tuple[re.Pattern, tuple[str, ...]], ...] = tuple(
    (re.compile(p, re.I), g)
    for p, g in (
        # two objects: "is the A on the left or right side of the B", "relative position of A to B"
        (rf"\b(?:is|are|was|were)\s+(?P<a>.+?)\s+(?:{_RELATIONS})\s+(?P<b>.+)", ("a", "b")),
        (
            r"\b(?:relative\s+)?position\s+of\s+(?P<a>.+?)\s+(?:relative\s+to|with\s+respect\s+to|"
            r"compared\s+to|in\s+relation\s+to|to|and)\s+(?P<b>.+)",
            ("a", "b"),
        ),
        (r"\bwhich\s+side\s+of\s+(?P<b>.+?)\s+(?:is|are)\s+(?P<a>.+)", ("a", "b")),
        # counting / all instances
        (r"\bhow\s+many\s+(?P<x>.+)", ("x",)),
        (r"\bnumber\s+of\s+(?P<x>.+)", ("x",)),
        (r"\ball\s+(?:of\s+)?the\s+(?P<x>.+)", ("x",)),
        (r"\bevery\s+(?P<x>.+)", ("x",)),
        (r"\bcount\s+(?P<x>.+)", ("x",)),
        # reading text
        (r"\b(?:written|printed|displayed|shown|painted)\s+(?:on|in)\s+(?P<x>.+)", ("x",)),
        (r"\b(?:text|words?|letters?|numbers?|name|time|logo)\s+(?:on|of|in)\s+(?P<x>.+)", ("x",)),
        (r"\bwhat\s+does\s+(?P<x>.+?)\s+say\b", ("x",)),
        # attributes
        (r"\bwhat\s+(?:kind|type|sort|breed|brand|make|model)\s+of\s+(?P<x>.+)", ("x",)),
        (
            r"\b(?:colou?r|material|shape|breed|type|kind|size|pattern|style|species|brand|make|model)"
            r"\s+of\s+(?P<x>.+)",
            ("x",),
        ),
        (
            r"\bwhat\s+(?:colou?r|material|shape|brand|breed|kind|type|size|pattern|style)"
            r"\s+(?:is|are|was|were|does|do)\s+(?P<x>.+)",
            ("x",),
        ),
        # generic fall-throughs
        (r"\b(?:is|are|was|were|does|do|did)\s+(?P<x>(?:the|a|an)\s+.+)", ("x",)),
        (r"\bof\s+(?P<x>the\s+.+)", ("x",)),
    )
)

_TOKEN = re.compile(r"[a-z0-9][a-z0-9'\u2019\-]*|[^\sa-z0-9]")


def _noun_phrase(span: str) -> str:
    """Leading noun phrase of `span`: skip determiners, stop at a preposition/verb/punctuation."""
    words: list[str] = []
    for tok in _TOKEN.findall(span.lower()):
        if not words and tok in _DETERMINERS:
            continue
        if tok == "of" and words and words[-1] in _NON_OBJECTS:
            words = []  # "the colour of the car": the object comes after "of"
            continue
        if tok in _NP_STOP or not re.match(r"[a-z0-9]", tok):
            break
        words.append(tok)
    words = words[-_MAX_NP_WORDS:]  # keep the head noun and its closest modifiers
    if not words or words[-1] in _NON_OBJECTS:
        return ""
    return " ".join(words)


def keyword_targets(question: str) -> TargetSpec:
    """Model-free fallback: type by counting words, targets by a few question patterns.

    Returns source "keyword", or source "none" with empty targets when no pattern applies.
    """
    q = strip_options(question) if isinstance(question, str) else ""
    qtype = 2 if _TYPE2.search(q) else 1
    note = "keyword heuristic (fallback without a model)"
    for pattern, groups in _KEYWORD_PATTERNS:
        m = pattern.search(q)
        if not m:
            continue
        found = [np_ for np_ in (_noun_phrase(m.group(g)) for g in groups) if np_]
        if found:
            targets = list(dict.fromkeys(found))  # dedupe, keep order
            types = _keyword_types(q, targets) if qtype == 2 else [1] * len(targets)
            return TargetSpec(targets=targets, qtype=max(types), types=types, source="keyword", raw="",
                              note=note)
    return TargetSpec(targets=[], qtype=qtype, source="none", raw="", note=note + ": no target found")


# --------------------------------------------------------------------------------------------------
# putting it together


def _singular(word: str) -> str:
    """Crude singular so that "bicycle" matches "bicycles" and "bus" matches "buses"."""
    if re.search(r"(?:ses|xes|zes|ches|shes)$", word) and len(word) > 4:
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


_WORD = re.compile(r"[a-z0-9]+(?:['\u2019][a-z]+)?")


def _words(text: str) -> list[str]:
    return [_singular(w) for w in _WORD.findall(text.lower())]


# a counting cue right before a noun phrase: "how many", "number of the", "all", "every", "count" + <= 2 words
_COUNT_CUE = re.compile(
    r"\b(?:how\s+many|number\s+of|count(?:ing)?|all|every|each)\s+(?:of\s+)?(?:the\s+)?(?:[\w'\-]+\s+){0,2}$",
    re.I)


def _counted(target: str, question: str) -> bool:
    """True if a counting cue governs `target`'s first occurrence in `question` ("how many X ...")."""
    t = _words(target)
    spans = list(_WORD.finditer(question.lower()))
    q = [_singular(m.group()) for m in spans]
    for i in range(len(q) - len(t) + 1):
        if t and q[i : i + len(t)] == t:
            return bool(_COUNT_CUE.search(question[: spans[i].start()]))
    return False


def _keyword_types(question: str, targets: Sequence[str]) -> list[int]:
    """Per-target types for a question with a counting cue: type 2 only for the targets it governs
    ("how many X are left of the Y": X is 2, Y is 1); if the cue governs none, all are type 2."""
    types = [2 if _counted(t, question) else 1 for t in targets]
    return types if 2 in types else [2] * len(targets)


_IRREGULAR = {"people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
              "geese": "goose", "feet": "foot", "teeth": "tooth", "knives": "knife", "leaves": "leaf",
              "shelves": "shelf", "wolves": "wolf", "buses": "bus", "lives": "life", "halves": "half",
              "wives": "wife", "calves": "calf", "loaves": "loaf", "thieves": "thief", "dice": "die",
              "movies": "movie", "cookies": "cookie", "zombies": "zombie", "hoodies": "hoodie"}
_INVARIANT = {"sheep", "fish", "deer", "series", "species", "aircraft", "glasses", "pants", "jeans", "scissors",
              "shorts", "trousers", "clothes", "news", "bus", "gas", "grass", "glass", "class", "dress", "chess",
              "tennis", "axis", "chassis", "lens", "cactus", "octopus", "campus", "virus", "walrus"}


def singular_noun(word: str) -> str:
    """English singular of one lower- or mixed-case noun (rules + a short irregular list)."""
    w = word.lower()
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if w in _INVARIANT or len(w) <= 3 or w.endswith(("ss", "us")):
        return word
    if w.endswith("ies") and len(w) > 4:
        return word[:-3] + "y"
    if re.search(r"(?:xes|zzes|ches|shes|sses|oes)$", w):
        return word[:-2]
    if w.endswith("s"):
        return word[:-1]
    return word


def singular_phrase(name: str) -> str:
    """Singular of a target name's head noun: "red cars" -> "red car", "people in hats" -> "person in hats".

    The head is the last word before a preposition/verb/conjunction (`_NP_STOP`), else the last word.
    """
    words = name.split()
    if not words:
        return name
    head = len(words) - 1
    for i, w in enumerate(words[1:], start=1):
        if w.lower() in _NP_STOP:
            head = i - 1
            break
    words[head] = singular_noun(words[head])
    return " ".join(words)


def occurs_in(target: str, question: str) -> bool:
    """True if `target` appears in `question` as whole words (case-insensitive, simple plurals)."""
    t, q = _words(target), _words(question)
    if not t:
        return False
    return any(q[i : i + len(t)] == t for i in range(len(q) - len(t) + 1))


def _call_generate(generate: Callable[..., str], prompt: str, max_new_tokens: int) -> str:
    """Call the model; pass max_new_tokens only if the callable accepts it."""
    try:
        params = inspect.signature(generate).parameters.values()
    except (TypeError, ValueError):  # builtins / C callables without a signature
        params = ()
    if any(p.name == "max_new_tokens" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return generate(prompt, max_new_tokens=max_new_tokens)
    return generate(prompt)


def _fallback(question: str, raw: str, reason: str) -> TargetSpec:
    spec = keyword_targets(question)
    spec.raw = raw
    spec.note = f"fallback to keywords: {reason}" + ("" if spec.targets else "; no keyword target found")
    return spec


def extract_targets(
    question: str,
    generate: Optional[Callable[[str], str]] = None,
    user_targets: Optional[Sequence[str]] = None,
    max_new_tokens: int = 24,
) -> TargetSpec:
    """Target objects of `question`: user-given > model by ICL (validated) > keyword heuristic.

    `generate` is the model's greedy text-only continuation (str -> str; it receives
    `max_new_tokens=` too if its signature accepts it). Exceptions raised by `generate` propagate
    (a broken model should be loud); odd *strings* never raise.
    """
    question = question if isinstance(question, str) else ("" if question is None else str(question))

    if user_targets:
        if isinstance(user_targets, str):
            user_targets = [user_targets]
        names, types = [], []
        for t in user_targets:
            t = " ".join(str(t).split())
            is_all = bool(_ALL.match(t))
            t = _ALL.sub("", t)
            if t and t.lower() not in {n.lower() for n in names}:
                names.append(t)
                types.append(2 if is_all else 1)
        if names:
            return TargetSpec(targets=names, qtype=max(types), types=types, source="user", raw="",
                              note="given by the user")

    q = strip_options(question)
    if not q:
        return TargetSpec(targets=[], qtype=1, source="none", raw="", note="empty question")
    if generate is None:
        return keyword_targets(question)

    raw = _call_generate(generate, icl_prompt(q), max_new_tokens)
    raw = raw if isinstance(raw, str) else ""
    spec = parse_targets(raw)
    if spec is None:
        return _fallback(question, raw, f"model output not parseable ({raw[:60]!r})")
    kept = [t for t in spec.targets if occurs_in(t, q)]
    dropped = [t for t in spec.targets if t not in kept]
    if not kept:
        return _fallback(question, raw, f"model targets not in the question ({'; '.join(dropped)})")
    spec.types = [ty for t, ty in zip(spec.targets, spec.types) if t in kept]
    spec.targets = kept
    spec.qtype = max(spec.types)
    notes = ["in-context learning"]
    if dropped:  # partial hallucination: keep the grounded names, say which were dropped
        notes.append(f"dropped targets not in the question: {'; '.join(dropped)}")
    if spec.qtype == 1 and _TYPE2.search(q):  # the paper allows ICL or keywords for the type
        spec.types = _keyword_types(q, spec.targets)
        spec.qtype = 2
        notes.append("type 2 from counting keywords")
    spec.note = "; ".join(notes)
    return spec
