"""How installers tell a slim build from its original: its installer-facing identity.

A slim wheel carries a local version label (``2.14.1+sm90``) and, published
as a wheel variant, a variant label (``variant.json``); a slim conda package
carries a build string (``cuda130_0_sm90``) and a ``__cuda_arch`` dependency.
Read here from wheels, conda packages, installed distributions (their
``.dist-info``) and conda prefixes (``conda-meta``), for ``inspect`` and
``status``. Everything read is untrusted: sizes are capped, malformed files
are reported in one line.
"""

from __future__ import annotations

import importlib.metadata
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from .build import PROVENANCE
from .conda_build import is_cuda_arch
from .condapkg import package_format, read_info
from .env import MAX_RECORD_BYTES
from .errors import InputError
from .files import ZIP_ERRORS, parse_json, read_capped, read_json

#: The most bytes read of one metadata file (provenance, variant.json, a record).
MAX_META_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class BuildIdentity:
    where: str
    kind: str  # "wheel", "conda package", "installed", "conda prefix"
    name: str
    version: str
    slim: bool  # slimwheel provenance names libraries it slimmed
    targets: tuple[str, ...] = ()
    local_label: str | None = None
    variant_label: str | None = None
    conda_build: str | None = None
    cuda_arch: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "where": self.where,
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "slim": self.slim,
            "targets": list(self.targets),
            "local_label": self.local_label,
            "variant_label": self.variant_label,
            "conda_build": self.conda_build,
            "cuda_arch": self.cuda_arch,
        }


def _json(data: bytes, where: str) -> dict[str, object]:
    doc = parse_json(data, where, limit=MAX_META_BYTES)
    if not isinstance(doc, dict):
        raise InputError("not a JSON object", path=where)
    return doc


def _provenance(doc: dict[str, object] | None) -> tuple[bool, tuple[str, ...], object]:
    if doc is None:
        return False, (), None
    libs, targets = doc.get("libraries"), doc.get("targets")
    slim = isinstance(libs, list) and bool(libs)
    names = tuple(t for t in targets if isinstance(t, str)) if isinstance(targets, list) else ()
    return slim, names, doc.get("installer")


def _local(version: str) -> str | None:
    try:
        return Version(version).local
    except InvalidVersion:
        return None


def _variant(doc: dict[str, object] | None) -> str | None:
    variants = doc.get("variants") if doc else None
    if isinstance(variants, dict) and len(variants) == 1:
        (label,) = variants
        return str(label)
    return None


def _from_dist_info(
    where: str, kind: str, meta: str, prov: bytes | None, variant: bytes | None
) -> BuildIdentity:
    headers = meta.split("\n\n", 1)[0]  # the body (a description) is not metadata
    fields: dict[str, str] = {}
    for line in headers.splitlines()[:500]:
        if ": " in line and line[:1] not in (" ", "\t"):
            key, value = line.split(": ", 1)
            fields.setdefault(key, value)
    name, version = fields.get("Name", "?"), fields.get("Version", "?")
    p = _json(prov, f"{where}:{PROVENANCE}") if prov is not None else None
    slim, targets, _inst = _provenance(p)
    v = _json(variant, f"{where}:variant.json") if variant is not None else None
    return BuildIdentity(
        where, kind, name, version, slim, targets, _local(version) if slim else None, _variant(v)
    )


def _read_member(zf: zipfile.ZipFile, name: str, where: str) -> bytes | None:
    try:
        info = zf.getinfo(name)
    except KeyError:
        return None
    if info.file_size > MAX_META_BYTES:
        raise InputError(f"{name}: larger than {MAX_META_BYTES} bytes", path=where)
    return zf.read(info)


def wheel_identity(path: str) -> BuildIdentity:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = sorted(
                {
                    n.split("/", 1)[0]
                    for n in zf.namelist()
                    if n.split("/", 1)[0].endswith(".dist-info")
                }
            )
            if len(infos) != 1:
                raise InputError("not one .dist-info", path=path)
            d = infos[0]
            meta = _read_member(zf, f"{d}/METADATA", path) or b""
            return _from_dist_info(
                path,
                "wheel",
                meta.decode("utf-8", "replace"),
                _read_member(zf, f"{d}/{PROVENANCE}", path),
                _read_member(zf, f"{d}/variant.json", path),
            )
    except ZIP_ERRORS as exc:
        raise InputError(f"not a readable wheel ({exc})", path=path) from None


def _conda_record(where: str, kind: str, index: dict[str, object], prov: object) -> BuildIdentity:
    depends = index.get("depends")
    arch = (
        next(
            (d for d in depends if is_cuda_arch(d)),
            None,
        )
        if isinstance(depends, list)
        else None
    )
    slim, targets, installer = _provenance(prov if isinstance(prov, dict) else None)
    build = index.get("build")
    return BuildIdentity(
        where,
        kind,
        str(index.get("name", "?")),
        str(index.get("version", "?")),
        slim or arch is not None,
        targets,
        conda_build=str(build) if build is not None else None,
        cuda_arch=arch
        if arch is not None
        else (
            str(installer["cuda_arch"])
            if isinstance(installer, dict) and installer.get("cuda_arch")
            else None
        ),
    )


def conda_identity(path: str) -> BuildIdentity:
    info = read_info(path, ("info/index.json", f"info/{PROVENANCE}"))
    index = _json(info.get("info/index.json", b"{}"), f"{path}:info/index.json")
    prov = info.get(f"info/{PROVENANCE}")
    return _conda_record(
        path, "conda package", index, _json(prov, f"{path}:info/{PROVENANCE}") if prov else None
    )


def installed_identities(site: Path) -> list[BuildIdentity]:
    """Every distribution of a site-packages that slimwheel built (provenance in its
    .dist-info), as it was installed."""
    out = []
    for d in sorted(site.glob("*.dist-info")):
        prov = d / PROVENANCE
        if not prov.is_file():
            continue
        meta = d / "METADATA"
        variant = d / "variant.json"
        out.append(
            _from_dist_info(
                str(d),
                "installed",
                read_capped(meta, limit=MAX_META_BYTES).decode("utf-8", "replace")
                if meta.is_file()
                else "",
                read_capped(prov, limit=MAX_META_BYTES),
                read_capped(variant, limit=MAX_META_BYTES) if variant.is_file() else None,
            )
        )
    return out


def prefix_identities(prefix: Path) -> list[BuildIdentity]:
    """The conda packages of a prefix that a solver chose by ``__cuda_arch``."""
    out = []
    for meta in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            doc = read_json(meta, limit=MAX_RECORD_BYTES)
        except InputError:
            continue  # status reports the environment; a broken record is not its concern
        if not isinstance(doc, dict):
            continue
        ident = _conda_record(str(meta), "conda prefix", doc, None)
        if ident.cuda_arch:
            out.append(ident)
    return out


def identities(target: str) -> list[BuildIdentity]:
    """The installer-facing identity of what ``inspect`` was given: wheels and conda
    packages (and those in a directory); nothing for a bare library."""
    if os.path.isdir(target):
        files = sorted(os.path.join(target, f) for f in os.listdir(target))
        return [i for f in files if os.path.isfile(f) for i in identities(f)]
    if target.endswith(".whl") and os.path.isfile(target):
        return [wheel_identity(target)]
    if package_format(target) and os.path.isfile(target):
        return [conda_identity(target)]
    if os.path.exists(target):
        return []  # a library
    try:
        dist = importlib.metadata.distribution(target)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return []
    meta = next((f for f in dist.files or () if f.name == "METADATA"), None)
    if meta is None or not meta.parent.name.endswith(".dist-info"):
        return []
    d = Path(str(dist.locate_file(meta))).parent
    return [i for i in installed_identities(d.parent) if i.where == str(d)]


def describe(b: Mapping[str, object]) -> str:
    """One line of a ``BuildIdentity.to_json()``: what installers see."""
    parts = []
    targets = b.get("targets")
    if isinstance(targets, list) and targets:
        parts.append(f"slim build for {','.join(map(str, targets))}")
    elif b.get("slim"):
        parts.append("slim build")
    for key, text in (
        ("local_label", "local label +{}"),
        ("variant_label", "variant {}"),
        ("conda_build", "conda build {}"),
        ("cuda_arch", "chosen by {}"),
    ):
        if b.get(key):
            parts.append(text.format(b[key]))
    return f"{b['name']} {b['version']}: " + ("; ".join(parts) or "not a slim build")
