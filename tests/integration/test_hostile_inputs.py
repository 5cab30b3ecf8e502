"""Hostile and clumsy inputs, crafted at test time: one line, a clean exit, bounded cost.

Each case runs the command line in a child process and checks: exit code 1
(2 for a usage mistake), one line on stderr naming the file and the problem,
no traceback, nothing written outside the output directory or environment,
no partial output, the input unchanged, and wall time and peak RSS under
stated bounds.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from slimwheel.elf import ElfFile
from slimwheel.fatbin import scan
from slimwheel.store import file_sha256
from tests.conda_packages import make_package
from tests.integration.test_build import make_wheel

# Bounds of one hostile run (a ~1 MB fixture and small crafted files): measured,
# and the address space limited so a run that tried to take more fails at once.
SECONDS = 30.0
RSS_MB = 400.0
ADDRESS_SPACE = 4 << 30


@dataclass
class Run:
    rc: int
    out: str
    err: str
    seconds: float
    rss_mb: float


_PROBE = (
    "import resource, subprocess, sys\n"
    "def limit():\n"
    f"    resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE}, {ADDRESS_SPACE}))\n"
    "rc = subprocess.run(sys.argv[2:], preexec_fn=limit).returncode\n"
    "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "open(sys.argv[1], 'w').write(f'{rc} {rss}')\n"
)


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
    """``python -m slimwheel ARGS`` in a child; its exit code, output, time and peak RSS
    (of that child and its own children alone: measured by a probe process between)."""
    import tempfile

    with tempfile.NamedTemporaryFile("r") as numbers:
        t = time.monotonic()
        cmd = [sys.executable, "-c", _PROBE, numbers.name, sys.executable, "-m", "slimwheel"]
        try:
            proc = subprocess.run(
                [*cmd, *args],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                env=env,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise AssertionError(f"slimwheel {' '.join(args)} hung (>{timeout} s)") from None
        seconds = time.monotonic() - t
        rc, rss = numbers.read().split()
    assert proc.returncode == 0, proc.stderr
    return Run(int(rc), proc.stdout, proc.stderr, seconds, int(rss) / 1024)


def refused(r: Run, *names: str, code: int = 1) -> str:
    """The run failed cleanly: exit code, one line naming ``names``, no traceback."""
    assert r.rc == code, (r.rc, r.err)
    assert "Traceback" not in r.err, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    for n in names:
        assert n in lines[0], (n, lines[0])
    assert r.seconds < SECONDS, r.seconds
    return lines[0]


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` and its content hash (what must not change)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = file_sha256(p)
    return out


def debris(*roots: Path) -> list[str]:
    """Temporary files and directories of slimwheel runs under ``roots``."""
    return [
        str(p)
        for r in roots
        if r.exists()
        for p in r.rglob(".slimwheel-*")
        if p.name.endswith((".tmp", ".dir"))
    ]


def _record(members: dict[str, bytes], di: str, *, drop_hash: str | None = None) -> bytes:
    rows = []
    for path, data in members.items():
        rows.append([path, "" if path == drop_hash else _b64(data), str(len(data))])
    rows.append([f"{di}/RECORD", "", ""])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def _b64(data: bytes) -> str:
    import base64

    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def raw_wheel(path: Path, members: dict[str, bytes], *, stored: bool = False) -> Path:
    """A zip with exactly these members (RECORD included by the caller)."""
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _base_members(name: str = "demo", version: str = "1.0") -> tuple[str, dict[str, bytes]]:
    di = f"{name}-{version}.dist-info"
    return di, {
        f"{di}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{di}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: py3-none-any\n",
    }


# -- 1. nothing written outside --------------------------------------------------


@pytest.mark.parametrize("targets", [["/ABS/PWN"], ["../../x"], ["sm_90", "sm_80/../../y"], "sm"])
def test_index_refuses_provenance_targets_that_are_paths(
    fixture_libs: dict[str, Path], tmp_path: Path, targets: object
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    if isinstance(targets, list):
        targets = [t.replace("/ABS", str(tmp_path / "abs")) for t in targets]
    prov = json.dumps({"targets": targets, "libraries": []}).encode()
    wheel = make_wheel(src, "demo", "1.0", {"demo/__init__.py": b""})
    # put the provenance in, with a true RECORD
    di, members = _base_members()
    members["demo/__init__.py"] = b""
    members[f"{di}/slimwheel.json"] = prov
    members[f"{di}/RECORD"] = _record(members, di)
    wheel.unlink()
    raw_wheel(src / "demo-1.0-py3-none-any.whl", members)
    before = tree(tmp_path)
    r = run("index", str(src), "-o", str(tmp_path / "site"))
    refused(r, "demo-1.0-py3-none-any.whl", "targets")
    assert tree(tmp_path) == before and not (tmp_path / "abs").exists()
    assert not (tmp_path / "site").exists() and not (tmp_path.parent / "x").exists()


def test_conda_index_refuses_provenance_targets_that_are_paths(tmp_path: Path) -> None:
    prov = json.dumps({"targets": ["../../../escape"], "libraries": [{"path": "x"}]}).encode()
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    pkg = make_package(pkgs, "demo", {"lib/x.txt": b"x", "info/slimwheel.json": prov})
    before = tree(tmp_path)
    r = run("index", "--conda", str(pkgs), "-o", str(tmp_path / "channel"))
    refused(r, pkg.name, "targets")
    assert tree(tmp_path) == before and not (tmp_path / "channel").exists()


def _venv(tmp_path: Path) -> tuple[Path, Path]:
    from tests.helpers import venv_purelib

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    return py, venv_purelib(py)


def _install(py: Path, wheel: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index"]
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True)


def _fake_dist(site: Path, rows: list[str], name: str = "fakecu") -> Path:
    di = site / f"{name}-1.0.dist-info"
    di.mkdir()
    (di / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (di / "RECORD").write_text("\n".join(rows) + "\n")
    return di


@pytest.mark.parametrize(
    "path",
    ["fakecu/../../../../../outside/victim.so", "fakecu/./lib.so", "fakecu//lib.so"],
)
def test_slim_env_refuses_record_paths_not_in_normal_form(
    fixture_libs: dict[str, Path], tmp_path: Path, path: str
) -> None:
    py, site = _venv(tmp_path)
    victim = tmp_path / "outside" / "victim.so"
    victim.parent.mkdir()
    victim.write_bytes(fixture_libs["many_size"].read_bytes())
    (site / "fakecu").mkdir()
    shutil.copyfile(fixture_libs["many_size"], site / "fakecu" / "lib.so")
    _fake_dist(site, [f"{path},{_b64(victim.read_bytes())},{victim.stat().st_size}"])
    before = tree(tmp_path)
    store = tmp_path / "store"
    r = run("slim-env", "--python", str(py), "--arch", "sm_90", "--store", str(store))
    refused(r, "RECORD", "normal form")
    assert tree(tmp_path) == before


def test_slim_env_leaves_paths_outside_site_packages_alone(
    fixture_libs: dict[str, Path], tmp_path: Path
) -> None:
    """A RECORD path that leaves site-packages in normal form (a console script) is
    another directory's file: never a candidate."""
    py, site = _venv(tmp_path)
    victim = site.parent.parent.parent / "bin" / "victim.so"
    shutil.copyfile(fixture_libs["many_size"], victim)
    rel = os.path.relpath(victim, site)
    _fake_dist(site, [f"{rel},{_b64(victim.read_bytes())},{victim.stat().st_size}"])
    before = file_sha256(victim)
    r = run("slim-env", "--python", str(py), "--arch", "sm_90", "--store", str(tmp_path / "s"))
    assert r.rc == 0, r.err
    assert file_sha256(victim) == before


@pytest.mark.parametrize("path", ["/etc/passwd-victim", "lib/../../outside.so", "../x.so"])
def test_slim_env_refuses_conda_paths_outside_the_prefix(tmp_path: Path, path: str) -> None:
    prefix = tmp_path / "prefix"
    (prefix / "conda-meta").mkdir(parents=True)
    doc = {"name": "demo", "paths_data": {"paths": [{"_path": path, "path_type": "hardlink"}]}}
    (prefix / "conda-meta" / "demo-1.0-0.json").write_text(json.dumps(doc))
    before = tree(tmp_path)
    r = run("slim-env", "--prefix", str(prefix), "--arch", "sm_90", "--store", str(tmp_path / "s"))
    refused(r, "demo-1.0-0.json", path)
    assert tree(tmp_path) == before


def test_status_refuses_a_state_file_pointing_outside(tmp_path: Path) -> None:
    py, site = _venv(tmp_path)
    state = {
        "schema": "slimwheel.env-state",
        "schema_version": 1,
        "replaced": [
            {
                "path": "../../../../outside.so",
                "dist_info": "x-1.0.dist-info",
                "original_sha256": "0" * 64,
                "original_size": 1,
                "slim_sha256": "1" * 64,
                "slim_size": 1,
                "targets": ["sm_90"],
                "profile_digest": None,
                "backup": True,
                "state": "done",
            }
        ],
    }
    (site / ".slimwheel-env.json").write_text(json.dumps(state))
    before = tree(tmp_path)
    for cmd in ("status", "restore"):
        r = run(cmd, "--python", str(py), "--store", str(tmp_path / "s"))
        refused(r, ".slimwheel-env.json", "outside")
    assert tree(tmp_path) == before


# -- 2. interrupted runs leave nothing the next run does not clean ----------------


def _killed(args: list[str], point: str, n: int) -> int:
    env = dict(os.environ, SLIMWHEEL_TEST_KILL_AT=point, SLIMWHEEL_TEST_KILL_AFTER=str(n))
    if "TMPDIR" in os.environ:  # set by the test: the system temp directory is checked too
        env["TMPDIR"] = os.environ["TMPDIR"]
    return subprocess.run(
        [sys.executable, "-m", "slimwheel", *args], env=env, capture_output=True
    ).returncode


def _kill_loop(args: list[str], roots: list[Path], check: object = None) -> int:
    """Kill ``args`` at its 1st, 2nd, ... write until a run is not killed; after each
    kill, the next (normal) run must succeed and leave no debris. Returns the kills."""
    kills = 0
    for n in range(1, 40):
        rc = _killed(args, "writing", n)
        if rc != -signal.SIGKILL:
            assert rc == 0
            break
        kills += 1
        time.sleep(1.1)  # debris younger than a second is left to its (maybe live) writer
        r = run(*args)
        assert r.rc == 0, r.err
        assert debris(*roots) == [], f"kill {n}: debris left"
        if callable(check):
            check()
    assert kills >= 2, "the loop reached no write to kill"
    return kills


def test_killed_builds_leave_no_debris(
    fixture_libs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = make_wheel(tmp_path, "demo", "1.0", {"demo/a.so": fixture_libs["many_size"].read_bytes()})
    b = make_wheel(tmp_path, "other", "1.0", {"other/b.so": fixture_libs["big"].read_bytes()})
    out, store = tmp_path / "out", tmp_path / "store"

    def fresh() -> None:
        shutil.rmtree(store, ignore_errors=True)  # every run builds (and writes) again

    args = ["build", str(a), str(b), "--arch", "sm_90", "-o", str(out), "-q", "--jobs", "1"]
    args += ["--store", str(store)]
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(systmp))
    _kill_loop(args, [out, store / "tmp", tmp_path], check=fresh)
    assert list(systmp.iterdir()) == [], "a killed build left its download directory"
    assert sorted(p.name for p in out.iterdir()) == [
        "demo-1.0+sm90-py3-none-linux_x86_64.whl",
        "other-1.0+sm90-py3-none-linux_x86_64.whl",
    ]


def test_killed_conda_builds_leave_no_debris(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    make_package(pkgs, "demo", {"lib/libx.so": fixture_libs["many_size"]})
    out, store = tmp_path / "out", tmp_path / "store"
    args = ["build", str(pkgs), "--arch", "sm_90", "-o", str(out), "-q", "--jobs", "1"]
    args += ["--store", str(store)]
    _kill_loop(args, [out, store / "tmp"], check=lambda: shutil.rmtree(store))
    assert [p.name for p in out.iterdir()] == ["demo-1.0-0_sm90.conda"]


def test_killed_slim_env_and_restore_leave_no_debris(
    fixture_libs: dict[str, Path], tmp_path: Path
) -> None:
    py, site = _venv(tmp_path)
    libs = {"demo/a.so": fixture_libs["many_size"], "demo/b.so": fixture_libs["big"]}
    wheel = make_wheel(tmp_path, "demo", "1.0", {k: v.read_bytes() for k, v in libs.items()})
    _install(py, wheel)
    original = tree(site)
    store = tmp_path / "store"
    common = ["--python", str(py), "--store", str(store)]

    def restored() -> None:
        assert run("restore", *common).rc == 0
        assert tree(site) == original

    # One process: every write is the run's own (workers are killed on their own below).
    _kill_loop(
        ["slim-env", "--arch", "sm_90", "--jobs", "1", *common],
        [site, store / "tmp"],
        check=restored,
    )
    # A worker killed while it writes into the store: one line, nothing replaced,
    # and the next run (which cleans what the worker left) slims everything.
    restored()
    common = ["--python", str(py), "--store", str(tmp_path / "store2")]
    env = dict(os.environ, SLIMWHEEL_TEST_KILL_AT="writing", SLIMWHEEL_TEST_KILL_AFTER="1")
    got = subprocess.run(
        [sys.executable, "-m", "slimwheel", "slim-env", "--arch", "sm_90", "-j", "2", *common],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert got.returncode == 1 and "worker process died" in got.stderr, got.stderr
    assert len(got.stderr.strip().splitlines()) == 1, got.stderr
    assert tree(site) == original
    time.sleep(1.1)
    assert run("slim-env", "--arch", "sm_90", "-j", "2", *common).rc == 0
    assert debris(site, tmp_path / "store2" / "tmp") == []
    assert run("restore", *common).rc == 0 and tree(site) == original

    def slimmed() -> None:
        assert run("slim-env", "--arch", "sm_90", *common).rc == 0

    assert run("slim-env", "--arch", "sm_90", *common).rc == 0
    _kill_loop(["restore", *common], [site, store / "tmp"], check=slimmed)
    assert run("restore", *common).rc == 0
    assert tree(site) == original


# -- 3. consistency under failure -------------------------------------------------


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i``: not writable even by root (skip where the file system cannot)."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_dist_info_changes_nothing(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    py, site = _venv(tmp_path)
    wheel = make_wheel(
        tmp_path, "demo", "1.0", {"demo/a.so": fixture_libs["many_size"].read_bytes()}
    )
    _install(py, wheel)
    before = tree(site)
    with immutable(site / "demo-1.0.dist-info"):
        r = run("slim-env", "--python", str(py), "--arch", "sm_90", "--store", str(tmp_path / "s"))
    refused(r, "demo-1.0.dist-info", "nothing was changed")
    assert tree(site) == before


# -- 4. bounded cost ----------------------------------------------------------------


def _elf_with_section_copies(lib: bytes, name: str, copies: int) -> bytes:
    """``lib`` with ``copies`` more section headers describing section ``name``."""
    import struct

    elf = ElfFile(lib)
    sec = next(s for s in elf.sections if s.name == name)
    h = elf.header
    table = lib[h.shoff : h.shoff + h.shnum * 64]
    one = table[sec.index * 64 : sec.index * 64 + 64]
    body = lib[: h.shoff] + lib[h.shoff + h.shnum * 64 :]
    new_table = table + one * copies
    shoff = len(body)
    out = bytearray(body + new_table)
    struct.pack_into("<Q", out, 0x28, shoff)
    struct.pack_into("<H", out, 0x3C, h.shnum + copies)
    return bytes(out)


def test_duplicated_section_headers_are_refused_at_once(
    fixture_libs: dict[str, Path], tmp_path: Path
) -> None:
    lib = tmp_path / "dup.so"
    lib.write_bytes(
        _elf_with_section_copies(fixture_libs["many_size"].read_bytes(), ".nv_fatbin", 2000)
    )
    for args in (
        ["inspect", str(lib), "--arch", "sm_90", "-q"],
        ["slim", str(lib), "--arch", "sm_90", "-o", str(tmp_path / "o.so")],
    ):
        r = run(*args)
        refused(r, "dup.so", "overlap")
        assert r.rss_mb < RSS_MB
    assert not (tmp_path / "o.so").exists()


def test_ptx_of_blank_lines_is_linear(tmp_path: Path) -> None:
    from slimwheel.cubin import read_ptx

    text = b".version 8.0\n" + b"\n" * 60_000 + b".visible .entry k(\n)\n{\n}\n" + b"   \n" * 60_000
    t = time.monotonic()
    syms = read_ptx(text)
    assert syms.kernels == ("k",)
    assert time.monotonic() - t < 1.0


def test_decompression_claims_are_bounded(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    import struct

    data = bytearray(fixture_libs["many_size"].read_bytes())
    layout = scan(ElfFile(bytes(data)))
    compressed = [e for _r, e in layout.elements if e.compression.value != "none"]
    assert compressed
    for e in compressed:  # every element claims 1 GiB (the per-element cap)
        struct.pack_into("<Q", data, e.offset + 0x38, 1 << 30)
    lib = tmp_path / "claims.so"
    lib.write_bytes(bytes(data))
    r = run("inspect", str(lib), "--kernels", "-q")
    refused(r, "claims.so", "claim")
    assert r.rss_mb < RSS_MB


def test_record_bomb_is_refused_with_little_memory(tmp_path: Path) -> None:
    di, members = _base_members()
    members[f"{di}/RECORD"] = b"a," * (70 << 20)  # inflates past the 64 MiB cap
    wheel = raw_wheel(tmp_path / "demo-1.0-py3-none-any.whl", members)
    assert wheel.stat().st_size < 1 << 20
    r = run("build", str(wheel), "--arch", "sm_90", "-o", str(tmp_path / "o"))
    refused(r, wheel.name, "RECORD")
    assert r.rss_mb < RSS_MB and not (tmp_path / "o").exists()


def test_conda_unpack_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package that unpacks to more than its cap (here lowered to 1 MiB) is refused
    while it streams, before the bytes are written."""
    from slimwheel import condapkg
    from slimwheel.errors import SlimwheelError

    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    pkg = make_package(pkgs, "demo", {"lib/zeros.bin": bytes(8 << 20)})
    assert pkg.stat().st_size < 64 << 10
    monkeypatch.setattr(condapkg, "MIN_UNPACKED_CAP", 1 << 20)
    monkeypatch.setattr(condapkg, "MAX_UNPACK_RATIO", 4)
    dest = tmp_path / "unpacked"
    dest.mkdir()
    with pytest.raises(SlimwheelError, match="unpacks to more than"):
        condapkg.unpack(pkg, dest)
    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) < 2 << 20


# -- 5. no hangs on FIFOs -------------------------------------------------------------


def test_fifos_are_refused_not_waited_on(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    d = tmp_path / "dir"
    d.mkdir()
    os.mkfifo(d / "x-1.0-py3-none-any.whl")
    os.mkfifo(d / "pkg-1.0-0.conda")
    lib = str(fixture_libs["many_size"])
    cases = [
        (["verify", str(fifo), str(fifo), "--arch", "sm_90"], "f"),
        (
            ["slim", lib, "--arch", "sm_90", "-o", str(tmp_path / "o.so"), "--profile", str(fifo)],
            "f",
        ),
        (["slim", str(fifo), "--arch", "sm_90", "-o", str(tmp_path / "o.so")], "f"),
        (["build", str(d), "--arch", "sm_90", "-o", str(tmp_path / "out")], f"{d}/"),
        (["inspect", str(fifo)], "f"),
    ]
    for args, name in cases:
        line = refused(run(*args, timeout=30), name)
        assert "FIFO" in line or "not a regular file" in line, line
    assert not (tmp_path / "o.so").exists() and not list((tmp_path / "out").glob("*.whl"))


def test_not_a_file_is_named_for_what_it_is(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    d = tmp_path / "d"
    d.mkdir()
    assert "directory" in refused(
        run("slim", str(d), "--arch", "sm_90", "-o", str(tmp_path / "o")), "d"
    )
    assert "link" in refused(
        run("slim", str(loop), "--arch", "sm_90", "-o", str(tmp_path / "o")), "loop"
    )


# -- 6. one line, never a traceback ----------------------------------------------------


def _wheel_with(
    tmp_path: Path,
    extra: dict[str, bytes],
    record: bytes | None = None,
    *,
    no_hash: str | None = None,
    stored: bool = False,
) -> Path:
    di, members = _base_members()
    members.update(extra)
    if record is None:
        record = _record(members, di, drop_hash=no_hash)
    members[f"{di}/RECORD"] = record
    return raw_wheel(tmp_path / "demo-1.0-py3-none-any.whl", members, stored=stored)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("record-not-utf8", "not UTF-8"),
        ("metadata-not-utf8", "not UTF-8"),
        ("record-huge-field", "malformed RECORD"),
        ("no-hash", "RECORD gives no hash"),
        ("dot-path", "normal form"),
        ("double-slash", "normal form"),
        ("bad-crc", "unreadable"),
    ],
)
def test_broken_wheels_are_one_line(tmp_path: Path, case: str, message: str) -> None:
    di, _ = _base_members()
    payload = b"not really a library, " * 10
    extra: dict[str, bytes] = {"demo/k.so": payload}
    record = None
    if case == "record-not-utf8":
        record = b"\xff\xfe,,\n"
    elif case == "metadata-not-utf8":
        extra[f"{di}/METADATA"] = b"Name: demo\nVersion: 1.0\nSummary: \xff\n"
    elif case == "record-huge-field":
        record = b'"' + b"a" * 200_000 + b'",,\n'
    elif case == "dot-path":
        extra["demo/./k.so"] = b"again"
    elif case == "double-slash":
        extra["demo//k.so"] = b"again"
    wheel = _wheel_with(
        tmp_path,
        extra,
        record,
        no_hash="demo/k.so" if case == "no-hash" else None,
        stored=case == "bad-crc",
    )
    if case == "bad-crc":  # one byte of the stored member changes: its CRC no longer holds
        data = bytearray(wheel.read_bytes())
        data[data.find(payload) + 3] ^= 0xFF
        wheel.write_bytes(bytes(data))
    out = tmp_path / "out"
    r = run("build", str(wheel), "--arch", "sm_90", "-o", str(out), "--store", str(tmp_path / "s"))
    refused(r, wheel.name, message)
    assert not out.exists() or not list(out.iterdir())


def test_one_bad_wheel_leaves_no_good_wheel_behind(
    fixture_libs: dict[str, Path], tmp_path: Path
) -> None:
    good = make_wheel(
        tmp_path, "good", "1.0", {"good/a.so": fixture_libs["many_size"].read_bytes()}
    )
    bad = make_wheel(tmp_path, "bad", "1.0", {"bad/a.so": b"\x7fELF" + b"\0" * 200})
    out = tmp_path / "out"
    r = run(
        "build",
        str(good),
        str(bad),
        "--arch",
        "sm_90",
        "-o",
        str(out),
        "--store",
        str(tmp_path / "s"),
    )
    refused(r, "bad")
    assert not out.exists(), "no output directory, no good wheel in it"


@pytest.mark.parametrize("value", ["1e20", "nan", "4354819200", "-5"])
def test_source_date_epoch_out_of_range_is_one_line(
    fixture_libs: dict[str, Path], tmp_path: Path, value: str
) -> None:
    wheel = make_wheel(
        tmp_path, "demo", "1.0", {"demo/a.so": fixture_libs["many_size"].read_bytes()}
    )
    env = dict(os.environ, SOURCE_DATE_EPOCH=value)
    out = tmp_path / "out"
    r = run(
        "build",
        str(wheel),
        "--arch",
        "sm_90",
        "-o",
        str(out),
        "--store",
        str(tmp_path / "s"),
        env=env,
    )
    refused(r, "SOURCE_DATE_EPOCH")
    assert not list(out.glob("*.whl"))


def test_bad_local_label_is_a_usage_error(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "demo", "1.0", {"demo/__init__.py": b""})
    r = run(
        "build", str(wheel), "--arch", "sm_90", "-o", str(tmp_path / "o"), "--local-label", "a b"
    )
    refused(r, "--local-label", code=2)


def test_store_entry_without_key_is_rebuilt(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    wheel = make_wheel(
        tmp_path, "demo", "1.0", {"demo/a.so": fixture_libs["many_size"].read_bytes()}
    )
    store = tmp_path / "s"
    args = ["build", str(wheel), "--arch", "sm_90", "-q", "--store", str(store)]
    assert run(*args, "-o", str(tmp_path / "a")).rc == 0
    (meta,) = store.glob("entries/*/*/meta.json")
    doc = json.loads(meta.read_text())
    del doc["key"], doc["size"]
    meta.write_text(json.dumps(doc))
    for cmd in (["cache", "--store", str(store), "info"], ["cache", "--store", str(store), "list"]):
        r = run(*cmd)
        assert r.rc == 0 and "Traceback" not in r.err
    r = run(*args, "-o", str(tmp_path / "b"))
    assert r.rc == 0, r.err
    assert (tmp_path / "a").iterdir().__next__().read_bytes() == next(
        (tmp_path / "b").iterdir()
    ).read_bytes()


def test_deeply_nested_paths_json_is_one_line(tmp_path: Path) -> None:
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    pkg = make_package(pkgs, "demo", {"lib/x.txt": b"x"})
    # rewrite info/paths.json as deep nesting, through conda-package-handling
    from conda_package_handling import api as cph

    src = tmp_path / "src"
    cph.extract(str(pkg), dest_dir=str(src))
    (src / "info" / "paths.json").write_text("[" * 100_000 + "]" * 100_000)
    pkg.unlink()
    files = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    cph.create(str(src), files, pkg.name, out_folder=str(pkgs))
    r = run(
        "build",
        str(pkg),
        "--arch",
        "sm_90",
        "-o",
        str(tmp_path / "o"),
        "--store",
        str(tmp_path / "s"),
    )
    refused(r, pkg.name, "paths.json")


def test_server_survives_malformed_request_lines(tmp_path: Path) -> None:
    from slimwheel.serve import serving

    site = tmp_path / "site"
    (site / "simple").mkdir(parents=True)
    (site / "simple" / "index.html").write_text("<html></html>")
    log = io.StringIO()
    with serving(site, log) as url:
        host, port = url.removeprefix("http://").split(":")
        for line in (
            b"\x00\xff garbage\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET / HTTP/9.9 extra\r\n\r\n",
            b"\r\n",
        ):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(line)
                s.recv(4096)
        import urllib.request

        with urllib.request.urlopen(f"{url}/simple/", timeout=5) as resp:
            assert resp.status == 200
    assert "Traceback" not in log.getvalue()


# -- 8. a file truncated while it is read ------------------------------------------


def test_truncated_while_mapped_is_one_line(tmp_path: Path) -> None:
    lib = tmp_path / "shrinks.so"
    lib.write_bytes(b"\x7fELF" + bytes(4 << 20))
    code = (
        "import os, sys\n"
        "from slimwheel.files import install_sigbus_guard\n"
        "from slimwheel.elf import map_file\n"
        "install_sigbus_guard()\n"
        "with map_file(sys.argv[1]) as buf:\n"
        "    os.truncate(sys.argv[1], 4096)\n"
        "    bytes(buf[:])\n"
        "print('not reached')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(lib)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1 and "not reached" not in proc.stdout
    assert proc.stderr.strip().splitlines() == [
        f"slimwheel: error: {lib}: the file changed (shrank) while it was being read"
    ]


# -- 9. smaller -------------------------------------------------------------------------


def test_setuid_bits_are_not_copied(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    lib = tmp_path / "suid.so"
    shutil.copyfile(fixture_libs["many_size"], lib)
    os.chmod(lib, 0o6755)
    out = tmp_path / "out.so"
    assert run("slim", str(lib), "--arch", "sm_90", "-o", str(out)).rc == 0
    assert out.stat().st_mode & 0o7777 == 0o755


def _encrypt_flag(wheel: Path, member: str) -> None:
    """Set the 'encrypted' flag of ``member`` in its local header and the central
    directory, as a zip tool that encrypts would (zipfile then refuses to read it)."""
    data = bytearray(wheel.read_bytes())
    name = member.encode()
    for sig, flags_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        at = data.find(sig)
        while at >= 0:
            if data[at + name_at : at + name_at + len(name)] == name:
                data[at + flags_at] |= 0x01
            at = data.find(sig, at + 4)
    wheel.write_bytes(bytes(data))


def test_an_encrypted_member_is_one_line(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    wheel = _wheel_with(tmp_path, {"demo/k.so": fixture_libs["many_size"].read_bytes()})
    _encrypt_flag(wheel, "demo/k.so")
    out = tmp_path / "out"
    r = run("build", str(wheel), "--arch", "sm_90", "-o", str(out), "--store", str(tmp_path / "s"))
    refused(r, wheel.name, "encrypted")
    assert not out.exists() or not list(out.iterdir())
    refused(run("inspect", str(wheel)), wheel.name, "encrypted")
    refused(run("inspect", str(wheel), "--arch", "sm_90", "--json"), wheel.name, "encrypted")


def test_inspect_removes_what_a_killed_inspect_left_in_the_temp_dir(
    fixture_libs: dict[str, Path], tmp_path: Path
) -> None:
    """A dead run's member directory (its lock no longer held) is removed; the run
    itself leaves nothing."""
    wheel = _wheel_with(tmp_path, {"demo/k.so": fixture_libs["many_size"].read_bytes()})
    systmp = tmp_path / "systmp"
    dead = systmp / ".slimwheel-member-x1y2.dir"
    dead.mkdir(parents=True)
    (dead / ".lock").write_text("")
    (dead / "lib.so").write_bytes(b"half")
    old = time.time() - 60
    os.utime(dead, (old, old))
    r = run("inspect", str(wheel), "--arch", "sm_90", env=dict(os.environ, TMPDIR=str(systmp)))
    assert r.rc == 0, r.err
    assert list(systmp.iterdir()) == []
