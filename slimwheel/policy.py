"""Sections a library's slim must leave alone, and why.

Built-in entries (``data/policy.json``) name libraries whose regions in some
section cannot be changed without breaking them, each with the reason that
was proven on a GPU; ``--leave-section`` adds more for one run.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Sequence
from functools import cache
from importlib import resources


@cache
def builtin_policy() -> tuple[tuple[str, str, str], ...]:
    """(library file-name pattern, section, reason) from data/policy.json."""
    raw = json.loads(resources.files("slimwheel").joinpath("data/policy.json").read_text())
    return tuple((e["library"], e["section"], e["reason"]) for e in raw["leave"])


def sections_to_leave(library: str | os.PathLike[str], extra: Sequence[str] = ()) -> dict[str, str]:
    """Section name -> reason, for the library at this path."""
    name = os.path.basename(os.fspath(library))
    out = {
        section: reason
        for pattern, section, reason in builtin_policy()
        if fnmatch.fnmatchcase(name, pattern)
    }
    for section in extra:
        out[section] = "left alone on request (--leave-section)"
    return out
