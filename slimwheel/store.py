"""A content-addressed store of slimmed libraries.

An entry is keyed by what determines the slim output: the SHA-256 of the
original library, the normalized targets, the PTX policy, the profile digest
for that library (none yet), and the slimmer's format version. A second build
of the same thing slims nothing.

Layout under the root (``--store``, ``SLIMWHEEL_STORE``, or the user cache
directory from platformdirs)::

    entries/<k[:2]>/<key>/lib        the slim library
    entries/<k[:2]>/<key>/meta.json  its sha256, size and summary
    locks/<key>.lock                 one lock per key (fcntl)
    tmp/                             entries being built

An entry is built in ``tmp/``, fsynced and renamed into place under its
key's lock, so concurrent builders never see half an entry and never build
one twice. An entry whose library no longer matches its recorded hash is
discarded and rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from .errors import SlimwheelError

#: Bump when the slim output for the same inputs changes.
FORMAT_VERSION = 2  # 2: regions with nothing left are zeroed whole


class StoreError(SlimwheelError):
    """The store cannot be used."""


def default_root() -> Path:
    env = os.environ.get("SLIMWHEEL_STORE")
    if env:
        return Path(env)
    return Path(platformdirs.user_cache_dir("slimwheel")) / "store"


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def entry_key(
    library_sha256: str,
    *,
    targets: list[str],
    keep_ptx: bool,
    profile_digest: str | None = None,
    options: dict[str, Any] | None = None,
    drop_lto: bool = False,
) -> str:
    options = dict(options or {})
    if drop_lto:
        options["drop_lto"] = True  # absent otherwise: keys of earlier builds stay valid
    doc = {
        "library": library_sha256,
        "targets": sorted(targets),
        "keep_ptx": keep_ptx,
        "profile": profile_digest,
        "format": FORMAT_VERSION,
        "options": options or {},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    path: Path  # the slim library
    meta: dict[str, Any]

    @property
    def size(self) -> int:
        return int(self.meta["size"])


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

    def lookup(self, key: str, *, check: bool = True) -> Entry | None:
        d = self._dir(key)
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        lib = d / "lib"
        if check:
            try:
                ok = lib.stat().st_size == meta["size"] and file_sha256(lib) == meta["sha256"]
            except (OSError, KeyError):
                ok = False
            if not ok:
                return None
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
            tmp = Path(tempfile.mkdtemp(prefix=f"{key[:12]}-", dir=self.root / "tmp"))
            try:
                summary = build(tmp / "lib")
                meta = {
                    "key": key,
                    "sha256": file_sha256(tmp / "lib"),
                    "size": (tmp / "lib").stat().st_size,
                    "created": int(time.time()),
                    "summary": summary,
                }
                (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
                for name in ("lib", "meta.json"):
                    with open(tmp / name, "rb") as f:
                        os.fsync(f.fileno())
                d.parent.mkdir(parents=True, exist_ok=True)
                os.rename(tmp, d)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return Entry(key, d / "lib", meta), True

    # -- originals (for restoring environments) ---------------------------------

    def keep_original(self, path: Path, sha256: str) -> None:
        """Keep a copy of an original library, once per content, read-only."""
        from .write import atomic_output

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

    def remove(self, key: str) -> None:
        with self._lock(key):
            shutil.rmtree(self._dir(key), ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.root / "locks" / f"{key}.lock").unlink()

    def prune(self, max_size: int) -> list[Entry]:
        """Remove least recently used entries until the store fits ``max_size``."""
        entries = sorted(self.entries(), key=lambda e: _last_used(e))
        total = sum(e.size for e in entries)
        removed = []
        for e in entries:
            if total <= max_size:
                break
            self.remove(e.key)
            total -= e.size
            removed.append(e)
        return removed

    def clear(self) -> int:
        n = 0
        for e in self.entries():
            self.remove(e.key)
            n += 1
        shutil.rmtree(self.root / "tmp", ignore_errors=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        return n


def _last_used(e: Entry) -> float:
    try:
        return (e.path.parent / "meta.json").stat().st_mtime
    except OSError:
        return 0.0
