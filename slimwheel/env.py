"""Slim an installed Python environment in place, safely, and undo it.

Every library with device code that an installed distribution's RECORD lists
is slimmed through the store and replaced: the slim file is written beside
the old one, fsynced, and renamed over it, so a hard link into a cache (uv,
conda) is never written through. The distribution's RECORD line is updated
(hash and size), and the original goes into the store (content-addressed,
shared across environments) for ``restore``.

Crash safety: a state file in site-packages records each replacement as
``pending`` before the file is touched and ``done`` after its RECORD line is
updated. The next ``slim-env``, ``restore`` or ``status`` reconciles pending
entries from what is on disk (the file is either the original or the slim
one), so files and RECORD always agree. One process at a time holds the
environment's lock.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .cached import on_disk, slim_through_store
from .elf import ElfFile, is_elf, map_file
from .errors import InputError
from .fatbin import scan
from .policy import SlimPolicy
from .slim import make_plan
from .store import Store, file_sha256
from .wheel import record_hash
from .write import atomic_output

STATE_FILE = ".slimwheel-env.json"
STATE_VERSION = 1


class EnvError(InputError):
    """The environment cannot be slimmed or restored as asked."""


@dataclass(slots=True)
class Replaced:
    path: str  # relative to site-packages, as in RECORD
    dist_info: str
    original_sha256: str
    original_size: int
    slim_sha256: str
    slim_size: int
    targets: list[str]
    profile_digest: str | None
    backup: bool
    state: str  # "pending" or "done"
    record_line: str = ""  # the RECORD line before slimming, restored as it was


def site_dirs(python: str) -> list[Path]:
    """The site-packages directories of an interpreter."""
    code = (
        "import json, sysconfig; p = sysconfig.get_paths(); "
        "print(json.dumps([p['purelib'], p['platlib']]))"
    )
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise EnvError(f"cannot ask {python} for its site-packages ({exc})") from None
    dirs = []
    for d in json.loads(out.stdout):
        p = Path(d).resolve()
        if p.is_dir() and p not in dirs:
            dirs.append(p)
    return dirs


def _crash_point(name: str) -> None:
    """Fault injection for the crash tests: SIGKILL ourselves at a named point."""
    if os.environ.get("SLIMWHEEL_TEST_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


# -- RECORD ---------------------------------------------------------------------


# -- the records an installer keeps -------------------------------------------


def _record_line(path: str, digest_hex: str, size: int) -> str:
    buf = io.StringIO()
    digest = record_hash(bytes.fromhex(digest_hex), digest=True)
    csv.writer(buf, lineterminator="").writerow([path, digest, str(size)])
    return buf.getvalue()


class PipRecords:
    """RECORD files of ``*.dist-info`` in a site-packages directory."""

    kind = "pip"

    def __init__(self, root: Path) -> None:
        self.root = root

    def files(self) -> Iterator[tuple[str, str]]:
        """(owner: the .dist-info directory, path relative to root)."""
        for info in sorted(self.root.glob("*.dist-info")):
            record = info / "RECORD"
            if not record.is_file():
                continue
            text = record.read_text(encoding="utf-8", errors="replace")
            for row in csv.reader(io.StringIO(text)):
                if not row or row[0].startswith(("..", "/")) or "__pycache__" in row[0]:
                    continue
                yield info.name, row[0]

    def _lines(self, owner: str) -> tuple[Path, list[str]]:
        record = self.root / owner / "RECORD"
        return record, record.read_bytes().decode("utf-8").splitlines(keepends=True)

    def _find(self, owner: str, path: str, lines: list[str]) -> int:
        for i, text in enumerate(lines):
            fields = next(csv.reader([text.rstrip("\r\n")]), [])
            if fields and fields[0] == path:
                return i
        raise EnvError(f"{owner}/RECORD does not list {path}", path=str(self.root))

    def snapshot(self, owner: str, path: str) -> str:
        """The line as the installer wrote it, to put back on restore."""
        _record, lines = self._lines(owner)
        return lines[self._find(owner, path, lines)].rstrip("\r\n")

    def _replace(self, owner: str, path: str, line: str) -> None:
        # Only that line changes: every other byte stays as the installer wrote it.
        record, lines = self._lines(owner)
        i = self._find(owner, path, lines)
        body = lines[i].rstrip("\r\n")
        lines[i] = line + lines[i][len(body) :]
        with atomic_output(record, mode=record.stat().st_mode) as f:
            f.write("".join(lines).encode("utf-8"))

    def update(self, owner: str, path: str, sha256: str, size: int) -> None:
        self._replace(owner, path, _record_line(path, sha256, size))

    def put_back(self, owner: str, path: str, saved: str, *, last: bool) -> None:
        self._replace(owner, path, saved)

    def distribution(self, owner: str) -> str:
        return owner[: -len(".dist-info")].rsplit("-", 1)[0]


class CondaRecords:
    """``conda-meta/*.json`` of a conda prefix: ``paths_data`` per package.

    ``sha256``, ``sha256_in_prefix`` and ``size_in_bytes`` follow the slim
    file, so ``conda doctor`` sees no altered files. The package's original
    JSON bytes are kept in the store and written back when its last slimmed
    file is restored.
    """

    kind = "conda"

    def __init__(self, root: Path, store: Store) -> None:
        self.root = root
        self.store = store

    def files(self) -> Iterator[tuple[str, str]]:
        for meta in sorted((self.root / "conda-meta").glob("*.json")):
            try:
                doc = json.loads(meta.read_text())
                for entry in doc.get("paths_data", {}).get("paths", []):
                    yield meta.name, str(entry["_path"])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise EnvError(f"unreadable conda record ({exc})", path=str(meta)) from None

    def _meta(self, owner: str) -> Path:
        return self.root / "conda-meta" / owner

    def snapshot(self, owner: str, path: str) -> str:
        meta = self._meta(owner)
        sha = file_sha256(meta)
        self.store.keep_original(meta, sha)
        return sha

    def _edit(self, owner: str, path: str, sha256: str, size: int) -> None:
        meta = self._meta(owner)
        doc = json.loads(meta.read_text())
        for entry in doc["paths_data"]["paths"]:
            if entry["_path"] == path:
                entry["sha256"] = sha256
                if "sha256_in_prefix" in entry or entry.get("path_type") == "hardlink":
                    entry["sha256_in_prefix"] = sha256
                entry["size_in_bytes"] = size
                break
        else:
            raise EnvError(f"{owner} does not list {path}", path=str(self.root))
        with atomic_output(meta, mode=meta.stat().st_mode) as f:
            f.write((json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())

    def update(self, owner: str, path: str, sha256: str, size: int) -> None:
        self._edit(owner, path, sha256, size)

    def put_back(self, owner: str, path: str, saved: str, *, last: bool) -> None:
        original = self.store.original(saved)
        if original is None:
            raise EnvError(f"the original {owner} is not in the store", path=str(self.root))
        if last:
            with (
                atomic_output(self._meta(owner), mode=self._meta(owner).stat().st_mode) as f,
                open(original, "rb") as src,
            ):
                shutil.copyfileobj(src, f)
            return
        doc = json.loads(original.read_text())
        for entry in doc["paths_data"]["paths"]:
            if entry["_path"] == path:
                self._edit(owner, path, entry["sha256"], int(entry["size_in_bytes"]))
                return
        raise EnvError(f"{owner} does not list {path}", path=str(self.root))

    def distribution(self, owner: str) -> str:
        return owner[: -len(".json")].rsplit("-", 2)[0]


Records = PipRecords | CondaRecords


# -- the environment ------------------------------------------------------------


class Environment:
    """A site-packages directory (pip records) or a conda prefix (conda-meta)."""

    def __init__(self, root: Path, store: Store, *, conda: bool = False) -> None:
        self.site = root
        self.store = store
        self.records: Records = CondaRecords(root, store) if conda else PipRecords(root)
        self.state_path = root / STATE_FILE
        self.entries: dict[str, Replaced] = {}

    # state file
    def load(self) -> None:
        if not self.state_path.exists():
            self.entries = {}
            return
        try:
            doc = json.loads(self.state_path.read_text())
            self.entries = {e["path"]: Replaced(**e) for e in doc["replaced"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise EnvError(f"unreadable state file ({exc})", path=str(self.state_path)) from None

    def save(self) -> None:
        doc = {
            "schema": "slimwheel.env-state",
            "schema_version": STATE_VERSION,
            "replaced": [asdict(e) for e in sorted(self.entries.values(), key=lambda e: e.path)],
        }
        if not self.entries:
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
            return
        with atomic_output(self.state_path, mode=0o644) as f:
            f.write((json.dumps(doc, indent=1) + "\n").encode())

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        # The lock belongs to the environment, whatever store a run uses: an
        # flock on the site-packages directory itself, so nothing is added there.
        try:
            fd = os.open(self.site, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise EnvError(
                f"cannot lock the environment ({exc.strerror})", path=str(self.site)
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise EnvError(
                    "another slimwheel process is working on this environment; try again later",
                    path=str(self.site),
                ) from None
            self.load()
            self.reconcile()
            yield
        finally:
            os.close(fd)  # releases the lock

    def reconcile(self) -> None:
        """Make the state, the files and RECORD agree after any interruption."""
        changed = False
        for e in list(self.entries.values()):
            f = self.site / e.path
            current = file_sha256(f) if f.is_file() else None
            if current == e.slim_sha256:
                if e.state != "done":
                    self.records.update(e.dist_info, e.path, e.slim_sha256, e.slim_size)
                    e.state = "done"
                    changed = True
            elif current == e.original_sha256:
                self.put_back(e)
                changed = True
            else:
                # Reinstalled or upgraded since: pip owns the file again.
                del self.entries[e.path]
                changed = True
        if changed:
            self.save()

    def put_back(self, e: Replaced) -> None:
        """Records back to what the installer wrote; forget the entry."""
        del self.entries[e.path]
        last = not any(o.dist_info == e.dist_info for o in self.entries.values())
        self.records.put_back(e.dist_info, e.path, e.record_line, last=last)

    def wanted(self, owner: str, only: Sequence[str]) -> bool:
        if not only:
            return True
        norm = {o.lower().replace("-", "_") for o in only}
        return self.records.distribution(owner).lower().replace("-", "_") in norm

    # discovery
    def candidates(self, only: Sequence[str] = ()) -> list[tuple[str, str]]:
        out = []
        for dist_info, rel in self.records.files():
            if not self.wanted(dist_info, only):
                continue
            p = self.site / rel
            if ".so" not in p.name or p.is_symlink() or not p.is_file() or not is_elf(p):
                continue
            with map_file(p) as buf:
                if not scan(ElfFile(buf, str(p))).regions:
                    continue
            out.append((dist_info, rel))
        return out


@dataclass(frozen=True, slots=True)
class EnvChange:
    path: str
    before: int
    after: int
    skipped: str = ""  # why nothing was done
    note: str = ""  # a warning for the user


def slim_env(
    site: Path,
    store: Store,
    policy: SlimPolicy,
    *,
    only: Sequence[str] = (),
    dry_run: bool = False,
    backup: bool = True,
    progress: Callable[[str], None] | None = None,
    conda: bool = False,
) -> list[EnvChange]:
    env = Environment(site, store, conda=conda)
    changes = []
    names = [t.name for t in policy.targets]
    with env.locked():
        for dist_info, rel in env.candidates(only):
            path = site / rel
            size = path.stat().st_size
            existing = env.entries.get(rel)
            if existing is not None:
                changes.append(EnvChange(rel, existing.original_size, size, "already slimmed"))
                continue
            if progress:
                progress(rel)
            if dry_run:
                changes.append(_dry_run(path, rel, size, policy))
                continue
            sha = file_sha256(path)
            got = slim_through_store(
                store,
                policy,
                member=rel,
                where=str(path),
                sha256=sha,
                size=size,
                source=on_disk(str(path)),
            )
            if not got.changed:
                changes.append(EnvChange(rel, size, size, "nothing to remove", got.note))
                continue
            if backup:
                store.keep_original(path, sha)
            mode = path.stat().st_mode
            usage = policy.for_library(path.name, sha).usage
            env.entries[rel] = Replaced(
                rel,
                dist_info,
                sha,
                size,
                got.sha256_after,
                got.bytes_after,
                names,
                usage.digest() if usage else None,
                backup,
                "pending",
                record_line=env.records.snapshot(dist_info, rel),
            )
            env.save()
            _crash_point("pending")
            with atomic_output(path, mode=mode) as out, open(got.store_path, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            _crash_point("replaced")
            env.records.update(dist_info, rel, got.sha256_after, got.bytes_after)
            _crash_point("recorded")
            env.entries[rel].state = "done"
            env.save()
            changes.append(EnvChange(rel, size, got.bytes_after, note=got.note))
    return changes


def _dry_run(path: Path, rel: str, size: int, policy: SlimPolicy) -> EnvChange:
    """What slimming would remove (the plan, from the same policy; nothing written)."""
    sha = file_sha256(path) if policy.needs_hash else None
    lib = policy.for_library(path.name, sha)
    with map_file(path) as buf:
        plan = make_plan(buf, str(path), scan(ElfFile(buf, str(path))), lib)
    return EnvChange(rel, size, size - plan.removed_bytes, "dry run", lib.note)


def restore_env(
    site: Path, store: Store, *, only: Sequence[str] = (), conda: bool = False
) -> list[EnvChange]:
    env = Environment(site, store, conda=conda)
    changes = []
    with env.locked():
        for rel, e in sorted(env.entries.items()):
            if not env.wanted(e.dist_info, only):
                continue
            original = store.original(e.original_sha256)
            if original is None:
                raise EnvError(
                    f"{rel}: no original was kept (slimmed with --no-backup, or the store "
                    "was cleared); reinstall the distribution instead",
                    path=str(site),
                )
            path = site / rel
            mode = path.stat().st_mode
            e.state = "pending"
            env.save()
            with atomic_output(path, mode=mode) as out, open(original, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            _crash_point("restored")
            env.put_back(e)
            env.save()
            changes.append(EnvChange(rel, e.slim_size, e.original_size))
    return changes


def env_status(site: Path, store: Store, *, conda: bool = False) -> list[Replaced]:
    env = Environment(site, store, conda=conda)
    with env.locked():
        return sorted(env.entries.values(), key=lambda e: e.path)
