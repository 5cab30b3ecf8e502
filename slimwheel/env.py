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
import posixpath
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

from .cached import on_disk, slim_through_store
from .elf import ElfFile, is_elf, map_file
from .errors import InputError, SlimwheelError
from .fatbin import scan
from .files import describe_oserror, open_regular, read_json
from .layout import strippable_sections
from .policy import SlimPolicy
from .slim import make_plan, plan_host_code
from .store import Store, file_sha256
from .wheel import record_hash
from .workers import worker_pool
from .write import atomic_output, clean_debris, crash_point

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
        """(owner: the .dist-info directory, path relative to root) of files inside root.

        RECORD is untrusted: a path must be in normal form (pip writes no
        other); one that leaves site-packages (``../../../bin/x``) is another
        directory's file and is not a candidate.
        """
        for info in sorted(self.root.glob("*.dist-info")):
            record = info / "RECORD"
            if not record.is_file():
                continue
            for path in _record_paths(record):
                inside = inside_root(path, record)
                if inside is not None and "__pycache__" not in inside:
                    yield info.name, inside

    def _lines(self, owner: str) -> tuple[Path, list[str]]:
        record = self.root / owner / "RECORD"
        return record, _record_text(record).splitlines(keepends=True)

    def _find(self, owner: str, path: str, lines: list[str]) -> int:
        for i, text in enumerate(lines):
            try:
                fields = next(csv.reader([text.rstrip("\r\n")]), [])
            except csv.Error:
                continue
            if fields and fields[0] == path:
                return i
        raise EnvError(f"{owner}/RECORD does not list {path}", path=str(self.root))

    def owner_dir(self, owner: str) -> Path:
        return self.root / owner

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
            doc = _conda_record(meta)
            try:
                paths = [str(e["_path"]) for e in doc.get("paths_data", {}).get("paths", [])]
            except (KeyError, TypeError, AttributeError) as exc:
                raise EnvError(f"unreadable conda record ({exc})", path=str(meta)) from None
            for path in paths:
                inside = inside_root(path, meta)
                if inside is None:  # conda never records a path outside its prefix
                    raise EnvError(f"_path {path!r} lies outside the prefix", path=str(meta))
                yield meta.name, inside

    def _meta(self, owner: str) -> Path:
        return self.root / "conda-meta" / owner

    def owner_dir(self, owner: str) -> Path:
        return self.root / "conda-meta"

    def snapshot(self, owner: str, path: str) -> str:
        meta = self._meta(owner)
        sha = file_sha256(meta)
        self.store.keep_original(meta, sha)
        return sha

    def _edit(self, owner: str, path: str, sha256: str, size: int) -> None:
        meta = self._meta(owner)
        doc = _conda_record(meta)
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
        doc = _conda_record(original)
        for entry in doc["paths_data"]["paths"]:
            if entry["_path"] == path:
                self._edit(owner, path, entry["sha256"], int(entry["size_in_bytes"]))
                return
        raise EnvError(f"{owner} does not list {path}", path=str(self.root))

    def distribution(self, owner: str) -> str:
        return owner[: -len(".json")].rsplit("-", 2)[0]


Records = PipRecords | CondaRecords

#: Far above any real record (torch's RECORD is ~2 MB; conda-meta files of big
#: packages a few MB).
MAX_RECORD_BYTES = 64 << 20


def inside_root(path: str, where: Path) -> str | None:
    """``path`` (relative, from a record) if it stays inside the root; None if it leaves it.

    A path not in normal form (``a/../b``, ``a//b``, ``./a``) is refused: no
    installer writes one, and it is how a record would point elsewhere.
    """
    if not path or "\0" in path or "\\" in path:
        raise EnvError(f"record path {path[:200]!r} is not a file path", path=str(where))
    if path.startswith("/"):
        return None
    norm = posixpath.normpath(path)
    if norm != path:
        raise EnvError(f"record path {path[:200]!r} is not in normal form", path=str(where))
    if norm == ".." or norm.startswith("../"):
        return None
    return norm


def _record_text(record: Path) -> str:
    try:
        with open_regular(record) as f:
            data = f.read(MAX_RECORD_BYTES + 1)
    except OSError as exc:
        raise EnvError(describe_oserror(exc), path=str(record)) from None
    if len(data) > MAX_RECORD_BYTES:
        raise EnvError(f"larger than {MAX_RECORD_BYTES} bytes", path=str(record))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvError("not UTF-8 text", path=str(record)) from None


def _record_paths(record: Path) -> list[str]:
    try:
        return [row[0] for row in csv.reader(io.StringIO(_record_text(record))) if row]
    except csv.Error as exc:
        raise EnvError(f"malformed RECORD ({exc})", path=str(record)) from None


def _conda_record(meta: Path) -> dict[str, Any]:
    doc = read_json(meta, limit=MAX_RECORD_BYTES)
    if not isinstance(doc, dict):
        raise EnvError("not a JSON object", path=str(meta))
    return doc


# -- the environment ------------------------------------------------------------


class Environment:
    """A site-packages directory (pip records) or a conda prefix (conda-meta)."""

    def __init__(self, root: Path, store: Store, *, conda: bool = False) -> None:
        self.site = root
        self.store = store
        self.records: Records = CondaRecords(root, store) if conda else PipRecords(root)
        self.state_path = root / STATE_FILE
        self.entries: dict[str, Replaced] = {}
        self.real_site = os.path.realpath(root)

    # state file
    def load(self) -> None:
        if not self.state_path.exists():
            self.entries = {}
            return
        doc = read_json(self.state_path, limit=MAX_RECORD_BYTES)
        try:
            entries = [Replaced(**e) for e in doc["replaced"]]  # type: ignore[index]
        except (KeyError, TypeError) as exc:
            raise EnvError(f"unreadable state file ({exc})", path=str(self.state_path)) from None
        for e in entries:
            owner_ok = isinstance(e.dist_info, str) and e.dist_info.endswith(
                (".dist-info", ".json")
            )
            if not owner_ok or "/" in e.dist_info or e.dist_info.startswith("."):
                raise EnvError(f"record {e.dist_info!r} is not one", path=str(self.state_path))
            if not isinstance(e.path, str) or inside_root(e.path, self.state_path) is None:
                raise EnvError(
                    f"path {e.path!r} outside the environment", path=str(self.state_path)
                )
        self.entries = {e.path: e for e in entries}

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
            self.clean()
            self.reconcile()
            yield
        finally:
            os.close(fd)  # releases the lock

    def preflight(self, todo: Sequence[tuple[str, str]]) -> None:
        """Check, before the first replacement, that every write the run needs can
        be made: beside each library, beside its records, beside the state file."""
        dirs = {self.site}
        for owner, rel in todo:
            dirs.add((self.site / rel).parent)
            dirs.add(self.records.owner_dir(owner))
        for d in sorted(dirs):
            try:
                fd, tmp = tempfile.mkstemp(prefix=".slimwheel-", suffix=".tmp", dir=d)
                os.close(fd)
                os.unlink(tmp)
            except OSError as exc:
                raise EnvError(
                    f"cannot write in {d} ({describe_oserror(exc)}); nothing was changed",
                    path=str(self.site),
                ) from None

    def roll_back(self, rel: str, exc: BaseException) -> NoReturn:
        """A replacement failed half-way: the original back in place (from the store),
        its records as the installer wrote them, then one error."""
        e = self.entries[rel]
        path = self.site / rel
        original = self.store.original(e.original_sha256) if e.backup else None
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if original is None:  # the next run reconciles the pending entry
            raise EnvError(f"{rel}: replacing it failed ({detail})", path=str(self.site))
        try:
            if path.is_file() and file_sha256(path) != e.original_sha256:
                with (
                    atomic_output(path, mode=path.stat().st_mode) as out,
                    open(original, "rb") as f,
                ):
                    shutil.copyfileobj(f, out, 1 << 20)
            self.put_back(e)
            self.save()
        except (OSError, InputError):
            pass  # still pending: the next run reconciles from what is on disk
        raise EnvError(
            f"{rel}: replacing it failed ({detail}); it was put back", path=str(self.site)
        )

    def clean(self) -> None:
        """Remove the temporary files dead runs left beside what they were replacing:
        libraries (each replacement is in the state before its file is written),
        the records, the state file."""
        dirs = {self.site} | {(self.site / e.path).parent for e in self.entries.values()}
        dirs |= {self.records.owner_dir(e.dist_info) for e in self.entries.values()}
        for d in sorted(dirs):
            clean_debris(d)

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
    def candidates(
        self, only: Sequence[str] = (), *, strip: bool = False, host: bool = False
    ) -> list[tuple[str, str]]:
        """Libraries with device code (with ``strip``: also those with sections to strip;
        with ``host``: every ELF library, for the profile's host records to match)."""
        out = []
        for dist_info, rel in self.records.files():
            if not self.wanted(dist_info, only):
                continue
            p = self.site / rel
            if ".so" not in p.name or p.is_symlink() or not p.is_file() or not is_elf(p):
                continue
            real = os.path.realpath(p)
            if os.path.commonpath([real, self.real_site]) != self.real_site:
                raise EnvError(
                    f"{rel} resolves to {real}, outside the environment (a linked directory)",
                    path=str(self.site),
                )
            with map_file(p) as buf:
                elf = ElfFile(buf, str(p))
                if not host and not scan(elf).regions and not (strip and strippable_sections(elf)):
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
    jobs: int = 1,
) -> list[EnvChange]:
    """Slim every candidate library of ``site``; with ``jobs`` > 1 the slim forms
    (or the dry-run plans) are made in that many processes first, and the files
    are then replaced one by one as with one job."""
    env = Environment(site, store, conda=conda)
    changes = []
    names = [t.name for t in policy.targets]
    with env.locked():
        candidates = env.candidates(only, strip=policy.strip, host=policy.cpu)
        todo = [r for _o, r in candidates if r not in env.entries]
        if not dry_run:
            env.preflight([(o, r) for o, r in candidates if r not in env.entries])
        early = _in_parallel(site, store, policy, todo, jobs, dry_run=dry_run)
        for dist_info, rel in candidates:
            path = site / rel
            size = path.stat().st_size
            existing = env.entries.get(rel)
            if existing is not None:
                changes.append(EnvChange(rel, existing.original_size, size, "already slimmed"))
                continue
            if progress:
                progress(rel)
            if dry_run:
                got_plan = early.get(rel)
                changes.append(
                    got_plan
                    if isinstance(got_plan, EnvChange)
                    else _dry_run(path, rel, size, policy)
                )
                continue
            known = early.get(rel)
            sha = known if isinstance(known, str) else file_sha256(path)
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
            lib = policy.for_library(path.name, sha)
            applied = lib.usage is not None or lib.host is not None
            env.entries[rel] = Replaced(
                rel,
                dist_info,
                sha,
                size,
                got.sha256_after,
                got.bytes_after,
                names,
                policy.profile_digest if applied else None,  # as profile show names it
                backup,
                "pending",
                record_line=env.records.snapshot(dist_info, rel),
            )
            env.save()
            crash_point("pending")
            try:
                with atomic_output(path, mode=mode) as out, open(got.store_path, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                crash_point("replaced")
                env.records.update(dist_info, rel, got.sha256_after, got.bytes_after)
            except (OSError, InputError) as exc:
                env.roll_back(rel, exc)
            crash_point("recorded")
            env.entries[rel].state = "done"
            env.save()
            changes.append(EnvChange(rel, size, got.bytes_after, note=got.note))
    return changes


def _in_parallel(
    site: Path, store: Store, policy: SlimPolicy, todo: list[str], jobs: int, *, dry_run: bool
) -> dict[str, EnvChange | str]:
    """The dry-run plan (``EnvChange``) or, with the slim form now in the store, the
    content hash of each library of ``todo``, made by ``jobs`` processes, largest
    first. Nothing when one job would do it; the first problem is raised."""
    if jobs <= 1 or len(todo) <= 1:
        return {}
    sized = sorted(((site / rel).stat().st_size, rel) for rel in todo)[::-1]
    argv: list[tuple[Any, ...]]
    if dry_run:
        argv = [(site / rel, rel, size, policy) for size, rel in sized]
        fn: Callable[..., Any] = _dry_run
    else:
        argv = [(store.root, policy, rel, str(site / rel), size) for size, rel in sized]
        fn = _slim_into_store
    with worker_pool(min(jobs, len(todo))) as run:
        results = run(fn, argv)
    for got in results:
        if isinstance(got, SlimwheelError):
            raise got
    return {rel: got for (_size, rel), got in zip(sized, results, strict=True)}


def _slim_into_store(root: Path, policy: SlimPolicy, rel: str, where: str, size: int) -> str:
    """Make the slim form of the library at ``where`` in the store; its hash."""
    sha = file_sha256(where)
    slim_through_store(
        Store(root), policy, member=rel, where=where, sha256=sha, size=size, source=on_disk(where)
    )
    return sha


def _dry_run(path: Path, rel: str, size: int, policy: SlimPolicy) -> EnvChange:
    """What slimming would remove (the plan, from the same policy; nothing written)."""
    sha = file_sha256(path) if policy.needs_hash else None
    lib = policy.for_library(path.name, sha)
    with map_file(path) as buf:
        elf = ElfFile(buf, str(path))
        plan = make_plan(buf, str(path), scan(elf), lib)
        stripped = sum(s.size for s in strippable_sections(elf)) if policy.strip else 0
        host = plan_host_code(elf, lib)
        removed = plan.removed_bytes + stripped + (host.removed_bytes if host else 0)
    return EnvChange(rel, size, size - removed, "dry run", lib.note)


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
            crash_point("restored")
            env.put_back(e)
            env.save()
            changes.append(EnvChange(rel, e.slim_size, e.original_size))
    return changes


def env_status(site: Path, store: Store, *, conda: bool = False) -> list[Replaced]:
    env = Environment(site, store, conda=conda)
    with env.locked():
        return sorted(env.entries.values(), key=lambda e: e.path)
