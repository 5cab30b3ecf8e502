"""What installers see of a build (identity.py), read from hostile metadata too."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from slimwheel.errors import InputError
from slimwheel.identity import describe, prefix_identities, wheel_identity


def _wheel(path: Path, metadata: str, **extra: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("demo-1.0.dist-info/METADATA", metadata)
        for name, data in extra.items():
            zf.writestr(f"demo-1.0.dist-info/{name}", data)
    return path


def test_a_wheels_identity(tmp_path: Path) -> None:
    prov = json.dumps({"libraries": [{"path": "x.so"}], "targets": ["sm_90"]}).encode()
    variant = json.dumps({"variants": {"sm90": {"nvidia": {"sm_arch": ["90_real"]}}}}).encode()
    meta = "Metadata-Version: 2.1\nName: demo\nVersion: 1.0+sm90\n\nVersion: 9.9.9\nName: evil\n"
    w = _wheel(
        tmp_path / "demo-1.0+sm90-py3-none-any.whl",
        meta,
        **{"slimwheel.json": prov, "variant.json": variant},
    )
    b = wheel_identity(str(w))
    assert (b.name, b.version) == ("demo", "1.0+sm90"), "the description is not metadata"
    assert describe(b.to_json()) == (
        "demo 1.0+sm90: slim build for sm_90; local label +sm90; variant sm90"
    )
    plain = wheel_identity(str(_wheel(tmp_path / "p.whl", "Name: demo\nVersion: 1.0\n")))
    assert describe(plain.to_json()) == "demo 1.0: not a slim build"


def test_unreadable_wheels_and_records(tmp_path: Path) -> None:
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(InputError, match="not a readable wheel"):
        wheel_identity(str(bad))
    meta = tmp_path / "conda-meta"
    meta.mkdir()
    (meta / "broken.json").write_text("{")
    (meta / "slim.json").write_text(
        json.dumps(
            {"name": "curand", "version": "10.4", "build": "h0_0_sm90",
             "depends": ["__cuda_arch>=9.0,<10"]}
        )
    )  # fmt: skip
    (got,) = prefix_identities(tmp_path)  # the broken record is skipped, not fatal
    assert got.cuda_arch == "__cuda_arch>=9.0,<10" and got.conda_build == "h0_0_sm90"
