"""Counterfactual captions (TIDA step 2): swap one skill word and repair the grammar around it.

Each detected skill word becomes each of its alternatives (:meth:`Skill.alternatives`): a gender word its
counterpart, a colour another colour, a count one more or one fewer. Then:

- the case of every replaced word follows the word it replaces ("Woman" -> "Man", "TWO" -> "THREE");
- "a"/"an" before the new word is fixed ("a round table" -> "an oval table");
- gender pronouns that refer to the edited word are repaired ("A woman and her two girls." -> "A man and his
  two girls."): a pronoun refers to the nearest singular word of the same group before it (after it when
  none is before); "her" becomes "his" before a noun and "him" elsewhere;
- a count that crosses one changes the noun, its possessive and the verb right after the noun phrase
  ("one dog's bone" -> "two dogs' bone", "two dogs are" -> "one dog is", "two dogs play" -> "one dog plays").
  Noun plurals come from ``inflect`` (irregular ones included: "one child runs" -> "two children run").

Limits, all rule-based: a verb is repaired only right after its noun phrase (or after "who"/"that"/"which"),
and determiners other than the number are left alone ("these two dogs" -> "these one dog" cannot happen with
the default counting list, which has no "one").

Example:
    >>> for edit in counterfactuals("A woman holds two red balloons.", ["gender", "counting"]):
    ...     print(edit.edited)
    A man holds two red balloons.
    A woman holds three red balloons.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from augment.skills import _Hit, _plural_like, _scan, _Text, _verb_like, number_value


@dataclass(frozen=True)
class CaptionEdit:
    """One counterfactual caption: which word of which skill became what, and where.

    ``word`` and ``new_word`` are as written (cased); ``start``/``end`` is the word's span in ``caption``;
    ``phrase`` is the noun phrase holding it and ``new_phrase`` that phrase in ``edited`` (the prompt for an
    edit mask and for inpainting).
    """

    skill: str
    word: str
    new_word: str
    start: int
    end: int
    caption: str
    edited: str
    phrase: str
    new_phrase: str


def counterfactuals(caption: str, skills=None) -> list[CaptionEdit]:
    """Every counterfactual of a caption: each skill word to each of its alternatives, in caption order.

    Args:
        caption: the caption.
        skills: skill names (shipped ones), :class:`~augment.skills.Skill` objects or the dict of
            :func:`~augment.skills.load_skills`; None means the TIDA skills (gender, color, counting).

    Example:
        >>> [e.edited for e in counterfactuals("She walks her dog, a girl in blue.", ["gender"])]
        ['He walks his dog, a boy in blue.']
    """
    text, hits = _scan(caption, skills)
    return [_edit(text, hit, hits, new) for hit in hits for new in hit.skill.alternatives(hit.match.word)]


def sample_counterfactual(caption: str, skills=None, *, rng: random.Random | int = 0) -> CaptionEdit | None:
    """One counterfactual drawn at random: a skill word uniformly, then one of its alternatives; None when the
    caption has no skill word.

    Args:
        caption: the caption.
        skills: as in :func:`counterfactuals` (a single name or skill too).
        rng: a ``random.Random`` (pass one through a loop over captions) or a seed.

    Example:
        >>> sample_counterfactual("Two women in a red car.", "gender", rng=0).edited
        'Two men in a red car.'
        >>> sample_counterfactual("A cat.", rng=0) is None
        True
    """
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    text, hits = _scan(caption, skills)
    if not hits:
        return None
    hit = rng.choice(hits)
    return _edit(text, hit, hits, rng.choice(hit.skill.alternatives(hit.match.word)))


# ---- the edit --------------------------------------------------------------------------------------------


def _edit(text: _Text, hit: _Hit, hits: list[_Hit], new: str) -> CaptionEdit:
    word, _, start, end = text.tokens[hit.token]
    new_word = _match_case(new, word)
    reps: dict[int, tuple[int, str]] = {start: (end, new_word)}  # start -> (end, replacement)
    _fix_article(text, hit, new, reps)
    if hit.skill.pronouns:
        _repair_pronouns(text, hit, hits, reps)
    if hit.skill.kind == "number":
        _agree_number(text, hit, number_value(new), reps)
    m = hit.match
    edited = _apply(text.caption, reps)
    ps, pe = _shift(m.phrase_start, reps), _shift(m.phrase_end, reps)
    return CaptionEdit(m.skill, word, new_word, start, end, text.caption, edited, m.phrase, edited[ps:pe])


def _apply(caption: str, reps: dict[int, tuple[int, str]]) -> str:
    out, pos = [], 0
    for s in sorted(reps):
        e, new = reps[s]
        out += [caption[pos:s], new]
        pos = e
    return "".join(out) + caption[pos:]


def _shift(pos: int, reps: dict[int, tuple[int, str]]) -> int:
    """Where a position of the caption lands in the edited caption (replacements end on token boundaries)."""
    return pos + sum(len(new) - (e - s) for s, (e, new) in reps.items() if e <= pos)


def _match_case(new: str, like: str) -> str:
    """``new`` written the way ``like`` is: "MEN", "Men" or "men"."""
    if len(like) > 1 and like.isupper():
        return new.upper()
    if like[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


# Words read with a vowel letter but a consonant sound ("a unicorn"), and the reverse ("an hour").
_A_BEFORE = ("one", "once", "uni", "use", "usu", "uti", "ute", "ure", "uri", "uro", "eu", "ewe", "uku")
_AN_BEFORE = ("hour", "honest", "honor", "honour", "heir")


def indefinite_article(word: str) -> str:
    """"a" or "an" for a word, by its sound.

    Example:
        >>> [indefinite_article(w) for w in ("orange", "red", "unicorn", "hour", "8", "11", "1")]
        ['an', 'a', 'a', 'an', 'an', 'an', 'a']
    """
    w = word.lower()
    if w.isdigit():  # said aloud: eight, eleven, eighteen, eighty..., eleven thousand...
        return "an" if w.startswith("8") or (w.startswith(("11", "18")) and len(w) % 3 == 2) else "a"
    if w.startswith(_A_BEFORE):
        return "a"
    if w.startswith(_AN_BEFORE):
        return "an"
    return "an" if w[:1] in ("a", "e", "i", "o", "u") else "a"


def _fix_article(text: _Text, hit: _Hit, new: str, reps) -> None:
    unit = text.units[hit.unit]
    k = hit.unit - 1
    if unit.tokens[0] != hit.token or not text.joined(k, hit.unit) or text.units[k].low not in ("a", "an"):
        return
    art = text.units[k]
    want = indefinite_article(new)
    if want != art.low:
        word = text.tokens[hit.token][0]
        reps[art.start] = (art.end, want.upper() if art.text == "A" and len(word) > 1 and word.isupper()
                           else _match_case(want, art.text))


def _repair_pronouns(text: _Text, hit: _Hit, hits: list[_Hit], reps) -> None:
    """Repair the pronouns of the edited word's group that refer to it: those whose nearest singular word of
    the group before them (after them, when none is before) is the edited word."""
    table = hit.skill.pronouns.get(hit.match.group)
    nouns = [h for h in hits if h.skill is hit.skill and h.match.group == hit.match.group
             and not _inflect().singular_noun(h.match.word)]  # "he" does not refer to "boys"
    if not table or not any(h is hit for h in nouns):
        return
    for t, (word, low, start, end) in enumerate(text.tokens):
        if low not in table or t not in text.unit_of or len(text.units[text.unit_of[t]].tokens) > 1:
            continue
        before = [h for h in nouns if h.match.start < start]
        if (before[-1] if before else next(h for h in nouns if h.match.start > start)) is not hit:
            continue
        forms, i = table[low], text.unit_of[t]
        before_noun = text.joined(i, i + 1) and (text.is_content(i + 1) or text.is_number(i + 1))
        reps[start] = (end, _match_case(forms[0] if len(forms) == 1 or before_noun else forms[1], word))


# Auxiliaries by number; the "n't" forms are the token before the clitic ("isn" of "isn't").
_AUX_PLURAL = {"is": "are", "was": "were", "has": "have", "does": "do"}
_AUX_PLURAL_NT = {"isn": "aren", "wasn": "weren", "hasn": "haven", "doesn": "don"}
_AUX_SINGULAR = {v: k for k, v in _AUX_PLURAL.items()}
_AUX_SINGULAR_NT = {v: k for k, v in _AUX_PLURAL_NT.items()}
# Past tenses that look like present plurals ("two dogs ran" must not become "one dog rans").
_IRREGULAR_PAST = frozenset(
    "ran sat stood saw went came ate got held wore rode threw caught took made fell flew swam drove gave began "
    "hung left lay led met paid said sang shook slept spoke spent told thought won wrote kept knew found felt "
    "fought built brought bought broke chose drew drank grew hid sold sent stuck struck swung taught woke "
    "became blew dug fed forgot froze heard leapt lit lost meant rang rose sank slid spun stole strode sped "
    "swept tore".split())


def _agree_number(text: _Text, hit: _Hit, new_value: int, reps) -> None:
    """Noun, possessive and verb after a count that crosses one ("one dog is" <-> "two dogs are")."""
    old_value = number_value(hit.match.word)
    units = text.units
    if (old_value == 1) == (new_value == 1) or len(units[hit.unit].tokens) > 1 or text.is_modifier(hit.head):
        return  # no change of number, "two-year-old", "two red"
    plural = new_value != 1
    if hit.head == hit.unit:  # "two of the dogs are": only the verb after "of ..." agrees with the number
        i = hit.unit
        if text.joined(i, i + 1) and units[i + 1].low == "of" and text.joined(i + 1, i + 2):
            _agree_verb(text, text.phrase(i + 2, "any")[1], plural, reps)
        return
    head = units[hit.head]
    word, low, start, end = text.tokens[head.tokens[-1]]
    noun = _plural_noun(low) if plural else _singular_noun(low)
    if noun != low:
        reps[start] = (end, _match_case(noun, word))
    if head.clitic == "s" and plural and noun.endswith("s"):
        reps[head.clitic_span[0]] = (head.clitic_span[1], "")  # "dog's" -> "dogs'"
    elif head.clitic == "'" and not plural:
        s, e = head.clitic_span
        reps[s] = (e, text.caption[s:e] + "s")  # "dogs'" -> "dog's"
    if head.clitic is None:  # else a possessive: the verb agrees with another noun
        _agree_verb(text, hit.head, plural, reps)


def _agree_verb(text: _Text, head: int, plural: bool, reps) -> None:
    """Put the verb right after the phrase ending at unit ``head`` (or after "who"/"that"/"which") in number."""
    units = text.units
    if units[head].clitic is not None:
        return
    v = head + 1
    if text.joined(head, v) and units[v].low in ("who", "that", "which"):
        v += 1
    if not text.joined(v - 1, v) or len(units[v].tokens) > 1:
        return
    verb = _verb_form(text, v, plural)
    if verb is not None:
        reps[units[v].start] = (units[v].end, _match_case(verb, units[v].text))


def _verb_form(text: _Text, v: int, plural: bool) -> str | None:
    """The verb at unit ``v`` in the other number, or None when it is not a present-tense verb we know."""
    u = text.units[v]
    if u.clitic == "t":
        return (_AUX_PLURAL_NT if plural else _AUX_SINGULAR_NT).get(u.low)
    aux = (_AUX_PLURAL if plural else _AUX_SINGULAR).get(u.low)
    if aux is not None:
        return aux
    low = u.low
    if not text.is_content(v) or text.is_modifier(v) or not low.isalpha() or _verb_like(low):
        return None
    if plural:  # "runs" -> "run", "watches" -> "watch", "carries" -> "carry"
        if not _plural_like(low):
            return None
        if low.endswith("ies") and len(low) > 4:
            return low[:-3] + "y"
        return low[:-2] if low.endswith(("sses", "shes", "ches", "xes", "zzes", "oes")) else low[:-1]
    if _plural_like(low) or low.endswith("ed") or low in _IRREGULAR_PAST:
        return None
    if low.endswith(("s", "sh", "ch", "x", "z", "o")):  # "kiss" -> "kisses", "go" -> "goes"
        return low + "es"
    if low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        return low[:-1] + "ies"
    return low + "s"


@lru_cache(maxsize=1)
def _inflect():
    import inflect

    return inflect.engine()


def _plural_noun(low: str) -> str:
    return _inflect().plural_noun(low)


def _singular_noun(low: str) -> str:
    return _inflect().singular_noun(low) or low  # False when the word is not a plural
