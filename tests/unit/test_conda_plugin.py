"""The conda plugin, where conda is importable (conda is not on PyPI: install it from its
source, with menuinst, into the environment that runs these tests).

The hooks register with the plugin types of ``conda.plugins.types``; a hook
whose type this conda lacks disables itself with one line and conda goes
on; a real ``conda create`` from a local channel, with ``slimwheel_arch``
set, ends with the environment slimmed, and ``conda slimwheel`` runs
slimwheel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slimwheel.elf import ElfFile, map_file
from slimwheel.fatbin import scan
from tests.conda_packages import make_package

conda = pytest.importorskip("conda", reason="conda is not installed here")


def test_hooks_register_with_the_plugin_types() -> None:
    from conda.plugins import types

    from slimwheel import conda_plugin

    (sub,) = list(conda_plugin.conda_subcommands())
    assert isinstance(sub, types.CondaSubcommand) and sub.name == "slimwheel"
    (post,) = list(conda_plugin.conda_post_commands())
    assert isinstance(post, types.CondaPostCommand)
    assert {"install", "create", "update"} <= set(post.run_for)
    (setting,) = list(conda_plugin.conda_settings())
    assert isinstance(setting, types.CondaSetting) and setting.name == "slimwheel_arch"


def test_a_type_this_conda_lacks_disables_the_hook_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from slimwheel import conda_plugin

    def missing(name: str) -> object:
        raise LookupError(f"this conda has no {name}")

    monkeypatch.setattr(conda_plugin, "_plugin_type", missing)
    monkeypatch.setattr(conda_plugin, "_warned", set())
    assert list(conda_plugin.conda_subcommands()) == []
    assert list(conda_plugin.conda_subcommands()) == []  # said once
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "slimwheel: conda plugin: conda slimwheel disabled (this conda has no CondaSubcommand)"
    ]


def _conda(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conda", *args], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip


def test_conda_create_from_a_local_channel_slims_the_environment(
    fixture_libs: dict[str, Path], tmp_path: Path
) -> None:
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    lib = fixture_libs["big"]
    make_package(pkgs, "fixture-cuda", {"lib/libfixture.so": lib}, build="cuda130_0")
    channel = tmp_path / "channel"
    got = subprocess.run(
        [sys.executable, "-m", "slimwheel", "index", "--conda", str(pkgs), "-o", str(channel)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    condarc = tmp_path / "condarc"
    condarc.write_text("plugins:\n  slimwheel_arch: sm_90\n")
    env = dict(
        os.environ,
        CONDARC=str(condarc),
        CONDA_PKGS_DIRS=str(tmp_path / "pkgs-cache"),
        SLIMWHEEL_STORE=str(tmp_path / "store"),
    )
    assert _conda("info", env=env).returncode == 0
    helped = _conda("--help", env=env)
    assert helped.returncode == 0 and "slimwheel" in helped.stdout
    prefix = tmp_path / "env"
    got = _conda(
        "create", "-y", "-p", str(prefix), "--solver", "classic", "--override-channels",
        "-c", channel.as_uri(), "fixture-cuda", env=env,
    )  # fmt: skip
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]
    installed = prefix / "lib" / "libfixture.so"
    assert installed.stat().st_size < lib.stat().st_size  # slimmed by the post-command
    with map_file(installed) as buf:
        arches = {el.arch for _r, el in scan(ElfFile(buf)).elements if el.kind == 2}
    assert arches == {90}
    meta = json.loads(next((prefix / "conda-meta").glob("fixture-cuda-*.json")).read_text())
    (entry,) = [p for p in meta["paths_data"]["paths"] if p["_path"] == "lib/libfixture.so"]
    assert entry["size_in_bytes"] == installed.stat().st_size  # conda's record follows
    status = _conda("slimwheel", "status", "--prefix", str(prefix), env=env)
    assert status.returncode == 0 and "lib/libfixture.so: slimmed for sm_90" in status.stdout
