"""Index build speed: 1,000 generated small wheels (target: at most 10 s).

    .venv/bin/python bench/bench_index.py [--wheels 1000]

Wheels of 250 projects, 4 versions each, half of them carrying slimwheel
provenance for sm_80 or sm_90; timed: a first build of the site, and an
update after adding one wheel (only the affected pages are written).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slimwheel.index import build_index


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make(dest: Path, name: str, version: str, targets: list[str] | None) -> None:
    di = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{di}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        "Requires-Python: >=3.9\n".encode(),
        f"{di}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    if targets:
        files[f"{di}/slimwheel.json"] = json.dumps({"targets": targets}).encode()
    rows = [[p, _hash(d), str(len(d))] for p, d in files.items()] + [[f"{di}/RECORD", "", ""]]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    files[f"{di}/RECORD"] = buf.getvalue().encode()
    with zipfile.ZipFile(dest / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        for p, d in files.items():
            zf.writestr(p, d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--wheels", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "wheels"
        src.mkdir()
        for i in range(args.wheels):
            project, version = f"project_{i // 4:04d}", f"1.{i % 4}"
            targets = [["sm_80"], ["sm_90"], None, None][i % 4] if i % 8 < 4 else None
            if targets:
                version += f"+{targets[0].replace('_', '')}"
            make(src, project, version, targets)
        site = Path(tmp) / "site"
        t0 = time.monotonic()
        wheels, stats = build_index([src], site)
        first = time.monotonic() - t0
        make(src, "project_0000", "9.9", None)
        t0 = time.monotonic()
        _, stats2 = build_index([src], site)
        update = time.monotonic() - t0
    print(
        f"{len(wheels)} wheels indexed in {first:.2f} s (target 10 s); "
        f"{stats['written']} files written"
    )
    print(
        f"adding one wheel: {update:.2f} s, {stats2['written']} files written, "
        f"{stats2['reused']} pages unchanged"
    )


if __name__ == "__main__":
    main()
