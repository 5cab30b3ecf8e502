"""Real libraries with PT_PHDR (linked by lld): TensorFlow 2.16.2 and JAX's XLA plugin.

Slow: the wheels are fetched with pip (about 780 MB). Each library with device
code is slimmed for sm_90 and must be compacted to within 5% of what the
selection removes, pass verification, add no readelf warning, and ``dlopen``
(with its siblings from the same wheel) exactly when the original does.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from slimwheel.arch import parse_targets
from slimwheel.elf import PT, open_elf
from slimwheel.fatbin import scan
from slimwheel.policy import SlimPolicy
from slimwheel.slim import slim_library
from tests.helpers import local_wheel

pytestmark = pytest.mark.slow

WHEELS = {
    "tensorflow==2.16.2": (
        "tensorflow/libtensorflow_cc.so.2",
        "tensorflow/libtensorflow_framework.so.2",
        "tensorflow/python/_pywrap_tensorflow_internal.so",
    ),
    "jax-cuda12-pjrt==0.12.0.1": ("jax_plugins/xla_cuda12/xla_cuda_plugin.so",),
}


def _readelf_warnings(path: Path) -> set[str]:
    proc = subprocess.run(
        ["readelf", "-W", "-l", "-S", "-d", str(path)], capture_output=True, text=True
    )
    return {ln for ln in proc.stderr.splitlines() if ln.strip()}


def _dlopen(paths: list[Path]) -> list[str]:
    """dlopen each (RTLD_GLOBAL, in order) in a fresh process: "ok" or the error."""
    code = (
        "import ctypes, sys\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL); print('ok')\n"
        "    except OSError as e:\n"
        "        print('error:', str(e).split(': ', 1)[-1])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True
    )
    return out.stdout.splitlines()


@pytest.mark.parametrize("strip", [False, True], ids=["arch", "arch+strip"])
@pytest.mark.parametrize("requirement", list(WHEELS))
def test_pt_phdr_libraries_are_compacted(requirement: str, tmp_path: Path, strip: bool) -> None:
    wheel = local_wheel(requirement)
    orig_dir, slim_dir = tmp_path / "orig", tmp_path / "slim"
    members = WHEELS[requirement]
    with zipfile.ZipFile(wheel) as zf:
        for m in members:
            zf.extract(m, orig_dir)
    policy = SlimPolicy(targets=parse_targets(["sm_90"]), strip=strip)
    origs, slims = [], []
    for m in members:
        src, dest = orig_dir / m, slim_dir / m
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open_elf(src) as elf:
            assert any(p.type == PT.PHDR for p in elf.segments), f"{m} has PT_PHDR"
            has_code = bool(scan(elf).regions)
        if not has_code and not strip:
            continue
        r = slim_library(src, dest, policy.for_library(dest.name))
        removed = r.device_bytes_before - r.device_bytes_after
        print(
            f"{m}: {r.file_bytes_before / 1e6:.1f} MB -> {r.file_bytes_after / 1e6:.1f} MB "
            f"(selection removes {removed / 1e6:.1f} MB; "
            f"{r.loads_before} -> {r.loads_after} PT_LOADs)"
        )
        assert r.compacted and r.report.problems == []
        saved = r.saved - r.stripped_bytes
        assert saved >= 0.95 * removed - (64 << 10), (m, r.saved, removed)  # whole pages only
        if strip:
            dwarf = subprocess.run(
                ["readelf", "--debug-dump=info,line,str,abbrev", str(dest)],
                capture_output=True,
                text=True,
            )
            assert dwarf.stdout.strip() == "", m
        assert _readelf_warnings(dest) <= _readelf_warnings(src)
        with open_elf(dest) as slim:  # tables rewritten (a hole): PT_PHDR dropped; else kept
            rewritten = r.holes > 0 or r.stripped_bytes > 0
            assert any(p.type == PT.PHDR for p in slim.segments) == (not rewritten)
        origs.append(src)
        slims.append(dest)
    assert slims, "some library had device code"
    # siblings load from their own directory (RUNPATH $ORIGIN), so order matters: as listed
    assert _dlopen(slims) == [ln.replace(str(orig_dir), str(slim_dir)) for ln in _dlopen(origs)]
