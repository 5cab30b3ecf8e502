"""A local conda channel of slim packages: one for every GPU, or one per target set.

One channel (the default): ``CHANNEL/<subdir>/`` lists the originals and
every slim build. A slim build depends on ``__cuda_arch`` (the GPUs it
serves, ``serves.py``) and has a higher build number than its original, so a
solver on a host whose ``__cuda_arch`` it matches installs it, and one on any
other host (another GPU, no GPU, a client without the virtual package)
installs the original. A slim build made before slimwheel wrote that
dependency is refused: it would be installed everywhere.

Per target set (``per_target``): ``CHANNEL/<subdir>/`` (and
``CHANNEL/noarch/``) lists the packages without slimwheel provenance;
``CHANNEL/<targets>/<subdir>/`` lists the slim builds for that target set,
plus the plain packages no slim build of the same name, version and subdir
replaces, so ``-c file:///.../CHANNEL/sm_90`` serves a whole environment and
never offers the fat build of a slimmed package.

Every channel has ``noarch/repodata.json``, as clients require. Each
``repodata.json`` holds a record per package: its ``info/index.json`` plus
``md5``, ``sha256`` and ``size``. Package files are hard links to their
source (copies across file systems). Output is deterministic, and written
like the wheel index (``index.write_site``): built beside, swapped in.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .build import PROVENANCE
from .conda_build import is_cuda_arch
from .condapkg import MAX_INFO_BYTES, CondaPackageError, package_format, read_info, stem_of
from .files import parse_json
from .index import Contents, FileContent, PublishError, collect, provenance_targets, write_site

NOARCH = "noarch"


@dataclass(frozen=True, slots=True)
class IndexedPackage:
    path: Path
    filename: str
    subdir: str
    record: dict[str, Any]  # the repodata record
    targets: str | None  # "sm_90", "sm_80-sm_90"; None: no slimwheel provenance
    chosen_by_arch: bool = False  # the build says which hosts take it (__cuda_arch)

    @property
    def sha256(self) -> str:
        return str(self.record["sha256"])

    @property
    def key(self) -> tuple[str, str, str]:
        return (str(self.record["name"]), str(self.record["version"]), self.subdir)


def _digests(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def read_package(path: Path) -> IndexedPackage:
    where = str(path)
    prov_name = f"info/{PROVENANCE}"
    info = read_info(path, ("info/index.json", prov_name))
    if "info/index.json" not in info:
        raise CondaPackageError("no info/index.json", path=where)
    index = parse_json(info["info/index.json"], f"{where}:info/index.json", limit=MAX_INFO_BYTES)
    if not isinstance(index, dict) or not all(
        isinstance(index.get(k), str) and index[k] for k in ("name", "version", "build")
    ):
        raise CondaPackageError("info/index.json lacks name, version or build", path=where)
    stem = f"{index['name']}-{index['version']}-{index['build']}"
    if stem != stem_of(path):
        raise CondaPackageError(
            f"info/index.json names {stem}, the file name {stem_of(path)}", path=where
        )
    subdir = str(index.get("subdir") or NOARCH)
    if not subdir or "/" in subdir or subdir.startswith("."):
        raise CondaPackageError(f"info/index.json: bad subdir {subdir!r}", path=where)
    targets = None
    chosen = False
    if prov_name in info:
        prov = parse_json(info[prov_name], f"{where}:{prov_name}", limit=MAX_INFO_BYTES)
        try:
            if prov["libraries"]:  # type: ignore[index]
                targets = provenance_targets(prov["targets"], where)  # type: ignore[index]
            chosen = isinstance(prov, dict) and isinstance(prov.get("installer"), dict)
        except (KeyError, TypeError, AttributeError) as exc:
            raise PublishError(f"unreadable {prov_name} ({exc})", path=where) from None
    md5, sha = _digests(path)
    record = dict(index)
    record.update(md5=md5, sha256=sha, size=path.stat().st_size, subdir=subdir)
    return IndexedPackage(path, path.name, subdir, record, targets, chosen)


def collect_packages(sources: Iterable[Path]) -> list[IndexedPackage]:
    """Every conda package of the sources, read; one file per name."""
    return collect(sources, lambda name: package_format(name) is not None, read_package)


def repodata(subdir: str, packages: Sequence[IndexedPackage]) -> bytes:
    doc = {
        "info": {"subdir": subdir},
        "packages": {p.filename: p.record for p in packages if p.filename.endswith(".tar.bz2")},
        "packages.conda": {p.filename: p.record for p in packages if p.filename.endswith(".conda")},
        "removed": [],
        "repodata_version": 1,
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _without_cuda_arch(p: IndexedPackage) -> IndexedPackage:
    depends = p.record.get("depends")
    if not isinstance(depends, list):
        return p
    kept = [d for d in depends if not is_cuda_arch(d)]
    return replace(p, record={**p.record, "depends": kept})


def channel_contents(packages: list[IndexedPackage], *, per_target: bool = False) -> Contents:
    """Every file of the channels: relative path -> bytes, or the package to link."""
    plain = [p for p in packages if p.targets is None]
    channels: dict[str, list[IndexedPackage]] = {"": plain}
    if not per_target:
        for p in packages:
            if p.targets is not None and not p.chosen_by_arch:
                raise PublishError(
                    "a slim build without a __cuda_arch dependency (made by an older "
                    "slimwheel): every host would install it; build it again, or use "
                    "--per-target",
                    path=str(p.path),
                )
        channels[""] = list(packages)
    for t in sorted({p.targets for p in packages if p.targets}) if per_target else ():
        # The channel is chosen for the GPU already: its records do without __cuda_arch
        # (a repodata patch), so clients without that virtual package install them too.
        slim = [_without_cuda_arch(p) for p in packages if p.targets == t]
        replaced = {p.key for p in slim}
        channels[f"{t}/"] = slim + [p for p in plain if p.key not in replaced]
    out: Contents = {}
    for base, members in channels.items():
        by_subdir: dict[str, list[IndexedPackage]] = defaultdict(list)
        for p in members:
            by_subdir[p.subdir].append(p)
        by_subdir.setdefault(NOARCH, [])
        for subdir, pkgs in sorted(by_subdir.items()):
            out[f"{base}{subdir}/repodata.json"] = repodata(subdir, pkgs)
            for p in pkgs:
                out[f"{base}{subdir}/{p.filename}"] = FileContent(p.path, p.sha256)
    return out


def build_channel(
    sources: Sequence[Path], channel: Path, *, per_target: bool = False
) -> tuple[list[IndexedPackage], dict[str, int]]:
    packages = collect_packages(sources)
    return packages, write_site(channel, channel_contents(packages, per_target=per_target))
