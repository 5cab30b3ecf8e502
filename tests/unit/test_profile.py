"""Usage profiles without a GPU: the recorder builds, records parse, profiles
validate, merge, and slim fixture libraries; bad profiles are refused."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest

from slimwheel.arch import parse_targets
from slimwheel.cli import main
from slimwheel.elf import open_elf
from slimwheel.fatbin import scan
from slimwheel.policy import LibraryPolicy
from slimwheel.profile import LibraryUsage, Profile, build_recorder, collect, load_profile, merge
from slimwheel.slim import slim_library
from slimwheel.store import Store, file_sha256

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "slimwheel" / "schemas" / "profile.schema.json").read_text())


def _regions(lib: Path) -> dict[str, int]:
    """Kernel name -> vaddr of the region defining it (many_* style: one per TU)."""
    from slimwheel.cubin import read_element

    out = {}
    with open_elf(lib) as elf:
        for region in scan(elf).regions:
            for el in region.elements:
                syms = read_element(elf.buf, el, name=str(lib))
                for k in syms.kernels if syms else ():
                    out[k] = region.vaddr
    return out


def _records(tmp: Path, lib: Path) -> Path:
    """Recorder output, as the shim writes it, for a run that launched usage_kA
    and read usage_c_value (plus one Triton-style heap image)."""
    regions = _regions(lib)
    d = tmp / "records"
    d.mkdir()
    lines = [
        {"t": "process", "pid": 1, "ppid": 0},
        {"t": "versions", "driver": 13000, "cupti_api": 28},
        {"t": "gpu", "index": 0, "name": "NVIDIA H200", "cc": "9.0"},
        {"t": "runtime", "lib": "/site/nvidia/cu13/lib/libcudart.so.13", "version": 13000},
        {
            "t": "origin",
            "id": 0,
            "api": "cuLibraryLoadData",
            "lib": str(lib),
            "vaddr": regions["usage_kA"],
        },
        {
            "t": "origin",
            "id": 1,
            "api": "cuLibraryLoadData",
            "lib": str(lib),
            "vaddr": regions["usage_kC"],
        },
        {"t": "origin", "id": 2, "api": "cuModuleLoadData", "jit": True},
        {"t": "resolve", "o": 0, "name": "usage_kA"},
        {"t": "launch", "o": 0, "name": "usage_kA"},
        {"t": "global", "o": 1, "name": "usage_c_value"},
        {"t": "launch", "o": 2, "name": "triton_kernel"},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n" + '{"t": "launch", "o": 0, "na'
    (d / "rec-1-1.jsonl").write_text(text)  # a process killed mid-line
    return d


def test_collect_and_schema(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    lib = fixture_libs["usage"]
    profile = collect(str(_records(tmp_path, lib)))
    doc = profile.to_json()
    jsonschema.validate(doc, SCHEMA)
    (entry,) = doc["libraries"]
    assert entry["sha256"] == file_sha256(lib)
    assert entry["kernels"] == ["usage_kA"] and entry["variables"] == ["usage_c_value"]
    assert entry["resolved"] == ["usage_kA"]
    assert doc["gpus"] == [{"name": "NVIDIA H200", "cc": "9.0"}]
    assert doc["driver_version"] == 13000
    assert doc["runtimes"] == [{"library": "libcudart.so.13", "version": 13000}]
    assert doc["jit"] == [{"api": "cuModuleLoadData", "count": 1}]
    again = Profile.from_json(json.loads(json.dumps(doc)), "x")
    assert again.to_json() == doc


def test_profile_slims_unused_units(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    lib = fixture_libs["usage"]
    profile = collect(str(_records(tmp_path, lib)))
    usage = profile.for_library(file_sha256(lib), lib.name)
    assert usage is not None
    out = tmp_path / "slim.so"
    r = slim_library(lib, out, LibraryPolicy(targets=parse_targets(["sm_90"]), usage=usage))
    assert r.report.problems == []
    kept = _regions(out)
    assert set(kept) == {"usage_kA", "usage_kC"}, "kB's unit is not used; kC's variable is"
    reasons = {d.reason.value for d in r.plan.decisions}
    assert {"not-used", "wrong-arch", "loaded"} <= reasons
    assert r.unused_bytes > 0


def test_cli_profile_files(
    fixture_libs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lib = fixture_libs["usage"]
    profile = collect(str(_records(tmp_path, lib)))
    p1 = tmp_path / "a.json"
    p1.write_text(json.dumps(profile.to_json()))
    other = Profile(
        libraries=(LibraryUsage(file_sha256(lib), str(lib), lib.name, kernels=("usage_kB",)),)
    )
    p2 = tmp_path / "b.json"
    p2.write_text(json.dumps(other.to_json()))
    merged = tmp_path / "m.json"
    assert main(["profile", "merge", str(p1), str(p2), "-o", str(merged)]) == 0
    m = load_profile(merged)
    assert m.libraries[0].kernels == ("usage_kA", "usage_kB")
    assert m == merge([load_profile(p1), load_profile(p2)])
    assert main(["profile", "show", str(merged)]) == 0
    assert "2 kernels" in capsys.readouterr().out
    out = tmp_path / "slim.so"
    assert (
        main(
            ["slim", str(lib), "--arch", "sm_90", "-o", str(out), "--profile", str(p1), "--explain"]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "not used by the profile" in text and "more elements" in text
    # A profile of another build of the library: a warning, arch slimming only.
    renamed = tmp_path / lib.name
    data = bytearray(lib.read_bytes())
    data[-1] ^= 1
    renamed.write_bytes(bytes(data))
    assert (
        main(["slim", str(renamed), "--arch", "sm_90", "-o", str(out), "--profile", str(p1)]) == 0
    )
    captured = capsys.readouterr()
    assert "recorded on another build" in captured.err
    assert "removed as unused" not in captured.out
    assert (
        main(
            [
                "slim",
                str(renamed),
                "--arch",
                "sm_90",
                "-o",
                str(out),
                "--profile",
                str(p1),
                "--profile-match",
                "name",
            ]
        )
        == 0
    )
    assert "removed as unused" in capsys.readouterr().out


VALID = json.dumps(
    Profile(libraries=(LibraryUsage(sha256="0" * 64, path="/x/lib.so", name="lib.so"),)).to_json()
)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not JSON"),
        ('{"schema": "other"}', "not a slimwheel profile"),
        ('{"schema": "slimwheel.profile", "schema_version": 99}', "not supported"),
        (
            '{"schema": "slimwheel.profile", "schema_version": 1, '
            '"libraries": [{"sha256": "xyz"}]}',
            "not a valid profile",
        ),
        ('{"schema": "slimwheel.profile", "schema_version": 1}', "not a valid profile"),
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
        ('{"schema": "slimwheel.profile", "x": Infinity}', "Infinity is not JSON"),
        (VALID.replace('"jit": []', '"jit": [], "extra": 1'), "not a valid profile"),
        (VALID.replace('"regions": []', '"regions": [-1]'), "libraries/0/regions/0"),
        (VALID.replace('"kernels": []', '"kernels": "k"'), "libraries/0/kernels"),
        ("\udcff", "not UTF-8"),
    ],
)
def test_bad_profiles(
    fixture_libs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
    message: str,
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(content.encode("utf-8", "surrogateescape"))
    rc = main(
        [
            "slim",
            str(fixture_libs["usage"]),
            "--arch",
            "sm_90",
            "-o",
            str(tmp_path / "x.so"),
            "--profile",
            str(bad),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and message in err and "bad.json" in err and err.count("\n") == 1
    assert not (tmp_path / "x.so").exists()


def _compile_with_shim(source: Path, exe: Path) -> None:
    """Compile a C program that #includes the shim, against this machine's CUPTI."""
    from slimwheel.profile import find_cupti

    includes, libdir = find_cupti()
    cmd = ["cc", "-o", str(exe), str(source), *[f"-I{i}" for i in includes], f"-L{libdir}"]
    cmd += ["-l:libcupti.so.13", "-ldl", "-lpthread", f"-Wl,-rpath,{libdir}"]
    subprocess.run(cmd, check=True)


def test_recorder_builds_and_hashes_like_hashlib(tmp_path: Path) -> None:
    """The shim compiles against this machine's CUPTI; its SHA-256 is right."""
    recorder = build_recorder(Store(tmp_path / "store"))
    assert recorder.is_file()
    assert build_recorder(Store(tmp_path / "store")) == recorder  # cached
    nm = subprocess.run(["nm", "-D", str(recorder)], capture_output=True, text=True).stdout
    assert " T InitializeInjection" in nm
    driver = tmp_path / "check.c"
    driver.write_text(
        '#include "' + str(REPO / "shim" / "slimwheel_recorder.c") + '"\n'
        "int main(void) {\n"
        "  static unsigned char buf[1000]; char hex[65];\n"
        "  for (int i = 0; i < 1000; i++) buf[i] = (unsigned char)(i * 7);\n"
        "  size_t lens[] = {0, 1, 55, 56, 63, 64, 65, 119, 1000};\n"
        "  for (int i = 0; i < 9; i++) { sha256_hex(buf, lens[i], hex); puts(hex); }\n"
        "  return 0;\n}\n"
    )
    exe = tmp_path / "check"
    _compile_with_shim(driver, exe)
    got = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    data = bytes((i * 7) & 0xFF for i in range(1000))
    assert got == [
        hashlib.sha256(data[:n]).hexdigest() for n in (0, 1, 55, 56, 63, 64, 65, 119, 1000)
    ]


def test_recorder_names_loaded_runtimes_once(tmp_path: Path) -> None:
    """The shim's runtime scan finds a libcudart loaded in the process and
    records its version once, however often it looks."""
    from slimwheel.profile import find_cupti

    _includes, libdir = find_cupti()
    cudart = sorted(Path(libdir).parent.glob("lib64/libcudart.so.*")) or sorted(
        Path("/usr/local/cuda/lib64").glob("libcudart.so.*")
    )
    if not cudart:
        pytest.skip("no libcudart next to CUPTI")
    check = tmp_path / "runtimes.c"
    check.write_text(
        '#include "' + str(REPO / "shim" / "slimwheel_recorder.c") + '"\n'
        "int main(int argc, char **argv) {\n"
        "  out = stdout; write_runtimes();\n"
        "  if (!dlopen(argv[1], RTLD_NOW)) return 2;\n"
        "  write_runtimes(); write_runtimes();\n"
        "  return 0;\n}\n"
    )
    exe = tmp_path / "runtimes"
    _compile_with_shim(check, exe)
    got = subprocess.run([str(exe), str(cudart[0])], capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in got.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["t"] == "runtime"
    assert rows[0]["lib"] == os.path.realpath(cudart[0])
    assert rows[0]["version"] // 1000 == 13


def test_profiles_in_repo_validate() -> None:
    for path in sorted((REPO / "profiles").glob("*.json")):
        if path.name == "profile.schema.json":
            continue
        jsonschema.validate(json.loads(path.read_text()), SCHEMA)
        load_profile(path)


def test_unattributed_launches_keep_their_kernels(
    fixture_libs: dict[str, Path], tmp_path: Path
) -> None:
    """A kernel launched from a handle the recorder could not place is kept
    wherever it is defined."""
    lib = fixture_libs["usage"]
    d = _records(tmp_path, lib)
    with open(d / "rec-1-1.jsonl", "a") as f:
        f.write("\n" + json.dumps({"t": "launch", "o": 99, "name": "usage_kB"}) + "\n")
    profile = collect(str(d))
    assert profile.unattributed == ("usage_kB",)
    usage = profile.for_library(file_sha256(lib), lib.name)
    assert usage is not None and "usage_kB" in usage.needed_kernels
    out = tmp_path / "slim.so"
    slim_library(lib, out, LibraryPolicy(targets=parse_targets(["sm_90"]), usage=usage))
    assert set(_regions(out)) == {"usage_kA", "usage_kB", "usage_kC"}


def test_profile_command_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["profile", "-o", str(tmp_path / "p.json")]) == 2
    assert "usage: slimwheel profile" in capsys.readouterr().err
    monkeypatch.setenv("CC", "no-such-compiler-here")
    monkeypatch.setenv("PATH", str(tmp_path))
    rc = main(
        ["profile", "--store", str(tmp_path / "s"), "-o", str(tmp_path / "p.json"), "--", "true"]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "no C compiler" in err and err.count("\n") == 1
    assert not (tmp_path / "p.json").exists()


def test_inspect_elements_with_a_profile_match_the_schema(
    fixture_libs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every removal reason appears in inspect's schema ("not-used" was missing)."""
    from slimwheel.plan import Reason

    schema = json.loads((REPO / "slimwheel/schemas/inspect.schema.json").read_text())
    enum = schema["$defs"]["element"]["properties"]["reason"]["enum"]
    assert sorted(enum) == sorted(r.value for r in Reason)
    lib = fixture_libs["usage"]
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps(collect(str(_records(tmp_path, lib))).to_json()))
    argv = ["inspect", str(lib), "--arch", "sm_90", "--profile", str(prof), "--elements", "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, schema)
    reasons = {e["reason"] for e in doc["libraries"][0]["element_list"]}
    assert "not-used" in reasons and "loaded" in reasons
