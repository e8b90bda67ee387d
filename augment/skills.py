"""Skill detection in captions (TIDA step 1): which gender, colour, counting, size or shape words a caption
uses, where, and the noun phrase that holds each one.

A skill is a YAML file (``augment/skill_data/*.yaml``): its word groups, what each word may become in a
counterfactual caption, and the pronouns an edit repairs. The shipped gender, colour and counting files
carry TIDA's word lists (Barriere, del Rio et al., 2023) and are the default everywhere a skill set is
optional (:data:`SKILLS`); size and shape ship too; :func:`load_skills` adds a user's files. Black and white
are left out of the colour skill on purpose: in photos they are too often background or clothing, and edits
of them are unreliable. Benchmarks split test sets by the default lists (captions whose references contain a
skill word).

Noun phrases come from a rule-based chunker, no model: determiner or number, then adjectives, then the
noun head ("two red balloons"). Its adjectives are a fixed list of common caption adjectives plus the
words of the skills in use, and one unknown word between a determiner and the head ("a smiling woman").

Example:
    >>> [(m.skill, m.word, m.phrase) for m in find_skills("A woman holds two red balloons.")]
    [('gender', 'woman', 'A woman'), ('counting', 'two', 'two red balloons'), ('color', 'red', 'two red balloons')]
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger(__name__)

SKILLS = ("gender", "color", "counting")
"""The TIDA paper's skills: the default skill set of detection, edits and benchmark splits."""

SKILL_DATA_DIR = Path(__file__).with_name("skill_data")
"""Where the shipped skill files live (package data)."""

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
                "twenty")
"""Number words a counting skill may list (their value is their index); digits are numbers too."""

# Letters (any script) or digits: "woman's" -> "woman", "s"; "2nd" -> "2", "nd" (then "2" is not a number).
_TOKEN = re.compile(r"[^\W\d_]+|\d+")
_APOSTROPHES = ("'", "\u2019")
# Tokens that follow an apostrophe and belong to the word before it: "woman's", "isn't", "they're".
_CLITICS = frozenset({"s", "t", "re", "ve", "ll", "d", "m"})

DETERMINERS = frozenset(
    "a an the this these those another each every some any no several many few both all either neither "
    "his her its their my your our whose".split())
_SINGULAR_DETERMINERS = frozenset({"a", "an", "this", "another", "each", "every", "either", "neither"})
_PLURAL_DETERMINERS = frozenset({"these", "those", "several", "many", "few", "both"})
_OBJECT_STARTS = DETERMINERS | frozenset({"him", "her", "them", "it", "me", "us", "you"})
# Words that never head or modify a noun phrase: they end one. "her" doubles as a determiner (above).
FUNCTION_WORDS = DETERMINERS | frozenset(
    "hers theirs mine yours ours i me you he him she it we us they them myself yourself himself herself "
    "itself ourselves themselves who whom which what where when why how that "
    "and or but nor so yet while as because if than then although though whereas "
    "about above across after against along alongside amid among around at atop before behind below beneath "
    "beside besides between beyond by down during except for from in inside into like near next of off on "
    "onto opposite out outside over past per since through throughout to toward towards under underneath "
    "until unto up upon via with within without "
    "is are was were be been being am has have had having do does did doing can could will would shall "
    "should may might must not too also just only here there together nearby away back still even really "
    "almost again isn aren wasn weren hasn haven hadn doesn don didn couldn wouldn shouldn mustn".split())
# Adjectives common in captions, so that "a very young woman" is one phrase; the words of the skills in use
# are added to these.
COMMON_MODIFIERS = frozenset(
    "very young old older elderly little small big large tall short long tiny huge giant cute pretty "
    "beautiful handsome blond blonde brunette dark light bright pale happy smiling other same new wooden "
    "colorful colourful striped plaid black white orange pink brown gray grey gold golden silver red green "
    "blue yellow purple round square rectangular triangular oval first second third last bald".split())


@dataclass(frozen=True)
class Skill:
    """One caption skill: the words that signal it and what an edit turns them into.

    Built from a YAML file by :func:`load_skill` (the keys are the fields below, ``source`` excepted) or in
    code; it is checked on construction.

    Example:
        >>> s = Skill("texture", {"texture": ["furry", "smooth", "wooden"]}, role="modifier")
        >>> s.alternatives("Furry")
        ('smooth', 'wooden')
    """

    name: str
    """What the skill is called in matches, edits and reports (``"color"``)."""
    groups: Mapping[str, tuple[str, ...]]
    """Named lists of lower-case single words (``male: [boy, man]``); detection looks up their union."""
    kind: str = "word"
    """``"word"``: an edit swaps the word for a counterpart; ``"number"``: an edit moves the count by one,
    within the listed numbers, and repairs the noun and verb when it crosses one."""
    role: str = "any"
    """``"any"``: every occurrence counts (the paper's rule); ``"head"``: the words are nouns and head their
    phrase; ``"modifier"``: a word counts only where it modifies a noun ("a square table", not "the square")."""
    counterparts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """What a word may become, in order; a word without an entry may become any other word of its group."""
    pronouns: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    """Per group, the pronouns an edit of a word of that group repairs where they refer to the word; a pair
    reads ``[before a noun, elsewhere]`` (``her: [his, him]``)."""
    source: str = "<code>"
    """Where the skill was defined (a file path), for error messages; not a YAML key."""

    def __post_init__(self):
        where = f"skill {self.name!r} ({self.source})"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"{self.source}: 'name' must be a non-empty string, got {self.name!r}")
        if self.kind not in ("word", "number"):
            raise ValueError(f"{where}: 'kind' must be 'word' or 'number', got {self.kind!r}")
        if self.role not in ("any", "head", "modifier"):
            raise ValueError(f"{where}: 'role' must be 'any', 'head' or 'modifier', got {self.role!r}")
        if not isinstance(self.groups, Mapping) or not self.groups:
            raise ValueError(f"{where}: 'groups' must map group names to word lists, got {self.groups!r}")
        groups = {str(g): _words(ws, f"{where}: groups.{g}") for g, ws in self.groups.items()}
        group_of: dict[str, str] = {}
        for g, ws in groups.items():
            for w in ws:
                if w in group_of:
                    raise ValueError(f"{where}: word {w!r} is in groups {group_of[w]!r} and {g!r}; keep it in one")
                group_of[w] = g
        if not isinstance(self.counterparts, Mapping):
            raise ValueError(f"{where}: 'counterparts' must map words to words, got {self.counterparts!r}")
        counterparts = {}
        for w, alts in self.counterparts.items():
            if w not in group_of:
                raise ValueError(f"{where}: counterparts.{w}: {w!r} is not a word of any group; add it to one")
            counterparts[w] = tuple(a for a in _words(alts, f"{where}: counterparts.{w}") if a != w)
        if not isinstance(self.pronouns, Mapping):
            raise ValueError(f"{where}: 'pronouns' must map group names to pronoun tables, got {self.pronouns!r}")
        pronouns = {}
        for g, table in self.pronouns.items():
            if g not in groups:
                raise ValueError(f"{where}: pronouns.{g}: no such group (groups: {sorted(groups)})")
            if not isinstance(table, Mapping):
                raise ValueError(f"{where}: pronouns.{g} must map pronouns to replacements, got {table!r}")
            pronouns[g] = {p.lower(): _words(r, f"{where}: pronouns.{g}.{p}") for p, r in table.items()}
            for p, r in pronouns[g].items():
                if len(r) > 2:
                    raise ValueError(f"{where}: pronouns.{g}.{p}: give one word or [before a noun, elsewhere]")
        values: frozenset[int] = frozenset()
        if self.kind == "number":
            if counterparts or pronouns:
                raise ValueError(f"{where}: a 'number' skill takes no counterparts or pronouns (edits are +-1)")
            bad = [w for w in group_of if number_value(w) is None]
            if bad:
                raise ValueError(f"{where}: {bad} are not numbers (number words {NUMBER_WORDS[0]}..{NUMBER_WORDS[-1]}"
                                 " or digits)")
            values = frozenset(number_value(w) for w in group_of)
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "counterparts", counterparts)
        object.__setattr__(self, "pronouns", pronouns)
        object.__setattr__(self, "_group_of", group_of)
        object.__setattr__(self, "_values", values)
        lonely = [w for w in group_of if not self.alternatives(w)]
        if lonely:
            raise ValueError(f"{where}: {lonely} have nothing to become; give them counterparts, another word "
                             "in their group, or (numbers) a neighbouring number")

    @property
    def words(self) -> tuple[str, ...]:
        """Every word of the skill, in file order."""
        return tuple(self._group_of)

    def group_of(self, word: str) -> str | None:
        """The group of a word (any case), or None when the word is not the skill's."""
        return self._group_of.get(word.lower())

    def alternatives(self, word: str) -> tuple[str, ...]:
        """What ``word`` may become in a counterfactual caption, lower-case, in order.

        Numbers move by one and keep their form (digits stay digits).

        Example:
            >>> skills = load_skills()
            >>> skills["gender"].alternatives("Guy"), skills["counting"].alternatives("two")
            (('girl',), ('three',))
        """
        w = word.lower()
        if w not in self._group_of:
            raise ValueError(f"{word!r} is not a word of skill {self.name!r} (words: {list(self._group_of)})")
        if self.kind == "number":
            v = number_value(w)
            out = []
            for n in (v - 1, v + 1):
                if n in self._values:
                    if w.isdigit():
                        out.append(str(n))
                    elif n < len(NUMBER_WORDS):
                        out.append(NUMBER_WORDS[n])
            return tuple(out)
        if w in self.counterparts:
            return self.counterparts[w]
        return tuple(x for x in self.groups[self._group_of[w]] if x != w)

    @classmethod
    def from_dict(cls, d: Mapping, *, source: str = "<code>") -> Skill:
        """Build from a mapping of the fields; unknown keys raise ``ValueError`` naming ``source``."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{source}: expected a mapping with 'name' and 'groups', got {type(d).__name__}")
        allowed = {f.name for f in fields(cls)} - {"source"}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"{source}: unknown skill keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        for key in ("name", "groups"):
            if key not in d:
                raise ValueError(f"{source}: missing key {key!r}")
        return cls(**d, source=source)


def _words(value, where: str) -> tuple[str, ...]:
    """A word or list of words as lower-case single tokens."""
    items = [value] if isinstance(value, (str, int)) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"{where}: expected a word or a non-empty list of words, got {value!r}")
    out = []
    for item in items:
        w = str(item).lower()
        if not _TOKEN.fullmatch(w):
            raise ValueError(f"{where}: {item!r} is not a single word (letters only, or digits only)")
        out.append(w)
    return tuple(out)


def number_value(word: str) -> int | None:
    """The value of a number word or digits, else None.

    Example:
        >>> number_value("Three"), number_value("12"), number_value("dozen")
        (3, 12, None)
    """
    w = word.lower()
    if w.isdigit():
        return int(w)
    return NUMBER_WORDS.index(w) if w in NUMBER_WORDS else None


def load_skill(path: str | Path) -> Skill:
    """One skill from a YAML file (see ``augment/skill_data/*.yaml`` for the format).

    Example:
        >>> load_skill(SKILL_DATA_DIR / "color.yaml").words
        ('red', 'green', 'blue', 'yellow', 'purple')
    """
    import yaml

    path = Path(path)
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    return Skill.from_dict(d, source=str(path))


def load_skills(paths: Iterable[str | Path] = (), *, shipped: bool = True) -> dict[str, Skill]:
    """Skills by name: the shipped ones, then those of ``paths`` (YAML files, or folders of ``*.yaml``).

    A file whose skill has the name of an earlier one replaces it (copy a shipped file to change its words).

    Example:
        >>> sorted(load_skills())
        ['color', 'counting', 'gender', 'shape', 'size']
    """
    files: list[Path] = sorted(SKILL_DATA_DIR.glob("*.yaml")) if shipped else []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p)
        if p.is_dir():
            files.extend(sorted(p.glob("*.yaml")))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"skill file {p} not found")
    out: dict[str, Skill] = {}
    for f in files:
        skill = load_skill(f)
        if skill.name in out:
            logger.info("skill %r from %s replaces the one from %s", skill.name, f, out[skill.name].source)
        out[skill.name] = skill
    return out


@lru_cache(maxsize=1)
def _shipped() -> dict[str, Skill]:
    return load_skills()


def resolve_skills(skills: Iterable[str | Skill] | Mapping[str, Skill] | str | Skill | None = None
                   ) -> tuple[Skill, ...]:
    """The skills to use: None means :data:`SKILLS`; names are looked up among the shipped skills.

    Example:
        >>> [s.name for s in resolve_skills(["size", load_skills()["color"]])]
        ['size', 'color']
    """
    if skills is None:
        skills = SKILLS
    elif isinstance(skills, (str, Skill)):
        skills = [skills]
    elif isinstance(skills, Mapping):
        skills = list(skills.values())
    out = []
    for s in skills:
        if isinstance(s, str):
            if s not in _shipped():
                raise ValueError(f"unknown skill {s!r}; shipped: {sorted(_shipped())} (load others with load_skills)")
            s = _shipped()[s]
        elif not isinstance(s, Skill):
            raise TypeError(f"expected a skill name or Skill, got {type(s).__name__}")
        out.append(s)
    return tuple(out)


SKILL_WORDS: dict[str, dict[str, tuple[str, ...]]] = {s: dict(_shipped()[s].groups) for s in SKILLS}
"""The default skills' word lists by group: ``SKILL_WORDS["gender"]["female"]``."""


# ---- tokens, units and noun phrases ---------------------------------------------------------------------


@dataclass(frozen=True)
class SkillMatch:
    """One skill word in a caption: the skill, its group, the word (lower-cased) and its character span,
    and the noun phrase that holds it (as written) with its span."""

    skill: str
    word: str
    start: int
    end: int
    group: str
    phrase: str
    phrase_start: int
    phrase_end: int


@dataclass
class _Unit:
    """A word of the chunker: tokens joined by hyphens ("t-shirt"), with the clitic that follows it."""

    start: int
    end: int
    text: str
    low: str
    tokens: list[int]
    boundary: bool  # punctuation between the previous unit and this one
    clitic: str | None = None  # "s" for "'s", "'" for a bare possessive apostrophe ("dogs'"), "t" for "n't"
    clitic_span: tuple[int, int] | None = None


class _Text:
    """A caption cut into tokens and units, with the lexicon of the skills in use."""

    def __init__(self, caption: str, skills: tuple[Skill, ...]):
        self.caption = caption
        self.tokens = [(m.group(), m.group().lower(), m.start(), m.end()) for m in _TOKEN.finditer(caption)]
        self.modifiers = COMMON_MODIFIERS | {w for s in skills if s.role != "head" and s.kind == "word"
                                             for w in s.words}
        self.units: list[_Unit] = []
        self.unit_of: dict[int, int] = {}  # token index -> unit index (clitic tokens have none)
        prev_end = 0
        for t, (text, low, start, end) in enumerate(self.tokens):
            gap = caption[prev_end:start]
            prev_end = end
            if self.units and gap in _APOSTROPHES and low in _CLITICS and self.units[-1].clitic is None:
                self.units[-1].clitic, self.units[-1].clitic_span = low, (start, end)
                continue
            if self.units and gap == "-" and self.units[-1].clitic is None:
                u = self.units[-1]
                u.end, u.text, u.low = end, caption[u.start:end], (caption[u.start:end]).lower()
                u.tokens.append(t)
                self.unit_of[t] = len(self.units) - 1
                continue
            boundary = bool(self.units) and gap.strip() != ""
            if self.units and gap.strip() in _APOSTROPHES and self.units[-1].low.endswith("s") \
                    and self.units[-1].clitic is None:
                apos = start - len(gap) + gap.index(gap.strip())
                self.units[-1].clitic, self.units[-1].clitic_span = "'", (apos, apos + 1)
            self.unit_of[t] = len(self.units)
            self.units.append(_Unit(start, end, text, low, [t], boundary))

    def joined(self, a: int, b: int) -> bool:
        """Whether unit ``b`` directly follows unit ``a`` inside one phrase (no punctuation, no clitic)."""
        return 0 <= a < b < len(self.units) and b == a + 1 and not self.units[b].boundary \
            and self.units[a].clitic is None

    def is_number(self, i: int) -> bool:
        u = self.units[i]
        return len(u.tokens) == 1 and number_value(u.low) is not None

    def is_content(self, i: int) -> bool:
        """A word that may head a noun phrase: not a function word, not a number."""
        return self.units[i].low not in FUNCTION_WORDS and not self.is_number(i)

    def is_modifier(self, i: int) -> bool:
        u = self.units[i]
        if u.low in self.modifiers:
            return True
        # "red-haired", "long-sleeved", "two-year-old": hyphenated adjectives; "t-shirt" is a noun.
        last = self.tokens[u.tokens[-1]][1]
        return len(u.tokens) > 1 and (last.endswith(("ed", "ing")) or last in ("old", "like", "shaped"))

    def _verb_after_bare_modifier(self, c: int) -> bool:
        """Whether unit ``c``, after an adjective with no determiner, is a verb rather than the noun: a
        participle or adverb, or a word in -s followed by an object ("a man in red walks his dog")."""
        low = self.units[c].low
        return _verb_like(low) or (_plural_like(low) and self.joined(c, c + 1) and (
            self.units[c + 1].low in _OBJECT_STARTS or self.is_number(c + 1)))

    def phrase(self, i: int, role: str) -> tuple[int, int]:
        """First and last unit of the noun phrase holding unit ``i``; the last is its head."""
        units = self.units
        start, k, only_det = i, i - 1, False
        while self.joined(k, start):
            u = units[k]
            if u.low in DETERMINERS:
                start = k
                break
            if self.is_number(k):
                start, only_det = k, True
            elif only_det:
                break
            elif self.is_modifier(k):
                start = k
            elif self.is_content(k) and self.joined(k - 1, k) and (units[k - 1].low in DETERMINERS
                                                                   or self.is_number(k - 1)):
                start, only_det = k, True  # "a smiling woman": one unknown word after a determiner
            else:
                break
            k -= 1
        if role == "head":
            return start, i
        head = i
        while True:
            if self.joined(head, head + 1) and self.is_modifier(head + 1):
                head += 1
            elif (self.joined(head, head + 1) and units[head + 1].low in ("and", "or")
                  and self.joined(head + 1, head + 2) and self.is_modifier(head + 2)):
                head += 2  # "a red and white shirt"
            else:
                break
        dets = [units[j].low for j in range(start, head + 1)]
        counts = [number_value(units[j].low) for j in range(start, head + 1) if self.is_number(j)]
        has_det = bool(counts) or any(d in DETERMINERS for d in dets)
        plural = any(c != 1 for c in counts) or any(d in _PLURAL_DETERMINERS for d in dets)
        c = head + 1
        if self.joined(head, c) and self.is_content(c) and (has_det or not self._verb_after_bare_modifier(c)):
            head = c
            for _ in range(2):  # compound nouns: "a red fire truck", "two fire trucks"
                c = head + 1
                if not (self.joined(head, c) and self.is_content(c)) or _verb_like(units[c].low) \
                        or _plural_like(units[head].low) or _plural_like(units[c].low) != plural:
                    break  # "a red car stops", "two men play": the next word is a verb
                head = c
        return start, head


def _verb_like(low: str) -> bool:
    """Participles and adverbs: "parked", "wearing", "slowly" (short words such as "red", "ring" are not)."""
    return len(low) > 4 and (low.endswith(("ing", "ly")) or (low.endswith("ed") and not low.endswith("eed")))


def _plural_like(low: str) -> bool:
    """Plural nouns or third-person verbs by their ending: "dogs", "runs"; not "glass", "bus", "tennis"."""
    return low.endswith("s") and not low.endswith(("ss", "us", "is")) and len(low) > 2


def _standalone_number(text: _Text, t: int) -> bool:
    """Digits that are a whole number: not part of "2.5", "10:30", "2nd" or "1990s"."""
    caption, tokens = text.caption, text.tokens
    _, low, start, end = tokens[t]
    if not low.isdigit():
        return True
    if t + 1 < len(tokens) and (tokens[t + 1][2] == end or (
            caption[end:tokens[t + 1][2]] in ".,:" and tokens[t + 1][1].isdigit())):
        return False
    return not (t > 0 and (tokens[t - 1][3] == start or (
        caption[tokens[t - 1][3]:start] in ".,:" and tokens[t - 1][1].isdigit())))


@dataclass(frozen=True)
class _Hit:
    """A match with what the edit step needs: its skill, token and phrase units."""

    match: SkillMatch
    skill: Skill
    token: int
    unit: int
    first: int
    head: int


def _scan(caption: str, skills) -> tuple[_Text, list[_Hit]]:
    chosen = resolve_skills(skills)
    lookup: dict[str, Skill] = {}
    for s in chosen:
        for w in s.words:
            if w in lookup and lookup[w] is not s:
                raise ValueError(f"word {w!r} is in skills {lookup[w].name!r} ({lookup[w].source}) and "
                                 f"{s.name!r} ({s.source}); use one of them")
            lookup[w] = s
    text = _Text(caption, chosen)
    hits = []
    for t, (_, low, start, end) in enumerate(text.tokens):
        skill = lookup.get(low)
        if skill is None or t not in text.unit_of or not _standalone_number(text, t):
            continue
        i = text.unit_of[t]
        first, head = text.phrase(i, skill.role)
        if skill.role == "modifier" and head == i:
            continue
        ps, pe = text.units[first].start, text.units[head].end
        m = SkillMatch(skill.name, low, start, end, skill.group_of(low), caption[ps:pe], ps, pe)
        hits.append(_Hit(m, skill, t, i, first, head))
    return text, hits


def tokenize(caption: str) -> list[str]:
    """Lower-cased word tokens: runs of letters or of digits.

    Example:
        >>> tokenize("Two Women, in red!")
        ['two', 'women', 'in', 'red']
    """
    return [m.group().lower() for m in _TOKEN.finditer(caption)]


def find_skills(caption: str, skills=None) -> list[SkillMatch]:
    """All skill words of a caption, in order, each with its span and noun phrase.

    Args:
        caption: the caption.
        skills: skill names (shipped ones), :class:`Skill` objects or :func:`load_skills`'s dict; None
            means the TIDA skills (:data:`SKILLS`).

    Example:
        >>> [(m.skill, m.word) for m in find_skills("A woman holds two red balloons.")]
        [('gender', 'woman'), ('counting', 'two'), ('color', 'red')]
        >>> [(m.word, m.phrase) for m in find_skills("A big dog by a town square.", ["size", "shape"])]
        [('big', 'A big dog')]
    """
    return [h.match for h in _scan(caption, skills)[1]]


def detect_skills(caption: str, skills=None) -> set[str]:
    """The set of skills a caption exercises (``skills`` as in :func:`find_skills`).

    Example:
        >>> sorted(detect_skills("Three guys on a beach."))
        ['counting', 'gender']
    """
    return {m.skill for m in find_skills(caption, skills)}
