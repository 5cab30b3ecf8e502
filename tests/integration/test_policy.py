"""One slimming policy for every command: the same flags give the same bytes everywhere.

The fixture ``usage_embedded`` is chosen so that every option changes its
slim output: ``--arch sm_90`` drops the sm_80 cubins, a profile that launched
only ``usage_kA`` and read ``usage_c_value`` drops ``usage_kB``'s unit and the
``.rodata`` fatbin, and ``--leave-section .rodata`` keeps that fatbin whole.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest

from slimwheel import policy as policy_module
from slimwheel.cli import main
from slimwheel.elf import open_elf
from slimwheel.fatbin import scan
from slimwheel.store import Store, file_sha256
from tests.conda_packages import make_package
from tests.helpers import venv_purelib, write_profile
from tests.integration.test_build import make_wheel

REPO = Path(__file__).resolve().parents[2]
LIB = "libusage_embedded.so"
MEMBER = f"demo/lib/{LIB}"


@pytest.fixture()
def lib(fixture_libs: dict[str, Path], tmp_path: Path) -> Path:
    """The fixture under its installed name (built-in rules match by file name)."""
    dest = tmp_path / "in" / LIB
    dest.parent.mkdir()
    dest.write_bytes(fixture_libs["usage_embedded"].read_bytes())
    return dest


@pytest.fixture()
def profile(lib: Path, tmp_path: Path) -> Path:
    return write_profile(tmp_path / "p.json", lib, ["usage_kA"], ["usage_c_value"])


def _sections_kept(path: Path) -> dict[str, int]:
    """Section -> elements left in it."""
    out: dict[str, int] = {}
    with open_elf(path) as elf:
        for r in scan(elf).regions:
            out[r.section] = out.get(r.section, 0) + len(r.elements)
    return out


def _slim(src: Path, dest: Path, *flags: str) -> Path:
    assert main(["slim", str(src), "-o", str(dest), "--arch", "sm_90", *flags]) == 0
    return dest


def _wheel_member(wheel_dir: Path, member: str, dest: Path) -> Path:
    (wheel,) = wheel_dir.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        dest.write_bytes(zf.read(member))
    return dest


def _conda_member(pkg_dir: Path, member: str, dest: Path) -> Path:
    from conda_package_handling import api as cph

    (pkg,) = pkg_dir.glob("*.conda")
    out = dest.parent / "unpacked"
    cph.extract(str(pkg), dest_dir=str(out))
    dest.write_bytes((out / member).read_bytes())
    return dest


def _venv_with(wheel: Path, where: Path) -> tuple[Path, Path]:
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q"]
    subprocess.run([*pip, "--no-index", "--no-deps", str(wheel)], check=True)
    return py, venv_purelib(py)


def test_every_entry_point_gives_the_same_bytes(lib: Path, profile: Path, tmp_path: Path) -> None:
    flags = ["--profile", str(profile), "--leave-section", ".rodata"]
    store = tmp_path / "store"
    sflags = [*flags, "--store", str(store)]

    via_slim = _slim(lib, tmp_path / "slim.so", *flags)

    wheel = make_wheel(tmp_path, "demo", "1.0", {MEMBER: lib.read_bytes()})
    out = tmp_path / "wheels"
    assert main(["build", str(wheel), "--arch", "sm_90", "-o", str(out), "-q", *sflags]) == 0
    via_build = _wheel_member(out, MEMBER, tmp_path / "build.so")

    pkg = make_package(tmp_path / "pkgs", "demo", {f"lib/{LIB}": lib})
    cout = tmp_path / "conda"
    assert main(["build", str(pkg), "--arch", "sm_90", "-o", str(cout), "-q", *sflags]) == 0
    via_conda = _conda_member(cout, f"lib/{LIB}", tmp_path / "conda.so")

    py, site = _venv_with(wheel, tmp_path)
    assert main(["slim-env", "--python", str(py), "--arch", "sm_90", *sflags]) == 0
    via_env = site / MEMBER

    digests = {p.name: file_sha256(p) for p in (via_slim, via_build, via_conda, via_env)}
    assert len(set(digests.values())) == 1, digests
    assert len(Store(store).entries()) == 1, "one store entry serves every command"

    # Every option changed the bytes: arch, profile (kB's unit goes), the section left alone.
    kept = _sections_kept(via_slim)
    assert kept[".rodata"] == 3, "the .rodata fatbin is left whole"
    arch_only = _slim(lib, tmp_path / "arch.so")
    no_leave = _slim(lib, tmp_path / "noleave.so", "--profile", str(profile))
    assert _sections_kept(no_leave).get(".rodata", 0) == 0, "the profile drops it otherwise"
    assert kept[".nv_fatbin"] < _sections_kept(arch_only)[".nv_fatbin"], "the profile applies"
    assert len({file_sha256(p) for p in (via_slim, arch_only, no_leave, lib)}) == 4


def test_builtin_leave_rules_reach_every_command(
    lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rule = ((LIB, ".rodata", "proven on a GPU: the library walks this section itself"),)
    store = tmp_path / "store"
    wheel = make_wheel(tmp_path, "demo", "1.0", {MEMBER: lib.read_bytes()})
    build = ["build", str(wheel), "--arch", "sm_90", "-q", "--jobs", "1", "--store", str(store)]
    assert main([*build, "-o", str(tmp_path / "plain")]) == 0
    monkeypatch.setattr(policy_module, "builtin_policy", lambda: rule)
    assert main([*build, "-o", str(tmp_path / "ruled")]) == 0
    plain = _wheel_member(tmp_path / "plain", MEMBER, tmp_path / "plain.so")
    ruled = _wheel_member(tmp_path / "ruled", MEMBER, tmp_path / "ruled.so")
    assert _sections_kept(ruled)[".rodata"] == 3 > _sections_kept(plain)[".rodata"]
    assert len(Store(store).entries()) == 2, "the rule is part of the store key"
    assert file_sha256(ruled) == file_sha256(_slim(lib, tmp_path / "slim.so"))


def test_inspect_and_dry_run_plan_with_every_option(
    lib: Path, profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def removable(*flags: str) -> int:
        capsys.readouterr()
        assert main(["inspect", str(lib), "--arch", "sm_90", "--json", "-q", *flags]) == 0
        return int(json.loads(capsys.readouterr().out)["totals"]["removable_bytes"])

    arch = removable()
    with_profile = removable("--profile", str(profile))
    with_leave = removable("--profile", str(profile), "--leave-section", ".rodata")
    # the .rodata fatbin: dropped by the profile, kept whole when left alone
    assert with_leave < arch < with_profile

    def slim_json(*flags: str) -> int:
        capsys.readouterr()
        out = tmp_path / "j.so"
        assert main(["slim", str(lib), "-o", str(out), "--arch", "sm_90", "--json", *flags]) == 0
        doc = json.loads(capsys.readouterr().out)
        schema = json.loads((REPO / "slimwheel/schemas/slim.schema.json").read_text())
        jsonschema.validate(doc, schema)
        return int(doc["device_code_bytes"]["before"] - doc["device_code_bytes"]["after"])

    assert slim_json() == arch
    assert slim_json("--profile", str(profile)) == with_profile
    assert slim_json("--profile", str(profile), "--leave-section", ".rodata") == with_leave

    # slim-env --dry-run: the same plan, profile included
    wheel = make_wheel(tmp_path, "demo", "1.0", {MEMBER: lib.read_bytes()})
    py, _site = _venv_with(wheel, tmp_path)
    env = ["slim-env", "--python", str(py), "--arch", "sm_90", "--dry-run"]
    env += ["--store", str(tmp_path / "store")]
    for flags, expected in (((), arch), (("--profile", str(profile)), with_profile)):
        capsys.readouterr()
        assert main([*env, *flags]) == 0
        line = next(ln for ln in capsys.readouterr().out.splitlines() if LIB in ln)
        assert "(dry run)" in line
        # human sizes: compare with the plan's own rendering
        from slimwheel.cli.options import human

        size = lib.stat().st_size
        assert f"{human(size)} -> {human(size - expected)}" in line


def test_profile_match_name_in_every_command(
    lib: Path, profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A profile recorded on another build of the library applies by name only on request."""
    other = tmp_path / "other" / LIB
    other.parent.mkdir()
    other.write_bytes(lib.read_bytes() + b"\0" * 16)  # another build: other bytes, same name
    by_hash = _slim(other, tmp_path / "h.so", "--profile", str(profile))
    assert "recorded on another build" in capsys.readouterr().err
    by_name = _slim(other, tmp_path / "n.so", "--profile", str(profile), "--profile-match", "name")
    assert _sections_kept(by_name)[".nv_fatbin"] < _sections_kept(by_hash)[".nv_fatbin"]

    match = ["--profile", str(profile), "--profile-match", "name"]
    wheel = make_wheel(tmp_path, "demo", "1.0", {MEMBER: other.read_bytes()})
    store = ["--store", str(tmp_path / "store")]
    out = tmp_path / "w"
    assert main(["build", str(wheel), "--arch", "sm_90", "-o", str(out), "-q", *match, *store]) == 0
    assert file_sha256(_wheel_member(out, MEMBER, tmp_path / "b.so")) == file_sha256(by_name)

    py, site = _venv_with(wheel, tmp_path)
    assert main(["slim-env", "--python", str(py), "--arch", "sm_90", *match, *store]) == 0
    assert file_sha256(site / MEMBER) == file_sha256(by_name)

    capsys.readouterr()
    assert main(["inspect", str(other), "--arch", "sm_90", "--json", "-q", *match]) == 0
    named = json.loads(capsys.readouterr().out)["totals"]["removable_bytes"]
    assert main(["inspect", str(other), "--arch", "sm_90", "--json", "-q", *match[:2]]) == 0
    hashed = json.loads(capsys.readouterr().out)["totals"]["removable_bytes"]
    assert named > hashed


@pytest.mark.parametrize("command", ["slim", "build", "slim-env", "inspect", "verify"])
def test_profile_match_without_profile_is_refused(
    command: str, lib: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = {
        "slim": ["slim", str(lib), "-o", str(tmp_path / "x.so")],
        "build": ["build", str(lib), "-o", str(tmp_path / "o")],
        "slim-env": ["slim-env", "--python", sys.executable, "--dry-run"],
        "inspect": ["inspect", str(lib)],
        "verify": ["verify", str(lib), str(lib)],
    }[command]
    assert main([*args, "--arch", "sm_90", "--profile-match", "name"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--profile-match needs --profile") and "\n" not in err
    assert not (tmp_path / "x.so").exists() and not (tmp_path / "o").exists()


def test_verify_takes_the_profile(lib: Path, profile: Path, tmp_path: Path) -> None:
    slimmed = _slim(lib, tmp_path / "s.so", "--profile", str(profile))
    verify = ["verify", str(lib), str(slimmed), "--arch", "sm_90"]
    assert main([*verify, "--profile", str(profile)]) == 0
    assert main(verify) == 1, "without the profile, what it removed is missing"


def test_labels_and_keys_name_every_option(lib: Path, profile: Path, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "demo", "1.0", {MEMBER: lib.read_bytes()})
    store = tmp_path / "store"
    names = {}
    for i, flags in enumerate(
        [
            [],
            ["--keep-ptx"],
            ["--drop-lto"],
            ["--profile", str(profile)],
            ["--leave-section", ".rodata"],
            ["--min-hole", "128K"],
            ["--no-compact"],
            ["--strip"],
        ]
    ):
        out = tmp_path / f"o{i}"
        cmd = ["build", str(wheel), "--arch", "sm_90", "-o", str(out), "-q"]
        assert main([*cmd, "--store", str(store), *flags]) == 0
        (built,) = out.glob("*.whl")
        names[built.name] = flags
    assert len(names) == 8, f"every option gives its own version label: {sorted(names)}"
    assert "demo-1.0+sm90-py3-none-linux_x86_64.whl" in names
    assert len(Store(store).entries()) == 8


def test_build_json_matches_its_schema(
    lib: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wheel = make_wheel(tmp_path, "demo", "1.0", {MEMBER: lib.read_bytes()})
    plain = make_wheel(tmp_path, "plain", "1.0", {"plain/__init__.py": b""})
    cmd = ["build", str(wheel), str(plain), "--arch", "sm_90", "-o", str(tmp_path / "o")]
    capsys.readouterr()
    assert main([*cmd, "--store", str(tmp_path / "s"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    schema = json.loads((REPO / "slimwheel/schemas/build.schema.json").read_text())
    jsonschema.validate(doc, schema)
    assert doc["label"] == "sm90"
    by_source = {w["source"]: w for w in doc["wheels"]}
    assert by_source[plain.name]["passthrough"] is True
    assert by_source[wheel.name]["libraries_slimmed"] == 1


def test_environment_lock_belongs_to_the_environment(
    lib: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two runs on one environment with different stores: the second is refused."""
    import fcntl

    wheel = make_wheel(tmp_path, "demo", "1.0", {MEMBER: lib.read_bytes()})
    py, site = _venv_with(wheel, tmp_path)
    fd = os.open(site, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running slim-env with another store holds it
        before = file_sha256(site / MEMBER)
        cmd = ["slim-env", "--python", str(py), "--arch", "sm_90"]
        assert main([*cmd, "--store", str(tmp_path / "other-store")]) == 1
        assert "another slimwheel process" in capsys.readouterr().err
        assert file_sha256(site / MEMBER) == before
    finally:
        os.close(fd)
    assert not [p for p in site.iterdir() if p.name.startswith(".slimwheel") and "lock" in p.name]


@pytest.mark.parametrize("flag", [["--keep-ptx"], ["--drop-lto"], ["--leave-section", ".rodata"]])
def test_inspect_refuses_slimming_flags_without_arch(
    lib: Path, capsys: pytest.CaptureFixture[str], flag: list[str]
) -> None:
    assert main(["inspect", str(lib), "-q", *flag]) == 2
    assert "need --arch" in capsys.readouterr().err


def _host_library(tmp_path: Path) -> Path:
    """A host-only library with DWARF, compiled from tests/fixtures/src/hostonly.c."""
    out = tmp_path / "libhost.so"
    src = REPO / "tests" / "fixtures" / "src" / "hostonly.c"
    subprocess.run(["cc", "-g", "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return out


def _has_dwarf(data: bytes) -> bool:
    import io

    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(data))
    return any(s.name.startswith(".debug_") or s.name == ".symtab" for s in elf.iter_sections())


def test_strip_reaches_every_library(
    fixture_libs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = _host_library(tmp_path)
    files = {
        "demo/lib/libcode.so": fixture_libs["big_g"].read_bytes(),
        "demo/lib/libhost.so": host.read_bytes(),
    }
    wheel = make_wheel(tmp_path, "demo", "1.0", files)
    store = tmp_path / "store"
    cmd = ["build", str(wheel), "--arch", "sm_90", "-q", "--store", str(store), "--strip"]
    assert main([*cmd, "-o", str(tmp_path / "w")]) == 0
    (built,) = (tmp_path / "w").glob("*.whl")
    assert built.name == "demo-1.0+sm90.strip-py3-none-linux_x86_64.whl"
    with zipfile.ZipFile(built) as zf:
        for m, data in files.items():
            assert _has_dwarf(data) and not _has_dwarf(zf.read(m)), m
        prov = json.loads(zf.read("demo-1.0+sm90.strip.dist-info/slimwheel.json"))
    assert prov["strip"] is True
    assert {lib["path"] for lib in prov["libraries"]} == set(files)
    schema = json.loads((REPO / "slimwheel/schemas/provenance.schema.json").read_text())
    jsonschema.validate(prov, schema)
    assert len(Store(store).entries()) == 2
    # the same through slim-env, for the host-only library too
    py, site = _venv_with(wheel, tmp_path)
    assert (
        main(["slim-env", "--python", str(py), "--arch", "sm_90", "--strip", "--store", str(store)])
        == 0
    )
    with zipfile.ZipFile(built) as zf:
        for m in files:
            assert (site / m).read_bytes() == zf.read(m), m
    assert len(Store(store).entries()) == 2, "one store entry per library, shared"
    # without --strip, the host-only library is not touched
    out = tmp_path / "plain"
    assert (
        main(["build", str(wheel), "--arch", "sm_90", "-q", "--store", str(store), "-o", str(out)])
        == 0
    )
    (plain,) = out.glob("*.whl")
    with zipfile.ZipFile(plain) as zf:
        assert zf.read("demo/lib/libhost.so") == files["demo/lib/libhost.so"]


def test_strip_in_conda_builds(tmp_path: Path) -> None:
    host = _host_library(tmp_path)
    pkg = make_package(tmp_path / "pkgs", "demo", {"lib/libhost.so": host})
    out = tmp_path / "conda"
    cmd = ["build", str(pkg), "--arch", "sm_90", "-o", str(out), "-q", "--strip"]
    assert main([*cmd, "--store", str(tmp_path / "s")]) == 0
    (built,) = out.glob("*.conda")
    assert built.name == "demo-1.0-0_sm90_strip.conda"
    lib = _conda_member(out, "lib/libhost.so", tmp_path / "x.so")
    assert _has_dwarf(host.read_bytes()) and not _has_dwarf(lib.read_bytes())
