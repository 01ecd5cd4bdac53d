"""Where does a path argument point? Pure string normalisation for the ``within`` constraint and the guards.

A tool call names a path as text; the file it reaches is decided later, on the upstream's host, which Signoff
cannot see. So this module never touches a filesystem: it reads the text the way the hosts that could receive
it might, and answers "inside this directory", "outside it" or "cannot tell" (``None``).

What is normalised (docs/policy.md, "How paths are normalised"):

- percent-encoding, decoded again and again until stable (``%252e%252e`` → ``%2e%2e`` → ``..``); an encoded
  NUL, invalid UTF-8 (overlong ``%c0%ae`` for ``.``) or more than 16 levels make the path unreadable;
- a raw NUL byte makes the path unreadable (C libraries would cut the path there);
- ``.``, ``..``, duplicate and trailing slashes; ``/..`` stays at ``/`` as POSIX does;
- ``\\`` is a separator on Windows and an ordinary character on POSIX: both readings are considered when the
  host's kind is unknown, and the answer must be the same under both;
- drive letters (``C:\\x`` is ``c:/x``; components compare case-insensitively under a drive), UNC and
  root-relative paths (``\\\\server\\share``, ``\\x``) and drive-relative ones (``C:x``) cannot be placed;
  Windows trims trailing dots and spaces from components, so they are trimmed, and components made only of
  dots and spaces (``...``, ``.. ``) cannot be placed;
- compatibility characters: the NFKC form (fullwidth dots and slash, U+FF0E U+FF0F) is read as well, and
  must agree;
- ``~`` and ``~user`` depend on whose home it is: such a path can only be placed under a directory given with
  the same ``~`` prefix, and a ``..`` that climbs out of the home cannot be placed at all;
- a relative path cannot be placed: its base is the upstream's working directory.

Symlinks: a link inside the directory that points outside it cannot be seen from here, and resolving links
on Signoff's own host would describe the wrong machine. The check is still the right one: it guarantees that
the *name* stays inside the directory, which is what a rule author can reason about and what the upstream's
own sandbox (if any) receives; links inside an allowed directory are the upstream owner's to control.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

MAX_DECODE_ROUNDS: Final = 16

_DRIVE = re.compile(r"[A-Za-z]:")


class PathProblem(ValueError):
    """A path that cannot be read, or a directory that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Location:
    """A normalised absolute location: a root (``/``, ``c:``, ``~``, ``~alice``) and its components."""

    root: str
    parts: tuple[str, ...]
    windows: bool = False

    def __str__(self) -> str:
        if self.root.startswith("~"):
            return "/".join((self.root, *self.parts))
        sep = "/" if self.root == "/" else self.root + "/"
        return sep + "/".join(self.parts)


def percent_decode(text: str) -> str:
    """Decode percent-encoding until the text no longer changes.

    Raises ``PathProblem`` for a NUL byte (raw or encoded), invalid UTF-8 after decoding (this includes the
    overlong encodings ``%c0%ae`` and ``%c0%af`` that old servers read as ``.`` and ``/``), or more than
    ``MAX_DECODE_ROUNDS`` levels of encoding.
    """
    for _ in range(MAX_DECODE_ROUNDS + 1):
        if "\x00" in text:
            raise PathProblem("contains a NUL byte (raw or percent-encoded)")
        if "%" not in text:
            return text
        try:
            decoded = unquote(text, errors="strict")
        except UnicodeDecodeError:
            raise PathProblem(
                "has percent-encoding that is not valid UTF-8 (such as an overlong '.' or '/')"
            ) from None
        if decoded == text:
            return text
        text = decoded
    raise PathProblem(f"is percent-encoded more than {MAX_DECODE_ROUNDS} levels deep")


def parse_directory(value: str) -> Location:
    """Read a rule's directory: absolute POSIX (``/srv/x``), a drive (``C:\\x``, ``c:/x``) or ``~``-relative.

    Raises ``PathProblem`` when it is none of these.
    """
    if not value:
        raise PathProblem("must be a non-empty directory")
    text = percent_decode(value)
    windows = bool(_DRIVE.match(text))
    if not windows and "\\" in text:
        raise PathProblem("uses '\\' but has no drive letter; write POSIX directories with '/'")
    if not windows and not text.startswith(("/", "~")):
        raise PathProblem("must be absolute: '/…', a drive such as 'C:\\…', or '~/…'")
    location = _locate(text, backslash=windows, windows=windows)
    if isinstance(location, str):
        raise PathProblem(location)
    return location


def within(path: str, directory: Location) -> tuple[bool | None, str]:
    """Is ``path`` inside ``directory`` (or the directory itself)? ``None`` when it cannot be told.

    The second item says why the answer is not ``True``, in words for a reviewer (empty when it is).
    Every reading of the path (percent-decoded, NFKC, ``\\`` as separator or not) must agree: when one
    reading is inside and another outside, the answer is ``None``.
    """
    try:
        decoded = percent_decode(path)
    except PathProblem as problem:
        return None, str(problem)
    readings = [decoded]
    compat = unicodedata.normalize("NFKC", decoded)
    if compat != decoded:
        try:
            readings.append(percent_decode(compat))
        except PathProblem as problem:
            return None, str(problem)
    answers: list[tuple[bool | None, str]] = []
    for text in readings:
        modes = (True,) if directory.windows else ((True, False) if "\\" in text else (False,))
        for backslash in modes:
            location = _locate(text, backslash=backslash, windows=directory.windows)
            if isinstance(location, str):
                answers.append((None, location))
            else:
                answers.append(_relate(location, directory))
    verdicts = {answer for answer, _ in answers}
    if verdicts == {True}:
        return True, ""
    if verdicts == {False}:
        return False, answers[0][1]
    unknown = next((why for answer, why in answers if answer is None), "")
    return (
        None,
        unknown or "reads as inside or outside depending on the host ('\\' or compatibility characters)",
    )


def _locate(text: str, *, backslash: bool, windows: bool) -> Location | str:
    """The absolute location ``text`` names, or a string saying why it has none."""
    if backslash:
        text = text.replace("\\", "/")
    if _DRIVE.match(text):
        root, rest = text[:2].lower(), text[2:]
        if not rest.startswith("/"):
            return "is relative to the current directory of a drive"
    elif text.startswith("~"):
        root, _, rest = text.partition("/")
    elif text.startswith("/"):
        if windows and text.startswith("//"):
            return "is a UNC or device path (\\\\server\\share, \\\\?\\…)"
        root, rest = "/", text
    else:
        return "is a relative path, whose base is the upstream's working directory"
    parts: list[str] = []
    for part in rest.split("/"):
        if windows:
            if part.strip(". ") == "" and part not in ("", ".", ".."):
                return f"has a component made of dots and spaces ({part!r}) that Windows reads unpredictably"
            if part not in (".", ".."):
                part = part.rstrip(". ")
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            elif root.startswith("~"):
                return "climbs out of a home directory with '..'"
            continue
        parts.append(part)
    return Location(root=root, parts=tuple(parts), windows=windows or (len(root) == 2 and root[1] == ":"))


def _relate(location: Location, directory: Location) -> tuple[bool | None, str]:
    if location.root != directory.root:
        drives = [r for r in (location.root, directory.root) if _DRIVE.fullmatch(r)]
        if len(drives) == 2:
            return False, f"is on drive {location.root}, not {directory.root}"
        return None, f"starts at {location.root!r}, which cannot be placed relative to {directory}"
    mine, theirs = location.parts, directory.parts
    if directory.windows:
        mine = tuple(p.casefold() for p in mine)
        theirs = tuple(p.casefold() for p in theirs)
    if mine[: len(theirs)] == theirs:
        return True, ""
    return False, f"resolves to {location}, outside {directory}"
