"""Slimming one library through the store: the one path every packaging command takes.

``build`` (wheels and conda packages), ``slim-env`` and ``install`` slim a
library with :func:`slim_through_store`. Given the library's SHA-256 (a
validated RECORD or ``paths.json`` already says it), a library the store
knows to need nothing (no device code; with ``--strip``, nothing to strip
either), or whose slim output the store already holds for this policy, is
settled without reading it; only a miss asks ``source`` for the file on
disk, scans it and slims it. "Rewritten" libraries are those with device
code, and with ``--strip`` every library with sections to strip.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .elf import ElfFile, map_file
from .errors import SlimwheelError
from .fatbin import scan
from .layout import strippable_sections
from .policy import LibraryPolicy, SlimPolicy
from .serves import plan_serves, to_json
from .slim import slim_library
from .store import Entry, Store


@dataclass(frozen=True, slots=True)
class LibraryOutcome:
    member: str
    sha256_before: str
    bytes_before: int
    rewritten: bool
    sha256_after: str = ""
    bytes_after: int = 0
    elements_before: int = 0
    elements_after: int = 0
    store_key: str = ""
    store_path: str = ""
    built: bool = False
    note: str = ""  # a warning for the user
    # (capabilities where no region fails that ran in the original, capabilities
    # some region runs on), as "9.0" strings (serves.plan_serves); None: an entry
    # made before slimwheel recorded it
    serves: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    @property
    def changed(self) -> bool:
        return self.rewritten and self.sha256_after != self.sha256_before


def on_disk(path: str) -> Callable[[], AbstractContextManager[str]]:
    """A ``source`` for a library that is already a file."""
    return lambda: nullcontext(path)


def _work_in(path: str, where: str, *, strip: bool) -> tuple[bool, bool]:
    """(has device code, has sections --strip removes) of the library at ``path``."""
    try:
        with map_file(path) as buf:
            elf = ElfFile(buf, where)
            return bool(scan(elf).regions), strip and bool(strippable_sections(elf))
    except SlimwheelError as exc:
        if exc.path == path:
            exc.path = where
        raise exc.with_path(where) from None


def slim_through_store(
    store: Store,
    policy: SlimPolicy,
    *,
    member: str,
    where: str,
    sha256: str,
    size: int,
    source: Callable[[], AbstractContextManager[str]],
) -> LibraryOutcome:
    """The slim form of one library (``member`` of a package or environment,
    ``where`` in messages, content ``sha256``), from the store or made now.

    ``source()`` gives a path holding the library; it is called only when the
    store cannot answer without the bytes.
    """
    host = policy.host_for(sha256) is not None  # --cpu, and the profile ran these bytes
    nothing = (
        not host
        and store.knows("no-device-code", sha256)
        and (not policy.strip or store.knows("nothing-to-strip", sha256))
    )
    if nothing:
        return LibraryOutcome(member, sha256, size, rewritten=False)
    lib = policy.for_library(posixpath.basename(member), sha256)
    key = lib.store_key(sha256)
    entry = store.lookup(key)
    built = False
    if entry is None:
        with source() as path:
            code, strippable = _work_in(path, where, strip=policy.strip)
            if not code:
                store.record("no-device-code", sha256)
            if policy.strip and not strippable:
                store.record("nothing-to-strip", sha256)
            if not (code or strippable or host):
                return LibraryOutcome(member, sha256, size, rewritten=False)
            entry, built = store.get_or_build(key, _builder(path, where, lib))
    return _outcome(member, sha256, size, entry, built, lib.note)


def _builder(path: str, where: str, lib: LibraryPolicy) -> Callable[[Path], dict[str, Any]]:
    def build(dest: Path) -> dict[str, Any]:
        r = slim_library(path, dest, lib, name=where)
        ok, covered = plan_serves(r.plan)
        return {
            "elements_before": r.plan.kept_elements + r.plan.removed_elements,
            "elements_after": r.plan.kept_elements,
            "serves": {"ok": to_json(ok), "covered": to_json(covered)},
        }

    return build


def _outcome(
    member: str, sha256: str, size: int, entry: Entry, built: bool, note: str
) -> LibraryOutcome:
    summary = entry.meta.get("summary", {})
    return LibraryOutcome(
        member,
        sha256,
        size,
        rewritten=True,
        sha256_after=entry.sha256,
        bytes_after=entry.size,
        elements_before=int(summary.get("elements_before", 0)),
        elements_after=int(summary.get("elements_after", 0)),
        store_key=entry.key,
        store_path=str(entry.path),
        built=built,
        note=note,
        serves=_serves(summary.get("serves")),
    )


def _serves(doc: object) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    if not isinstance(doc, dict):
        return None
    ok, covered = doc.get("ok"), doc.get("covered")
    if not isinstance(ok, list) or not isinstance(covered, list):
        return None
    return tuple(map(str, ok)), tuple(map(str, covered))
