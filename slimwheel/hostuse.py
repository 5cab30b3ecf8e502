"""Host code use: which pages of a library's file a workload executed.

The host recorder (``shim/slimwheel_host.c``, built twice: an rtld-audit
module for ``LD_AUDIT`` and a library for ``LD_PRELOAD``) writes, per
process, ``<pid>-<tag>.hostpages``: JSON lines naming each file that had an
executable mapping, by path, device and inode, with the runs of pages that
were present in its executable mappings (numbered by file offset / page
size). :func:`collect_host` joins every process's snapshots into one
:class:`HostUse` per file (a union: a page executed once is executed).

A page counts as executed when it was present in an executable mapping: the
audit module drops the file's cached pages and turns readahead off before
any of the library's code runs, so only pages that were touched are present.
Pages another process had mapped at the time may be mapped around a fault
too: the record may hold more than what ran, never less.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .native import compile_c, find_cc, helper_key, source

#: Version of the host part of a profile.
HOST_VERSION = 1

#: Caps on what a record may claim (input is untrusted).
MAX_RUNS = 4_000_000
MAX_PAGE = 1 << 40
PAGE_SIZES = (4096, 16384, 65536)


class HostRecordError(InputError):
    """A host record or the host part of a profile is malformed."""


@dataclass(frozen=True, slots=True)
class HostUse:
    """Executed pages of one file: sorted, disjoint, non-touching runs (first page, count)."""

    page_size: int
    runs: tuple[tuple[int, int], ...] = ()

    @property
    def pages(self) -> int:
        return sum(n for _first, n in self.runs)

    def touches(self, start: int, end: int) -> bool:
        """Whether any executed page overlaps the file range [start, end)."""
        if end <= start:
            return False
        lo, hi = start // self.page_size, (end - 1) // self.page_size
        i = bisect.bisect_right(self.runs, (lo, 1 << 62)) - 1
        if i >= 0 and self.runs[i][0] + self.runs[i][1] > lo:
            return True
        return i + 1 < len(self.runs) and self.runs[i + 1][0] <= hi

    def union(self, other: HostUse) -> HostUse:
        if other.page_size != self.page_size:
            raise HostRecordError(
                f"host records with page sizes {self.page_size} and {other.page_size} "
                "cannot be merged"
            )
        return HostUse(self.page_size, normalize([*self.runs, *other.runs]))

    def digest(self) -> str:
        doc = {"page_size": self.page_size, "runs": [list(r) for r in self.runs]}
        return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "version": HOST_VERSION,
            "page_size": self.page_size,
            "pages": self.pages,
            "executed": [list(r) for r in self.runs],
        }

    @staticmethod
    def from_json(doc: Any, where: str) -> HostUse:
        if not isinstance(doc, dict) or doc.get("version") != HOST_VERSION:
            raise HostRecordError("host part of version other than 1", path=where)
        page = doc.get("page_size")
        if page not in PAGE_SIZES:
            raise HostRecordError(f"host part: page size {page!r} is not supported", path=where)
        return HostUse(int(page), checked_runs(doc.get("executed"), where))


def checked_runs(raw: Any, where: str) -> tuple[tuple[int, int], ...]:
    """Runs from untrusted JSON: pairs of non-negative integers, capped, normalized."""
    if not isinstance(raw, list) or len(raw) > MAX_RUNS:
        raise HostRecordError("host runs: not a list, or too many", path=where)
    out = []
    for r in raw:
        if (
            not isinstance(r, list)
            or len(r) != 2
            or not all(type(x) is int and 0 <= x < MAX_PAGE for x in r)
            or r[1] == 0
        ):
            raise HostRecordError(f"host runs: bad run {str(r)[:40]}", path=where)
        out.append((r[0], r[1]))
    return normalize(out)


def normalize(runs: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for first, n in sorted(runs):
        if out and first <= out[-1][0] + out[-1][1]:
            a, m = out[-1]
            out[-1] = (a, max(a + m, first + n) - a)
        else:
            out.append((first, n))
    return tuple(out)


# -- reading the recorder's files -----------------------------------------------


@dataclass(frozen=True, slots=True)
class HostRecord:
    """One file's executed pages, as the processes of a run saw them."""

    path: str
    dev: str
    ino: int
    use: HostUse
    processes: int


def _path(raw: str) -> str:
    """The recorder writes a path's bytes; non-ASCII bytes come as \\u00XX."""
    return os.fsdecode(raw.encode("latin-1"))


def host_files(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".hostpages"))


def collect_host(directory: str) -> Iterator[HostRecord]:
    """Every file's executed pages, from every process's snapshots in ``directory``.

    A file replaced since it was recorded (its device and inode are not the
    recorded ones) is left out: the pages would describe other bytes.
    """
    runs: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    paths: dict[tuple[str, int], str] = {}
    pages: dict[tuple[str, int], int] = {}
    pids: dict[tuple[str, int], set[str]] = defaultdict(set)
    for name in host_files(directory):
        pid = name.split("-", 1)[0]
        where = os.path.join(directory, name)
        with open(where, encoding="ascii", errors="replace") as f:
            for line in f:
                try:
                    r = json.loads(line)
                    if not isinstance(r, dict) or r.get("t") != "host":
                        continue
                    key = (str(r["dev"]), int(r["ino"]))
                    page = int(r["page"])
                    got = checked_runs(r["runs"], where)
                    path = _path(str(r["path"]))
                except (ValueError, KeyError, TypeError, UnicodeError, HostRecordError):
                    continue  # a line cut by a kill: the others count
                if pages.setdefault(key, page) != page:
                    continue
                paths[key] = path
                runs[key].extend(got)
                pids[key].add(pid)
    for key in sorted(runs):
        path = paths[key]
        try:
            st = os.stat(path)
        except OSError:
            continue
        if f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}" != key[0] or st.st_ino != key[1]:
            continue
        yield HostRecord(
            path, key[0], key[1], HostUse(pages[key], normalize(runs[key])), len(pids[key])
        )


def host_processes(directory: str) -> set[str]:
    return {n.split("-", 1)[0] for n in host_files(directory)}


def host_exact(directory: str) -> bool:
    """Whether every snapshot was taken with fault-around off (page-exact records).

    Each snapshot starts with ``{"t":"host-mode","exact":...}``; a snapshot
    without it (cut short) counts as not exact.
    """
    for name in host_files(directory):
        with open(os.path.join(directory, name), encoding="ascii", errors="replace") as f:
            first = f.readline(256)
        try:
            mode = json.loads(first)
        except ValueError:
            return False
        if not isinstance(mode, dict) or mode.get("exact") is not True:
            return False
    return True


# -- building the recorder --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostRecorder:
    audit: Path  # for LD_AUDIT
    preload: Path  # for LD_PRELOAD

    def environment(self, base: dict[str, str], out_dir: str) -> dict[str, str]:
        env = dict(base, SLIMWHEEL_PROFILE_DIR=out_dir)
        env["LD_AUDIT"] = _prepend(str(self.audit), base.get("LD_AUDIT"))
        env["LD_PRELOAD"] = _prepend(str(self.preload), base.get("LD_PRELOAD"))
        return env


def _prepend(item: str, existing: str | None) -> str:
    return f"{item}:{existing}" if existing else item


def build_host_recorder(root: Path) -> HostRecorder:
    """Both recorder libraries, compiled once per source and compiler under ``root``."""
    cc = find_cc()
    src = source("slimwheel_host.c")
    d = root / helper_key(src, cc)
    audit = compile_c(cc, src, d / "libslimwheel_audit.so", ["-DSLIMWHEEL_AUDIT"], "host recorder")
    preload = compile_c(cc, src, d / "libslimwheel_host.so", ["-pthread", "-ldl"], "host recorder")
    return HostRecorder(audit, preload)
