"""A content-addressed store of slimmed libraries.

An entry is keyed by what determines the slim output
(:meth:`policy.LibraryPolicy.store_key`: the SHA-256 of the original library
and every slimming option that changes the output bytes). A second build of
the same thing slims nothing. The store owns everything under its root;
nothing else writes there but through this class.

Layout under the root (``--store``, ``SLIMWHEEL_STORE``, or the user cache
directory from platformdirs)::

    entries/<k[:2]>/<key>/lib          the slim library
    entries/<k[:2]>/<key>/<derived>    forms derived from it (the deflated stream for wheels)
    entries/<k[:2]>/<key>/meta.json    sha256, size, stat identity, summary, derived forms
    originals/<s[:2]>/<sha256>         originals kept for restoring environments
    libraries/v<N>/<s[:2]>/<sha256>    libraries known to carry no device code
    validated/<s[:2]>/<sha256>         input archives whose every member hash was checked
    recorder/<key>/                    compiled usage recorders
    locks/<key>.lock                   one lock per key (fcntl)
    tmp/                               entries being built

An entry is built in ``tmp/``, fsynced and renamed into place under its
key's lock, so concurrent builders never see half an entry and never build
one twice. Its library is hashed once, when written; a lookup trusts it
while the file's size, mtime and inode are those recorded, re-hashes it when
they are not, and discards and rebuilds an entry whose content changed.
``verify`` re-hashes everything.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from .errors import SlimwheelError
from .files import open_regular
from .write import atomic_output, clean_debris, locked_tempdir

#: Bump when what ``libraries/`` records could change (a scanner that finds more).
SCAN_VERSION = 1


class StoreError(SlimwheelError):
    """The store cannot be used."""


def default_root() -> Path:
    env = os.environ.get("SLIMWHEEL_STORE")
    if env:
        return Path(env)
    return Path(platformdirs.user_cache_dir("slimwheel")) / "store"


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open_regular(path) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _identity(path: Path) -> dict[str, int]:
    """What a lookup compares to trust a file without reading it."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _write_json(path: Path, doc: object) -> None:
    """Write a small JSON file atomically (temp file beside it, fsync, rename)."""
    with atomic_output(path, mode=0o644) as f:
        f.write(json.dumps(doc, indent=1, sort_keys=True).encode())


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    path: Path  # the slim library
    meta: dict[str, Any]

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def sha256(self) -> str:
        return str(self.meta["sha256"])

    @property
    def disk_bytes(self) -> int:
        """The library and its derived forms."""
        derived = self.meta.get("derived", {})
        return self.size + sum(int(d.get("size", 0)) for d in derived.values())


#: A derived form's maker: (library, destination) -> what to record of it.
Derive = Callable[[Path, Path], dict[str, Any]]


class Store:
    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        try:
            for sub in ("entries", "locks", "tmp"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the store ({exc.strerror})", path=str(self.root)
            ) from None

    def _dir(self, key: str) -> Path:
        return self.root / "entries" / key[:2] / key

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        with open(self.root / "locks" / f"{key}.lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def tempdir(self, prefix: str = "work-") -> Iterator[Path]:
        """A private directory under ``tmp/`` (same file system as the entries),
        held while in use: :meth:`clean` removes it only once its process is gone."""
        with locked_tempdir(self.root / "tmp", prefix) as tmp:
            yield tmp

    def clean(self) -> int:
        """Remove what dead runs left: temporary directories and files under ``tmp/``,
        ``originals/`` and ``entries/``. Returns how many were removed."""
        n = clean_debris(self.root / "tmp")
        for kind in ("originals", "entries"):
            for d in _subdirs(self.root / kind):
                n += clean_debris(d)
                if kind == "entries":
                    for e in _subdirs(d):
                        n += clean_debris(e)
        return n

    def _read_meta(self, key: str) -> dict[str, Any] | None:
        try:
            meta = json.loads((self._dir(key) / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("key") != key:
            return None
        sha, size = meta.get("sha256"), meta.get("size")
        if not isinstance(sha, str) or len(sha) != 64 or not isinstance(size, int) or size < 0:
            return None  # not an entry this code wrote: rebuilt
        return meta

    def _intact(self, path: Path, recorded: dict[str, Any]) -> bool | None:
        """True: the file is as recorded (by identity, or by hash when that changed);
        None: intact, but its identity changed (the caller re-records it); False: not."""
        try:
            if recorded.get("stat") == _identity(path):
                return True
            if path.stat().st_size != recorded["size"]:
                return False
            return None if file_sha256(path) == recorded["sha256"] else False
        except (OSError, KeyError, TypeError):
            return False

    def lookup(self, key: str, *, check: bool = True) -> Entry | None:
        meta = self._read_meta(key)
        if meta is None:
            return None
        d = self._dir(key)
        lib = d / "lib"
        if check:
            ok = self._intact(lib, meta)
            if ok is False:
                return None
            if ok is None:  # copied or touched, same bytes: trust the new identity
                with contextlib.suppress(OSError):
                    meta["stat"] = _identity(lib)
                    _write_json(d / "meta.json", meta)
            with contextlib.suppress(OSError):
                os.utime(d / "meta.json")  # last use, for prune
        return Entry(key, lib, meta)

    def get_or_build(self, key: str, build: Callable[[Path], dict[str, Any]]) -> tuple[Entry, bool]:
        """The entry for ``key``; ``build(path)`` writes the library there when missing.

        Returns the entry and whether it was built now.
        """
        found = self.lookup(key)
        if found is not None:
            return found, False
        with self._lock(key):
            found = self.lookup(key)
            if found is not None:
                return found, False
            d = self._dir(key)
            if d.exists():  # corrupt or half-removed: discard
                shutil.rmtree(d, ignore_errors=True)
            with self.tempdir(prefix=f"{key[:12]}-") as work:
                return self._build(key, d, work / "entry", build), True

    def _build(
        self, key: str, d: Path, tmp: Path, build: Callable[[Path], dict[str, Any]]
    ) -> Entry:
        """Build the entry in ``tmp`` (inside a held temporary directory), then rename it
        to ``d``: a killed build leaves only the temporary directory, for :meth:`clean`."""
        tmp.mkdir()
        summary = build(tmp / "lib")
        with open(tmp / "lib", "rb") as f:
            os.fsync(f.fileno())
        meta = {
            "key": key,
            "sha256": file_sha256(tmp / "lib"),
            "size": (tmp / "lib").stat().st_size,
            "stat": _identity(tmp / "lib"),  # a rename keeps inode and mtime
            "created": int(time.time()),
            "summary": summary,
            "derived": {},
        }
        _write_json(tmp / "meta.json", meta)
        d.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, d)
        return Entry(key, d / "lib", meta)

    def derived(self, entry: Entry, name: str, make: Derive) -> tuple[Path, dict[str, Any]]:
        """A form derived from an entry's library (e.g. its deflated stream), made
        once and kept beside it: ``make(lib, dest)`` writes it and returns what to
        record (with ``sha256`` when it hashed what it wrote). Trusted like the
        library (identity, else hash)."""
        d = self._dir(entry.key)
        path = d / name
        found = self._derived_intact(entry.key, name, path)
        if found is not None:
            return path, found
        with self._lock(entry.key):
            found = self._derived_intact(entry.key, name, path)
            if found is not None:
                return path, found
            meta = self._read_meta(entry.key)
            if meta is None:
                raise StoreError(f"entry {entry.key[:16]} vanished", path=str(self.root))
            with self.tempdir(prefix=f"{entry.key[:12]}-{name}-") as tmp:
                out = tmp / name
                info = make(entry.path, out)
                with open(out, "rb") as f:
                    os.fsync(f.fileno())
                info = {**info, "size": out.stat().st_size}
                if "sha256" not in info:  # the maker did not hash what it wrote
                    info["sha256"] = file_sha256(out)
                os.replace(out, path)
            info["stat"] = _identity(path)
            meta.setdefault("derived", {})[name] = info
            _write_json(d / "meta.json", meta)
            return path, info

    def _derived_intact(self, key: str, name: str, path: Path) -> dict[str, Any] | None:
        meta = self._read_meta(key)
        info = (meta or {}).get("derived", {}).get(name)
        if not isinstance(info, dict):
            return None
        ok = self._intact(path, info)
        if ok is False:
            return None
        return info

    # -- facts about inputs -------------------------------------------------------

    def _fact(self, kind: str, sha256: str) -> Path:
        return self.root / kind / sha256[:2] / sha256

    def knows(self, fact: str, sha256: str) -> bool:
        """Whether ``fact`` was recorded of the input with this content: a library
        ``"no-device-code"`` or with ``"nothing-to-strip"``, an archive ``"validated"``
        (every member hash checked)."""
        return self._fact(_FACTS[fact], sha256).is_file()

    def record(self, fact: str, sha256: str) -> None:
        self._record_fact(_FACTS[fact], sha256)

    def _record_fact(self, kind: str, sha256: str) -> None:
        """A fact is an empty file: its name says it, and creating one is atomic."""
        p = self._fact(kind, sha256)
        if p.is_file():
            return
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except OSError:
            pass  # a cache: a fact not recorded is only found again (or exists already)

    def recorder_dir(self, key: str) -> Path:
        """Where the usage recorder compiled for ``key`` lives."""
        return self.root / "recorder" / key

    # -- originals (for restoring environments) ---------------------------------

    def keep_original(self, path: Path, sha256: str) -> None:
        """Keep a copy of an original library, once per content, read-only."""
        dest = self.root / "originals" / sha256[:2] / sha256
        if dest.is_file() and dest.stat().st_size == path.stat().st_size:
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(dest, mode=0o444) as out, open(path, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)

    def original(self, sha256: str) -> Path | None:
        """The kept original with this content, if it is intact."""
        p = self.root / "originals" / sha256[:2] / sha256
        if p.is_file() and file_sha256(p) == sha256:
            return p
        return None

    def entries(self) -> list[Entry]:
        out = []
        for d in sorted((self.root / "entries").glob("*/*")):
            e = self.lookup(d.name, check=False)
            if e is not None:
                out.append(e)
        return out

    def verify(self) -> tuple[int, list[tuple[str, str]]]:
        """Re-hash every entry and derived form; remove the bad ones.

        Returns how many entries were checked, and (key, what was wrong) for each removed.
        """
        bad: list[tuple[str, str]] = []
        dirs = sorted((self.root / "entries").glob("*/*"))
        for d in dirs:
            key = d.name
            meta = self._read_meta(key)
            if meta is None:
                bad.append((key, "no readable meta.json"))
                self.remove(key)
                continue
            problem = _rehash(d / "lib", meta, "library")
            for name, info in sorted(meta.get("derived", {}).items()):
                problem = problem or _rehash(d / name, info, name)
            if problem:
                bad.append((key, problem))
                self.remove(key)
        return len(dirs), bad

    def remove(self, key: str) -> None:
        with self._lock(key):
            shutil.rmtree(self._dir(key), ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.root / "locks" / f"{key}.lock").unlink()

    def prune(self, max_size: int) -> list[Entry]:
        """Remove least recently used entries until the store fits ``max_size``."""
        entries = sorted(self.entries(), key=lambda e: _last_used(e))
        total = sum(e.disk_bytes for e in entries)
        removed = []
        for e in entries:
            if total <= max_size:
                break
            self.remove(e.key)
            total -= e.disk_bytes
            removed.append(e)
        return removed

    def clear(self) -> int:
        n = 0
        for e in self.entries():
            self.remove(e.key)
            n += 1
        self.clean()  # what live runs are writing stays
        return n


#: Where each kind of fact lives (scanner facts are versioned: a scanner that
#: finds more must not trust an older one's "nothing here").
_FACTS = {
    "no-device-code": f"libraries/v{SCAN_VERSION}",
    "nothing-to-strip": f"libraries/v{SCAN_VERSION}-nostrip",
    "validated": "validated",
}


def _subdirs(d: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(d) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _rehash(path: Path, recorded: dict[str, Any], what: str) -> str:
    try:
        if path.stat().st_size != recorded["size"]:
            return f"{what}: size differs from the recorded one"
        if file_sha256(path) != recorded["sha256"]:
            return f"{what}: content differs from the recorded SHA-256"
    except OSError as exc:
        return f"{what}: {exc.strerror}"
    except (KeyError, TypeError):
        return f"{what}: malformed record"
    return ""


def _last_used(e: Entry) -> float:
    try:
        return (e.path.parent / "meta.json").stat().st_mtime
    except OSError:
        return 0.0
