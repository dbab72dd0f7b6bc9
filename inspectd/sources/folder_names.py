"""Which names a folder source takes, and the part id a name carries.

`DEFAULT_INCLUDE` is the one definition of the image names taken when the configuration
names none; `ALWAYS_IGNORED` are names no configuration can make the source take (a
writer's unfinished files, editors' leftovers, the reasons written beside quarantined
files). Matching is case-insensitive.

    >>> matches_any("SCAN.PNG", DEFAULT_INCLUDE), matches_any("scan.png.part", ALWAYS_IGNORED)
    (True, True)
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from pathlib import Path

DEFAULT_INCLUDE: tuple[str, ...] = ("*.png", "*.tif", "*.tiff", "*.jpg", "*.jpeg", "*.bmp")
# Names a writer uses while a file is incomplete, or editors' leftovers: never taken.
ALWAYS_IGNORED: tuple[str, ...] = (
    ".*",
    "*.part",
    "*.partial",
    "*.tmp",
    "*.temp",
    "*~",
    "*.swp",
    "*.crdownload",
    "*.reason.txt",
)


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """True when `name` matches one of the glob `patterns`, whatever the case."""
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in patterns)


def part_id_from_name(name: str, pattern: re.Pattern[str] | None) -> str | None:
    """Part / sample id from a file name: the `part` group of `pattern`, or the stem.

    >>> part_id_from_name("P-17_field3.png", re.compile(r"^(?P<part>[A-Z]-\\d+)_"))
    'P-17'
    >>> part_id_from_name("scan.png", re.compile(r"^(?P<part>[A-Z]-\\d+)_")) is None
    True
    >>> part_id_from_name("scan.png", None)
    'scan'
    """
    if pattern is None:
        stem = Path(name).stem
        return stem or None
    match = pattern.search(name)
    if match is None:
        return None
    return match.group("part") or None
