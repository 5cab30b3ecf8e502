"""conda packages for tests, made by conda-package-handling (the reference
implementation of the formats), so slimwheel reads archives it did not write."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from conda_package_handling import api as cph


def make_package(
    where: Path,
    name: str,
    files: dict[str, Path | bytes],
    *,
    fmt: str = ".conda",
    version: str = "1.0",
    build: str = "0",
    links: dict[str, str] | None = None,
    hardlinks: dict[str, str] | None = None,
    subdir: str = "linux-64",
) -> Path:
    """A package of ``files`` (relative path -> source file or content),
    ``links`` (relative path -> symlink target) and ``hardlinks`` (relative
    path -> another of ``files``; the tar stores a hard link), with index.json
    and paths.json."""
    src = where / f"src-{name}-{version}-{build}{fmt}"
    if src.exists():
        shutil.rmtree(src)
    (src / "info").mkdir(parents=True)
    entries = []
    for rel, content in sorted(files.items()):
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, dest)
        else:
            dest.write_bytes(content)
        os.utime(dest, (1_700_000_000, 1_700_000_000))
        data = dest.read_bytes()
        entries.append(
            {
                "_path": rel,
                "path_type": "hardlink",
                "sha256": hashlib.sha256(data).hexdigest(),
                "size_in_bytes": len(data),
            }
        )
    for rel, target in sorted((hardlinks or {}).items()):
        os.link(src / target, src / rel)
        first = next(e for e in entries if e["_path"] == target)
        entries.append({**first, "_path": rel})
    for rel, target in sorted((links or {}).items()):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, src / rel)
        entries.append({"_path": rel, "path_type": "softlink"})
    entries.sort(key=lambda e: e["_path"])
    index = {
        "name": name,
        "version": version,
        "build": build,
        "build_number": 0,
        "depends": [],
        "license": "MIT",
        "subdir": subdir,
        "timestamp": 1_700_000_000_000,
    }
    if subdir != "noarch":
        index.update(arch="x86_64", platform="linux")
    else:
        index["noarch"] = "generic"
    (src / "info/index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    (src / "info/paths.json").write_text(
        json.dumps({"paths": entries, "paths_version": 1}, indent=2, sort_keys=True)
    )
    (src / "info/files").write_text("".join(e["_path"] + "\n" for e in entries))
    file_list = sorted(
        str(p.relative_to(src)) for p in src.rglob("*") if p.is_file() or p.is_symlink()
    )
    out = where / f"{name}-{version}-{build}{fmt}"
    if out.exists():
        out.unlink()
    cph.create(str(src), file_list, out.name, out_folder=str(where))
    shutil.rmtree(src)
    return out
