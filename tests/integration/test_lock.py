"""Lock files in and out: ``slimwheel build -r LOCK`` checks every original against its
pin and writes the slim environment's requirements.txt and pylock.toml; pip
(``--require-hashes``) and uv (``pip sync pylock.toml``) rebuild exactly that
environment in fresh venvs."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from slimwheel.store import file_sha256
from tests.helpers import local_wheel, venv_purelib

pytestmark = pytest.mark.slow
UV = Path(sys.executable).with_name("uv")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slimwheel", *args], capture_output=True, text=True
    )


def _originals(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for req in ("nvidia-curand==10.4.0.35", "filelock==4.3.1"):
        w = local_wheel(req)
        shutil.copy(w, src / w.name)
    return src


def _requirements_lock(src: Path, path: Path, *, pins: dict[str, str] | None = None) -> Path:
    lines = [
        "# a lock: every requirement pinned, every file hashed",
        "--no-index",
        f"--find-links {src}",
    ]
    for w in sorted(src.glob("*.whl")):
        name, version = w.name.split("-")[:2]
        digest = (pins or {}).get(name) or file_sha256(w)
        lines.append(f"{name.replace('_', '-')}=={version} \\\n    --hash=sha256:{digest}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _pylock(src: Path, path: Path) -> Path:
    out = ['lock-version = "1.0"', 'created-by = "a test"']
    for w in sorted(src.glob("*.whl")):
        name, version = w.name.split("-")[:2]
        rel = Path("..") / src.name / w.name
        out += [
            "",
            "[[packages]]",
            f'name = "{name.replace("_", "-")}"',
            f'version = "{version}"',
            "[[packages.wheels]]",
            f'name = "{w.name}"',
            f'path = "{rel}"',
            f'hashes = {{ sha256 = "{file_sha256(w)}" }}',
        ]
    path.write_text("\n".join(out) + "\n")
    return path


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path / "bin" / "python"


def _installed_match(site: Path, wheels: list[Path]) -> int:
    """Every file of every slim wheel (but RECORD, which installers rewrite) is in the
    environment with the wheel's bytes; returns the files checked."""
    checked = 0
    for w in wheels:
        with zipfile.ZipFile(w) as zf:
            for info in zf.infolist():
                if info.is_dir() or info.filename.endswith(".dist-info/RECORD"):
                    continue
                got = site / info.filename
                assert got.is_file(), info.filename
                want = hashlib.sha256(zf.read(info)).hexdigest()
                assert file_sha256(got) == want, info.filename
                checked += 1
    return checked


def test_build_from_a_lock_and_deploy_it(tmp_path: Path) -> None:
    src = _originals(tmp_path)
    lock = _requirements_lock(src, tmp_path / "requirements.lock")
    store = str(tmp_path / "store")
    dist = tmp_path / "dist"
    r = _cli("build", "-r", str(lock), "--arch", "sm_90", "-o", str(dist), "--store", store, "-q")
    assert r.returncode == 0, r.stderr
    wheels = sorted(dist.glob("*.whl"))
    assert [w.name for w in wheels] == [
        "filelock-4.3.1-py3-none-any.whl",
        "nvidia_curand-10.4.0.35+sm90-py3-none-manylinux_2_27_x86_64.whl",
    ]
    req = (dist / "requirements.txt").read_text()
    for w in wheels:
        assert f"--hash=sha256:{file_sha256(w)}" in req
    assert "nvidia-curand==10.4.0.35+sm90" in req and "filelock==4.3.1" in req
    pylock = (dist / "pylock.toml").read_text()
    assert 'path = "./nvidia_curand-10.4.0.35+sm90-py3-none-manylinux_2_27_x86_64.whl"' in pylock

    # Same lock, same outputs, byte for byte.
    again = tmp_path / "again"
    r = _cli("build", "-r", str(lock), "--arch", "sm_90", "-o", str(again), "--store", store, "-q")
    assert r.returncode == 0, r.stderr
    for f in dist.iterdir():
        assert (again / f.name).read_bytes() == f.read_bytes(), f.name

    # pip, hash-checking, from the written requirements; uv from the written pylock.toml.
    pip_py = _venv(tmp_path / "pip-env")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(pip_py), "install", "-q", "--no-index",
         "--find-links", str(dist), "--require-hashes", "-r", str(dist / "requirements.txt")],
        check=True,
    )  # fmt: skip
    uv_py = _venv(tmp_path / "uv-env")
    env = {"VIRTUAL_ENV": str(uv_py.parent.parent), "PATH": "/usr/bin:/bin"}
    got = subprocess.run(
        [str(UV), "pip", "sync", "--offline", str(dist / "pylock.toml")],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    status = _cli("status", "--python", str(pip_py), "--store", store).stdout
    assert "installed: nvidia-curand 10.4.0.35+sm90: slim build for sm_90; local label +sm90" in (
        status
    ), status
    for py in (pip_py, uv_py):
        assert _installed_match(venv_purelib(py), wheels) > 10
        lib = venv_purelib(py) / "nvidia/cu13/lib/libcurand.so.10"
        assert lib.stat().st_size < 60_000_000, "the slim library"

    # A pylock.toml as the input gives the same slim wheels.
    from_pylock = tmp_path / "from-pylock"
    locks = tmp_path / "locks"
    locks.mkdir()
    r = _cli("build", "-r", str(_pylock(src, locks / "pylock.toml")), "--arch", "sm_90",
             "-o", str(from_pylock), "--store", store, "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    for w in wheels:
        assert (from_pylock / w.name).read_bytes() == w.read_bytes()
    assert (from_pylock / "pylock.toml").read_bytes() == (dist / "pylock.toml").read_bytes()

    # --lock-base-url: where the wheels will be served.
    served = tmp_path / "served"
    r = _cli("build", "-r", str(lock), "--arch", "sm_90", "-o", str(served), "--store", store,
             "-q", "--lock-base-url", "https://pkgs.example.com/sm90/files/")  # fmt: skip
    assert r.returncode == 0, r.stderr
    text = (served / "pylock.toml").read_text()
    assert (
        'url = "https://pkgs.example.com/sm90/files/'
        'nvidia_curand-10.4.0.35%2Bsm90-py3-none-manylinux_2_27_x86_64.whl"'
    ) in text


def _one_line(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_a_file_that_does_not_match_its_pin_is_refused(tmp_path: Path) -> None:
    src = _originals(tmp_path)
    curand = next(src.glob("nvidia_curand-*.whl"))
    # A tampered original: one more file in the wheel, same name.
    data = io.BytesIO(curand.read_bytes())
    with zipfile.ZipFile(data, "a") as zf:
        zf.writestr("nvidia/cu13/evil.txt", b"not what was locked\n")
    lock = _requirements_lock(src, tmp_path / "requirements.lock")
    curand.write_bytes(data.getvalue())
    store = str(tmp_path / "store")
    out = tmp_path / "dist"
    r = _cli("build", "-r", str(lock), "--arch", "sm_90", "-o", str(out), "--store", store, "-q")
    _one_line(r, "nvidia-curand", "does not pin", "requirements.lock")
    assert not out.exists(), "nothing written"
    # The same through a pylock.toml.
    locks = tmp_path / "locks"
    locks.mkdir()
    pylock = _pylock(src, locks / "pylock.toml")
    text = pylock.read_text().replace(file_sha256(curand), "0" * 64)
    pylock.write_text(text)
    r = _cli("build", "-r", str(pylock), "--arch", "sm_90", "-o", str(out), "--store", store)
    _one_line(r, "nvidia-curand", "pylock.toml")
    assert not out.exists()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("filelock>=4 --hash=sha256:" + "0" * 64, "not pinned to one version"),
        ("filelock==4.3.1", "has no --hash"),
        ("-r other.txt", "-r in a lock file"),
        ("--requirement=other.txt", "--requirement in a lock file"),
        # pip would build an sdist (run its setup.py) before any hash is checked
        ("--no-binary=:all:", "--no-binary in a lock file: only index and find-links"),
        ("--log=/tmp/anywhere", "--log in a lock file"),
        ('--index-url "http://x', "No closing quotation"),
    ],
)
def test_a_lock_that_does_not_pin_everything_is_refused(
    tmp_path: Path, line: str, message: str
) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"nvidia-curand==10.4.0.35 --hash=sha256:{'1' * 64}\n{line}\n")
    r = _cli("build", "-r", str(lock), "--arch", "sm_90", "-o", str(tmp_path / "out"))
    _one_line(r, "requirements.lock", message)


def test_written_requirements_parse_as_pip_reads_them(tmp_path: Path) -> None:
    """The writer's output is a lock the reader takes back (markers, several wheels)."""
    from slimwheel.lock import (
        BuiltWheel,
        Pin,
        pylock_text,
        read_pylock,
        read_requirements,
        requirements_text,
    )

    pin = Pin("demo", "1.0", frozenset(), marker='sys_platform == "linux"')  # type: ignore[arg-type]
    wheels = []
    for tag in ("manylinux_2_27_x86_64", "manylinux_2_27_aarch64"):
        p = tmp_path / f"demo-1.0+sm90-py3-none-{tag}.whl"
        p.write_bytes(tag.encode())
        wheels.append(BuiltWheel(pin, str(p), "1.0+sm90", file_sha256(p), p.stat().st_size))
    req = tmp_path / "requirements.txt"
    req.write_text(requirements_text(wheels, "x"))
    back = read_requirements(str(req))
    assert back is not None
    (got,) = back.pins.values()
    assert got.version == "1.0+sm90" and got.marker == 'sys_platform == "linux"'
    assert {h for _a, h in got.hashes} == {w.sha256 for w in wheels}
    lock = tmp_path / "pylock.toml"
    lock.write_text(pylock_text(wheels, "x"))
    (p2,) = read_pylock(str(lock)).pins.values()
    assert [w.location for w in p2.wheels] == sorted(w.path for w in wheels)


def test_locks_as_pip_reads_them(tmp_path: Path) -> None:
    """A relative --find-links is the lock's directory's; --require-hashes is taken; a
    wheel given twice (a directory and the lock) stays in the written locks; a pin
    without a local label matches a wheel with one (PEP 440)."""
    src = _originals(tmp_path)
    lock = tmp_path / "requirements.lock"
    text = _requirements_lock(src, lock).read_text()
    lock.write_text(text.replace(f"--find-links {src}", "--require-hashes\n--find-links src"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dist = tmp_path / "dist"
    r = subprocess.run(
        [sys.executable, "-m", "slimwheel", "build", str(src), "-r", str(lock), "--arch",
         "sm_90", "-o", str(dist), "--store", str(tmp_path / "s"), "-q"],
        capture_output=True, text=True, cwd=elsewhere,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    req = (dist / "requirements.txt").read_text()
    assert "filelock==4.3.1" in req and "nvidia-curand==10.4.0.35+sm90" in req
    # The slim environment's own lock, pinned without the label, takes the slim wheels.
    slim_lock = tmp_path / "slim.lock"
    slim_lock.write_text(
        req.replace("10.4.0.35+sm90", "10.4.0.35") + f"--no-index\n--find-links {dist}\n"
    )
    again = tmp_path / "again"
    r = _cli("build", "-r", str(slim_lock), "--arch", "sm_90", "-o", str(again),
             "--store", str(tmp_path / "s"), "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace('name = "filelock"', 'name = "numpy"'), "is not a wheel of numpy"),
        (
            lambda t: t.replace(
                'version = "4.3.1"', 'version = "4.3.1"\nmarker = "os_name == \'posix\'\\nevil==6"'
            ),
            "bad marker",
        ),
        (
            lambda t: t.replace(
                'version = "4.3.1"', 'version = "4.3.1"\nmarker = "\'dev\' in dependency_groups"'
            ),
            "dependency groups",
        ),
        (lambda t: t.replace("hashes = { sha256", "hashes = { md5"), "not a sha256"),
    ],
)
def test_a_pylock_that_lies_is_refused(tmp_path: Path, change: object, message: str) -> None:
    src = _originals(tmp_path)
    locks = tmp_path / "locks"
    locks.mkdir()
    pylock = _pylock(src, locks / "pylock.toml")
    pylock.write_text(change(pylock.read_text()))  # type: ignore[operator]
    r = _cli("build", "-r", str(pylock), "--arch", "sm_90", "-o", str(tmp_path / "out"))
    _one_line(r, "pylock.toml", message)
    assert not (tmp_path / "out").exists()
