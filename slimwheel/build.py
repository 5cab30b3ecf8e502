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
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import __version__
from .cached import LibraryOutcome, on_disk, slim_through_store
from .elf import ELF_MAGIC
from .errors import InputError, SlimwheelError
from .policy import SlimPolicy
from .sources import extract_member
from .store import Store, StoreError, file_sha256
from .wheel import (
    Content,
    Deflated,
    WheelInfo,
    deflate_file,
    labelled_version,
    open_wheel,
    record_sha256,
    rewrite_wheel,
)
from .workers import worker_pool
from .write import atomic_output

PROVENANCE = "slimwheel.json"
PROVENANCE_SCHEMA = "slimwheel.provenance"
DEFLATED = "lib.deflate"  # the store's derived form of a library for wheels


@dataclass(frozen=True, slots=True)
class BuildOptions:
    policy: SlimPolicy
    label: str | None = None  # local version label; None keeps the version
    jobs: int = 1


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


# -- input wheels and their libraries (run in worker processes) ----------------------


def _open_wheel(path: str, store_root: str) -> WheelInfo:
    """Validate a wheel; every member's hash is checked once per wheel content."""
    store = Store(store_root)
    sha = file_sha256(path)
    known = store.knows("validated", sha)
    info = open_wheel(path, check_hashes=not known)
    info.sha256 = sha
    if not known:
        store.record("validated", sha)
    return info


@contextlib.contextmanager
def _extracted(store: Store, wheel: str, member: str) -> Iterator[str]:
    with store.tempdir("member-") as tmp, extract_member(wheel, member, str(tmp)) as path:
        yield path


def _slim_member(
    wheel: str, member: str, sha256: str | None, size: int, store_root: str, policy: SlimPolicy
) -> LibraryOutcome:
    store = Store(store_root)
    where = f"{wheel}:{member}"
    if sha256 is not None:  # from the validated RECORD: no need to read the member
        return slim_through_store(
            store,
            policy,
            member=member,
            where=where,
            sha256=sha256,
            size=size,
            source=lambda: _extracted(store, wheel, member),
        )
    with _extracted(store, wheel, member) as path:
        return slim_through_store(
            store,
            policy,
            member=member,
            where=where,
            sha256=file_sha256(path),
            size=size,
            source=on_disk(path),
        )


def _elf_members(info: WheelInfo) -> list[zipfile.ZipInfo]:
    out = []
    with zipfile.ZipFile(info.path) as zf:
        for m in info.members:
            if m.is_dir() or m.file_size < 64:
                continue
            with zf.open(m) as f:
                if f.read(4) == ELF_MAGIC:
                    out.append(m)
    return out


# -- assembling a wheel -----------------------------------------------------


def provenance(
    source: dict[str, str],
    policy: SlimPolicy,
    libs: list[LibraryOutcome],
    installer: dict[str, object] | None = None,
) -> bytes:
    """The provenance file's bytes; ``source`` is {"wheel" or "package": name, "sha256": ...};
    ``installer``: what installers choose the build by (conda build string, ``__cuda_arch``)."""
    doc = {
        "schema": PROVENANCE_SCHEMA,
        "schema_version": 1,
        "tool": {"name": "slimwheel", "version": __version__},
        "source": source,
        **policy.provenance(),
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
            if lib.rewritten
        ],
    }
    if installer is not None:
        doc["installer"] = installer
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def deflated(store: Store, lib: LibraryOutcome) -> Deflated:
    """The slim library's deflated stream, made once and kept in the store."""
    entry = store.lookup(lib.store_key)
    if entry is None:
        raise StoreError(
            f"{lib.member}: its store entry vanished during the build", path=str(store.root)
        )
    path, info = store.derived(entry, DEFLATED, deflate_file)
    return Deflated(
        str(path), int(info["crc"]), int(info["size"]), int(info["uncompressed_size"]), entry.sha256
    )


def assemble(
    info: WheelInfo, opts: BuildOptions, libs: list[LibraryOutcome], outdir: str, store_root: str
) -> BuildResult:
    store = Store(store_root)
    contents: dict[str, Content] = {
        lib.member: deflated(store, lib) for lib in libs if lib.rewritten
    }
    source = {"wheel": info.filename, "sha256": info.sha256 or file_sha256(info.path)}
    dest, installed = rewrite_wheel(
        info,
        outdir,
        version=labelled_version(info.version, opts.label),
        contents=contents,
        dist_info_files={PROVENANCE: provenance(source, opts.policy, libs)},
    )
    return BuildResult(
        source=info.path,
        output=dest,
        passthrough=False,
        wheel_bytes_before=os.path.getsize(info.path),
        wheel_bytes_after=os.path.getsize(dest),
        installed_bytes_before=sum(m.file_size for m in info.members),
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
        root = str(store.root)
        for got in run(_open_wheel, [(w, root) for w in wheels]):
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
                progress.start(info.path, sum(m.file_size for i, m in jobs if i is info))
        pol = opts.policy
        args = [
            (i.path, m.filename, record_sha256(i.record[m.filename].hash), m.file_size, root, pol)
            for i, m in jobs
        ]
        outcomes: dict[tuple[str, str], LibraryOutcome] = {}
        for (info, m), got in zip(jobs, run(_slim_member, args), strict=True):
            if isinstance(got, SlimwheelError):
                raise got
            outcomes[(info.path, m.filename)] = got
            if progress:
                progress.advance(info.path, m.filename, got.bytes_before)
        per_wheel = [[o for (p, _m), o in outcomes.items() if p == info.path] for info in infos]
        todo = [
            (info, opts, libs, outdir, root)
            for info, libs in zip(infos, per_wheel, strict=True)
            if any(lib.rewritten for lib in libs)
        ]
        built = iter(run(assemble, todo))
        results = []
        for info, libs in zip(infos, per_wheel, strict=True):
            if any(lib.rewritten for lib in libs):
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
        elif seen.sha256 != info.sha256:
            raise InputError(
                f"two different wheels named {info.filename}: {seen.path} and {info.path}"
            )
    return list(by_name.values())


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
