"""Slim wheels: from input wheels (or requirements pip fetches) to installable slim wheels.

Per wheel: validate it (``wheel.open_wheel``), slim every library that
carries device code through the store (in parallel processes), and write a
new wheel deterministically: RECORD rewritten, signatures dropped, WHEEL tags
unchanged, version and ``.dist-info`` name given a local label naming the
targets, a provenance file added. Wheels without device code are copied
through unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import __version__
from .arch import Target
from .elf import ELF_MAGIC, ElfFile, map_file
from .errors import InputError, SlimwheelError
from .fatbin import scan
from .profile import Profile
from .slim import slim_library
from .sources import extract_member
from .store import Store, entry_key, file_sha256
from .wheel import (
    NewMember,
    RawMember,
    WheelInfo,
    WheelWriter,
    canonical_order,
    escape_name,
    file_chunks,
    labelled_version,
    member_mode,
    open_wheel,
    write_record,
)
from .write import atomic_output

PROVENANCE = "slimwheel.json"
PROVENANCE_SCHEMA = "slimwheel.provenance"


@dataclass(frozen=True, slots=True)
class BuildOptions:
    targets: tuple[Target, ...]
    keep_ptx: bool = False
    label: str | None = None  # local version label; None keeps the version
    jobs: int = 1
    profile: Profile | None = None
    profile_by_name: bool = False
    drop_lto: bool = False

    @property
    def profile_digest(self) -> str | None:
        if self.profile is None:
            return None
        doc = json.dumps(self.profile.to_json()["libraries"], sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()


def default_label(targets: Sequence[Target], keep_ptx: bool, drop_lto: bool = False) -> str:
    """``sm90``, ``sm80.sm90``, ``sm90.ptx``, ``sm90.nolto``."""
    parts = [f"sm{t.major}{t.minor}" for t in sorted(targets)]
    if keep_ptx:
        parts.append("ptx")
    if drop_lto:
        parts.append("nolto")
    return ".".join(parts)


@dataclass(frozen=True, slots=True)
class LibraryOutcome:
    member: str
    sha256_before: str
    bytes_before: int
    has_code: bool
    sha256_after: str = ""
    bytes_after: int = 0
    elements_before: int = 0
    elements_after: int = 0
    store_path: str = ""
    built: bool = False


@dataclass(slots=True)
class BuildResult:
    """One built archive: a wheel, or a conda package (``wheel_bytes``: the archive's size)."""

    source: str
    output: str
    passthrough: bool
    wheel_bytes_before: int
    wheel_bytes_after: int
    installed_bytes_before: int
    installed_bytes_after: int
    libraries: list[LibraryOutcome] = field(default_factory=list)


# -- one library (runs in a worker process) ---------------------------------


def _slim_member(wheel: str, member: str, store_root: str, opts: BuildOptions) -> LibraryOutcome:
    store = Store(store_root)
    with extract_member(wheel, member, str(store.root / "tmp")) as src:
        return slim_file(src, member, f"{wheel}:{member}", store, opts)


def slim_file(
    src: str,
    member: str,
    where: str,
    store: Store,
    opts: BuildOptions,
    *,
    sha256: str | None = None,
) -> LibraryOutcome:
    """Slim the ELF file ``src`` (``member`` of a package, ``where`` in messages)
    through the store; a file without device code is left as it is. ``sha256``:
    the file's, when the caller already has it."""
    sha = sha256 or file_sha256(src)
    size = os.path.getsize(src)
    try:
        with map_file(src) as buf:
            layout = scan(ElfFile(buf, where))
    except SlimwheelError as exc:
        if exc.path == src:
            exc.path = where
        raise exc.with_path(where) from None
    if not layout.regions:
        return LibraryOutcome(member, sha, size, has_code=False)
    usage = None
    if opts.profile is not None:
        usage = opts.profile.for_library(
            sha, posixpath.basename(member), by_name=opts.profile_by_name
        )
    key = entry_key(
        sha,
        targets=[t.name for t in opts.targets],
        keep_ptx=opts.keep_ptx,
        profile_digest=usage.digest() if usage else None,
        drop_lto=opts.drop_lto,
    )

    def build(dest: Path) -> dict[str, Any]:
        r = slim_library(
            src,
            dest,
            targets=opts.targets,
            keep_ptx=opts.keep_ptx,
            name=where,
            usage=usage,
            drop_lto=opts.drop_lto,
        )
        return {
            "elements_before": r.plan.kept_elements + r.plan.removed_elements,
            "elements_after": r.plan.kept_elements,
        }

    entry, built = store.get_or_build(key, build)
    return LibraryOutcome(
        member,
        sha,
        size,
        has_code=True,
        sha256_after=entry.meta["sha256"],
        bytes_after=entry.size,
        elements_before=int(entry.meta["summary"]["elements_before"]),
        elements_after=int(entry.meta["summary"]["elements_after"]),
        store_path=str(entry.path),
        built=built,
    )


def _elf_members(info: WheelInfo) -> list[str]:
    out = []
    with zipfile.ZipFile(info.path) as zf:
        for m in info.members:
            if m.is_dir() or m.file_size < 64:
                continue
            with zf.open(m) as f:
                if f.read(4) == ELF_MAGIC:
                    out.append(m.filename)
    return out


# -- assembling a wheel -----------------------------------------------------


def source_date_epoch() -> float | None:
    """SOURCE_DATE_EPOCH, when set."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if not env:
        return None
    try:
        return float(env)
    except ValueError:
        raise InputError(f"SOURCE_DATE_EPOCH is not a number: {env!r}") from None


def _timestamp(info: WheelInfo) -> float:
    epoch = source_date_epoch()
    if epoch is not None:
        return epoch
    import calendar

    newest = max(m.date_time for m in info.members)
    return float(calendar.timegm((*newest, 0, 0, 0)))


def provenance(source: dict[str, str], opts: BuildOptions, libs: list[LibraryOutcome]) -> bytes:
    """The provenance file's bytes; ``source`` is {"wheel" or "package": name, "sha256": ...}."""
    doc = {
        "schema": PROVENANCE_SCHEMA,
        "schema_version": 1,
        "tool": {"name": "slimwheel", "version": __version__},
        "source": source,
        "targets": [t.name for t in opts.targets],
        "ptx_policy": "keep-newest" if opts.keep_ptx else "only-when-needed",
        "lto_policy": "drop" if opts.drop_lto else "keep",
        "profile_digest": opts.profile_digest,
        "libraries": [
            {
                "path": lib.member,
                "sha256_before": lib.sha256_before,
                "sha256_after": lib.sha256_after,
                "bytes_before": lib.bytes_before,
                "bytes_after": lib.bytes_after,
                "elements_before": lib.elements_before,
                "elements_after": lib.elements_after,
            }
            for lib in sorted(libs, key=lambda x: x.member)
            if lib.has_code
        ],
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _rewrite_metadata(text: str, version: str) -> bytes:
    new, n = re.subn(r"^Version:.*$", f"Version: {version}", text, count=1, flags=re.M)
    if n != 1:
        raise InputError("METADATA has no Version line")
    return new.encode()


def assemble(
    info: WheelInfo, opts: BuildOptions, libs: list[LibraryOutcome], outdir: str
) -> BuildResult:
    version = labelled_version(info.version, opts.label)
    new_di = f"{escape_name(info.name)}-{version}.dist-info"
    out_name = f"{escape_name(info.name)}-{version}-{info.tags}.whl"
    slim = {lib.member: lib for lib in libs if lib.has_code}
    by_name = {m.filename: m for m in info.members if not m.is_dir()}
    plan: dict[str, RawMember | NewMember] = {}
    sources: dict[str, str] = {}  # new name -> old name
    old_di = info.dist_info
    with zipfile.ZipFile(info.path) as zf:
        metadata = zf.read(f"{old_di}/METADATA").decode("utf-8")
    for old, m in by_name.items():
        if old.startswith(f"{old_di}/"):
            rest = old[len(old_di) + 1 :]
            if rest in ("RECORD", "RECORD.jws", "RECORD.p7s", PROVENANCE):
                continue
            new = f"{new_di}/{rest}"
        else:
            new = old
        sources[new] = old
        if old in slim:
            plan[new] = NewMember(path=slim[old].store_path)
        elif old == f"{old_di}/METADATA":
            plan[new] = NewMember(data=_rewrite_metadata(metadata, str(version)))
        else:
            plan[new] = RawMember(m)
    source_sha = file_sha256(info.path)
    plan[f"{new_di}/{PROVENANCE}"] = NewMember(
        data=provenance({"wheel": info.filename, "sha256": source_sha}, opts, libs)
    )
    order = canonical_order(plan, new_di)
    dest = os.path.join(outdir, out_name)
    record: list[tuple[str, str, int | None]] = []
    installed = 0
    with atomic_output(dest, mode=0o644) as out, open(info.path, "rb") as src:
        w = WheelWriter(out, timestamp=_timestamp(info))
        for name in order[:-1]:
            item = plan[name]
            if isinstance(item, RawMember):
                w.add_raw(name, src, item.src, member_mode(item.src))
                entry = info.record[sources[name]]
                record.append((name, entry.hash, entry.size))
                installed += item.src.file_size
            else:
                mode = member_mode(by_name[sources[name]]) if name in sources else 0o100644
                chunks = file_chunks(item.path) if item.path else iter([item.data or b""])
                h, size = w.add_stream(name, chunks, mode)
                record.append((name, h, size))
                installed += size
        record.append((order[-1], "", None))
        body = write_record(record)
        w.add_stream(order[-1], iter([body]), 0o100644)
        installed += len(body)
        w.close()
    before = sum(m.file_size for m in info.members)
    return BuildResult(
        source=info.path,
        output=dest,
        passthrough=False,
        wheel_bytes_before=os.path.getsize(info.path),
        wheel_bytes_after=os.path.getsize(dest),
        installed_bytes_before=before,
        installed_bytes_after=installed,
        libraries=libs,
    )


def _passthrough(info: WheelInfo, libs: list[LibraryOutcome], outdir: str) -> BuildResult:
    dest = os.path.join(outdir, info.filename)
    with atomic_output(dest, mode=0o644) as out, open(info.path, "rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)
    size = os.path.getsize(info.path)
    installed = sum(m.file_size for m in info.members)
    return BuildResult(info.path, dest, True, size, size, installed, installed, libs)


# -- the whole build --------------------------------------------------------


class Progress(Protocol):
    """Told how many library bytes each wheel holds, then as each library is done."""

    def start(self, wheel: str, total: int) -> None: ...

    def advance(self, wheel: str, member: str, nbytes: int) -> None: ...


def build_wheels(
    wheels: Sequence[str],
    outdir: str,
    opts: BuildOptions,
    store: Store,
    *,
    progress: Progress | None = None,
) -> list[BuildResult]:
    """Build every wheel. Everything is validated before anything is written.

    Three phases, each spread over ``opts.jobs`` processes: validate the input
    wheels (every RECORD hash), slim their libraries through the store, and
    write the output wheels.
    """
    with worker_pool(opts.jobs) as run:
        infos: list[WheelInfo] = []
        problems: list[str] = []
        for got in run(open_wheel, [(w,) for w in wheels]):
            if isinstance(got, SlimwheelError):
                problems.append(str(got))
            else:
                infos.append(got)
        if problems:
            raise InputError(" | ".join(problems))
        infos = _unique(infos)
        os.makedirs(outdir, exist_ok=True)
        jobs = [(info, m) for info in infos for m in _elf_members(info)]
        if progress:
            for info in infos:
                sizes = {m.filename: m.file_size for m in info.members}
                progress.start(info.path, sum(sizes[m] for i, m in jobs if i is info))
        args = [(i.path, m, str(store.root), opts) for i, m in jobs]
        outcomes: dict[tuple[str, str], LibraryOutcome] = {}
        for (info, m), got in zip(jobs, run(_slim_member, args), strict=True):
            if isinstance(got, SlimwheelError):
                raise got
            outcomes[(info.path, m)] = got
            if progress:
                progress.advance(info.path, m, got.bytes_before)
        per_wheel = [[o for (p, _m), o in outcomes.items() if p == info.path] for info in infos]
        todo = [
            (info, opts, libs, outdir)
            for info, libs in zip(infos, per_wheel, strict=True)
            if any(lib.has_code for lib in libs)
        ]
        built = iter(run(assemble, todo))
        results = []
        for info, libs in zip(infos, per_wheel, strict=True):
            if any(lib.has_code for lib in libs):
                got = next(built)
                if isinstance(got, SlimwheelError):
                    raise got
                results.append(got)
            else:
                results.append(_passthrough(info, libs, outdir))
        return results


def _unique(infos: list[WheelInfo]) -> list[WheelInfo]:
    """One input per wheel file name: the same file twice is built once; two
    different files of one name would write one output, so they are refused."""
    by_name: dict[str, WheelInfo] = {}
    for info in infos:
        seen = by_name.get(info.filename)
        if seen is None:
            by_name[info.filename] = info
        elif file_sha256(seen.path) != file_sha256(info.path):
            raise InputError(
                f"two different wheels named {info.filename}: {seen.path} and {info.path}"
            )
    return list(by_name.values())


@contextlib.contextmanager
def worker_pool(
    jobs: int,
) -> Iterator[Callable[[Callable[..., Any], list[tuple[Any, ...]]], list[Any]]]:
    """``run(fn, argument tuples)`` -> results in order; a SlimwheelError is
    returned in its result's place (so every problem can be reported)."""

    call = _call_in_worker
    if jobs <= 1:
        yield lambda fn, argv: [call(fn, a) for a in argv]
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:

        def run(fn: Callable[..., Any], argv: list[tuple[Any, ...]]) -> list[Any]:
            if len(argv) <= 1:
                return [call(fn, a) for a in argv]
            futures = [pool.submit(_call_in_worker, fn, a) for a in argv]
            return [f.result() for f in futures]

        yield run


def _call_in_worker(fn: Callable[..., Any], a: tuple[Any, ...]) -> Any:
    try:
        return fn(*a)
    except SlimwheelError as exc:
        return exc


def download(
    requirements: Sequence[str],
    dest: str,
    *,
    deps: bool,
    pip_args: Sequence[str] = (),
) -> list[str]:
    """Fetch wheels with pip (the user's pip configuration applies)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--only-binary=:all:",
        "-d",
        dest,
        "--disable-pip-version-check",
    ]
    if not deps:
        cmd.append("--no-deps")
    cmd += [*pip_args, *requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        raise InputError(f"pip download failed: {last.strip()}")
    return sorted(str(p) for p in Path(dest).glob("*.whl"))
