"""On a GPU: JAX's CUDA libraries (the XLA plugin, which has PT_PHDR) compacted, same results.

Copies of the installed ``jax_plugins`` (``xla_cuda_plugin.so``) and
``jax_cuda13_plugin`` packages go into a temporary directory put first on
PYTHONPATH; every library with device code there is slimmed in place for
the GPU found (``--arch native``), compacted. ``jax_battery.py`` must then
give results bit-identical to the installed original under
CUDA_MODULE_LOADING=LAZY and EAGER, with the slim copies mapped, and two
runs of the original must agree with each other (XLA autotuning off). The
installed packages are never written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slimwheel.arch import native_targets
from slimwheel.elf import PT, ElfFile, is_elf, map_file
from slimwheel.fatbin import scan
from slimwheel.policy import SlimPolicy
from slimwheel.slim import slim_library

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

BATTERY = Path(__file__).with_name("jax_battery.py")
FLAGS = "--xla_gpu_autotune_level=0"


def _installed() -> list[Path]:
    """The installed package directories holding JAX's CUDA libraries."""
    code = (
        "import importlib.util, json, jax_plugins\n"
        "dirs = [p for p in jax_plugins.__path__]\n"
        "spec = importlib.util.find_spec('jax_cuda13_plugin')\n"
        "dirs += [str(__import__('os').path.dirname(spec.origin))] if spec else []\n"
        "print(json.dumps(dirs))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"JAX's CUDA plugin is not installed: {proc.stderr.strip()[-200:]}")
    return [Path(d) for d in json.loads(proc.stdout)]


def _battery(out: Path, mode: str, pythonpath: str | None) -> dict[str, object]:
    env = dict(os.environ, CUDA_MODULE_LOADING=mode, XLA_FLAGS=FLAGS)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run(
        [sys.executable, str(BATTERY), str(out)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc: dict[str, object] = json.loads(out.read_text())
    return doc


def test_jax_with_compacted_xla_plugin(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    for d in _installed():
        shutil.copytree(d, site / d.name, symlinks=True, dirs_exist_ok=True)
        nvidia = d.parent / "nvidia"  # $ORIGIN-relative RUNPATHs find the CUDA libraries
        if nvidia.is_dir() and not (site / "nvidia").exists():
            (site / "nvidia").symlink_to(nvidia)
    policy = SlimPolicy(targets=tuple(native_targets()))
    slimmed = {}
    for lib in sorted(p for d in _installed() for p in (site / d.name).rglob("*.so*")):
        if lib.is_symlink() or not is_elf(lib):
            continue
        with map_file(lib) as buf:
            elf = ElfFile(buf, str(lib))
            has_code = bool(scan(elf).regions)
            phdr = any(p.type == PT.PHDR for p in elf.segments)
        if not has_code:
            continue
        r = slim_library(lib, lib, policy.for_library(lib.name))
        slimmed[str(lib.relative_to(site))] = (r.file_bytes_before, r.file_bytes_after, phdr)
        print(
            f"{lib.relative_to(site)}: {r.file_bytes_before / 1e6:.1f} MB -> "
            f"{r.file_bytes_after / 1e6:.1f} MB (PT_PHDR: {phdr}, compacted: {r.compacted})"
        )
    plugin = next(k for k in slimmed if k.endswith("xla_cuda_plugin.so"))
    before, after, phdr = slimmed[plugin]
    assert phdr and after < before, "the XLA plugin (PT_PHDR) is compacted"

    results = {}
    for mode in ("LAZY", "EAGER"):
        orig = _battery(tmp_path / f"orig_{mode}.json", mode, None)
        slim = _battery(tmp_path / f"slim_{mode}.json", mode, str(site))
        assert any(str(site) in m for m in slim["mapped"]), "the slim copies were loaded"  # type: ignore[attr-defined]
        assert not any(
            m.endswith("xla_cuda_plugin.so") and str(site) not in m
            for m in slim["mapped"]  # type: ignore[attr-defined]
        )
        results[mode] = (orig, slim)
    again = _battery(tmp_path / "orig2_LAZY.json", "LAZY", None)
    assert again["results"] == results["LAZY"][0]["results"], "two runs of the original agree"
    for mode, (orig, slim) in results.items():
        differ = [
            k
            for k in orig["results"]  # type: ignore[attr-defined]
            if orig["results"][k] != slim["results"][k]  # type: ignore[index]
        ]
        print(f"{mode}: {len(orig['results'])} results on {orig['device']}; differ: {differ}")  # type: ignore[arg-type]
        assert differ == []
    total = sum(b for b, _a, _p in slimmed.values()), sum(a for _b, a, _p in slimmed.values())
    print(f"JAX CUDA libraries: {total[0] / 1e6:.1f} MB -> {total[1] / 1e6:.1f} MB")
