"""Host code (--cpu) on a C/C++ fixture: record one mode, remove the rest, the guard names it.

The fixture (tests/fixtures/src/hostcode/) is a library of page-aligned
functions and a driver that calls them by mode: "a" is the profiled
workload (a function spanning pages, a C++ exception thrown and caught, an
IFUNC, a thread, a forked child that leaves with _exit, a destructor that
calls a function after main returned); "b" also calls a function "a" never
ran; "c" takes the error path of a function "a" ran.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import jsonschema
import pytest
from elftools.elf.elffile import ELFFile

from bench import bench_host_holes
from slimwheel.elf import ElfFile, open_elf
from slimwheel.hostcode import HostPlan, executed_functions, plan_host
from slimwheel.hostuse import HostUse
from slimwheel.layout import hole_granule
from slimwheel.note import NOTE_SECTION, read_note
from slimwheel.profile import load_profile

SRC = Path(__file__).resolve().parents[1] / "fixtures" / "src" / "hostcode"

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None or sys.platform != "linux", reason="needs g++ on Linux"
)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slimwheel", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def build_fixture(dest: Path, *, variant: str = "") -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    flags = [f"-DFX_VARIANT={variant}"] if variant else []
    subprocess.run(
        ["g++", "-O2", "-shared", "-fPIC", *flags, "-o", str(dest / "libhostfx.so"),
         str(SRC / "hostfx.cpp"), "-pthread"],
        check=True,
    )  # fmt: skip
    subprocess.run(
        ["gcc", "-O2", "-o", str(dest / "driver"), str(SRC / "driver.c"), f"-L{dest}",
         "-lhostfx", "-Wl,-rpath,$ORIGIN"],
        check=True,
    )  # fmt: skip
    return dest


def run(driver: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(driver), mode], capture_output=True, text=True, timeout=60)


def symbol(lib: Path, name: str) -> tuple[int, int]:
    with open(lib, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            if sec.header.sh_type != "SHT_SYMTAB":
                continue
            for s in sec.iter_symbols():
                if s.name == name:
                    return s["st_value"], s["st_value"] + max(1, s["st_size"])
    raise KeyError(name)


def executed_pages(profile: Path, lib: Path) -> set[int]:
    p = load_profile(profile)
    (entry,) = [x for x in p.libraries if x.name == lib.name]
    assert entry.host is not None
    return {page for first, n in entry.host.runs for page in range(first, first + n)}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(original dir, profile of mode "a", slimmed dir)."""
    base = tmp_path_factory.mktemp("hostfx")
    orig = build_fixture(base / "orig")
    store = base / "store"
    profile = base / "a.json"
    env = dict(os.environ, SLIMWHEEL_STORE=str(store))
    got = cli("profile", "-o", str(profile), "--", str(orig / "driver"), "a", env=env)
    assert got.returncode == 0, got.stderr
    slim = base / "slim"
    shutil.copytree(orig, slim)
    got = cli(
        "slim", "--arch", "sm_90", "--profile", str(profile), "--cpu", "--min-hole", "4K",
        str(orig / "libhostfx.so"), "-o", str(slim / "libhostfx.so"), env=env,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    return orig, profile, slim


def page_of(lib: Path, name: str) -> int:
    start, _end = symbol(lib, name)
    with open_elf(lib) as elf:
        (seg,) = [p for p in elf.loads if p.vaddr <= start < p.vaddr + p.memsz]
        return (seg.offset + start - seg.vaddr) // 4096


def test_the_profile_records_the_pages_that_ran(recorded: tuple[Path, Path, Path]) -> None:
    orig, profile, _slim = recorded
    lib = orig / "libhostfx.so"
    doc = json.loads(profile.read_text())
    assert doc["schema_version"] == 2 and doc["host_recorded"] is True
    pages = executed_pages(profile, lib)
    # Run by main, by a thread, by a child that left with _exit, and by a destructor.
    for name in ("fx_hot", "fx_spanning", "fx_throws", "fx_in_thread", "fx_in_child", "fx_bye"):
        assert page_of(lib, name) in pages, name
    if not doc["host_exact"]:
        pytest.skip("no userfaultfd write-protect here: fault-around maps neighbours too")
    for name in ("fx_only_in_b", "fx_never", "fx_report"):
        assert page_of(lib, name) not in pages, name


def test_the_profiled_mode_runs_identically(recorded: tuple[Path, Path, Path]) -> None:
    orig, _profile, slim = recorded
    assert (slim / "libhostfx.so").stat().st_size < (orig / "libhostfx.so").stat().st_size
    before, after = run(orig / "driver", "a"), run(slim / "driver", "a")
    assert (after.returncode, after.stdout, after.stderr) == (0, before.stdout, before.stderr)
    bye = dict(os.environ, FX_SAY_BYE="1")
    got = subprocess.run([str(slim / "driver"), "a"], capture_output=True, text=True, env=bye)
    assert got.returncode == 0 and "bye from the destructor 0" in got.stdout


def test_removed_code_is_mapped_by_nothing(recorded: tuple[Path, Path, Path]) -> None:
    orig, _profile, slim = recorded
    start, end = symbol(orig / "libhostfx.so", "fx_only_in_b")
    with open(slim / "libhostfx.so", "rb") as f:
        loads = [s for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD"]
        for s in loads:
            assert not (s["p_vaddr"] < end and start < s["p_vaddr"] + s["p_memsz"])
    with open_elf(slim / "libhostfx.so") as elf:
        note = read_note(elf)
    assert note is not None
    assert any(a <= start < b for a, b in note.ranges)
    unit = note.unit_at(start)
    assert unit is not None and unit.name == "fx_only_in_b"


def _guarded(slim: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return cli("doctor", "--", str(slim / "driver"), mode)


def test_an_unprofiled_function_gets_the_guards_message(
    recorded: tuple[Path, Path, Path],
) -> None:
    _orig, profile, slim = recorded
    bare = run(slim / "driver", "b")
    assert bare.returncode == -signal.SIGSEGV  # a fault, never a silent wrong result
    assert "only in b" not in bare.stdout
    got = _guarded(slim, "b")
    assert got.returncode == 128 + signal.SIGSEGV
    lines = [ln for ln in got.stderr.splitlines() if ln.startswith("slimwheel:")]
    assert len(lines) == 1, got.stderr
    digest = load_profile(profile).digest()
    assert "libhostfx.so: fx_only_in_b (host code at 0x" in lines[0]
    assert f"removed by slimwheel --cpu (profile {digest[:12]})" in lines[0]
    assert "slimwheel profile merge" in lines[0] and "slimwheel restore" in lines[0]
    assert ", called from driver+0x" in lines[0], "where it was entered from"


@pytest.mark.parametrize("how", ["sh", "execv"])
def test_the_guard_survives_exec_into_the_program(
    recorded: tuple[Path, Path, Path], how: str
) -> None:
    """A launcher that exec()s the program (a shell script ending in exec, a Python
    re-exec: pyenv's shims do both) keeps the pid and loses the handlers: the guard of
    the new image installs itself again and names the removed function, once."""
    _orig, _profile, slim = recorded
    driver = str(slim / "driver")
    if how == "sh":
        cmd = ["sh", "-c", 'exec "$0" b', driver]
    else:
        cmd = [sys.executable, "-c", f"import os; os.execv({driver!r}, [{driver!r}, 'b'])"]
    got = cli("doctor", "--", *cmd)
    assert got.returncode == 128 + signal.SIGSEGV
    lines = [ln for ln in got.stderr.splitlines() if ln.startswith("slimwheel:")]
    assert len(lines) == 1, got.stderr
    assert "libhostfx.so: fx_only_in_b (host code at 0x" in lines[0]


def test_two_copies_of_the_guard_say_it_once(recorded: tuple[Path, Path, Path]) -> None:
    """doctor's preloaded guard and an environment's copy (another file) in one process:
    the first one loaded names the fault, the second stays quiet."""
    from slimwheel.guard import GUARD_NAME, build_guard

    _orig, _profile, slim = recorded
    copy = slim.parent / "envcopy" / GUARD_NAME
    copy.parent.mkdir(exist_ok=True)
    guard = build_guard(slim.parent / "guards", cuda=False).library
    shutil.copyfile(guard, copy)
    code = (
        f"import ctypes; ctypes.CDLL({str(copy)!r}); "
        f"lib = ctypes.CDLL({str(slim / 'libhostfx.so')!r}); lib.fx_only_in_b(3)"
    )
    got = cli("doctor", "--", sys.executable, "-c", code)
    assert got.returncode == 128 + signal.SIGSEGV
    lines = [ln for ln in got.stderr.splitlines() if ln.startswith("slimwheel:")]
    assert len(lines) == 1, got.stderr
    alone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert alone.returncode == -signal.SIGSEGV
    assert "fx_only_in_b (host code at 0x" in alone.stderr  # the copy alone guards
    # two copies preloaded (doctor prepends its own to an LD_PRELOAD that names one):
    # the first installs, the second sees it and stays quiet
    env = dict(os.environ, LD_PRELOAD=f"{guard}:{copy}")
    both = subprocess.run([str(slim / "driver"), "b"], capture_output=True, text=True, env=env)
    assert both.returncode == -signal.SIGSEGV
    lines = [ln for ln in both.stderr.splitlines() if ln.startswith("slimwheel:")]
    assert len(lines) == 1, both.stderr


def test_the_error_path_of_a_kept_function(recorded: tuple[Path, Path, Path]) -> None:
    """fx_checked ran, so its split cold part stays; the cold function it calls did not."""
    orig, _profile, slim = recorded
    cold, _ = symbol(orig / "libhostfx.so", "fx_checked.cold")
    with open_elf(slim / "libhostfx.so") as elf:
        note = read_note(elf)
    assert note is not None and not any(a <= cold < b for a, b in note.ranges)
    got = _guarded(slim, "c")
    assert got.returncode == 128 + signal.SIGSEGV
    assert "libhostfx.so: fx_report (host code at 0x" in got.stderr
    assert "fx_checked: negative" not in got.stderr


def test_a_faulthandler_still_runs_after_the_guard(recorded: tuple[Path, Path, Path]) -> None:
    """The guard stays first and chains to handlers the program installs later."""
    _orig, _profile, slim = recorded
    code = (
        "import ctypes, faulthandler, sys; faulthandler.enable(); "
        f"lib = ctypes.CDLL({str(slim / 'libhostfx.so')!r}); lib.fx_only_in_b(3)"
    )
    got = cli("doctor", "--", sys.executable, "-c", code)
    assert got.returncode == 128 + signal.SIGSEGV
    assert "fx_only_in_b (host code at" in got.stderr
    assert "Fatal Python error: Segmentation fault" in got.stderr


def test_code_that_runs_without_a_visible_call_stays(tmp_path: Path) -> None:
    """With a record of no page at all, the entry points the loader and libc call stay."""
    lib = build_fixture(tmp_path) / "libhostfx.so"
    with open_elf(lib) as elf:
        plan = plan_host(elf, HostUse(4096, ()), granule=4096, min_hole=4096, profile_digest="0")
    removed = plan.ranges
    for name in ("resolve_fx_ifunc", "fx_at_exit", "frame_dummy", "_init"):
        try:
            addr, _ = symbol(lib, name)
        except KeyError:
            continue
        assert not any(r.start <= addr < r.end for r in removed), name
    hot, _ = symbol(lib, "fx_hot")
    assert any(r.start <= hot < r.end for r in removed)


def test_cpu_needs_a_host_record(tmp_path: Path, recorded: tuple[Path, Path, Path]) -> None:
    orig, _profile, _slim = recorded
    lib = str(orig / "libhostfx.so")
    got = cli("slim", "--arch", "sm_90", "--cpu", lib, "-o", str(tmp_path / "x.so"))
    assert got.returncode == 2 and len(got.stderr.strip().splitlines()) == 1
    assert "--cpu needs a profile with host code use" in got.stderr
    device_only = tmp_path / "device.json"
    env = dict(os.environ, SLIMWHEEL_STORE=str(tmp_path / "store"))
    got = cli("profile", "--no-cpu", "-o", str(device_only), "--", "true", env=env)
    assert got.returncode == 0, got.stderr
    got = cli(
        "slim", "--arch", "sm_90", "--profile", str(device_only), "--cpu", lib,
        "-o", str(tmp_path / "x.so"),
    )  # fmt: skip
    assert got.returncode == 2 and "--cpu needs a profile with host code use" in got.stderr
    assert not (tmp_path / "x.so").exists()


def test_a_host_record_of_other_bytes_is_never_applied(
    tmp_path: Path, recorded: tuple[Path, Path, Path]
) -> None:
    _orig, profile, _slim = recorded
    other = build_fixture(tmp_path / "other", variant="2") / "libhostfx.so"
    out = tmp_path / "out.so"
    got = cli(
        "slim", "--arch", "sm_90", "--profile", str(profile), "--profile-match", "name",
        "--cpu", str(other), "-o", str(out),
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    warning = [ln for ln in got.stderr.splitlines() if "host code record is of other bytes" in ln]
    assert len(warning) == 1 and "libhostfx.so" in warning[0]
    with open_elf(out) as elf:
        assert elf.section_by_name(NOTE_SECTION) is None
    assert out.stat().st_size == other.stat().st_size


def test_a_library_the_profile_never_loaded_keeps_its_code(
    tmp_path: Path, recorded: tuple[Path, Path, Path]
) -> None:
    _orig, profile, _slim = recorded
    lib = Path("/lib/x86_64-linux-gnu/libz.so.1")
    if not lib.exists():
        pytest.skip("no libz to try")
    doc = load_profile(profile)
    if any(x.host is not None and x.name == lib.name for x in doc.libraries):
        pytest.skip("the profiled process mapped libz")
    out = tmp_path / "z.so"
    got = cli(
        "slim", "--arch", "sm_90", "--profile", str(profile), "--cpu", str(lib), "-o", str(out)
    )
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == lib.read_bytes()


@pytest.mark.parametrize(
    "host",
    [
        {"version": 1, "page_size": 4096, "pages": 1, "executed": [[-1, 2]]},
        {"version": 1, "page_size": 4096, "pages": 1, "executed": [[1, 0]]},
        {"version": 1, "page_size": 12345, "pages": 1, "executed": [[1, 1]]},
        {"version": 2, "page_size": 4096, "pages": 1, "executed": [[1, 1]]},
        {"version": 1, "page_size": 4096, "pages": 1, "executed": [[1 << 50, 1]]},
        {"version": 1, "page_size": 4096, "pages": 1, "executed": "all"},
    ],
)
def test_a_malformed_host_record_is_refused(
    tmp_path: Path, recorded: tuple[Path, Path, Path], host: dict[str, object]
) -> None:
    orig, profile, _slim = recorded
    doc = json.loads(profile.read_text())
    for lib in doc["libraries"]:
        if lib["host"] is not None:
            lib["host"] = host
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    out = tmp_path / "x.so"
    got = cli(
        "slim", "--arch", "sm_90", "--profile", str(bad), "--cpu", str(orig / "libhostfx.so"),
        "-o", str(out),
    )  # fmt: skip
    assert got.returncode != 0 and "Traceback" not in got.stderr
    assert len(got.stderr.strip().splitlines()) == 1 and str(bad) in got.stderr
    assert not out.exists()


def test_verify_accepts_the_cpu_output(recorded: tuple[Path, Path, Path]) -> None:
    orig, profile, slim = recorded
    args: Sequence[str] = ("--arch", "sm_90", "--profile", str(profile), "--cpu")
    got = cli("verify", *args, "--min-hole", "4K", str(orig / "libhostfx.so"),
              str(slim / "libhostfx.so"))  # fmt: skip
    assert got.returncode == 0, got.stderr
    # Without --cpu the removed ranges are unexplained: verification refuses the pair.
    got = cli("verify", "--arch", "sm_90", str(orig / "libhostfx.so"), str(slim / "libhostfx.so"))
    assert got.returncode != 0


def test_profile_show_and_merge_keep_host_code(
    tmp_path: Path, recorded: tuple[Path, Path, Path]
) -> None:
    orig, profile, _slim = recorded
    shown = cli("profile", "show", str(profile))
    assert shown.returncode == 0 and "host code:" in shown.stdout
    env = dict(os.environ, SLIMWHEEL_STORE=str(tmp_path / "store"))
    b = tmp_path / "b.json"
    got = cli("profile", "-o", str(b), "--", str(orig / "driver"), "b", env=env)
    assert got.returncode == 0, got.stderr
    merged = tmp_path / "ab.json"
    assert cli("profile", "merge", str(profile), str(b), "-o", str(merged)).returncode == 0
    lib = orig / "libhostfx.so"
    assert executed_pages(merged, lib) == executed_pages(profile, lib) | executed_pages(b, lib)
    assert page_of(lib, "fx_only_in_b") in executed_pages(merged, lib)


def test_build_with_cpu_for_wheels_and_conda_packages(
    tmp_path: Path, recorded: tuple[Path, Path, Path]
) -> None:
    """build --cpu goes through the store like every option: its own key, the same bytes
    twice, the note in the library of the wheel and of the conda package."""
    from tests.conda_packages import make_package
    from tests.integration.test_build import make_wheel

    orig, profile, _slim = recorded
    lib = (orig / "libhostfx.so").read_bytes()
    (tmp_path / "in").mkdir()
    wheel = make_wheel(tmp_path / "in", "hostfx", "1.0", {"hostfx/libhostfx.so": lib})
    conda = make_package(tmp_path / "in", "hostfx", {"lib/libhostfx.so": lib})
    env = dict(os.environ, SLIMWHEEL_STORE=str(tmp_path / "store"), SOURCE_DATE_EPOCH="1700000000")
    outs = []
    schemas = SRC.parents[3] / "slimwheel" / "schemas"
    for i, flags in enumerate((["--cpu", "--json"], ["--cpu"], [])):
        out = tmp_path / f"out{i}"
        got = cli(
            "build", str(wheel), str(conda), "--arch", "sm_90", "--profile", str(profile),
            *flags, "--min-hole", "4K", "-o", str(out), "-q", env=env,
        )  # fmt: skip
        assert got.returncode == 0, got.stderr
        if "--json" in flags:
            jsonschema.validate(
                json.loads(got.stdout), json.loads((schemas / "build.schema.json").read_text())
            )
        outs.append(sorted(p for p in out.iterdir() if p.is_file()))
    cpu, again, plain = outs
    assert [p.read_bytes() for p in cpu] == [p.read_bytes() for p in again]
    assert [p.name for p in cpu] != [p.name for p in plain]  # the label says cpu
    import zipfile

    (whl,) = [p for p in cpu if p.suffix == ".whl"]
    with zipfile.ZipFile(whl) as zf:
        (tmp_path / "w.so").write_bytes(zf.read("hostfx/libhostfx.so"))
        (prov_name,) = [n for n in zf.namelist() if n.endswith(".dist-info/slimwheel.json")]
        prov = json.loads(zf.read(prov_name))
    schema = schemas / "provenance.schema.json"
    jsonschema.validate(prov, json.loads(schema.read_text()))  # the schema knows --cpu
    assert prov["cpu"] is True and prov["layout"] == {"min_hole": 4096}
    assert prov["host_holes"] == [4096, 1024]
    with open_elf(tmp_path / "w.so") as elf:
        note = read_note(elf)
    assert note is not None and note.unit_at(symbol(orig / "libhostfx.so", "fx_never")[0])
    (pkg,) = [p for p in cpu if p.name.endswith(".conda")]
    assert ".cpu" in pkg.name or "cpu" in pkg.name


def test_inspect_and_slim_json_report_host_code(
    tmp_path: Path, recorded: tuple[Path, Path, Path]
) -> None:
    import jsonschema

    orig, profile, _slim = recorded
    schemas = Path(__file__).resolve().parents[2] / "slimwheel" / "schemas"
    lib = str(orig / "libhostfx.so")
    args = ("--arch", "sm_90", "--profile", str(profile), "--cpu")
    got = cli("inspect", *args, "--min-hole", "4K", lib, "--json")
    assert got.returncode == 0, got.stderr
    doc = json.loads(got.stdout)
    jsonschema.validate(doc, json.loads((schemas / "inspect.schema.json").read_text()))
    host = doc["libraries"][0]["host_code"]
    assert host["functions"] > host["removable_functions"] > 0
    assert doc["totals"]["host_removable_bytes"] == host["removable_bytes"] > 0
    text = cli("inspect", *args, "--min-hole", "4K", lib)
    assert "--cpu would remove" in text.stdout
    got = cli("slim", *args, "--min-hole", "4K", lib, "-o", str(tmp_path / "x.so"), "--json")
    assert got.returncode == 0, got.stderr
    slim = json.loads(got.stdout)
    jsonschema.validate(slim, json.loads((schemas / "slim.schema.json").read_text()))
    assert slim["host_code"]["functions"]["removed"] >= 3  # fx_only_in_b, fx_never, fx_report
    explain = cli("slim", *args, "--min-hole", "4K", lib, "-o", str(tmp_path / "y.so"), "--explain")
    assert "remove fx_only_in_b" in explain.stdout and "unmap  [0x" in explain.stdout


def test_a_worker_killed_with_sigkill_keeps_what_it_ran(tmp_path: Path) -> None:
    """Snapshots every SLIMWHEEL_HOST_FLUSH_MS: a child killed with SIGKILL (no exit path
    at all) still has the function it ran in the profile."""
    d = build_fixture(tmp_path / "k")
    profile = tmp_path / "k.json"
    env = dict(os.environ, SLIMWHEEL_STORE=str(tmp_path / "store"), SLIMWHEEL_HOST_FLUSH_MS="200")
    got = cli("profile", "-o", str(profile), "--", str(d / "driver"), "k", env=env)
    assert got.returncode == 0 and "killed the child" in got.stdout, got.stderr
    assert page_of(d / "libhostfx.so", "fx_never") in executed_pages(profile, d / "libhostfx.so")
    assert load_profile(profile).processes == 3  # the driver, fx_child's child, the killed one


def test_executed_functions_are_those_whose_pages_ran(tmp_path: Path) -> None:
    """One record with fx_hot's page, one with none: fx_hot is executed in the first only."""
    lib = build_fixture(tmp_path) / "libhostfx.so"
    hot, _ = symbol(lib, "fx_hot")
    with open(lib, "rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        off = hot - text["sh_addr"] + text["sh_offset"]
    with open_elf(lib) as elf:
        ran, idle = executed_functions(elf, [HostUse(4096, ((off // 4096, 1),)), HostUse(4096, ())])
    assert hot in ran and idle == set()
    assert all(abs(a - hot) < 2 * 4096 for a in ran), "only functions on that page (or spanning it)"


def _plan(elf: ElfFile, use: HostUse, max_holes: int, min_hole: int = 4096) -> HostPlan:
    return plan_host(
        elf, use, granule=hole_granule(elf), min_hole=min_hole, profile_digest="",
        max_holes=max_holes,
    )  # fmt: skip


def _ranges(plan: HostPlan) -> list[tuple[int, int]]:
    return [(h.start, h.end) for h in plan.ranges]


def test_at_most_max_holes_are_taken_the_largest_first(tmp_path: Path) -> None:
    """No page ran: the kept functions (constructors, destructor, IFUNC resolver) split
    the rest into several holes; a cap keeps the largest (the lower address first among
    equals), and the bench's numbers per cap are the planner's."""
    lib = build_fixture(tmp_path) / "libhostfx.so"
    use = HostUse(4096, ())
    with open_elf(lib) as elf:
        full = _plan(elf, use, 1 << 30)
        holes = sorted(_ranges(full), key=lambda r: (r[0] - r[1], r[0]))
        assert len(holes) >= 3 and full.note == ""
        assert _plan(elf, use, len(holes)).note == "", "a cap that takes every hole says nothing"
        row = bench_host_holes.measure(elf, use, [4096, 16 << 10], [1, 2, 1 << 30])
        assert row is not None
        code, rules = row
        assert code == full.code_bytes
        for cap in (1, 2):
            plan = _plan(elf, use, cap)
            assert _ranges(plan) == sorted(holes[:cap])
            assert plan.note == f"{len(holes)} removable ranges: the {cap} largest are removed"
            assert rules[f"4K/{cap}"] == {"holes": cap, "removed": plan.removed_bytes}
        assert rules[f"4K/{1 << 30}"] == {"holes": len(holes), "removed": full.removed_bytes}
        # the note counts holes, not runs of removed code (some runs are too small)
        big = _plan(elf, use, 1 << 30, min_hole=16 << 10)
        assert 0 < len(big.ranges) < len(holes)
        for cap in (1, 1 << 30):  # a larger smallest hole: the planner's own holes
            plan = _plan(elf, use, cap, min_hole=16 << 10)
            assert rules[f"16K/{cap}"] == {
                "holes": len(plan.ranges),
                "removed": plan.removed_bytes,
            }
        capped = _plan(elf, use, 0, min_hole=16 << 10)
        assert capped.ranges == ()
        assert capped.note == f"{len(big.ranges)} removable ranges: the 0 largest are removed"


def test_a_run_of_host_code_between_16k_and_64k_leaves_by_default(tmp_path: Path) -> None:
    """Every page ran but those of three neighbouring functions (about 24 KiB): the
    default host rules take them out, the zero-run default (64 KiB) would not."""
    from slimwheel.arch import parse_targets
    from slimwheel.policy import LibraryPolicy
    from slimwheel.slim import plan_host_code

    lib = build_fixture(tmp_path) / "libhostfx.so"
    with open_elf(lib) as elf:
        (text,) = [s for s in elf.sections if s.name == ".text"]
        (seg,) = [p for p in elf.loads if p.offset <= text.offset < p.offset + p.filesz]
        first = (seg.offset + symbol(lib, "fx_checked")[0] - seg.vaddr) // 4096
        last = (seg.offset + symbol(lib, "fx_never")[1] - seg.vaddr - 1) // 4096
        pages = (seg.offset + seg.filesz) // 4096 + 1
        use = HostUse(4096, ((0, first), (last + 1, pages - last - 1)))
        plan = plan_host_code(elf, LibraryPolicy(parse_targets(["sm_90"]), cpu=True, host=use))
        assert plan is not None
        (hole,) = plan.ranges
        assert 16 << 10 <= hole.end - hole.start < 64 << 10
        assert hole.start <= symbol(lib, "fx_only_in_b")[0] < hole.end
        old = _plan(elf, use, 256, min_hole=64 << 10)
        assert old.ranges == ()


def test_bench_host_load_measures_each_rule_beside_the_original(
    recorded: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench/bench_host_load.py slims the library under each rule and dlopens each cold:
    the 4K rule's holes show as more PT_LOADs and mappings than the original's, in a
    smaller file, and every run loaded (the bench refuses a failed dlopen). A relative
    --workdir measures the same, and the bench removes only its own folder there."""
    from bench.bench_host_load import main as bench_host_load

    orig, profile, _slim = recorded
    out = tmp_path / "load.json"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    rc = bench_host_load([
        str(profile), str(orig / "libhostfx.so"), "--min-hole", "default,4K", "--rounds", "2",
        "--workdir", ".", "--json", str(out),
    ])  # fmt: skip
    assert rc == 0 and (tmp_path / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "bench_host_load.run").exists()
    doc = json.loads(out.read_text())
    (key,) = doc["libraries"]
    info = doc["libraries"][key]
    assert info["load_segments"]["4K"] > info["load_segments"]["original"]
    assert info["file_bytes"]["4K"] < info["file_bytes"]["original"]
    runs = {(r["variant"], r["round"]): r for r in doc["runs"]}
    assert sorted(runs) == [(v, n) for v in ("4K", "default", "original") for n in (1, 2)]
    for n in (1, 2):
        assert runs["4K", n]["mappings"] > runs["original", n]["mappings"] >= 1
        assert runs["4K", n]["process_mappings"] < doc["max_map_count"]
    # rounds rotate the order: the original is not always loaded first
    assert [r["variant"] for r in doc["runs"]][:3] != [r["variant"] for r in doc["runs"]][3:]
    # no library the profile holds a host record of: one line, nothing written
    (tmp_path / "other.so").write_bytes(b"not the recorded bytes")
    with pytest.raises(SystemExit, match="no host record of these libraries"):
        bench_host_load([
            str(profile), str(tmp_path / "other.so"), "--workdir", ".",
            "--json", str(tmp_path / "x"),
        ])  # fmt: skip
    assert not (tmp_path / "x").exists()
