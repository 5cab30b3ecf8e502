"""The slimming policy: every option that decides a slim output, in one object.

A command builds one :class:`SlimPolicy` from its flags (``cli/options.py``,
``policy_from``) and hands it down; nothing below the CLI takes loose
slimming options. Per library, :meth:`SlimPolicy.for_library` gives a
:class:`LibraryPolicy`: the exact inputs of the slimmer (targets, PTX and
LTO-IR policy, the sections left alone, the profile's record of that
library, the file layout options), its store key (every input that changes
the output bytes) and the version label. A new option is added here once.

Sections left alone come from two places: built-in entries
(``data/policy.json``) naming libraries whose regions in some section cannot
be changed without breaking them, each with the reason proven on a GPU, and
``--leave-section`` for one run.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from .arch import Target
from .errors import UsageError
from .hostcode import MAX_HOST_HOLES
from .hostuse import HostUse
from .layout import DEFAULT_HOST_MIN_HOLE, DEFAULT_MIN_HOLE
from .profile import LibraryUsage, Profile

#: Bump when the slim output for the same inputs changes.
FORMAT_VERSION = 2  # 2: regions with nothing left are zeroed whole

USER_LEAVE_REASON = "left alone on request (--leave-section)"


@cache
def builtin_policy() -> tuple[tuple[str, str, str], ...]:
    """(library file-name pattern, section, reason) from data/policy.json."""
    raw = json.loads(resources.files("slimwheel").joinpath("data/policy.json").read_text())
    return tuple((e["library"], e["section"], e["reason"]) for e in raw["leave"])


def sections_to_leave(name: str, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Section name -> reason, for the library of this file name."""
    out = {
        section: reason
        for pattern, section, reason in builtin_policy()
        if fnmatch.fnmatchcase(name, pattern)
    }
    for section in extra:
        out[section] = USER_LEAVE_REASON
    return out


def _digest(doc: object) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def host_rules(min_hole: int = DEFAULT_HOST_MIN_HOLE) -> list[int]:
    """What ``--cpu`` takes out of a file: runs of removed host code from ``min_hole``,
    the :data:`~.hostcode.MAX_HOST_HOLES` largest per library (named in store keys,
    labels and provenance, as outputs of other rules differ)."""
    return [min_hole, MAX_HOST_HOLES]


@dataclass(frozen=True, slots=True)
class LibraryPolicy:
    """What the slimmer is told for one library; its store key follows from it."""

    targets: tuple[Target, ...]
    keep_ptx: bool = False
    drop_lto: bool = False
    leave: tuple[tuple[str, str], ...] = ()  # (section, why), sorted
    usage: LibraryUsage | None = None
    compact: bool = True
    min_hole: int = DEFAULT_MIN_HOLE  # zero runs of device code
    host_min_hole: int = DEFAULT_HOST_MIN_HOLE  # runs of removed host code (--cpu)
    strip: bool = False  # also remove DWARF and the static symbol table (--strip)
    cpu: bool = False  # --cpu: host code goes, and the library gets a note (also for device code)
    host: HostUse | None = None  # --cpu: the pages the profile ran (matched by hash only)
    profile_digest: str = ""  # the profile's digest, named in the library's note
    note: str = ""  # a warning for the user (the profile was recorded on another build)

    @property
    def leave_map(self) -> Mapping[str, str]:
        return dict(self.leave)

    def store_key(self, library_sha256: str) -> str:
        """The content address of the slim output of this library under this policy.

        Options at their defaults are absent, so keys of earlier builds stay valid.
        """
        options: dict[str, Any] = {}
        if self.drop_lto:
            options["drop_lto"] = True
        if self.leave:
            options["leave"] = sorted(s for s, _why in self.leave)
        if not self.compact:
            options["compact"] = False
        elif self.min_hole != DEFAULT_MIN_HOLE:
            options["min_hole"] = self.min_hole
        if self.strip:
            options["strip"] = True
        if self.cpu:
            options["cpu"] = self.host.digest() if self.host is not None else "no host record"
            if self.host is not None:
                options["host_holes"] = host_rules(self.host_min_hole)
        return _digest(
            {
                "library": library_sha256,
                "targets": sorted(t.name for t in self.targets),
                "keep_ptx": self.keep_ptx,
                "profile": self.usage.digest() if self.usage else None,
                "format": FORMAT_VERSION,
                "options": options,
            }
        )


@dataclass(frozen=True, slots=True)
class SlimPolicy:
    """Every slimming option of one run, from the command line to the core."""

    targets: tuple[Target, ...]
    keep_ptx: bool = False
    drop_lto: bool = False
    leave_sections: tuple[str, ...] = ()  # --leave-section, sorted and unique
    profile: Profile | None = None
    profile_by_name: bool = False  # --profile-match name
    compact: bool = True
    min_hole: int | None = None  # --min-hole, for both; None: the defaults of each
    strip: bool = False  # --strip
    cpu: bool = False  # --cpu: remove host code the profile never ran
    #: The digest of the whole profile (derived once, at construction).
    profile_digest: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "leave_sections", tuple(sorted(set(self.leave_sections))))
        object.__setattr__(self, "targets", tuple(sorted(set(self.targets))))
        if self.profile is not None:
            object.__setattr__(self, "profile_digest", self.profile.digest())
        if self.cpu and (self.profile is None or not self.profile.host_recorded):
            raise UsageError(
                "--cpu needs a profile with host code use (record it with slimwheel profile, "
                "without --no-cpu)"
            )

    def host_for(self, sha256: str) -> HostUse | None:
        """With --cpu, the executed pages of exactly these bytes (None: host code stays)."""
        if not self.cpu or self.profile is None:
            return None
        return self.profile.host_for(sha256)

    @property
    def needs_hash(self) -> bool:
        """Whether :meth:`for_library` needs the library's SHA-256 (a profile matches by it)."""
        return self.profile is not None

    def for_library(self, name: str, sha256: str | None = None) -> LibraryPolicy:
        """The slimmer's inputs for the library file ``name`` with content ``sha256``."""
        usage, note = None, ""
        host = None
        if self.profile is not None:
            if sha256 is None:
                raise ValueError("a profile needs the library's SHA-256")
            usage = self.profile.for_library(sha256, name, by_name=self.profile_by_name)
            other = self.profile.same_name(name)
            if usage is None and other is not None:
                note = (
                    f"{name}: the profile was recorded on another build of it (SHA-256 "
                    "differs); arch slimming only (--profile-match name applies it anyway)"
                )
            host = self.host_for(sha256)
            if self.cpu and host is None and other is not None and other.host is not None:
                note = (note + "; " if note else f"{name}: ") + (
                    "the profile's host code record is of other bytes (SHA-256 differs): "
                    "host code kept (host records match by hash only)"
                )
        return LibraryPolicy(
            targets=self.targets,
            keep_ptx=self.keep_ptx,
            drop_lto=self.drop_lto,
            leave=tuple(sorted(sections_to_leave(name, self.leave_sections).items())),
            usage=usage,
            compact=self.compact,
            min_hole=self.zero_min_hole,
            host_min_hole=self.host_min_hole,
            strip=self.strip,
            cpu=self.cpu,
            host=host,
            profile_digest=self.profile_digest or "",
            note=note,
        )

    @property
    def label(self) -> str:
        """The default version label: ``sm90``, ``sm80.sm90.ptx``, ``sm90.nolto.p1a2b3c4d``.

        Targets, then ``ptx``, ``nolto`` and ``strip``, then ``p`` + the profile's digest, then
        ``x`` + a digest of the other non-default options (sections left alone on
        request, file layout), so two different builds never share a label.
        """
        parts = [f"sm{t.major}{t.minor}" for t in self.targets]
        if self.keep_ptx:
            parts.append("ptx")
        if self.drop_lto:
            parts.append("nolto")
        if self.strip:
            parts.append("strip")
        if self.cpu:
            parts.append("cpu")
        if self.profile_digest:
            parts.append(f"p{self.profile_digest[:8]}")
        extra = self.layout_options()
        if self.host_holes():
            extra["host_holes"] = self.host_holes()
        if self.leave_sections:
            extra["leave"] = list(self.leave_sections)
        if extra:
            parts.append(f"x{_digest(extra)[:8]}")
        return ".".join(parts)

    @property
    def zero_min_hole(self) -> int:
        """The smallest zero run of device code taken out of the file."""
        return DEFAULT_MIN_HOLE if self.min_hole is None else self.min_hole

    @property
    def host_min_hole(self) -> int:
        """The smallest run of removed host code taken out of the file (``--cpu``)."""
        return DEFAULT_HOST_MIN_HOLE if self.min_hole is None else self.min_hole

    def layout_options(self) -> dict[str, Any]:
        """The non-default file layout options."""
        if not self.compact:
            return {"compact": False}
        if self.zero_min_hole != DEFAULT_MIN_HOLE:
            return {"min_hole": self.zero_min_hole}
        return {}

    def host_holes(self) -> list[int] | None:
        """With ``--cpu``: :func:`host_rules` of this run."""
        return host_rules(self.host_min_hole) if self.cpu else None

    def provenance(self) -> dict[str, Any]:
        """What a provenance file records of the policy."""
        doc: dict[str, Any] = {
            "targets": [t.name for t in self.targets],
            "ptx_policy": "keep-newest" if self.keep_ptx else "only-when-needed",
            "lto_policy": "drop" if self.drop_lto else "keep",
            "profile_digest": self.profile_digest,
        }
        if self.profile is not None:
            doc["profile_match"] = "name" if self.profile_by_name else "hash"
        if self.leave_sections:
            doc["leave_sections"] = list(self.leave_sections)
        if self.layout_options():
            doc["layout"] = self.layout_options()
        if self.strip:
            doc["strip"] = True
        if self.cpu:
            doc["cpu"] = True
            doc["host_holes"] = self.host_holes()
        return doc
