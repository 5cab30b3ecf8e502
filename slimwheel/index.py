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
import shutil
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

from .errors import InputError, SlimwheelError
from .store import file_sha256
from .wheel import open_wheel

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
    with zipfile.ZipFile(path) as zf:
        metadata = zf.read(f"{info.dist_info}/METADATA")
        try:
            prov = json.loads(zf.read(f"{info.dist_info}/slimwheel.json"))
            targets: str | None = "-".join(sorted(prov["targets"]))
        except KeyError:
            targets = None
        except (ValueError, TypeError) as exc:
            raise PublishError(f"unreadable slimwheel.json ({exc})", path=str(path)) from None
    text = metadata.decode("utf-8", "replace")
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


def collect_wheels(sources: Iterable[Path]) -> list[IndexedWheel]:
    """Every wheel of the sources, validated; one file per name."""
    by_name: dict[str, IndexedWheel] = {}
    problems = []
    for src in sources:
        files = sorted(src.glob("*.whl")) if src.is_dir() else [src]
        for f in files:
            try:
                w = read_wheel(f)
            except SlimwheelError as exc:
                problems.append(str(exc))
                continue
            seen = by_name.get(w.filename)
            if seen is not None and seen.sha256 != w.sha256:
                problems.append(f"two different files named {w.filename}: {seen.path} and {w.path}")
            by_name.setdefault(w.filename, w)
    if problems:
        raise PublishError(" | ".join(problems))
    return sorted(by_name.values(), key=lambda w: w.filename)


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


def site_contents(wheels: list[IndexedWheel]) -> dict[str, bytes | Path]:
    """Every file of the site: relative path -> bytes, or the wheel to copy."""
    out: dict[str, bytes | Path] = {}
    for w in wheels:
        out[f"files/{w.filename}"] = w.path
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


def write_site(site: Path, contents: dict[str, bytes | Path]) -> dict[str, int]:
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
            if isinstance(content, Path):
                same = (
                    old.is_file()
                    and old.stat().st_size == content.stat().st_size
                    and (file_sha256(old) == file_sha256(content))
                )
                src = old if same else content
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


def build_index(sources: Sequence[Path], site: Path) -> tuple[list[IndexedWheel], dict[str, int]]:
    wheels = collect_wheels(sources)
    return wheels, write_site(site, site_contents(wheels))
