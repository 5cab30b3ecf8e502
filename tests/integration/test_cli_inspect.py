"""``slimwheel inspect`` end to end: inputs, outputs, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest

from slimwheel import __version__
from slimwheel.cli import main

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "slimwheel/schemas/inspect.schema.json").read_text()
)


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["inspect", "--json", *argv]) == 0
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, SCHEMA)
    return doc  # type: ignore[no-any-return]


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_library_json(fixture_libs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, str(fixture_libs["many_size"]), "--arch", "sm_90")
    (lib,) = doc["libraries"]  # type: ignore[misc]
    # the TU region holds all 9 codes; the device-link region one cubin per sm code
    assert lib["regions"] == 2 and lib["elements"] == 9 + 7
    assert {r["kind"] for r in lib["by_kind"]} == {"elf", "ptx"}
    assert {r["compression"] for r in lib["by_compression"]} == {"zstd"}
    arches = {r["arch"] for r in lib["by_arch"]}
    assert {"sm_90a", "sm_100f", "compute_75", "compute_120"} <= arches
    assert lib["device_code_bytes"] == sum(r["bytes"] for r in lib["by_section"])
    assert sum(r["bytes"] for r in lib["by_arch"]) <= lib["device_code_bytes"]
    assert 0 < lib["removable"]["bytes"] < lib["device_code_bytes"]
    assert doc["targets"] == ["sm_90"]
    assert doc["tool"] == {"name": "slimwheel", "version": __version__}


def test_kernels_listing(fixture_libs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, str(fixture_libs["many_none"]), "--kernels", "--arch", "H100")
    rows = doc["libraries"][0]["element_list"]  # type: ignore[index]
    sm90a = [r for r in rows if r["arch"] == "sm_90a" and r["kernels"]]
    assert len(sm90a) == 1
    assert sm90a[0]["kernels"] == ["_Z11fixture_mulPffi", "fixture_add"]
    assert sm90a[0]["keep"] is True and sm90a[0]["reason"] == "loaded"
    assert {v["name"] for v in sm90a[0]["variables"]} == {"fixture_counter", "fixture_scale"}
    main(["inspect", str(fixture_libs["many_none"]), "--kernels"])
    text = capsys.readouterr().out
    assert "kernel   fixture_add" in text and "sm_100f" in text


def test_wheel_and_directory(
    fixture_libs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wheel = make_wheel(
        tmp_path / "demo-1.0-py3-none-linux_x86_64.whl",
        {
            "demo/__init__.py": b"",
            "demo/lib/libmany.so": fixture_libs["many_none"].read_bytes(),
            "demo/lib/librdc.so": fixture_libs["rdc"].read_bytes(),
            "demo-1.0.dist-info/RECORD": b"",
        },
    )
    doc = run_json(capsys, str(wheel))
    assert [lib["name"] for lib in doc["libraries"]] == [  # type: ignore[index]
        "demo/lib/libmany.so",
        "demo/lib/librdc.so",
    ]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel.rename(wheels / wheel.name)
    doc = run_json(capsys, str(wheels))
    assert [lib["name"] for lib in doc["libraries"]] == [  # type: ignore[index]
        f"{wheel.name}!demo/lib/libmany.so",
        f"{wheel.name}!demo/lib/librdc.so",
    ]
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "libx.so").write_bytes(fixture_libs["relr"].read_bytes())
    (tree / "notes.txt").write_text("not a library")
    (tree / "sub" / "libx.so.1").symlink_to("libx.so")
    doc = run_json(capsys, str(tree))
    assert [lib["name"] for lib in doc["libraries"]] == ["sub/libx.so"]  # type: ignore[index]


def test_installed_distribution(
    fixture_libs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    site = tmp_path / "site"
    (site / "demo_gpu").mkdir(parents=True)
    (site / "demo_gpu" / "libdemo.so").write_bytes(fixture_libs["many_none"].read_bytes())
    (site / "demo_gpu" / "__init__.py").write_text("")
    info = site / "demo_gpu-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-gpu\nVersion: 2.0\n")
    (info / "RECORD").write_text(
        "demo_gpu/__init__.py,,\ndemo_gpu/libdemo.so,,\ndemo_gpu-2.0.dist-info/RECORD,,\n"
    )
    monkeypatch.syspath_prepend(str(site))
    doc = run_json(capsys, "demo-gpu")
    assert [lib["name"] for lib in doc["libraries"]] == ["demo_gpu/libdemo.so"]  # type: ignore[index]


def test_text_table_sorted_with_totals(
    fixture_libs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "inspect",
                str(fixture_libs["sm90_debug"]),
                str(fixture_libs["many_none"]),
                "--arch",
                "sm_90",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.index("libmany_none") < out.index("libsm90_debug")
    assert "total (2 libraries)" in out
    assert "removable (sm_90)" in out
    assert "A slim for sm_90 would remove" in out


def test_bad_inputs_one_line_errors(
    fixture_libs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.so"
    assert main(["inspect", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "Traceback" not in err

    data = bytearray(fixture_libs["many_none"].read_bytes())
    start = data.find(b"\x50\xed\x55\xba")
    data[start + 16 : start + 24] = b"\xff" * 8  # first element: kind + header size garbage
    bad = tmp_path / "libbad.so"
    bad.write_bytes(bytes(data))
    assert main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("slimwheel: error: ") and str(bad) in err and err.count("\n") == 1

    assert main(["inspect", str(fixture_libs["many_none"]), "--arch", "sm_999x"]) == 2
    assert "unknown GPU target" in capsys.readouterr().err

    with pytest.raises(Exception) as info:
        main(["inspect", "--traceback", str(bad)])
    assert "libbad.so" in str(info.value)


def test_console_script_and_module(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "slimwheel", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"slimwheel {__version__}"
    bad = tmp_path / "trunc.so"
    bad.write_bytes(fixture_libs["many_none"].read_bytes()[:5000])
    proc = subprocess.run(
        [sys.executable, "-m", "slimwheel", "inspect", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "trunc.so" in proc.stderr
    assert "Traceback" not in proc.stderr
    subcommands = [
        "inspect",
        "slim",
        "verify",
        "build",
        "cache",
        "profile",
        "slim-env",
        "restore",
        "status",
        "install",
        "index",
    ]
    for sub in ([], *[[c] for c in subcommands]):
        help_out = subprocess.run(
            [sys.executable, "-m", "slimwheel", *sub, "--help"], capture_output=True, text=True
        )
        assert help_out.returncode == 0 and "usage: slimwheel" in help_out.stdout


def test_bare_cubins_are_found_and_left_in_place(
    fixture_libs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cubins with no fatbin around them (in .rodata) are reported, with their arch and
    kernels, checked against pyelftools; slim keeps them byte for byte."""
    import io

    from elftools.elf.elffile import ELFFile

    lib = fixture_libs["bare"]
    doc = run_json(capsys, str(lib), "--kernels", "--arch", "sm_90")
    (entry,) = doc["libraries"]  # type: ignore[index]
    bare = entry["bare_cubins"]
    assert [(c["section"], c["arch"], c["kernels"]) for c in bare] == [
        (".rodata", "sm_80", ["big_gather"]),
        (".rodata", "sm_90", ["big_gather"]),
    ]
    assert entry["bare_cubin_bytes"] == sum(c["bytes"] for c in bare)
    assert doc["totals"]["bare_cubin_bytes"] == entry["bare_cubin_bytes"]  # type: ignore[index]
    data = lib.read_bytes()
    for c in bare:
        blob = data[c["offset"] : c["offset"] + c["bytes"]]
        elf = ELFFile(io.BytesIO(blob))  # the oracle reads every section inside the range
        assert elf["e_machine"] == "EM_CUDA"
        for s in elf.iter_sections():
            if s["sh_type"] != "SHT_NOBITS":
                assert s["sh_offset"] + s["sh_size"] <= len(blob)
        names = {
            sym.name
            for s in elf.iter_sections()
            if s["sh_type"] == "SHT_SYMTAB"
            for sym in s.iter_symbols()
        }
        assert "big_gather" in names
    # the fatbin elements are still what the plan judges; bare cubins are not in it
    assert entry["elements"] == 4 and entry["removable"]["elements"] == 2
    out = tmp_path / "slim.so"
    assert main(["slim", str(lib), "--arch", "sm_90", "-o", str(out)]) == 0
    capsys.readouterr()
    slim = run_json(capsys, str(out))
    kept = slim["libraries"][0]["bare_cubins"]  # type: ignore[index]
    slim_data = out.read_bytes()
    assert [(c["arch"], c["bytes"]) for c in kept] == [(c["arch"], c["bytes"]) for c in bare]
    for a, b in zip(bare, kept, strict=True):
        assert (
            slim_data[b["offset"] : b["offset"] + b["bytes"]]
            == data[a["offset"] : a["offset"] + a["bytes"]]
        )
    assert "2 bare cubins" in _text(capsys, str(lib))


def _text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(["inspect", "-q", *argv]) == 0
    return capsys.readouterr().out


def test_broken_bare_cubin_headers_are_ignored(
    fixture_libs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import struct

    data = bytearray(fixture_libs["bare"].read_bytes())
    first = data.find(b"\x7fELF", 64)
    while data[first + 18] != 190:
        first = data.find(b"\x7fELF", first + 1)
    struct.pack_into("<H", data, first + 0x3C, 0xFFFF)  # e_shnum: runs past the section
    lib = tmp_path / "broken.so"
    lib.write_bytes(bytes(data))
    doc = run_json(capsys, str(lib))
    assert len(doc["libraries"][0]["bare_cubins"]) == 1  # type: ignore[index]
