"""PTB tokenization as the COCO caption toolkit does it, in Python.

pycocoevalcap's ``PTBTokenizer`` writes every caption on its own line of one file, runs Stanford CoreNLP
3.4.1's ``edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`` on it in Java, and drops the
tokens of its ``PUNCTUATIONS`` list. This module re-implements that Java lexer (a JFlex scanner built from
``PTBLexer.flex`` v3.4.1, default options: ``ptb3Escaping`` normalisations, ``splitAssimilations``,
untokenizable characters deleted) with the same semantics: at each position every rule is tried, the
longest match wins (trailing context ``r1/r2`` counts towards the length), ties go to the earlier rule,
and only the ``r1`` part becomes the token. What that gives on captions:

* ``"A man's dog"`` -> ``a man 's dog``; ``"don't"`` -> ``do n't``; ``"can't"`` -> ``ca n't``;
  ``"o'clock"`` and ``"rock'n'roll"`` -> ``o'clock`` and ``rock 'n' roll``;
  ``"cannot"`` / ``"gonna"`` -> ``can not`` / ``gon na``;
* hyphenated words stay whole (``well-known``, ``5-year-old``); ``--`` / ``---`` / unicode dashes -> ``--``;
* quotes become ````` ``''`` ````` ``'`` (then dropped as punctuation), ``’s`` -> ``'s``;
* ``(`` ``)`` -> ``-lrb-`` ``-rrb-`` (the Java tokenizer lower-cases them, so pycocoevalcap's
  ``-LRB-``/``-RRB-`` entries never match and these tokens stay in the output - reproduced here);
* abbreviations and acronyms keep their period (``mr.``, ``u.s.``, ``a.m.``, ``etc.``), other words lose
  it (``dog.`` -> ``dog``); a one-letter acronym before a capitalised "sentence starter" loses it too
  (``"plan B. The"`` -> ``plan b``) - and, as in pycocoevalcap, that look-ahead crosses into the next
  caption, so :func:`tokenize` scans all captions of a dict as one text in the same order;
* ``"3 1/2"`` is one token (with a no-break space inside, which BLEU/CIDEr's ``split()`` then splits and
  ROUGE's ``split(" ")`` does not, exactly as in pycocoevalcap), ``½`` -> ``1/2``, ``£`` -> ``#``;
* characters the lexer does not know (emoji, control characters) are deleted.

Deliberate difference: pycocoevalcap only turns ``"\\n"`` inside a caption into a space; the Java lexer
also breaks lines on ``\\r``, ``\\v``, ``\\f``, U+2028 and U+2029, which shifts every later caption onto
the wrong image (a bug). Here those characters are spaces, so each caption stays with its image.

Speed: the rule engine (a few dozen regexes per token) is only run once per distinct space-separated
chunk of the text, whose tokens are then reused wherever the chunk appears again - except the few chunks
whose tokens depend on what follows them (see the fast-path notes below), which are re-scanned in place.
The cached paths are tested to equal the engine, and the engine to equal the Java tokenizer.

Example:
    >>> tokenize_caption("A man's dog (brown), don't go... 3 o'clock!")
    "a man 's dog -lrb- brown -rrb- do n't go 3 o'clock"
    >>> tokenize({"1": ["Two “red” cars—parked.", "Mr. Smith's U.S. car."]})
    {'1': ['two red cars parked', "mr. smith 's u.s. car"]}
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Iterable

__all__ = ["PUNCTUATIONS", "PTBTokenizer", "ptb_tokens", "tokenize", "tokenize_caption", "tokenize_many"]

#: Tokens pycocoevalcap removes after tokenization (its list, verbatim; the bracket entries are
#: upper-case while the tokenizer's output is lower-case, so they never match).
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":",
                          "-", "--", "...", ";"])

# Line breaks the Java lexer honours besides "\n" (see the module docstring): turned into spaces.
_EXTRA_NEWLINES = re.compile("[\r\x0b\x0c\u2028\u2029]")


# ----------------------------------------------------------------------------------------------------
# Character classes. JFlex's [:letter:] / [:digit:] / [:uppercase:] are Java's Character.isLetter /
# isDigit / isUpperCase on 16-bit chars (the lexer is BMP-only: a supplementary character is two
# surrogates, each untokenizable, so it is deleted - here it simply matches no class and is deleted too).

def _class_from(pred: Callable[[str], bool]) -> str:
    """A regex character-class body for the BMP characters satisfying ``pred``."""
    ranges, start, prev = [], None, None
    for cp in range(0x10000):
        if 0xD800 <= cp <= 0xDFFF or not pred(chr(cp)):
            continue
        if start is None:
            start = prev = cp
        elif cp == prev + 1:
            prev = cp
        else:
            ranges.append((start, prev))
            start = prev = cp
    if start is not None:
        ranges.append((start, prev))
    return "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)


def _ci(literal: str) -> str:
    """A case-insensitive regex for a literal (JFlex %caseless applies to literals, not to classes)."""
    out = []
    for ch in literal:
        if ch.isascii() and ch.isalpha():
            out.append(f"[{ch.lower()}{ch.upper()}]")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def _alts(*literals: str) -> str:
    """Case-insensitive alternation of literals, longest first (so a prefix never wins by position)."""
    return "(?:" + "|".join(_ci(x) for x in sorted(literals, key=len, reverse=True)) + ")"


@dataclass(frozen=True)
class _Entry:
    priority: int           # rule order in PTBLexer.flex: lower wins a tie in length
    first: re.Pattern       # characters that can start a match (a superset is fine)
    pattern: re.Pattern     # the rule, trailing context included; group "m" is yytext when present
    action: str             # what to do with the match (see _Lexer._act)
    needs: int = 0          # _F_* characters the word at the start position must contain for a match


# Characters most letter-initial rules need before the next space (they cannot match otherwise); the
# lexer only tries the rules whose needs the current word meets. A rule's needs must be truly necessary.
_F_DOT, _F_AT, _F_COLON, _F_SLASH, _F_HYPHEN, _F_AMP_PLUS, _F_DOLLAR, _F_APOS = 1, 2, 4, 8, 16, 32, 64, 128
_NEEDS = {1: _F_AMP_PLUS, 2: _F_DOLLAR, 11: _F_APOS, 12: _F_APOS, 14: _F_APOS, 15: _F_APOS, 16: _F_COLON,
          17: _F_DOT, 18: _F_AT, 21: _F_APOS, 28: _F_SLASH, 29: _F_DOLLAR, 31: _F_DOT, 32: _F_DOT, 33: _F_DOT,
          34: _F_DOT, 35: _F_DOT, 36: _F_DOT, 37: _F_DOT, 41: _F_DOT, 42: _F_DOT, 66: _F_DOT | _F_HYPHEN,
          67: _F_HYPHEN, 68: _F_DOT, 70: _F_DOT | _F_AMP_PLUS, 71: _F_AMP_PLUS, 74: _F_APOS}
_WORD_EXTENT = re.compile("[^ \t\n\f\r]*")   # no rule with needs matches across these characters


class _Lexer:
    """The v3.4.1 PTBLexer rules as an ordered list of regexes, with JFlex's longest-match semantics."""

    def __init__(self) -> None:
        L = _class_from(lambda c: unicodedata.category(c) in ("Lu", "Ll", "Lt", "Lm", "Lo"))
        D = _class_from(lambda c: unicodedata.category(c) == "Nd")
        U = _class_from(lambda c: c.isupper())
        letter_extra = (
            "\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F\u0370-\u037D\u0384\u0385"
            "\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF\u04F6-\u04FF\u0510-\u0525\u055A-\u055F\u0591-\u05BD"
            "\u05BF\u05C1\u05C2\u05C4\u05C5\u05C7\u0615-\u061A\u063B-\u063F\u064B-\u065E\u0670\u06D6-\u06EF"
            "\u06FA-\u06FF\u070F\u0711\u0730-\u074F\u0750-\u077F\u07A6-\u07B1\u07CA-\u07F5\u07FA\u0900-\u0903"
            "\u093C\u093E-\u094E\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09BC-\u09C4\u09C7\u09C8\u09CB-\u09CD"
            "\u09D7\u09E2\u09E3\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2"
            "\u0BC6-\u0BC8\u0BCA-\u0BCD\u0C01-\u0C03\u0C3E-\u0C56\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A"
            "\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD")
        splet = "&[aeiouAEIOU]" + _alts("acute", "grave", "uml") + ";"
        LETTER = f"(?:[{L}{letter_extra}]|{splet})"
        DIG = f"[{D}\u07C0-\u07C9]"
        LD = f"(?:{LETTER}|{DIG})"
        SPACE = "[ \t\u00A0\u2000-\u200A\u3000]"
        SPACENL = "(?:[ \t\u00A0\u2000-\u200A\u3000\n\u2028\u2029\x0b\x0c\x85]|\r\n?)"
        SGML = (r"<(?:[!?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*"
                r"""(?:'[^']*'|"[^"]*")|[A-Za-z][A-Za-z0-9_:.\-]*))*[ ]*/?|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>""")
        WORD = f"{LETTER}{LD}*(?:[.!?]{LETTER}{LD}*)*"
        APOS = "(?:['\u0092\u2019]|" + _ci("&apos;") + ")"
        APOSETC = f"(?:{APOS}|[`\u0091\u2018\u201B])"
        REDAUX = f"{APOS}(?:[msdMSD]|{_ci('re')}|{_ci('ve')}|{_ci('ll')})"
        SWORD = "[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*"
        SREDAUX = f"[nN]{APOSETC}[tT]"
        FILENAME_EXT = _alts(*"bat bmp c class cgi cpp dll doc docx exe gif gz h htm html jar java jpeg jpg mov mp3 "
                               "pdf php pl png ppt ps py sql tar txt wav x xml zip".split())
        FILENAME = f"{LD}+(?:\\.{LD}+)*\\.{FILENAME_EXT}"
        Lc = f"[{L}]"                                   # plain [:letter:] (THING, APOWORD use it)
        THING_PART = f"(?:[dDoOlL]{APOSETC}(?:{Lc}|{DIG}))?(?:{Lc}|{DIG})+"
        THING = f"{THING_PART}(?:[-_\u058A\u2010\u2011]{THING_PART})*"
        AMP = _ci("&amp;")
        THINGA = f"[A-Z]+(?:(?:[+&]|{AMP})[A-Z]+)+"
        THING3 = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
        acro_special = f"(?:{_alts('Canada', 'Sino', 'Korean', 'EU', 'Japan', 'non')}-{_ci('U.S')}|{_ci('U.S.-')}" \
                       f"{_alts('U.K', 'U.S.S.R')})"
        ACRO2 = f"(?:{acro_special}|[A-Za-z](?:\\.[A-Za-z])+)"
        HTHING = f"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:{ACRO2}\\.|[A-Za-z0-9\u00AD]+))+"
        # Abbreviations. "[A]z" in the flex file is a class: that letter is case-sensitive, the rest is not.
        def cs_first(word: str) -> str:
            return re.escape(word[0]) + _ci(word[1:])
        abmonth = ["Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec"]
        abdays = ["Mon", "Tue", "Tues", "Wed", "Thu", "Thurs", "Fri"]
        abstate_ci = ["Ala", "Ariz", "Calif", "Colo", "Conn", "Ct", "Dak", "Fla", "Ga", "Ind", "Kan", "Kans", "Ky",
                      "Md", "Mich", "Minn", "Mo", "Mont", "Neb", "Nev", "Okla", "Penn", "Tenn", "Va", "Vt", "Wis",
                      "Wisc", "Wyo"]
        abstate_cs = ["Az", "Ark", "Del", "Ill", "La", "Mass", "Miss", "Ore", "Pa", "Tex", "Wash"]
        abcomp = ["Inc", "Co", "Cos", "Corp", "Ltd", "Plc", "Rt", "Bancorp", "Bhd", "Assn", "Univ", "Intl", "Sys"]
        pty = f"{_ci('p')}{_ci('p')}?{_ci('t')}[ye]{_ci('s')}?"      # Pp?t[ye]s?
        abnum = ["tel", "est", "ext", "sq"]
        abptit = ["Jr", "Sr", "Bros", "Ed.D", "Ph.D", "Blvd", "Rd", "Esq"]
        ab1_words = abmonth + abdays + abstate_ci + abcomp + abnum + abptit + ["etc", "al", "seq", "Bldg"]
        ABBREV1 = "(?:" + "|".join([_alts(*ab1_words), pty] + [cs_first(w) for w in abstate_cs]) + ")\\."
        abtitle_ci = ["Mr", "Mrs", "Ms", "Dr", "Drs", "Prof", "Profs", "Sen", "Sens", "Rep", "Reps", "Atty", "Attys",
                      "Lt", "Col", "Gen", "Messrs", "Gov", "Govs", "Adm", "Rev", "Maj", "Sgt", "Cpl", "Pvt", "Capt",
                      "St", "Ste", "Ave", "Pres", "Lieut", "Hon", "Brig", "Cmdr", "Comdr", "Pfc", "Spc", "Supt",
                      "Supts", "Det", "Mt", "Ft", "Adj", "Adv", "Asst", "Assoc", "Ens", "Insp", "Mlle", "Mme", "Msgr",
                      "Sfc"]
        abbrev4_ci = abtitle_ci + ["vs", "Alex", "Wm", "Jos", "Cie", "a.k.a", "cf", "TREAS", "Ph", "Invt", "Elec",
                                   "Natl", "Mfg", "Mtg", "Dept"]
        ACRO_ALTS = [acro_special, "[A-Za-z](?:\\.[A-Za-z])*"]
        ABBREV4_ALTS = [_alts(*abbrev4_ci), cs_first("Miss")] + ACRO_ALTS
        ABBREV3 = _alts("ca", "fig", "figs", "prop", "no", "nos", "art", "bldg", "pp", "op") + "\\."
        starters = ["About", "According", "Additionally", "After", "An", "A", "As", "At", "But", "Earlier", "He",
                    "Her", "Here", "However", "If", "In", "It", "Last", "Many", "More", "Mr.", "Ms.", "Now", "Once",
                    "One", "Other", "Our", "She", "Since", "So", "Some", "Such", "That", "The", "Their", "Then",
                    "There", "These", "They", "This", "We", "When", "While", "What", "Yet", "You"]
        STARTER = "(?:" + "|".join(cs_first(w) for w in sorted(starters, key=len, reverse=True)) + f"|{SGML})"
        INSENTP = "[,;:\u3001]"
        PHONE_A = (r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00A0])?[0-9]{2,4}[\- \u00A0])"
                   r"[0-9]{3,4}[\- \u00A0]?[0-9]{3,5}")
        PHONE_B = r"(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}"
        url_path = r'(?:/[^ \t\n\f\r"<>|()]+[^ \t\n\f\r"<>|.!?(){},-])?'
        DOLSIGN2 = "[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]"
        MISC = ("[+%&~^|\\\\\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7\u0387"
                "\u05BE\u05C0\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D"
                "\u0703-\u070D\u07F6\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2023\u2030-\u2038"
                "\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF\u2200-\u2BFF\u3012"
                "\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]")
        QUOTE_CHARS = "[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]"
        asian = r"[\^xX=~<>]"

        letter_first = f"[{L}{letter_extra}&]"
        any_first = r"[\s\S]"
        # (priority, first-char class, pattern, action). Several entries may share a priority: they are the
        # alternatives of one rule, tried separately so that the longest one counts (Python's `|` is
        # first-match, JFlex's is longest-match).
        spec: list[tuple] = [
            (1, "[cC]", r"[cC]\+\+", "tok"),
            (2, "[cCfF]", "[cCfF]#", "tok"),
            (3, "[cC]", _ci("cannot"), "keep3"),
            (4, "'", "'" + _ci("twas"), "keep2"),
            (5, "'", "'" + _ci("tis"), "keep2"),
            (6, "[gGlLwW]", _alts("gonna", "gotta", "lemme", "gimme", "wanna"), "keep3"),
            (7, "<", SGML, "sgml"),
            (8, "[&\u0096\u0097\u2013\u2014\u2015]",
             "(?:&" + _alts("MD", "mdash", "ndash") + ";|[\u0096\u0097\u2013\u2014\u2015])", "mdash"),
            (9, "&", AMP, "amp"),
            (10, "&", "&(?:" + _alts("HT", "TL", "UR", "LR", "QC", "QL", "QR", "odq", "cdq") + "|#[0-9]+);", "tok"),
            (11, letter_first, f"(?P<m>{WORD}){REDAUX}", "soft"),
            (12, "[A-Za-z\u00AD]", f"(?P<m>{SWORD}){SREDAUX}", "soft"),
            (13, letter_first, WORD, "soft"),
            (14, "['\u0092\u2019&]", f"{APOS}[nN]{APOS}?", "tok"),
            (14, "[lLdDjJ]", f"[lLdDjJ]{APOS}", "tok"),
            (14, "[dD]", _ci("dunkin") + APOS, "tok"),
            (14, "[sS]", _ci("somethin") + APOS, "tok"),
            (14, "[oO]", _ci("ol") + APOS, "tok"),
            (14, "['\u0092\u2019&]", APOS + _ci("em"), "tok"),
            (14, "[A-HJ-XZn]", f"[A-HJ-XZn]{APOSETC}{Lc}{{2}}{Lc}*", "tok"),
            (14, "['\u0092\u2019&]", f"{APOS}[2-9]0[sS]", "tok"),
            (14, "['\u0092\u2019&]", f"{APOS}{_ci('til')}[lL]?", "tok"),
            (14, f"[{L}]", f"{Lc}+[aeiouyAEIOUY]{APOSETC}[aeiouA-Z]{Lc}*", "tok"),
            (14, "['\u0092\u2019&]", APOS + _ci("cause"), "tok"),
            (14, "[cC]", _ci("cont'd") + r"\.?", "tok"),
            (14, "'", _ci("'twas"), "tok"),
            (14, "[nN]", _ci("nor'easter"), "tok"),
            (14, "[cC]", _ci("c'mon"), "tok"),
            (14, "[eE]", _ci("e'er"), "tok"),
            (14, "[sS]", _ci("s'mores"), "tok"),
            (14, "[eE]", _ci("ev'ry"), "tok"),
            (14, "[lL]", _ci("li'l"), "tok"),
            (14, "[nN]", _ci("nat'l"), "tok"),
            (14, "[oO]", f"[oO]{APOSETC}[oO]", "tok"),
            (15, "[yY]", f"(?P<m>[yY]{APOS}){Lc}", "tok"),
            (16, "[hH]", _ci("http") + r"[sS]?://[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},-]", "tok"),
            (17, "[wW]", _ci("www.") + r'(?:[^ \t\n\f\r"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}' + url_path, "tok"),
            (17, "[^ \t\n\f\r\"`'<>|.!?(){}\x2c-\x5f$]",
             "(?:[^ \t\n\f\r\"`'<>|.!?(){}\x2c-\x5f$]+\\.)+" + _alts("com", "net", "org", "edu") + url_path, "tok"),
            (18, "[&<a-zA-Z0-9]",
             "(?:" + _ci("&lt;") + "|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0{}]*@(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+\\.)*"
             "[^ \t\n\f\r\"<>|(){}.\u00A0]+(?:" + _ci("&gt;") + "|>)?", "tok"),
            (19, "@", "@[a-zA-Z_][a-zA-Z_0-9]*", "tok"),
            (19, "#", f"#{LETTER}+", "tok"),
            (20, "['\u0092\u2019&]", f"(?P<m>{REDAUX})[^A-Za-z]", "quote_right"),
            (21, "[nN]", f"(?P<m>{SREDAUX})[^A-Za-z]", "quote_right"),
            (22, DIG, f"{DIG}{{1,2}}[-/]{DIG}{{1,2}}[-/]{DIG}{{2,4}}", "tok"),
            (23, f"[-+.:,\u00AD\u066B\u066C{D}\u07C0-\u07C9]",
             f"[-+]?(?:{DIG}*(?:[.:,\u00AD\u066B\u066C]{DIG}+)+|{DIG}+)", "soft"),
            (24, "[\u207A\u207B\u208A\u208B\u2070\u00B9\u00B2\u00B3\u2074-\u2079\u2080-\u2089]",
             "[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)", "tok"),
            (25, DIG, f"(?:{DIG}{{1,4}}[- \u00A0])?{DIG}{{1,4}}(?:\\\\?/|\u2044){DIG}{{1,4}}", "nbsp"),
            (26, "[\u00BC\u00BD\u00BE\u2153-\u215E]", "[\u00BC\u00BD\u00BE\u2153-\u215E]", "fraction"),
            (27, "-", "-" + _alts("RRB", "LRB", "RCB", "LCB", "RSB", "LSB") + "-", "amp"),
            (27, "[cC]", _ci("C.D.s"), "amp", _F_DOT),
            (27, "[pP]", _ci("pro-"), "amp", _F_HYPHEN),
            (27, "[aA]", _ci("anti-"), "amp", _F_HYPHEN),
            (27, "[sS]", f"[sS](?:&|{AMP})[pP]-500", "amp", _F_AMP_PLUS | _F_HYPHEN),
            (27, "[sS]", f"[sS](?:&|{AMP})[lL][sS]", "amp", _F_AMP_PLUS),
            (27, "[cC]", f"{_ci('cap')}{APOS}[nN]", "amp", _F_APOS),
            (27, "[cC]", f"[cC]{APOS}{_ci('est')}", "amp", _F_APOS),
            (28, "[A-Za-z0-9]", THING3, "tok"),
            (29, "[A-Z$#]", r"[A-Z]*\$|#", "tok"),
            (30, DOLSIGN2, DOLSIGN2, "currency"),
            *[(31, "[A-Za-z]", f"(?P<m>{a}\\.){SPACENL}+{STARTER}{SPACENL}", "acronym") for a in ACRO_ALTS],
            (32, "[cCfFpPnNaAbBoO]", f"(?P<m>{ABBREV3}){SPACENL}?[{D}]", "tok"),
            (33, "[pPcC]", f"(?P<m>(?:[pP][tT][eyEY]|[cC][oO])\\.){SPACE}{_alts('ltd', 'lim')}", "tok"),
            (34, "[A-Za-z]", f"(?P<m>{ABBREV1}){SPACENL}(?:{SPACENL}|[{U}]|{SGML})", "abbrev_period"),
            (35, "[A-Za-z]", f"(?P<m>{ABBREV1})[\\s\\S]{{2}}", "tok"),
            (36, "[A-Za-z]", ABBREV1, "abbrev_period"),
            *[(37, "[A-Za-z]", f"{a}\\.", "tok") for a in ABBREV4_ALTS],
            *[(38, "[A-Za-z]", f"(?P<m>{a}){SPACE}", "tok") for a in ABBREV4_ALTS],
            *[(39, "[A-Za-z]", f"(?P<m>{a}){SPACENL}", "tok") for a in ACRO_ALTS],
            (40, "['\u0092\u2019&]", f"(?P<m>{APOS}[0-9][0-9]){SPACENL}", "tok"),
            (41, letter_first + "|" + DIG, f"(?P<m>{FILENAME})(?:{SPACENL}|[.?!,])", "tok"),
            (42, letter_first, f"(?P<m>{WORD}\\.){INSENTP}", "soft"),
            (43, r"[(+0-9]", PHONE_A, "phone"),
            (43, r"[+0-9]", PHONE_B, "phone"),
            (44, '["&]', f"(?P<m>\"|{_ci('&quot;')})[A-Za-z0-9$]", "quote_left"),
            (45, '["&]', f"\"|{_ci('&quot;')}", "quote_right"),
            (46, "\x7f", "\x7f", "skip"),
            (47, "[<&]", "<|" + _ci("&lt;"), "lt"),
            (48, "[>&]", ">|" + _ci("&gt;"), "gt"),
            (49, "[<>:;=]", r"(?P<m>[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]])[^A-Za-z0-9]", "parens"),
            (50, r"[\^xX=~<>]", f"{asian}\\.\\[\\^[xX]=~<>\\]", "parens"),
            (50, r"[\-\^xX=~<>']", r"[\-\^xX=~<>']_[\-\^xX=~<>']", "parens"),
            (50, r"\(", r"\([\-\^xX=~<>'][_.]?[\-\^xX=~<>']\)", "parens"),
            (50, r"\(", r"\([\^xX=~<>']-[\^xX=~<>'`]\)", "parens"),
            (51, r"\{", r"\{", "lcb"),
            (52, r"\}", r"\}", "rcb"),
            (53, r"\[", r"\[", "lsb"),
            (54, r"\]", r"\]", "rsb"),
            (55, r"\(", r"\(", "lrb"),
            (56, r"\)", r"\)", "rrb"),
            (57, "-", "-+", "hyphens"),
            (58, "[.\u00A0\u0085\u2026]", "\\.{3,5}|(?:\\.[ \u00A0]){2,4}\\.|[\u0085\u2026]", "ellipsis"),
            (59, "[@#_]", "@+|#+|_+", "tok"),
            (60, r"[*\\]", r"\*+|(?:\\\*){1,3}", "tok"),
            (61, INSENTP, INSENTP, "tok"),
            (62, "[?!]", "[?!]+", "tok"),
            (63, "[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]",
             "[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]", "tok"),
            (64, "=", "=", "tok"),
            (65, "/", "/", "tok"),
            (66, "[A-Za-z0-9]", f"(?P<m>{HTHING}\\.){INSENTP}", "soft"),
            (67, "[A-Za-z0-9]", HTHING, "soft"),
            (68, f"[{L}{D}dDoOlL]", f"(?P<m>{THING}\\.){INSENTP}", "tok"),
            (69, f"[{L}{D}dDoOlL]", THING, "tok"),
            (70, "[A-Z]", f"(?P<m>{THINGA}\\.){INSENTP}", "amp"),
            (71, "[A-Z]", THINGA, "amp"),
            (72, "'", "(?P<m>')[A-Za-z][^ \t\n\r\u00A0]", "quote_left"),
            (73, "['\u0092\u2019&]", REDAUX, "quote_right"),
            (74, "[nN]", SREDAUX, "quote_right"),
            (75, "['\u0092\u2019&]", APOS, "quote_right"),
            (75, "'", "''", "quote_right"),
            (75, QUOTE_CHARS, QUOTE_CHARS + "{1,2}", "quote_right"),
            (76, "[<>]", "<<|>>", "tok"),
            (77, MISC, MISC, "tok"),
            (78, "[\x00 \t\u00A0\u2000-\u200B\u3000\u200E\u200F\uFEFF]",
             "\x00|[ \t\u00A0\u2000-\u200A\u3000]+|[\u200B\u200E\u200F\uFEFF]", "skip"),
            (79, "[\r\n\u2028\u2029\x0b\x0c\x85]", "\r\n?|[\n\u2028\u2029\x0b\x0c\x85]", "newline"),
            (80, "&", _ci("&nbsp;"), "skip"),
            (81, any_first, ".", "delete"),
        ]
        self.entries = [_Entry(e[0], re.compile(e[1]), re.compile(e[2]), e[3], e[4] if len(e) > 4 else _NEEDS.get(e[0], 0))
                        for e in spec]
        # Anything an abbreviation/acronym rule can end on with its period (the chunk cache's safety test).
        self.abbreviation = re.compile("(?:" + "|".join(
            [ABBREV1, ABBREV3, "(?:[pP][tT][eyEY]|[cC][oO])\\."] + [f"{a}\\." for a in ABBREV4_ALTS]) + ")")
        self._dispatch: dict[str, tuple[_Entry, ...]] = {}

    def candidates(self, ch: str, features: int) -> tuple[_Entry, ...]:
        key = (ch, features)
        got = self._dispatch.get(key)
        if got is None:
            got = tuple(e for e in self.entries if e.first.match(ch) and e.needs & features == e.needs)
            self._dispatch[key] = got
        return got

    def next_token(self, text: str, pos: int) -> tuple[str | None, int]:
        """The token starting at ``pos`` (None for skipped text, "\\n" for a line break) and where to go on."""
        word = _WORD_EXTENT.match(text, pos).group()
        features = (("." in word) | ("@" in word) << 1 | (":" in word) << 2 | ("/" in word) << 3
                    | ("-" in word) << 4 | ("&" in word or "+" in word) << 5 | ("$" in word or "#" in word) << 6
                    | any(c in word for c in "'\u2019`\u2018\u201B\u0091\u0092&") << 7)
        best, best_len, best_m = None, -1, None
        for e in self.candidates(text[pos], features):
            m = e.pattern.match(text, pos)
            if m is not None:
                n = m.end() - pos
                if n > best_len or (n == best_len and e.priority < best.priority):
                    best, best_len, best_m = e, n, m
        return self._act(best, best_m, text, pos)

    @staticmethod
    def _act(e: _Entry, m: re.Match, text: str, pos: int) -> tuple[str | None, int]:
        a = e.action
        y = m.group("m") if "m" in m.re.groupindex else m.group()
        end = pos + len(y)
        if a == "tok":
            return y, end
        if a == "soft":
            return _remove_soft_hyphens(y), end
        if a == "skip" or a == "delete":
            return None, end
        if a == "newline":
            return "\n", end
        if a == "quote_right":
            return _latex_quotes(y, False), end
        if a == "quote_left":
            return _latex_quotes(y, True), end
        if a == "keep3":
            return y[:3], pos + 3
        if a == "keep2":
            return y[:2], pos + 2
        if a == "abbrev_period":  # token keeps its period, and the period is scanned again (a "." token)
            return y, end - 1
        if a == "acronym":
            if len(y) == 2:         # "I.", "B.": the letter alone, the period comes next
                return y[0], pos + 1
            return y, end - 1
        if a == "amp":
            return _AMP.sub("&", y), end
        if a == "mdash":
            return "--", end
        if a == "hyphens":
            return ("--" if 3 <= len(y) <= 4 else y), end
        if a == "ellipsis":
            return "...", end
        if a == "nbsp":
            return y.replace(" ", "\u00A0"), end
        if a == "phone":
            return y.replace(" ", "\u00A0").replace("(", "-LRB-").replace(")", "-RRB-"), end
        if a == "sgml":
            return y.replace(" ", "\u00A0"), end
        if a == "parens":
            return y.replace("(", "-LRB-").replace(")", "-RRB-"), end
        if a == "fraction":
            return _FRACTIONS.get(y, y), end
        if a == "currency":
            return _CURRENCY.get(y, y), end
        if a == "lt":
            return "<", end
        if a == "gt":
            return ">", end
        return _BRACKETS[a], end


_AMP = re.compile("(?i:&amp;)")
_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_CURRENCY = {"\u00A2": "cents", "\u00A3": "#", "\u0080": "$", "\u00A4": "$", "\u20A0": "$", "\u20AC": "$"}
_BRACKETS = {"lcb": "-LCB-", "rcb": "-RCB-", "lsb": "-LSB-", "rsb": "-RSB-", "lrb": "-LRB-", "rrb": "-RRB-"}
_QUOTE_MAP = str.maketrans({"\u0091": "`", "\u2018": "`", "\u201B": "`", "\u2039": "`",
                            "\u0092": "'", "\u2019": "'", "\u203A": "'",
                            "\u0093": "``", "\u201C": "``", "\u00AB": "``",
                            "\u0094": "''", "\u201D": "''", "\u00BB": "''"})


def _remove_soft_hyphens(s: str) -> str:
    if "\u00AD" not in s:
        return s
    out = s.replace("\u00AD", "")
    return out or "-"


def _latex_quotes(s: str, left: bool) -> str:
    # PTBLexer.latexQuotes: ASCII quotes by guessed side, then the curly/cp1252 ones by their own side.
    if left:
        s = s.replace("&apos;", "`").replace("'", "`").replace('"', "``").replace("&quot;", "``")
    else:
        s = s.replace("&apos;", "'").replace("'", "'").replace('"', "''").replace("&quot;", "''")
    return s.translate(_QUOTE_MAP)


@functools.lru_cache(maxsize=1)
def _lexer() -> _Lexer:
    # Built on first use (~0.2 s: the Unicode letter classes), so importing the package stays cheap.
    return _Lexer()


# ----------------------------------------------------------------------------------------------------
# Fast path: a cache of space-separated chunks. Scanning restarts at every chunk that follows a space,
# and the only rules whose match can reach past "chunk + the one character after it" are:
#   * abbreviation/acronym rules (ABBREV1 + SENTEND, the ACRONYM rule, ABBREV3, "pty. ltd"): they need an
#     abbreviation's period right before the space, so a chunk where, from some token start, the rest is
#     an abbreviation ("B.", "p.m.", "Mr.", "'causeCo.") is never cached;
#   * the ellipsis ". . .": a chunk ending in "." is only reused when the next chunk does not start with ".";
#   * fractions "3 1/2" and phone numbers "(555) 123 4567": a chunk ending in a digit or ")" is only reused
#     when the next chunk does not start with a digit (neither can cross a line break);
#   * SGML tags with attributes ("<a href='x'>"): chunks with "<" are never cached.
# So a chunk of ordinary characters tokenizes the same wherever it appears, given the character after
# it (a space, a line break or the end of the text: the cache key). The cached and the rule-engine paths
# are checked against each other, and both against the Java tokenizer, in the tests.
_CACHEABLE = re.compile("[A-Za-z0-9.,;:!?'\"()\\-/&$%#\u2019\u2018\u201C\u201D\u2014\u2013\u2026]+")
_SPACE_RUN = re.compile("[ \t\u00A0\u2000-\u200A\u3000]+")
_SPLIT = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])
_FREE, _NEXT_NOT_DOT, _NEXT_NOT_DIGIT = 0, 1, 2


# The commonest chunk shapes, whose tokens follow directly from the rules (checked exhaustively against
# the engine in the tests): an optional opening quote (“ ‘ "), then a word W: a letter-initial
# alphanumeric run, optionally with 's or n't, or a digit run, or alphanumeric runs joined by hyphens
# ("5-year-old": one HTHING token), then one optional ",.!?;:" and an optional closing quote (” ").
# W before a space, line break or the end is one token (no rule matches longer; "cannot"/"gonna"... split
# after three letters); "W's"/"Wn't" are WORD/REDAUX and SWORD/SREDAUX (longest, and first on ties).
_SIMPLE_CHUNK = re.compile("([\"\u201C\u2018]?)(?:([A-Za-z][A-Za-z0-9]*?)(?:(['\u2019][sS])|([A-MO-Za-mo-z])([nN]['\u2019][tT]))?"
                           "|([0-9]+)|([A-Za-z0-9]+(?:-[A-Za-z0-9]+)+))([,.!?;:]?)([\"\u201D]?)")
_OPEN_QUOTE = {"": (), '"': ("``",), "\u201C": ("``",), "\u2018": ("`",)}
_CLOSE_QUOTE = {"": (), '"': ("''",), "\u201D": ("''",)}


class _ChunkCache:
    """Tokens of cacheable chunks, per following character: ``(flag, raw_tokens, kept_string)`` or None."""

    def __init__(self, lexer: _Lexer) -> None:
        self.lexer = lexer
        self.by_follow: dict[str, dict[str, tuple | None]] = {" ": {}, "\n": {}, "": {}}

    def _simple(self, m: re.Match) -> tuple | None:
        lead, word, s_aux, n_last, nt, digits, hyphened, punct, trail = m.groups()
        if punct == "." and trail:
            return None  # ".\"" and ".”": leave to the engine
        if word is not None:
            if nt is not None:
                word = word + n_last
                if not word.isalpha():
                    return None  # SWORD is letters only
                toks = (word.lower(), nt[0].lower() + "'" + nt[2].lower())
            elif s_aux is not None:
                toks = (word.lower(), "'" + s_aux[1].lower())
            else:
                low = word.lower()
                if punct == "." and self.lexer.abbreviation.fullmatch(word + "."):
                    return None  # "Mr." / "B." / "etc.": what follows decides
                toks = (low[:3], low[3:]) if low in _SPLIT else (low,)
        else:
            toks = ((digits or hyphened).lower(),)
        return _OPEN_QUOTE[lead] + toks + ((punct,) if punct else ()) + _CLOSE_QUOTE[trail]

    def entry(self, chunk: str, follow: str) -> tuple | None:
        table = self.by_follow[follow]
        got = table.get(chunk, False)
        if got is False:
            got = table[chunk] = self._compute(chunk, follow)
        return got

    def _compute(self, chunk: str, follow: str) -> tuple | None:
        m = _SIMPLE_CHUNK.fullmatch(chunk)
        if m is not None:
            toks = self._simple(m)
            if toks is not None:
                kept = [t for t in toks if t not in PUNCTUATIONS]
                last = chunk[-1]
                # a number before a space may start a fraction or phone number with the next chunk
                flag = _NEXT_NOT_DOT if last == "." else _NEXT_NOT_DIGIT if last.isdigit() else _FREE
                return flag, toks, " ".join(kept)
        if _CACHEABLE.fullmatch(chunk) is None:
            return None
        text, pos, toks, starts = chunk + follow, 0, [], []
        while pos < len(chunk):
            starts.append(pos)
            tok, pos = self.lexer.next_token(text, pos)
            if tok is not None:
                toks.append(tok.lower())
        if pos != len(chunk):
            return None
        last = chunk[-1]
        flag = _FREE
        if last == ".":
            abbreviation = self.lexer.abbreviation.fullmatch
            if any(abbreviation(chunk, s) for s in starts):
                return None  # what follows the space decides ("B. The" vs "B. the", "etc. A")
            flag = _NEXT_NOT_DOT
        elif last.isdecimal() or last == ")":
            flag = _NEXT_NOT_DIGIT
        return flag, tuple(toks), " ".join(t for t in toks if t not in PUNCTUATIONS)


class _ScanState:
    """Chunk tables shared by the texts of one job (e.g. the references and the predictions)."""

    def __init__(self, kept: bool) -> None:
        self.kept = kept
        self.which = 2 if kept else 1
        self.cache = _ChunkCache(_lexer())
        # chunk -> tokens (or kept string) for chunks known to depend on nothing after them, per follower
        self.free: dict[str, dict] = {f: {"": "" if kept else ()} for f in (" ", "\n", "")}
        # chunk -> (flag, tokens) for chunks reusable under a condition on the next chunk (before a space)
        self.cond_sp: dict[str, tuple] = {}
        # bulk path: tagged chunk -> kept string, _COND or _SLOW (see _Scan.bulk)
        self.bulk: dict[str, object] = {"": "", "\n": "\n", _END_NL: "", _END_EOF: ""}


_COND, _SLOW = object(), object()          # bulk-table markers
_END_NL, _END_EOF = "\x01", "\x02"         # bulk path: tags on a line's last chunk (line break / end of text)


class _Scan:
    """One text (captions joined by line breaks), tokenized line by line or in bulk."""

    def __init__(self, captions: list[str], state: _ScanState) -> None:
        self.lines = [c if c.isascii() and "\n" not in c and "\r" not in c and "\x0b" not in c and "\x0c" not in c
                      else _EXTRA_NEWLINES.sub(" ", c.replace("\n", " ")) for c in captions]
        self.text = "\n".join(self.lines)
        self.state = state
        self.next_token = state.cache.lexer.next_token
        self.last_raw = ""  # the line's last raw token, when the engine made it (see finish)

    def engine(self, p: int, q: int, out: list[str]) -> int:
        """Run the rule engine from p until it has consumed the text up to q (its last token may run past q)."""
        kept, text, next_token = self.state.kept, self.text, self.next_token
        while p < q:
            tok, p = next_token(text, p)
            if tok is not None and tok != "\n":
                tok = tok.lower()
                self.last_raw = tok
                if not kept or tok not in PUNCTUATIONS:
                    out.append(tok)
        return p

    def finish(self, out: list):
        if not self.state.kept:
            return out
        line = " ".join(x for x in out if x)
        # pycocoevalcap rstrip()s the Java output line: a last token ending in a no-break space (a URL) loses it
        return line.rstrip() if self.last_raw[-1:].isspace() else line

    def line(self, li: int, line_start: int, sync: int, engine_only: bool = False) -> tuple[object, int]:
        """Tokens (or kept string) of line ``li`` starting at ``line_start``; ``sync``: text consumed so far."""
        line = self.lines[li]
        line_end = line_start + len(line)
        self.last_raw = ""
        out: list = []
        if engine_only:
            sync = self.engine(max(sync, line_start), line_end, out)
            return self.finish(out), sync
        st = self.state
        end_follow = "\n" if li < len(self.lines) - 1 else ""
        chunks = line.split(" ")
        last_i = len(chunks) - 1
        p = line_start
        for i, c in enumerate(chunks):
            q = p + len(c)
            if not c:
                p = q + 1
                continue
            if sync <= p:
                follow = " " if i < last_i else end_follow
                e = st.cache.entry(c, follow)
                if e is not None:
                    flag = e[0]
                    if flag == _FREE or i == last_i:
                        st.free[follow][c] = e[st.which]
                    else:
                        st.cond_sp[c] = (flag, e[st.which])
                    if flag == _FREE or i == last_i or not (
                            chunks[i + 1][:1] == "." if flag == _NEXT_NOT_DOT else chunks[i + 1][:1].isdecimal()):
                        if st.kept:
                            out.append(e[2])
                        else:
                            out.extend(e[1])
                        self.last_raw = ""
                        sync = q
                        p = q + 1
                        continue
            if sync < q:
                start = sync
                if start <= p:
                    # a fresh chunk after a space: the lexer skips the whole run of spaces it belongs to
                    start = _SPACE_RUN.match(self.text, p - 1).end() if p > line_start else p
                sync = self.engine(start, q, out)
            p = q + 1
        return self.finish(out), sync

    def by_line(self, engine_only: bool = False) -> list:
        result, line_start, sync = [], 0, 0
        free, cond_sp = self.state.free, self.state.cond_sp
        n_lines = len(self.lines)
        for li, line in enumerate(self.lines):
            if not engine_only and sync <= line_start:
                # every chunk already known: no need to look at the text around it
                chunks = line.split(" ")
                found = [free[" "].get(c) for c in chunks]
                found[-1] = free["\n" if li < n_lines - 1 else ""].get(chunks[-1])
                if None in found:
                    for i in [i for i, x in enumerate(found) if x is None]:
                        e = cond_sp.get(chunks[i]) if i < len(chunks) - 1 else None
                        if e is None or (chunks[i + 1][:1] == "." if e[0] == _NEXT_NOT_DOT
                                         else chunks[i + 1][:1].isdecimal()):
                            break
                        found[i] = e[1]
                if None not in found:
                    result.append(" ".join([x for x in found if x]) if self.state.kept
                                  else [t for f in found for t in f])
                    sync = line_start = line_start + len(line) + 1
                    continue
            out, sync = self.line(li, line_start, sync, engine_only)
            result.append(out)
            line_start += len(line) + 1
        return result

    def bulk(self) -> list[str] | None:
        """Kept strings of all lines from one split of the whole text; lines with chunks that need their
        context go through :meth:`line`. None when the text holds the tag characters."""
        text = self.text
        if _END_NL in text or _END_EOF in text:
            return None
        st = self.state
        table = st.bulk
        # a line's last chunk carries a tag saying what follows it (a line break, or the end of the text)
        chunks = (text.replace("\n", _END_NL + " \n ") + _END_EOF).split(" ")
        get = table.get
        missing = set(chunks).difference(table)
        if missing:
            for c in missing:
                if c.endswith(_END_NL):
                    follow, base = "\n", c[:-1]
                elif c.endswith(_END_EOF):
                    follow, base = "", c[:-1]
                else:
                    follow, base = " ", c
                e = st.cache.entry(base, follow)
                if e is None:
                    table[c] = _SLOW
                elif e[0] == _FREE or follow != " ":
                    table[c] = e[2]
                else:
                    table[c] = _COND
                    st.cond_sp[c] = (e[0], e[2])
        found = [get(c) for c in chunks]
        slow_at = []
        i = -1
        while True:  # conditional chunks: check the next chunk's first character
            try:
                i = found.index(_COND, i + 1)
            except ValueError:
                break
            flag, kept = st.cond_sp[chunks[i]]
            nxt = chunks[i + 1][:1]
            if (nxt == ".") if flag == _NEXT_NOT_DOT else nxt.isdecimal():
                found[i] = ""
                slow_at.append(i)
            else:
                found[i] = kept
        i = -1
        while True:
            try:
                i = found.index(_SLOW, i + 1)
            except ValueError:
                break
            found[i] = ""
            slow_at.append(i)
        redo, strip = set(), set()
        if slow_at:
            # chunk index -> line: line j has lines[j].count(" ") + 1 chunks plus its line-break marker
            starts = list(itertools.accumulate((x.count(" ") + 2 for x in self.lines), initial=0))
            line_start = list(itertools.accumulate((len(x) + 1 for x in self.lines), initial=0))
            slow_at.sort()
            for i in slow_at:
                li = bisect.bisect_right(starts, i) - 1
                if li in redo:
                    continue
                # the chunk's place in the text: its line's start plus the chunks before it
                k = i - starts[li]
                p = line_start[li] + sum(len(c) + 1 for c in chunks[starts[li]:i])
                q = p + len(chunks[i]) - (1 if chunks[i][-1:] in (_END_NL, _END_EOF) else 0)
                start = _SPACE_RUN.match(text, p - 1).end() if k > 0 else p
                self.last_raw = ""
                out: list[str] = []
                if self.engine(start, q, out) != q:
                    redo.add(li)  # a token ran into the next chunk: redo the whole line in order
                    continue
                found[i] = " ".join(out)
                if i + 1 == starts[li + 1] - 1 and self.last_raw[-1:].isspace():
                    strip.add(li)  # pycocoevalcap's rstrip() of the line (see finish)
        result = [x.strip(" ") for x in " ".join([x for x in found if x]).split("\n")]
        for li in strip:
            result[li] = result[li].rstrip()
        for li in sorted(redo):
            result[li] = self.line(li, line_start[li], line_start[li])[0]
        return result


def _scan(captions: list[str], *, kept: bool, engine_only: bool = False, state: _ScanState | None = None) -> list:
    """Per caption: its lower-cased raw tokens, or (``kept``) pycocoevalcap's tokenized string.

    The captions form one text, one per line (the last one ends the text).
    """
    scan = _Scan(captions, state if state is not None else _ScanState(kept))
    if kept and not engine_only and captions:
        result = scan.bulk()
        if result is not None:
            return result
    return scan.by_line(engine_only)


def ptb_tokens(captions: Iterable[str], *, engine_only: bool = False) -> list[list[str]]:
    """Raw PTB tokens of each caption (lower-cased, punctuation kept): what the Java tokenizer prints.

    The captions are scanned as one text, one caption per line, like pycocoevalcap does.
    ``engine_only`` bypasses the chunk cache (for testing it).

    Example:
        >>> ptb_tokens(["Don't stop.", "Two (2) dogs..."])
        [['do', "n't", 'stop', '.'], ['two', '-lrb-', '2', '-rrb-', 'dogs', '...']]
    """
    return _scan(list(captions), kept=False, engine_only=engine_only)


def tokenize_caption(caption: str) -> str:
    """One caption, tokenized and cleaned as pycocoevalcap does (the caption alone is the whole text).

    Example:
        >>> tokenize_caption("It's 10:30 a.m. -- Two DOGS!")
        "it 's 10:30 a.m. two dogs"
    """
    return _scan([caption], kept=True)[0]


def tokenize(captions_for_image: dict) -> dict:
    """pycocoevalcap's ``PTBTokenizer().tokenize``: ``{id: [caption, ...]}`` -> ``{id: [tokenized, ...]}``.

    Captions may be strings or ``{"caption": str}`` dicts (pycocoevalcap's input). All captions are
    scanned as one text in dict order, as pycocoevalcap's single Java call does.

    Example:
        >>> tokenize({7: [{"caption": "A Dog's ball."}], 8: ["Ok..."]})
        {7: ["a dog 's ball"], 8: ['ok']}
    """
    return tokenize_many(captions_for_image)[0]


def tokenize_many(*dicts: dict) -> list[dict]:
    """:func:`tokenize` for several dicts (each its own text, as separate pycocoevalcap calls), sharing
    the work on the words they have in common (e.g. references and predictions).

    Example:
        >>> tokenize_many({"1": ["A dog."]}, {"1": ["The dog!"]})
        [{'1': ['a dog']}, {'1': ['the dog']}]
    """
    state = _ScanState(kept=True)
    out = []
    for captions_for_image in dicts:
        keys, flat = [], []
        for k, caps in captions_for_image.items():
            if isinstance(caps, str):
                raise TypeError(f"tokenize: the value for id {k!r} must be a list of captions, got a string")
            for c in caps:
                c = c["caption"] if isinstance(c, dict) else c
                if not isinstance(c, str):
                    raise TypeError(f"tokenize: captions must be strings, got {type(c).__name__} for id {k!r}")
                flat.append(c)
                keys.append(k)
        result: dict = {}
        for k, tok in zip(keys, _scan(flat, kept=True, state=state)):
            result.setdefault(k, []).append(tok)
        out.append(result)  # like pycocoevalcap, an id without captions is left out
    return out


class PTBTokenizer:
    """Drop-in for ``pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer`` without Java.

    Example:
        >>> PTBTokenizer().tokenize({"a": [{"caption": "Hello, World!"}]})
        {'a': ['hello world']}
    """

    def tokenize(self, captions_for_image: dict) -> dict:
        return tokenize(captions_for_image)
