"""Student ids and file names, made safe.

A student id comes from a submission's file name, which the student (or an LMS) chose. Grading uses
it as a key (state file, duplicate detection), as a file name (feedback) and as a CSV cell, so it is
normalised once, here, to a form that is the same on every file system and safe everywhere:

- Unicode NFKC, then case folding (``Ａlice``, ``ALICE`` and ``alice`` are one student: feedback
  files cannot differ by case only, which a case-insensitive file system would merge);
- the alphabet ``a-z 0-9 . _ -``: accents are dropped (``josé`` is ``jose``), any other letter
  becomes ``u`` and its code point (``王`` is ``u738b``), anything else (spaces, quotes, slashes,
  ``=``, control characters, bytes that are not UTF-8) becomes ``_``;
- no leading or trailing ``. _ -`` (no hidden files, no ``..``, nothing read as a command-line
  option or a spreadsheet formula), at most :data:`MAX_ID` characters (a longer id keeps a hash of
  the whole), never empty, never a name Windows reserves.

Two files whose ids normalise to the same id are one student's duplicates: grading reports them and
grades the newer (never one student's feedback or state written over another's).
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata

from .protocol import one_line

MAX_ID = 64
_SAFE = set("abcdefghijklmnopqrstuvwxyz0123456789._-")
_WINDOWS_RESERVED = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])", re.I)


def normalise_id(raw: str) -> str:
    """The safe, case-insensitive form of a student id (see the module docstring)."""
    text = _utf8(raw)
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    out = []
    for ch in folded:
        if ch in _SAFE:
            out.append(ch)
        elif ch.isalnum():
            base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
            out.append(base if base and set(base) <= _SAFE else f"u{ord(ch):04x}")
        else:
            out.append("_")
    sid = "".join(out).strip("._-")
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    if not sid:
        return f"id_{digest[:12]}"
    if len(sid) > MAX_ID:
        sid = f"{sid[:MAX_ID - 17].rstrip('._-')}_{digest[:16]}"
    head, dot, rest = sid.partition(".")
    if _WINDOWS_RESERVED.fullmatch(head):  # also with an extension: "nul.txt" is reserved too
        sid = f"{head}_{dot}{rest}"
    return sid


def display_name(name: str, limit: int = 120) -> str:
    """A file name as one printable line (bytes that are not UTF-8 shown as U+FFFD), shortened."""
    return one_line(_utf8(name), limit)


def _utf8(name: str) -> str:
    """``name`` with the undecodable bytes of an OS file name (surrogate escapes) as U+FFFD."""
    try:
        return os.fsencode(name).decode("utf-8", "replace")
    except (UnicodeError, ValueError):
        return name.encode("utf-8", "replace").decode("utf-8")
