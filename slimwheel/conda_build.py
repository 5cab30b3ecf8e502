"""Slim conda packages: ``.conda`` / ``.tar.bz2`` in, the same format out.

Per package: unpack it (validated, ``condapkg.unpack``), slim every library
with device code through the store, and pack it again: ``info/paths.json``
updated (sha256, size) for the changed files, ``info/index.json`` with a
build-string suffix naming the targets (``cuda130_0`` -> ``cuda130_0_sm90``,
so a solver can tell the builds apart; optional), a ``__cuda_arch``
dependency naming the GPUs the build serves (``serves.py``) and a build
number above the original's, so that in one channel a solver installs the
slim build on exactly those hosts and the original anywhere else; a
provenance file ``info/slimwheel.json``. Packages without device code are
copied through. The caller stages the output directory (``write.staged``): the
outputs appear in ``-o`` only once all of them are built.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import re
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .arch import Target
from .build import PROVENANCE, BuildOptions, BuildResult, provenance
from .cached import LibraryOutcome, on_disk, slim_through_store
from .condapkg import Member, Package, pack, unpack
from .elf import ELF_MAGIC, ElfFile, map_file
from .errors import InputError, SlimwheelError
from .fatbin import scan
from .serves import CAPABILITIES, cuda_arch_spec, from_json, package_serves, plan_serves
from .slim import make_plan
from .store import Store, file_sha256
from .wheel import source_date_epoch
from .workers import worker_pool
from .write import atomic_output

#: The conda virtual package of the host's GPUs: the lowest compute capability.
CUDA_ARCH = "__cuda_arch"
#: What a slim build adds to the original's build number (then one per
#: capability it does not serve, so narrower builds rank higher).
BUILD_NUMBER_OFFSET = 100


def build_suffix(label: str) -> str:
    """``sm90`` -> ``_sm90``; ``sm80.sm90.p1a2b3c4d`` -> ``_sm80_sm90_p1a2b3c4d``."""
    return "_" + label.replace(".", "_")


def _is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == ELF_MAGIC


def _dump(doc: object) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _replace_file(path: Path, src: str) -> None:
    path.unlink()
    try:
        os.link(src, path)
    except OSError:
        shutil.copyfile(src, path)


def build_package(
    path: str, outdir: str, opts: BuildOptions, store_root: str, suffix: str
) -> BuildResult:
    """Slim one package into ``outdir``."""
    store = Store(store_root)
    with store.tempdir("conda-") as tmp:
        root = tmp / "pkg"
        root.mkdir()
        pkg = unpack(path, root)
        libs: list[LibraryOutcome] = []
        for m in pkg.members:
            if m.kind != "file" or m.path.startswith("info/") or m.size < 64:
                continue
            if _is_elf(root / m.path):
                file_path = str(root / m.path)
                outcome = slim_through_store(
                    store,
                    opts.policy,
                    member=m.path,
                    where=f"{path}:{m.path}",
                    sha256=m.sha256,
                    size=m.size,
                    source=on_disk(file_path),
                )
                libs.append(outcome)
        installed_before = sum(m.size for m in pkg.members if m.kind in ("file", "hardlink"))
        size = os.path.getsize(path)
        slim = {lib.member: lib for lib in libs if lib.rewritten}
        if not slim:
            dest = os.path.join(outdir, pkg.filename)
            with atomic_output(dest, mode=0o644) as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            return BuildResult(
                path, dest, True, size, size, installed_before, installed_before, libs
            )
        served = _served(root, path, slim, opts)
        for member, lib in slim.items():
            _replace_file(root / member, lib.store_path)
        members = _rewrite_info(root, pkg, slim, opts, suffix, served)
        new_build = pkg.build + suffix
        dest = os.path.join(outdir, f"{pkg.name}-{pkg.version}-{new_build}{pkg.format}")
        pack(root, members, dest, pkg.format)
        installed_after = sum(
            (root / (m.target if m.kind == "hardlink" else m.path)).stat().st_size
            for m in members
            if m.kind in ("file", "hardlink")
        )
        return BuildResult(
            path,
            dest,
            False,
            size,
            os.path.getsize(dest),
            installed_before,
            installed_after,
            libs,
        )


def _served(
    root: Path, path: str, slim: dict[str, LibraryOutcome], opts: BuildOptions
) -> frozenset[Target] | None:
    """The GPUs the slim package serves (``serves.package_serves``), before its
    libraries are replaced: a store entry made before slimwheel recorded it is
    planned again from the original."""
    libs = []
    for member, lib in sorted(slim.items()):
        where = f"{path}:{member}"
        if lib.serves is not None:
            libs.append((from_json(lib.serves[0], where), from_json(lib.serves[1], where)))
            continue
        policy = opts.policy.for_library(posixpath.basename(member), lib.sha256_before)
        with map_file(root / member) as buf:
            plan = make_plan(buf, where, scan(ElfFile(buf, where)), policy)
        libs.append(plan_serves(plan))
    served = package_serves(libs)
    if served is not None and not served:
        names = ", ".join(t.name for t in opts.policy.targets)
        raise InputError(
            f"the slim build would serve no GPU (no device code for {names})", path=path
        )
    return served


def is_cuda_arch(depend: object) -> bool:
    """Whether a conda dependency (a match spec string) names ``__cuda_arch``."""
    if not isinstance(depend, str):
        return False
    m = re.match(r"[A-Za-z0-9_.-]+", depend.strip())
    return m is not None and m.group(0) == CUDA_ARCH


def cuda_arch_depends(served: frozenset[Target]) -> str:
    """The dependency that lets a conda solver choose the build by the host's GPUs."""
    return f"{CUDA_ARCH} {cuda_arch_spec(served)}"


def _rewrite_info(
    root: Path,
    pkg: Package,
    slim: dict[str, LibraryOutcome],
    opts: BuildOptions,
    suffix: str,
    served: frozenset[Target] | None,
) -> list[Member]:
    """index.json, paths.json and the provenance file of the slim package."""
    changed = {
        m.path: slim[m.target if m.kind == "hardlink" else m.path]
        for m in pkg.members
        if (m.target if m.kind == "hardlink" else m.path) in slim and m.kind in ("file", "hardlink")
    }
    paths = copy.deepcopy(pkg.paths)
    for entry in paths["paths"]:
        lib = changed.get(entry["_path"])
        if lib is not None:
            entry["sha256"] = lib.sha256_after
            entry["size_in_bytes"] = lib.bytes_after
    index = dict(pkg.index)
    index["build"] = pkg.build + suffix
    # Above the original: a solver prefers the slim build where it may install it,
    # the narrowest build first where several match.
    number = index.get("build_number", 0)
    base = number if isinstance(number, int) and not isinstance(number, bool) else 0
    index["build_number"] = base + BUILD_NUMBER_OFFSET + len(CAPABILITIES) - len(served or ())
    if served is not None:
        depends = [d for d in index.get("depends") or [] if isinstance(d, str)]
        depends = [d for d in depends if not is_cuda_arch(d)]
        index["depends"] = sorted([*depends, cuda_arch_depends(served)])
    epoch = source_date_epoch()
    stamp = int(epoch) if epoch is not None else max(m.mtime for m in pkg.members)
    source = {"package": pkg.filename, "sha256": file_sha256(pkg.path)}
    files = {
        "info/index.json": _dump(index),
        "info/paths.json": _dump(paths),
        f"info/{PROVENANCE}": provenance(
            source,
            opts.policy,
            list(slim.values()),
            {
                "conda_build": index["build"],
                "conda_build_number": index["build_number"],
                "cuda_arch": cuda_arch_depends(served) if served is not None else None,
            },
        ),
    }
    members = [m for m in pkg.members if m.path not in files]
    old = {m.path: m for m in pkg.members}
    for name, data in files.items():
        target = root / name
        if target.exists():
            target.unlink()
        target.write_bytes(data)
        m = old.get(name)
        members.append(
            Member(name, "file", m.mode if m else 0o644, m.mtime if m else stamp, len(data))
        )
    return members


def build_packages(
    packages: Sequence[str], outdir: str, opts: BuildOptions, store: Store, *, suffix: str
) -> list[BuildResult]:
    """Build every package into ``outdir`` (the caller stages it: ``write.staged``)."""
    os.makedirs(outdir, exist_ok=True)
    names: dict[str, str] = {}
    for p in packages:
        base = os.path.basename(p)
        if base in names and file_sha256(names[base]) != file_sha256(p):
            raise InputError(f"two different packages named {base}: {names[base]} and {p}")
        names.setdefault(base, p)
    with worker_pool(opts.jobs) as run:
        got = run(
            build_package,
            [(p, outdir, replace(opts, jobs=1), str(store.root), suffix) for p in names.values()],
        )
    problems = [str(g) for g in got if isinstance(g, SlimwheelError)]
    if problems:
        raise InputError(" | ".join(problems))
    return list(got)
