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
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .arch import Target
from .elf import ElfFile, is_elf, map_file
from .errors import InputError
from .fatbin import scan
from .plan import plan_layout
from .profile import Profile
from .slim import slim_library
from .store import Store, entry_key, file_sha256
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


def _record_line(path: str, digest_hex: str, size: int) -> str:
    buf = io.StringIO()
    digest = record_hash(bytes.fromhex(digest_hex), digest=True)
    csv.writer(buf, lineterminator="").writerow([path, digest, str(size)])
    return buf.getvalue()


def _rewrite_record(site: Path, dist_info: str, path: str, line: str) -> str:
    """Replace ``path``'s line of RECORD with ``line``; return the line it had.

    Only that line changes: every other byte of RECORD stays as the installer
    wrote it, so a restore gives the file back byte for byte.
    """
    record = site / dist_info / "RECORD"
    data = record.read_bytes().decode("utf-8")
    lines = data.splitlines(keepends=True)
    for i, text in enumerate(lines):
        body = text.rstrip("\r\n")
        fields = next(csv.reader([body]), [])
        if fields and fields[0] == path:
            lines[i] = line + text[len(body) :]
            with atomic_output(record, mode=record.stat().st_mode) as f:
                f.write("".join(lines).encode("utf-8"))
            return body
    raise EnvError(f"{dist_info}/RECORD does not list {path}", path=str(site))


def _current_line(site: Path, dist_info: str, path: str) -> str:
    for text in (site / dist_info / "RECORD").read_text(encoding="utf-8").splitlines():
        fields = next(csv.reader([text]), [])
        if fields and fields[0] == path:
            return text
    raise EnvError(f"{dist_info}/RECORD does not list {path}", path=str(site))


def _record_files(site: Path) -> Iterator[tuple[str, str]]:
    """(dist-info dir, path) of every installed file inside ``site``."""
    for info in sorted(site.glob("*.dist-info")):
        record = info / "RECORD"
        if not record.is_file():
            continue
        for row in csv.reader(io.StringIO(record.read_text(encoding="utf-8", errors="replace"))):
            if not row or row[0].startswith(("..", "/")) or "__pycache__" in row[0]:
                continue
            yield info.name, row[0]


# -- the environment ------------------------------------------------------------


class Environment:
    def __init__(self, site: Path, store: Store) -> None:
        self.site = site
        self.store = store
        self.state_path = site / STATE_FILE
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
        # The lock lives in the store, so site-packages is left as pip left it.
        lock = self.store.root / "locks" / ("env-" + hashlib.sha256(bytes(self.site)).hexdigest())
        try:
            f = open(lock, "a+b")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise EnvError(
                f"cannot lock the environment ({exc.strerror})", path=str(self.site)
            ) from None
        with f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise EnvError(
                    "another slimwheel process is working on this environment; try again later",
                    path=str(self.site),
                ) from None
            try:
                self.load()
                self.reconcile()
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def reconcile(self) -> None:
        """Make the state, the files and RECORD agree after any interruption."""
        changed = False
        for e in list(self.entries.values()):
            f = self.site / e.path
            current = file_sha256(f) if f.is_file() else None
            if current == e.slim_sha256:
                if e.state != "done":
                    _rewrite_record(
                        self.site,
                        e.dist_info,
                        e.path,
                        _record_line(e.path, e.slim_sha256, e.slim_size),
                    )
                    e.state = "done"
                    changed = True
            elif current == e.original_sha256:
                _rewrite_record(self.site, e.dist_info, e.path, e.record_line)
                del self.entries[e.path]
                changed = True
            else:
                # Reinstalled or upgraded since: pip owns the file again.
                del self.entries[e.path]
                changed = True
        if changed:
            self.save()

    # discovery
    def candidates(self, only: Sequence[str] = ()) -> list[tuple[str, str]]:
        wanted = {o.lower().replace("-", "_") for o in only}
        out = []
        for dist_info, rel in _record_files(self.site):
            name = dist_info[: -len(".dist-info")].rsplit("-", 1)[0].lower().replace("-", "_")
            if wanted and name not in wanted:
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


def slim_env(
    site: Path,
    store: Store,
    *,
    targets: Sequence[Target],
    keep_ptx: bool = False,
    profile: Profile | None = None,
    only: Sequence[str] = (),
    dry_run: bool = False,
    backup: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[EnvChange]:
    env = Environment(site, store)
    changes = []
    names = [t.name for t in targets]
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
                with map_file(path) as buf:
                    plan = plan_layout(scan(ElfFile(buf, str(path))), targets, keep_ptx=keep_ptx)
                changes.append(EnvChange(rel, size, size - plan.removed_bytes, "dry run"))
                continue
            sha = file_sha256(path)
            usage = profile.for_library(sha, path.name) if profile else None
            key = entry_key(
                sha,
                targets=names,
                keep_ptx=keep_ptx,
                profile_digest=usage.digest() if usage else None,
            )

            def build(dest: Path, src: Path = path, u: Any = usage) -> dict[str, Any]:
                r = slim_library(src, dest, targets=targets, keep_ptx=keep_ptx, usage=u)
                return {
                    "elements_before": r.plan.kept_elements + r.plan.removed_elements,
                    "elements_after": r.plan.kept_elements,
                }

            entry, _built = store.get_or_build(key, build)
            if entry.meta["sha256"] == sha:
                changes.append(EnvChange(rel, size, size, "nothing to remove"))
                continue
            if backup:
                store.keep_original(path, sha)
            mode = path.stat().st_mode
            env.entries[rel] = Replaced(
                rel,
                dist_info,
                sha,
                size,
                entry.meta["sha256"],
                entry.size,
                names,
                usage.digest() if usage else None,
                backup,
                "pending",
                record_line=_current_line(site, dist_info, rel),
            )
            env.save()
            _crash_point("pending")
            with atomic_output(path, mode=mode) as out, open(entry.path, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            _crash_point("replaced")
            _rewrite_record(
                site, dist_info, rel, _record_line(rel, entry.meta["sha256"], entry.size)
            )
            _crash_point("recorded")
            env.entries[rel].state = "done"
            env.save()
            changes.append(EnvChange(rel, size, entry.size))
    return changes


def restore_env(site: Path, store: Store, *, only: Sequence[str] = ()) -> list[EnvChange]:
    env = Environment(site, store)
    changes = []
    wanted = {o.lower().replace("-", "_") for o in only}
    with env.locked():
        for rel, e in sorted(env.entries.items()):
            name = e.dist_info[: -len(".dist-info")].rsplit("-", 1)[0].lower().replace("-", "_")
            if wanted and name not in wanted:
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
            _rewrite_record(site, e.dist_info, rel, e.record_line)
            del env.entries[rel]
            env.save()
            changes.append(EnvChange(rel, e.slim_size, e.original_size))
    return changes


def env_status(site: Path, store: Store) -> list[Replaced]:
    env = Environment(site, store)
    with env.locked():
        return sorted(env.entries.values(), key=lambda e: e.path)
