"""A lenient JSON reader for LLM replies: strict JSON where the text is valid, repaired
where it is not.

Small models write broken JSON: prose or markdown fences around it, single or typographic
quotes as delimiters, unquoted keys, trailing or doubled commas, a list cut off by the
token limit, a key repeated by a looping model. :func:`json_items` finds every JSON list
and object in a text and reads each strictly (``json.JSONDecoder.raw_decode``) or, where
that fails, with the repairing parser here. Pure Python.
"""

from __future__ import annotations

import json
import re


class JSONNestingError(ValueError):
    """The text nests lists or objects deeper than ``MAX_DEPTH``; the message says where."""


class _Truncated(Exception):
    """The text ended inside a value; ``args[0]``, if any, is the enclosing object's complete fields."""


class _Invalid(Exception):
    pass


# Quote characters small models use as string delimiters. The repair pass treats them as
# delimiters only where a string starts or ends, so typographic quotes *inside* a string are
# kept as written (rewriting them before parsing broke valid JSON such as "“the Loom Queen”").
_DOUBLE_QUOTES = '"“”„‟'
_SINGLE_QUOTES = "'‘’‚‛"
_OPENERS = _DOUBLE_QUOTES + _SINGLE_QUOTES
FENCE = re.compile(r"```[A-Za-z]*")
_OPEN_BRACKET = re.compile(r"[\[{]")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
_BARE_END = ",:{}[]\n"
# Far deeper than any QA list (depth 2); deeper input is garbage, and recursing into it
# would end in RecursionError instead of a reason.
MAX_DEPTH = 32


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i].isspace():
        i += 1
    return i


def _closes(s: str, i: int) -> bool:
    """Whether a quote before ``s[i]`` ends a string (else it is an apostrophe or a quote inside it)."""
    i = _skip_ws(s, i)
    return i >= len(s) or s[i] in ",:}]"


def _string(s: str, i: int) -> tuple[str, int]:
    """A string opened by any quote of ``_OPENERS``. One opened by ``"`` ends at the next
    unescaped ``"``, as in JSON; any other ends at a quote of its family followed by
    ``, : } ]`` or the end, so apostrophes and quoted words inside it survive."""
    quote, i, buf = s[i], i + 1, []
    family = _DOUBLE_QUOTES if quote in _DOUBLE_QUOTES else _SINGLE_QUOTES
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", s[i + 2 : i + 6]):
                buf.append(chr(int(s[i + 2 : i + 6], 16)))  # surrogate halves are paired in _field
                i += 6
                continue
            buf.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        if c == quote == '"' or (c in family and quote != '"' and _closes(s, i + 1)):
            return "".join(buf), i + 1
        buf.append(c)
        i += 1
    raise _Truncated


def _bare(s: str, i: int) -> tuple[object, int]:
    j = i
    while j < len(s) and s[j] not in _BARE_END:
        j += 1
    if j >= len(s):
        raise _Truncated
    token = s[i:j].strip()
    if not token:
        raise _Invalid
    literals = {"true": True, "false": False, "null": None}
    if token in literals:
        return literals[token], j
    try:
        return json.loads(token), j
    except ValueError:
        return token, j


def _object(s: str, i: int, depth: int) -> tuple[dict, int]:
    obj: dict = {}
    i += 1
    try:
        while True:
            i = _skip_ws(s, i)
            if i >= len(s):
                raise _Truncated
            if s[i] == "}":
                return obj, i + 1
            if s[i] == ",":
                i += 1
                continue
            key, i = _string(s, i) if s[i] in _OPENERS else _bare(s, i)
            i = _skip_ws(s, i)
            if i >= len(s):
                raise _Truncated
            if s[i] != ":" or not isinstance(key, str):
                raise _Invalid
            value, i = _value(s, i + 1, depth)
            obj.setdefault(key, value)  # a looping model repeats keys: its first value is the sane one
    except _Truncated:
        # A model that loops on a key never closes the object; the fields it finished still count.
        raise _Truncated(obj) from None


def _array(s: str, i: int, depth: int) -> tuple[list, int]:
    """Items up to the closing bracket; a cut-off list keeps its complete items."""
    items: list = []
    i += 1
    while True:
        i = _skip_ws(s, i)
        if i >= len(s):
            return items, i
        if s[i] == "]":
            return items, i + 1
        if s[i] == ",":
            i += 1
            continue
        try:
            value, i = _value(s, i, depth)
        except _Truncated as cut:
            return items + [a for a in cut.args if a], len(s)
        items.append(value)


def _value(s: str, i: int, depth: int = 0) -> tuple[object, int]:
    i = _skip_ws(s, i)
    if i >= len(s):
        raise _Truncated
    c = s[i]
    if c in "{[":
        if depth >= MAX_DEPTH:
            raise JSONNestingError(f"JSON nested deeper than {MAX_DEPTH} levels (at character {i})")
        return _object(s, i, depth + 1) if c == "{" else _array(s, i, depth + 1)
    if c in _OPENERS:
        return _string(s, i)
    return _bare(s, i)


def _first_wins(pairs: list[tuple[str, object]]) -> dict:
    """A repeated key keeps its first value, as in the lenient parser (strict ``json`` keeps the last)."""
    obj: dict = {}
    for key, value in pairs:
        obj.setdefault(key, value)
    return obj


def json_items(text: str) -> tuple[list, bool]:
    """Every top-level item of the JSON lists and objects found in ``text`` (prose around
    them skipped), and whether anything JSON-like was found at all.

    At each bracket the text is first parsed as strict JSON (``json.JSONDecoder.raw_decode``);
    only where that fails is it repaired by the lenient parser. Where a list is malformed
    even for that, scanning resumes just past its opening bracket, so its well-formed
    objects are still picked up one by one.
    """
    # Fences become blanks of the same length, so both parsers index the same text.
    lenient = FENCE.sub(lambda m: " " * len(m.group()), text)
    strict = json.JSONDecoder(object_pairs_hook=_first_wins)
    items: list = []
    found = False
    i = 0
    while True:
        start = _OPEN_BRACKET.search(lenient, i)
        if start is None:
            return items, found
        j = start.start()
        try:
            value, i = strict.raw_decode(text, j)
        except (ValueError, RecursionError):  # the C scanner recurses without a depth limit
            try:
                value, i = _value(lenient, j)
            except _Truncated as cut:
                return items + [a for a in cut.args if a], True
            except _Invalid:
                i = j + 1
                continue
        found = True
        items.extend(value if isinstance(value, list) else [value])
