"""A static package index of slim wheels, one per target set.

pip prefers the higher local version label when several are offered
(``+sm90`` over ``+sm80`` whatever the GPU), so every target set gets its
own index: ``SITE/<targets>/simple/``. Wheels without device code (no
slimwheel provenance) are listed in ``SITE/simple/`` and in every target
index too, so one ``--index-url`` serves a whole environment. Files live
once, in ``SITE/files/``.

Each project page follows PEP 503 (HTML; normalized names; ``#sha256=``
fragments; ``data-requires-python``), PEP 629 (repository version meta),
PEP 691 (JSON, as ``index.v1.json`` beside ``index.html``; a server picks
by the Accept header, see ``serve``), PEP 658/714 (``<wheel>.metadata``
files, ``data-core-metadata`` and ``core-metadata`` with their hashes) and
PEP 700 (``versions``, ``size``). Output is deterministic.

An update builds the new site in a temporary tree beside SITE, reusing (hard
linking) every unchanged file and page, then swaps it in, so a reader never
sees half a site and unchanged pages keep their modification times.
"""

from __future__ import annotations

import ctypes
import hashlib
import html
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from packaging.utils import canonicalize_name
from packaging.version import Version

from .errors import InputError, SlimwheelError
from .files import parse_json
from .store import file_sha256
from .wheel import MAX_METADATA_BYTES, open_wheel, read_text_member, rewrite_wheel

PLAIN = "simple"
REPOSITORY_VERSION = "1.1"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "application/vnd.pypi.simple.v1+html"


class PublishError(InputError):
    """The wheels cannot be published as asked."""


@dataclass(frozen=True, slots=True)
class IndexedWheel:
    path: Path
    filename: str
    project: str  # normalized
    version: Version
    sha256: str
    size: int
    requires_python: str | None
    metadata: bytes
    targets: str | None  # "sm_90", "sm_80-sm_90"; None: no device code

    @property
    def metadata_sha256(self) -> str:
        return hashlib.sha256(self.metadata).hexdigest()


def read_wheel(path: Path) -> IndexedWheel:
    info = open_wheel(str(path), check_hashes=False)
    where = str(path)
    with zipfile.ZipFile(path) as zf:
        text = read_text_member(zf, f"{info.dist_info}/METADATA", MAX_METADATA_BYTES, where)
        metadata = text.encode("utf-8")
        prov_name = f"{info.dist_info}/slimwheel.json"
        targets: str | None = None
        if prov_name in zf.namelist():
            raw = read_text_member(zf, prov_name, MAX_PROVENANCE_BYTES, where).encode()
            try:
                prov = parse_json(raw, f"{where}:{prov_name}", limit=MAX_PROVENANCE_BYTES)
                targets = provenance_targets(prov["targets"], where)  # type: ignore[index]
            except (KeyError, TypeError) as exc:
                raise PublishError(f"unreadable slimwheel.json ({exc})", path=where) from None
    name = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.lower().startswith("name:")),
        None,
    )
    if name is None or canonicalize_name(name) != canonicalize_name(info.name):
        raise PublishError(
            f"METADATA names project {name!r}, the file name {info.name!r}", path=str(path)
        )
    requires = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in text.splitlines()
            if ln.lower().startswith("requires-python:")
        ),
        None,
    )
    return IndexedWheel(
        path,
        path.name,
        canonicalize_name(info.name),
        info.version,
        file_sha256(path),
        path.stat().st_size,
        requires,
        metadata,
        targets,
    )


#: Provenance files are a few KB.
MAX_PROVENANCE_BYTES = 16 << 20

_TARGET = re.compile(r"sm_[0-9]{2,3}[af]?")


def provenance_targets(value: object, where: str) -> str:
    """The provenance's targets as a path component (``sm_80-sm_90``); untrusted input."""
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(t, str) and _TARGET.fullmatch(t) for t in value)
    ):
        raise PublishError(
            f"slimwheel.json: targets is not a list of sm_NN: {value!r}"[:200], path=where
        )
    return "-".join(sorted(set(value)))


@dataclass(frozen=True, slots=True)
class FileContent:
    """A file a site holds a copy (hard link) of, with its known SHA-256."""

    path: Path
    sha256: str


Contents = dict[str, "bytes | FileContent"]


class Published(Protocol):
    """What an index lists: a file, by name and hash."""

    @property
    def path(self) -> Path: ...

    @property
    def filename(self) -> str: ...

    @property
    def sha256(self) -> str: ...


P = TypeVar("P", bound=Published)


def collect(
    sources: Iterable[Path], wanted: Callable[[str], bool], read: Callable[[Path], P]
) -> list[P]:
    """Every file of the sources (files, or directories of them) whose name is
    ``wanted``, read; one file per name. All problems are reported in one error."""
    by_name: dict[str, P] = {}
    problems = []
    for src in sources:
        files = (
            sorted(f for f in src.iterdir() if wanted(f.name) and f.is_file())
            if src.is_dir()
            else [src]
        )
        for f in files:
            try:
                item = read(f)
            except SlimwheelError as exc:
                problems.append(str(exc))
                continue
            seen = by_name.get(item.filename)
            if seen is not None and seen.sha256 != item.sha256:
                problems.append(f"two different files named {item.filename}: {seen.path} and {f}")
            by_name.setdefault(item.filename, item)
    if problems:
        raise PublishError(" | ".join(problems))
    return sorted(by_name.values(), key=lambda item: item.filename)


def collect_wheels(sources: Iterable[Path]) -> list[IndexedWheel]:
    """Every wheel of the sources, validated; one file per name."""
    return collect(sources, lambda name: name.endswith(".whl"), read_wheel)


# -- pages --------------------------------------------------------------------


def _html_page(title: str, links: list[str]) -> bytes:
    body = "\n".join(links)
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        f'<meta name="pypi:repository-version" content="{REPOSITORY_VERSION}">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    ).encode()


def _json(doc: object) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def project_pages(project: str, wheels: list[IndexedWheel], files_url: str) -> dict[str, bytes]:
    links = []
    files = []
    for w in sorted(wheels, key=lambda w: (w.version, w.filename)):
        url = f"{files_url}{w.filename}"
        attrs = [f'href="{html.escape(url)}#sha256={w.sha256}"']
        if w.requires_python:
            attrs.append(f'data-requires-python="{html.escape(w.requires_python)}"')
        attrs.append(f'data-dist-info-metadata="sha256={w.metadata_sha256}"')
        attrs.append(f'data-core-metadata="sha256={w.metadata_sha256}"')
        links.append(f"<a {' '.join(attrs)}>{html.escape(w.filename)}</a><br>")
        entry: dict[str, object] = {
            "filename": w.filename,
            "url": url,
            "hashes": {"sha256": w.sha256},
            "core-metadata": {"sha256": w.metadata_sha256},
            "dist-info-metadata": {"sha256": w.metadata_sha256},
            "size": w.size,
        }
        if w.requires_python:
            entry["requires-python"] = w.requires_python
        files.append(entry)
    versions = sorted({w.version for w in wheels})
    doc = {
        "meta": {"api-version": REPOSITORY_VERSION},
        "name": project,
        "versions": [str(v) for v in versions],
        "files": files,
    }
    return {"index.html": _html_page(f"Links for {project}", links), "index.v1.json": _json(doc)}


def root_pages(projects: Sequence[str]) -> dict[str, bytes]:
    links = [f'<a href="{p}/">{p}</a><br>' for p in projects]
    doc = {
        "meta": {"api-version": REPOSITORY_VERSION},
        "projects": [{"name": p} for p in projects],
    }
    return {"index.html": _html_page("Simple index", links), "index.v1.json": _json(doc)}


def site_contents(wheels: list[IndexedWheel]) -> Contents:
    """Every file of the site: relative path -> bytes, or the wheel to copy."""
    out: Contents = {}
    for w in wheels:
        out[f"files/{w.filename}"] = FileContent(w.path, w.sha256)
        out[f"files/{w.filename}.metadata"] = w.metadata
    plain = [w for w in wheels if w.targets is None]
    target_sets = sorted({w.targets for w in wheels if w.targets})
    indexes: dict[str, list[IndexedWheel]] = {PLAIN: plain}
    for t in target_sets:
        indexes[f"{t}/{PLAIN}"] = plain + [w for w in wheels if w.targets == t]
    for base, members in indexes.items():
        by_project: dict[str, list[IndexedWheel]] = defaultdict(list)
        for w in members:
            by_project[w.project].append(w)
        depth = base.count("/") + 2  # from <base>/<project>/ back to the site root
        files_url = "../" * depth + "files/"
        for name, page in root_pages(sorted(by_project)).items():
            out[f"{base}/{name}"] = page
        for project, ws in by_project.items():
            for name, page in project_pages(project, ws, files_url).items():
                out[f"{base}/{project}/{name}"] = page
    return out


# -- writing ------------------------------------------------------------------


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return bool(fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0)


def write_site(site: Path, contents: Contents) -> dict[str, int]:
    """Make ``site`` hold exactly ``contents``; returns counts of written / reused files."""
    site = site.resolve()
    site.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{site.name}-", dir=site.parent))
    stats = {"written": 0, "reused": 0}
    try:
        for rel, content in sorted(contents.items()):
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            old = site / rel
            if isinstance(content, FileContent):
                same = (
                    old.is_file()
                    and old.stat().st_size == content.path.stat().st_size
                    and file_sha256(old) == content.sha256
                )
                src = old if same else content.path
                try:
                    os.link(src, dest)
                except OSError:
                    shutil.copy2(src, dest)
                if same:
                    stats["reused"] += 1
                    continue
            elif old.is_file() and old.read_bytes() == content:
                os.link(old, dest)  # unchanged: keep the file, and its mtime
                stats["reused"] += 1
                continue
            else:
                dest.write_bytes(content)
            stats["written"] += 1
        for d in sorted(tmp.rglob("*"), reverse=True):
            if d.is_dir():
                d.chmod(0o755)
        if site.exists():
            if not _exchange(tmp, site):
                old = site.with_name(site.name + ".old")
                os.rename(site, old)
                os.rename(tmp, site)
                tmp = old
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, site)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


def build_index(
    sources: Sequence[Path], site: Path, *, variants: bool = False
) -> tuple[list[IndexedWheel], dict[str, int]]:
    wheels = collect_wheels(sources)
    contents = site_contents(wheels)
    if not variants:
        return wheels, write_site(site, contents)
    site.resolve().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=site.resolve().parent, prefix=".variants-") as work:
        contents.update(variant_contents(wheels, Path(work)))
        return wheels, write_site(site, contents)


# -- wheel variants (experimental) ------------------------------------------------

#: The draft followed: variantlib 0.2.x's variants.json schema (PEP 817, split into
#: PEP 825 and later drafts), and NVIDIA's provider (wheelnext/nvidia-variant-provider).
VARIANT_SCHEMA = "https://variants-schema.wheelnext.dev/v0.2.0.json"
NVIDIA_PROVIDER = {
    "requires": ["nvidia-variant-provider>=0.0.1,<1.0.0"],
    "plugin-api": "nvidia_variant_provider.plugin:NvidiaVariantPlugin",
}


def variant_label(targets: str) -> str:
    """``sm_80-sm_90`` -> ``sm80_sm90`` (a variant label: [a-z0-9_.], at most 16)."""
    label = "_".join(t.replace("_", "") for t in targets.split("-"))
    return label[:16]


def variant_properties(targets: str) -> dict[str, dict[str, list[str]]]:
    """``nvidia :: sm_arch :: 90_real`` for each target GPU."""
    return {"nvidia": {"sm_arch": [f"{t[3:]}_real" for t in targets.split("-")]}}


def _variant_doc(variants: dict[str, dict[str, dict[str, list[str]]]]) -> dict[str, object]:
    return {
        "$schema": VARIANT_SCHEMA,
        "default-priorities": {"namespace": ["nvidia"]},
        "providers": {"nvidia": NVIDIA_PROVIDER},
        "variants": variants,
    }


def make_variant_wheel(w: IndexedWheel, dest_dir: Path) -> tuple[Path, str]:
    """A copy of a target wheel as a wheel variant: the public version, the
    variant label as the file name's last part, ``variant.json`` in ``.dist-info``."""
    assert w.targets is not None
    label = variant_label(w.targets)
    info = open_wheel(str(w.path), check_hashes=False)
    variant_json = (
        json.dumps(_variant_doc({label: variant_properties(w.targets)}), indent=1, sort_keys=True)
        + "\n"
    ).encode()
    out, _installed = rewrite_wheel(
        info,
        dest_dir,
        version=Version(w.version.public),
        name_suffix=f"-{label}",
        dist_info_files={"variant.json": variant_json},
    )
    return Path(out), label


def variant_contents(wheels: list[IndexedWheel], work: Path) -> Contents:
    """``variants/simple/``: every target build of a version as a variant of it,
    with ``<name>-<version>-variants.json`` beside the files."""
    out: Contents = {}
    by_version: dict[tuple[str, str], list[tuple[IndexedWheel, Path, str]]] = defaultdict(list)
    for w in wheels:
        if w.targets is None:
            continue
        path, label = make_variant_wheel(w, work)
        by_version[(w.project, w.version.public)].append((w, path, label))
    projects = sorted({p for p, _ in by_version})
    out.update({f"variants/{PLAIN}/{k}": v for k, v in root_pages(projects).items()})
    for project in projects:
        links, files = [], []
        for (proj, version), items in sorted(by_version.items()):
            if proj != project:
                continue
            first = items[0][0]
            doc = _variant_doc(
                {label: variant_properties(w.targets or "") for w, _p, label in items}
            )
            vjson = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
            vname = f"{first.path.name.split('-', 1)[0]}-{version}-variants.json"
            out[f"variants/files/{vname}"] = vjson
            entries: list[tuple[str, Path | None, str]] = [
                (p.name, p, file_sha256(p)) for _w, p, _l in items
            ]
            entries.append((vname, None, hashlib.sha256(vjson).hexdigest()))
            for fname, vpath, digest in sorted(entries, key=lambda e: e[0]):
                if vpath is not None:
                    out[f"variants/files/{fname}"] = FileContent(vpath, digest)
                links.append(
                    f'<a href="../../files/{html.escape(fname)}#sha256={digest}">'
                    f"{html.escape(fname)}</a><br>"
                )
                files.append(
                    {"filename": fname, "url": f"../../files/{fname}", "hashes": {"sha256": digest}}
                )
        out[f"variants/{PLAIN}/{project}/index.html"] = _html_page(f"Links for {project}", links)
        out[f"variants/{PLAIN}/{project}/index.v1.json"] = _json(
            {"meta": {"api-version": REPOSITORY_VERSION}, "name": project, "files": files}
        )
    return out
