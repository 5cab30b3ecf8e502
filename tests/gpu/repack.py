"""Turn an installed distribution back into a wheel (for GPU tests on machines
that have the stack installed but not its wheels, and no network).

The files its RECORD lists inside site-packages are stored (not compressed)
under their recorded paths, with a fresh RECORD; installer files (INSTALLER,
REQUESTED, direct_url.json) and byte-code caches are left out, as are files
installed outside site-packages (console scripts, which pip regenerates).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import zipfile
from importlib import metadata
from pathlib import Path

SKIP = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}


def _tag(wheel_file: str) -> str:
    tags = [ln.split(":", 1)[1].strip() for ln in wheel_file.splitlines() if ln.startswith("Tag:")]
    parts = [t.split("-") for t in tags]
    pys = sorted({p[0] for p in parts})
    abis = sorted({p[1] for p in parts})
    plats = sorted({p[2] for p in parts})
    return f"{'.'.join(pys)}-{'.'.join(abis)}-{'.'.join(plats)}"


def repack(dist: metadata.Distribution, dest: Path) -> Path:
    site = Path(str(dist.locate_file(""))).resolve()
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    version = dist.version
    info_dir = next(
        Path(str(f)).parts[0] for f in dist.files or () if str(f).endswith(".dist-info/METADATA")
    )
    tag = _tag((site / info_dir / "WHEEL").read_text())
    out = dest / f"{name}-{version}-{tag}.whl"
    rows = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(dist.files or (), key=str):
            rel = str(f)
            if rel.startswith("..") or "__pycache__" in rel or rel.endswith(".pyc"):
                continue
            if rel.startswith(info_dir + "/") and rel.split("/", 1)[1] in SKIP:
                continue
            path = site / rel
            if not path.is_file():
                continue
            info = zipfile.ZipInfo(rel, date_time=(2024, 1, 1, 0, 0, 0))
            h = hashlib.sha256()
            with open(path, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                while chunk := src.read(1 << 20):  # libraries are hundreds of MB
                    h.update(chunk)
                    dst.write(chunk)
            digest = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
            rows.append([rel, f"sha256={digest}", str(path.stat().st_size)])
        rows.append([f"{info_dir}/RECORD", "", ""])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        zf.writestr(
            zipfile.ZipInfo(f"{info_dir}/RECORD", date_time=(2024, 1, 1, 0, 0, 0)), buf.getvalue()
        )
    return out
