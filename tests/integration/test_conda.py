"""conda packages and channels: ``slimwheel build PKG.conda``, ``slimwheel index --conda``,
and ``slim-env --prefix`` on a prefix a real conda client (py-rattler) created.

Input packages are made by conda-package-handling, the reference
implementation of both formats; what slimwheel writes is read back by
conda-package-handling and py-rattler, and installed by py-rattler from a
``file://`` channel written by ``slimwheel index --conda`` (no network).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import jsonschema
import pytest
from conda_package_streaming.package_streaming import stream_conda_component

from slimwheel.elf import ElfFile, open_elf
from slimwheel.fatbin import scan
from slimwheel.store import file_sha256
from tests.conda_packages import make_package
from tests.helpers import REPO, extract_member, local_wheel

rattler = pytest.importorskip("rattler")
cph = pytest.importorskip("conda_package_handling.api")

pytestmark = pytest.mark.slow
FORMATS = [".conda", ".tar.bz2"]
PROVENANCE_SCHEMA = json.loads((REPO / "slimwheel/schemas/provenance.schema.json").read_text())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slimwheel", *args], capture_output=True, text=True
    )


def _fixture_package(tmp: Path, lib: Path, fmt: str) -> Path:
    return make_package(
        tmp,
        "fixture-cuda",
        {"lib/libfixture.so": lib, "share/fixture-cuda/README": b"not a library\n"},
        links={"lib/libfixture.so.1": "libfixture.so"},
        hardlinks={"lib/libfixture-hl.so": "lib/libfixture.so"},
        fmt=fmt,
        build="cuda130_0",
    )


def _arches(lib: Path) -> set[str]:
    with open_elf(lib) as elf:
        return {e.arch_name for r in scan(elf).regions for e in r.elements}


def _check_extracted(pkg: Path, dest: Path) -> dict[str, object]:
    """Extract with conda-package-handling; every paths.json entry is true."""
    cph.extract(str(pkg), str(dest))
    paths = json.loads((dest / "info/paths.json").read_text())["paths"]
    for e in paths:
        f = dest / e["_path"]
        if e["path_type"] == "hardlink":
            assert file_sha256(f) == e["sha256"] and f.stat().st_size == e["size_in_bytes"], e
        elif e["path_type"] == "softlink":
            assert f.is_symlink()
    listed = {e["_path"] for e in paths}
    on_disk = {
        str(p.relative_to(dest))
        for p in dest.rglob("*")
        if (p.is_file() or p.is_symlink()) and not str(p.relative_to(dest)).startswith("info/")
    }
    assert listed == on_disk
    return json.loads((dest / "info/index.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("fmt", FORMATS)
def test_build_package(fixture_libs: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    lib = fixture_libs["big"]
    src = _fixture_package(tmp_path, lib, fmt)
    src_bytes = src.read_bytes()
    store = str(tmp_path / "store")
    outs = []
    for n in (1, 2):  # cold, then warm: byte-identical
        out = tmp_path / f"out{n}"
        r = _cli("build", str(src), "--arch", "sm_90", "-o", str(out), "--store", store, "--json")
        assert r.returncode == 0, r.stderr
        outs.append(out / f"fixture-cuda-1.0-cuda130_0_sm90{fmt}")
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert src.read_bytes() == src_bytes, "input untouched"
    slim = outs[0]
    index = _check_extracted(slim, tmp_path / "x")
    orig_index = _check_extracted(src, tmp_path / "orig")
    # The GPUs it serves (9.x: a sm_90 cubin runs on 9.0 and up), and a build number
    # above the original's (one per capability not served: the narrowest build first).
    assert index == {
        **orig_index,
        "build": "cuda130_0_sm90",
        "build_number": orig_index.get("build_number", 0) + 100 + 130 - 10,
        "depends": sorted([*orig_index.get("depends", []), "__cuda_arch >=9.0,<10"]),
    }
    x = tmp_path / "x"
    assert _arches(x / "lib/libfixture.so") == {"sm_90"}
    assert (x / "lib/libfixture.so").stat().st_size < lib.stat().st_size // 2
    assert (x / "share/fixture-cuda/README").read_bytes() == b"not a library\n"
    assert os.readlink(x / "lib/libfixture.so.1") == "libfixture.so"
    assert (x / "lib/libfixture-hl.so").read_bytes() == (x / "lib/libfixture.so").read_bytes()
    kinds = {m.name: m.type for _tar, m in stream_conda_component(str(slim), component="pkg")}
    pair = sorted([kinds["lib/libfixture-hl.so"], kinds["lib/libfixture.so"]])
    assert pair == [tarfile.REGTYPE, tarfile.LNKTYPE], "still one file and a hard link to it"
    prov = json.loads((x / "info/slimwheel.json").read_text())
    jsonschema.validate(prov, PROVENANCE_SCHEMA)
    assert prov["source"] == {"package": src.name, "sha256": hashlib.sha256(src_bytes).hexdigest()}
    assert prov["targets"] == ["sm_90"]
    assert prov["installer"] == {
        "conda_build": "cuda130_0_sm90",
        "conda_build_number": index["build_number"],
        "cuda_arch": "__cuda_arch >=9.0,<10",
    }
    (entry,) = prov["libraries"]  # the hard-linked pair is one library, slimmed once
    assert entry["path"] in ("lib/libfixture.so", "lib/libfixture-hl.so")
    # py-rattler reads the archive as well
    assert str(rattler.IndexJson.from_package_archive(slim).build) == "cuda130_0_sm90"
    entries = {str(e.relative_path): e for e in rattler.PathsJson.from_package_archive(slim).paths}
    assert entries["lib/libfixture.so"].sha256.hex() == file_sha256(x / "lib/libfixture.so")
    # --no-build-suffix keeps the name
    r = _cli(
        "build",
        str(src),
        "--arch",
        "sm_90",
        "-o",
        str(tmp_path / "same"),
        "--store",
        store,
        "--no-build-suffix",
        "-q",
    )
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (tmp_path / "same").iterdir()] == [src.name]


@pytest.mark.parametrize("fmt", FORMATS)
def test_inspect_package(fixture_libs: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    src = _fixture_package(tmp_path, fixture_libs["big"], fmt)
    r = _cli("inspect", str(src), "--arch", "sm_90", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (lib,) = doc["libraries"]
    assert lib["name"] in ("lib/libfixture.so", "lib/libfixture-hl.so")  # a hard-linked pair
    assert lib["file_bytes"] == fixture_libs["big"].stat().st_size
    assert doc["totals"]["removable_bytes"] > 1_000_000
    bad = tmp_path / f"cut-1.0-0{fmt}"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    r = _cli("inspect", str(bad))
    assert r.returncode == 1 and bad.name in r.stderr and r.stderr.count("\n") == 1


def test_package_without_device_code_passes_through(tmp_path: Path) -> None:
    src = make_package(tmp_path, "plain", {"share/plain/data.txt": b"x" * 1000})
    r = _cli("build", str(src), "--arch", "sm_90", "-o", str(tmp_path / "out"), "-q")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / src.name).read_bytes() == src.read_bytes()


# -- hostile packages ---------------------------------------------------------------


def _raw_tar_bz2(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:bz2") as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    return ti, data


def _info(name: str, paths: list[dict[str, object]]) -> list[tuple[tarfile.TarInfo, bytes]]:
    index = {"name": name, "version": "1.0", "build": "0", "subdir": "linux-64"}
    return [
        _file("info/index.json", json.dumps(index).encode()),
        _file("info/paths.json", json.dumps({"paths": paths, "paths_version": 1}).encode()),
    ]


def _hostile(tmp: Path, fixture_lib: Path) -> dict[str, tuple[Path, str]]:
    """name -> (package, what the error must say)."""
    out: dict[str, tuple[Path, str]] = {}
    ok = {"_path": "share/a", "path_type": "hardlink"}
    out["traversal"] = (
        _raw_tar_bz2(tmp / "trav-1.0-0.tar.bz2", [*_info("trav", [ok]), _file("../evil", b"x")]),
        "unsafe path",
    )
    out["absolute"] = (
        _raw_tar_bz2(tmp / "abs-1.0-0.tar.bz2", [*_info("abs", [ok]), _file("/etc/evil", b"x")]),
        "unsafe path",
    )
    link = tarfile.TarInfo("lib/libx.so")
    link.type, link.linkname = tarfile.SYMTYPE, "../../etc/passwd"
    out["link out"] = (
        _raw_tar_bz2(tmp / "lnk-1.0-0.tar.bz2", [*_info("lnk", []), (link, b"")]),
        "points outside the package",
    )
    fifo = tarfile.TarInfo("share/pipe")
    fifo.type = tarfile.FIFOTYPE
    out["fifo"] = (
        _raw_tar_bz2(tmp / "fifo-1.0-0.tar.bz2", [*_info("fifo", []), (fifo, b"")]),
        "neither a file, a directory nor a link",
    )
    lying = {"_path": "share/a", "path_type": "hardlink", "sha256": "0" * 64, "size_in_bytes": 1}
    out["lying paths.json"] = (
        _raw_tar_bz2(tmp / "lie-1.0-0.tar.bz2", [*_info("lie", [lying]), _file("share/a", b"x")]),
        "wrong sha256 for share/a",
    )
    out["unlisted file"] = (
        _raw_tar_bz2(tmp / "unl-1.0-0.tar.bz2", [*_info("unl", []), _file("share/a", b"x")]),
        "not listed in info/paths.json",
    )
    good = make_package(tmp, "trunc", {"share/a": b"x" * 100_000})
    cut = tmp / "trunc-1.0-0.conda"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out["truncated"] = (cut, "unreadable archive")
    buf = bytearray(fixture_lib.read_bytes())
    el = scan(ElfFile(bytes(buf))).regions[0].elements[0]
    struct.pack_into("<I", buf, el.offset + 4, 0x7FFFFFF0)
    bad = tmp / "libbad.so"
    bad.write_bytes(bytes(buf))
    out["corrupt fatbin"] = (
        make_package(tmp, "badfat", {"lib/libbad.so": bad}),
        "lib/libbad.so: fatbin element",
    )
    return out


def test_hostile_packages_are_refused(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for what, (pkg, message) in _hostile(src, fixture_libs["many_none"]).items():
        before = pkg.read_bytes()
        out = tmp_path / f"out-{what.replace(' ', '_')}"
        r = _cli(
            "build", str(pkg), "--arch", "sm_90", "-o", str(out), "--store", str(tmp_path / "s")
        )
        assert r.returncode == 1, (what, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (what, r.stderr)
        assert pkg.name in r.stderr and message in r.stderr, (what, r.stderr)
        assert not out.exists() or not any(out.iterdir()), what
        assert pkg.read_bytes() == before
        assert not (tmp_path / "evil").exists()
    # the index refuses them too (what it reads of them), with one line
    r = _cli("index", "--conda", str(src / "trunc-1.0-0.conda"), "-o", str(tmp_path / "ch"))
    assert r.returncode == 1 and "trunc-1.0-0.conda" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "ch").exists()


# -- channels, a real client, and slim-env on its prefix ------------------------------


def _solve_install(channel: Path, specs: list[str], prefix: Path, cache: Path) -> list[str]:
    """Solve and install (py-rattler makes the prefix hold exactly the solution)."""

    async def go() -> list[str]:
        records = await rattler.solve(
            [rattler.Channel(channel.as_uri())], specs, platforms=["linux-64", "noarch"]
        )
        await rattler.install(records, prefix, cache_dir=cache, show_progress=False)
        return [r.file_name for r in records]

    return asyncio.run(go())


def _records_true(prefix: Path) -> int:
    """Check every conda-meta record, as py-rattler reads it, against the files."""
    checked = 0
    for meta in sorted((prefix / "conda-meta").glob("*.json")):
        record = rattler.PrefixRecord.from_path(meta)
        for e in record.paths_data.paths:
            f = prefix / e.relative_path
            if f.is_symlink():
                continue
            assert e.size_in_bytes == f.stat().st_size, e.relative_path
            want = e.sha256_in_prefix or e.sha256
            assert want is not None and want.hex() == file_sha256(f), e.relative_path
            checked += 1
    return checked


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): ("-> " + os.readlink(p)) if p.is_symlink() else file_sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def test_channel_install_and_slim_env(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    curand = extract_member(local_wheel("nvidia-curand==10.4.0.35"), "libcurand.so.10", tmp_path)
    make_package(
        pkgs, "fixture-cuda", {"lib/libfixture.so": fixture_libs["big"]}, build="cuda130_0"
    )
    make_package(
        pkgs,
        "curand",
        {"lib/libcurand.so.10": curand},
        version="10.4.0.35",
        build="h0_0",
        fmt=".tar.bz2",
    )
    make_package(pkgs, "docs", {"share/docs/a.txt": b"plain\n"}, subdir="noarch")
    store = str(tmp_path / "store")
    dist = tmp_path / "dist"
    r = _cli("build", str(pkgs), "--arch", "sm_90", "-o", str(dist), "--store", store, "-q")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in dist.iterdir()) == [
        "curand-10.4.0.35-h0_0_sm90.tar.bz2",
        "docs-1.0-0.conda",
        "fixture-cuda-1.0-cuda130_0_sm90.conda",
    ]
    channel = tmp_path / "channel"
    r = _cli("index", "--conda", "--per-target", str(pkgs), str(dist), "-o", str(channel))
    assert r.returncode == 0, r.stderr
    sm90 = json.loads((channel / "sm_90/linux-64/repodata.json").read_text())
    assert sorted(sm90["packages.conda"]) == ["fixture-cuda-1.0-cuda130_0_sm90.conda"]
    assert sorted(sm90["packages"]) == ["curand-10.4.0.35-h0_0_sm90.tar.bz2"]
    record = sm90["packages.conda"]["fixture-cuda-1.0-cuda130_0_sm90.conda"]
    assert record["depends"] == [], "a per-target channel's records do without __cuda_arch"
    assert record["sha256"] == file_sha256(dist / "fixture-cuda-1.0-cuda130_0_sm90.conda")
    noarch = json.loads((channel / "sm_90/noarch/repodata.json").read_text())
    assert sorted(noarch["packages.conda"]) == ["docs-1.0-0.conda"]
    plain = json.loads((channel / "linux-64/repodata.json").read_text())
    assert sorted(plain["packages.conda"]) == ["fixture-cuda-1.0-cuda130_0.conda"]
    again = _cli("index", "--conda", "--per-target", str(pkgs), str(dist), "-o", str(channel))
    assert again.returncode == 0 and "0 files written" in again.stdout

    # Installing from the sm_90 channel gets the slim builds.
    cache = tmp_path / "rattler-cache"
    slim_prefix = tmp_path / "slim-env"
    names = _solve_install(channel / "sm_90", ["fixture-cuda"], slim_prefix, cache)
    assert names == ["fixture-cuda-1.0-cuda130_0_sm90.conda"]
    assert _arches(slim_prefix / "lib/libfixture.so") == {"sm_90"}
    built = rattler.PathsJson.from_package_archive(dist / names[0])
    want = next(e for e in built.paths if str(e.relative_path) == "lib/libfixture.so")
    assert want.sha256.hex() == file_sha256(slim_prefix / "lib/libfixture.so"), (
        "the slim build's file"
    )
    assert _records_true(slim_prefix) >= 1

    # A prefix of the original builds, made by py-rattler (hard links into its
    # package cache), slimmed in place and restored.
    prefix = tmp_path / "env"
    _solve_install(channel, ["fixture-cuda", "curand", "docs"], prefix, cache)
    assert len(list((prefix / "conda-meta").glob("*.json"))) == 3
    cache_before = _snapshot(cache)
    before = _snapshot(prefix)
    assert _records_true(prefix) >= 3
    args = ["--prefix", str(prefix), "--store", store]
    r = _cli("slim-env", "--arch", "sm_90", *args)
    assert r.returncode == 0, r.stderr
    status = _cli("status", *args).stdout
    assert "lib/libcurand.so.10" in status and "lib/libfixture.so" in status
    assert _arches(prefix / "lib/libcurand.so.10") <= {"sm_90", "compute_90"}
    assert (prefix / "lib/libcurand.so.10").stat().st_size < curand.stat().st_size
    assert _records_true(prefix) >= 3, "py-rattler reads records that match the slim files"
    assert _snapshot(cache) == cache_before, "the package cache behind the hard links is untouched"
    assert _cli("restore", *args).returncode == 0
    assert _records_true(prefix) >= 3
    assert _snapshot(prefix) == before


def _virtual(cuda_arch: str | None) -> list[object]:
    """The host's virtual packages as far as this test cares: ``__cuda_arch`` (its
    lowest device's compute capability, the device model as build string) or none."""
    if cuda_arch is None:
        return []
    return [
        rattler.GenericVirtualPackage(
            rattler.PackageName("__cuda_arch"),
            rattler.Version(cuda_arch),
            rattler.BuildString("NVIDIA_H200"),
        )
    ]


def _solve(channel: Path, spec: str, cuda_arch: str | None) -> list[str]:
    """What py-rattler picks on a host whose __cuda_arch is ``cuda_arch`` (None: no GPU,
    or a client without the virtual package)."""
    virtual = _virtual(cuda_arch)

    async def go() -> list[str]:
        records = await rattler.solve(
            [rattler.Channel(channel.as_uri())],
            [spec],
            platforms=["linux-64", "noarch"],
            virtual_packages=virtual,
        )
        return sorted(r.file_name for r in records)

    return asyncio.run(go())


def test_one_channel_picks_the_build_by_cuda_arch(tmp_path: Path) -> None:
    """One channel of the original and its slim builds: the solver picks by __cuda_arch."""
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    curand = extract_member(local_wheel("nvidia-curand==10.4.0.35"), "libcurand.so.10", tmp_path)
    make_package(pkgs, "curand", {"lib/libcurand.so.10": curand}, version="10.4.0.35", build="h0_0")
    make_package(pkgs, "docs", {"share/docs/a.txt": b"plain\n"}, subdir="noarch")
    store = str(tmp_path / "store")
    dist = tmp_path / "dist"
    for arch in ("sm_90", "sm_80,sm_86"):
        r = _cli("build", str(pkgs / "curand-10.4.0.35-h0_0.conda"), "--arch", arch,
                 "-o", str(dist), "--store", store, "-q")  # fmt: skip
        assert r.returncode == 0, r.stderr
    channel = tmp_path / "channel"
    r = _cli("index", "--conda", str(pkgs), str(dist), "-o", str(channel))
    assert r.returncode == 0, r.stderr
    assert "3 slim builds" not in r.stdout and "2 slim builds" in r.stdout, r.stdout
    records = json.loads((channel / "linux-64/repodata.json").read_text())["packages.conda"]
    assert sorted(records) == [
        "curand-10.4.0.35-h0_0.conda",
        "curand-10.4.0.35-h0_0_sm80_sm86.conda",
        "curand-10.4.0.35-h0_0_sm90.conda",
    ]
    assert records["curand-10.4.0.35-h0_0_sm90.conda"]["depends"] == ["__cuda_arch >=9.0,<10"]
    assert records["curand-10.4.0.35-h0_0_sm80_sm86.conda"]["depends"] == ["__cuda_arch >=8.0,<9"]
    assert (
        "depends" not in records["curand-10.4.0.35-h0_0.conda"]
        or not records["curand-10.4.0.35-h0_0.conda"]["depends"]
    )
    picks = {
        "9.0": "curand-10.4.0.35-h0_0_sm90.conda",
        "8.6": "curand-10.4.0.35-h0_0_sm80_sm86.conda",
        "8.0": "curand-10.4.0.35-h0_0_sm80_sm86.conda",
        "8.9": "curand-10.4.0.35-h0_0_sm80_sm86.conda",
        "7.5": "curand-10.4.0.35-h0_0.conda",  # no sm_75 build: the original
        "12.0": "curand-10.4.0.35-h0_0.conda",
        None: "curand-10.4.0.35-h0_0.conda",  # no GPU, or no virtual package
    }
    for cuda_arch, want in picks.items():
        assert _solve(channel, "curand", cuda_arch) == [want], cuda_arch

    # Installed on a 9.0 host: the sm_90 build's library; on a host without a GPU: the original.
    cache = tmp_path / "rattler-cache"
    for cuda_arch, prefix in (("9.0", tmp_path / "h200"), (None, tmp_path / "cpu")):
        virtual = _virtual(cuda_arch)

        async def install(virtual: list[object] = virtual, prefix: Path = prefix) -> str:
            got = await rattler.solve(
                [rattler.Channel(channel.as_uri())], ["curand"],
                platforms=["linux-64", "noarch"], virtual_packages=virtual,
            )  # fmt: skip
            await rattler.install(got, prefix, cache_dir=cache, show_progress=False)
            return got[0].file_name

        name = asyncio.run(install())
        source = (dist if "_sm" in name else pkgs) / name
        built = rattler.PathsJson.from_package_archive(source)
        want = next(e for e in built.paths if str(e.relative_path) == "lib/libcurand.so.10")
        assert want.sha256.hex() == file_sha256(prefix / "lib/libcurand.so.10"), name
    assert file_sha256(tmp_path / "cpu/lib/libcurand.so.10") == file_sha256(curand)
    assert _arches(tmp_path / "h200/lib/libcurand.so.10") <= {"sm_90", "compute_90"}
    # What installers see, in status (the prefix) and inspect (the package).
    status = _cli("status", "--prefix", str(tmp_path / "h200"), "--store", store)
    assert status.returncode == 0, status.stderr
    assert (
        "installed: curand 10.4.0.35: slim build; conda build h0_0_sm90; "
        "chosen by __cuda_arch >=9.0,<10"
    ) in status.stdout, status.stdout
    assert "installed:" not in _cli("status", "--prefix", str(tmp_path / "cpu")).stdout
    got = _cli("inspect", str(dist / "curand-10.4.0.35-h0_0_sm80_sm86.conda"), "--json")
    assert got.returncode == 0, got.stderr
    (build,) = json.loads(got.stdout)["builds"]
    assert build["targets"] == ["sm_80", "sm_86"] and build["conda_build"] == "h0_0_sm80_sm86"
    assert build["cuda_arch"] == "__cuda_arch >=8.0,<9" and build["local_label"] is None

    # A slim build that does not say which hosts take it (an older slimwheel) is refused:
    # every host would install it.
    old = tmp_path / "old"
    old.mkdir()
    r = _cli("build", str(pkgs / "curand-10.4.0.35-h0_0.conda"), "--arch", "sm_90",
             "-o", str(old), "--store", store, "-q")  # fmt: skip
    (built_old,) = old.iterdir()
    _strip_installer(built_old)
    r = _cli("index", "--conda", str(pkgs), str(old), "-o", str(tmp_path / "refused"))
    assert r.returncode != 0 and "__cuda_arch" in r.stderr and built_old.name in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "refused").exists()
    ok = _cli("index", "--conda", "--per-target", str(pkgs), str(old), "-o", str(tmp_path / "pt"))
    assert ok.returncode == 0, ok.stderr


def _strip_installer(pkg: Path) -> None:
    """Rewrite a .conda package as an older slimwheel wrote it: no installer part."""
    work = pkg.parent / "x"
    cph.extract(str(pkg), str(work))
    prov_path = work / "info/slimwheel.json"
    prov = json.loads(prov_path.read_text())
    del prov["installer"]
    prov_path.write_text(json.dumps(prov, indent=1, sort_keys=True) + "\n")
    pkg.unlink()
    cph.create(str(work), None, pkg.name, out_folder=str(pkg.parent))
    import shutil

    shutil.rmtree(work)
