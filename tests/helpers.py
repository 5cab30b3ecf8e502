"""Shared test helpers: the cuobjdump oracle and locating local wheels."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

from slimwheel.fatbin import FatbinLayout

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SLIMWHEEL_TEST_CACHE", REPO / ".cache"))


def find_cuobjdump() -> str:
    """cuobjdump from PATH, or from the nvidia-cuda-cuobjdump wheel."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    for entry in sys.path:
        for sub in ("cu13", "cu12", "cuda_cuobjdump"):
            cand = Path(entry) / "nvidia" / sub / "bin" / "cuobjdump"
            if cand.is_file():
                return str(cand)
    raise RuntimeError("cuobjdump not found: pip install nvidia-cuda-cuobjdump")


_LINE = re.compile(r"^(ELF|PTX) file\s+\d+: .*\.(sm_\d+[af]?)\.(?:cubin|ptx)$")


def cuobjdump_listing(lib: Path, *, include_rel: bool = False) -> list[tuple[str, str]]:
    """``cuobjdump -lelf -lptx`` as (kind, name) pairs, in its order."""
    cmd = [find_cuobjdump(), "-lelf", "-lptx", str(lib)]
    if include_rel:
        cmd.insert(1, "-all")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    out = []
    for line in proc.stdout.splitlines():
        m = _LINE.match(line.strip())
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def our_listing(layout: FatbinLayout, sections: tuple[str, ...]) -> list[tuple[str, str]]:
    """Our elements in cuobjdump's naming: ELF names show only an ``a`` suffix."""
    out = []
    for region in layout.regions:
        if region.section not in sections:
            continue
        for el in region.elements:
            if el.kind == 2:
                suffix = "a" if el.variant.value == "a" else ""
                out.append(("ELF", f"sm_{el.arch}{suffix}"))
            elif el.kind == 1:
                out.append(("PTX", f"sm_{el.arch}{el.variant.value}"))
    return out


def local_wheel(requirement: str, *, platform: str | None = None) -> Path:
    """A wheel fetched with pip (the local index serves the CUDA wheels), cached."""
    dest = CACHE / "wheels" / (platform or "native")
    dest.mkdir(parents=True, exist_ok=True)
    name = re.split(r"[=<>!~ ]", requirement, maxsplit=1)[0].replace("-", "_").lower()
    for w in sorted(dest.glob("*.whl")):
        if w.name.lower().startswith(name + "-"):
            return w
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "-d",
        str(dest),
        requirement,
    ]
    if platform:
        cmd += ["--platform", platform]
    subprocess.run(cmd, check=True)
    for w in sorted(dest.glob("*.whl")):
        if w.name.lower().startswith(name + "-"):
            return w
    raise RuntimeError(f"pip download {requirement} produced no wheel")


#: The torch 2.14.1 / CUDA 13 stack as the local index serves it.
STACK = (
    "torch==2.14.1",
    "nvidia-cublas==13.1.1.3",
    "nvidia-cudnn-cu13==9.24.0.43",
    "nvidia-cufft==12.0.0.61",
    "nvidia-curand==10.4.0.35",
    "nvidia-cusolver==12.0.4.66",
    "nvidia-cusparse==12.6.3.3",
    "nvidia-cusparselt-cu13==0.8.1",
    "nvidia-nccl-cu13==2.30.7",
    "nvidia-nvshmem-cu13==3.4.5",
)


def stack_site() -> Path:
    """The stack's shared libraries laid out as pip installs them, extracted once."""
    dest = CACHE / "stack-site"
    for req in STACK:
        wheel = local_wheel(req)
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                name = Path(info.filename).name
                if ".so" not in name or info.is_dir():
                    continue
                target = dest / info.filename
                if not target.exists() or target.stat().st_size != info.file_size:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
    return dest


def extract_member(wheel: Path, suffix: str, dest: Path) -> Path:
    """Extract the first member of ``wheel`` whose name ends with ``suffix``."""
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.filename.endswith(suffix):
                out = dest / Path(info.filename).name
                if not out.exists():
                    with zf.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                return out
    raise FileNotFoundError(f"{suffix} not in {wheel}")


def venv_purelib(python: Path) -> Path:
    """The site-packages directory (purelib) of an interpreter."""
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def write_profile(
    dest: Path, lib: Path, kernels: Sequence[str], variables: Sequence[str] = ()
) -> Path:
    """A profile, in ``dest``, of a run that launched ``kernels`` and touched
    ``variables`` of ``lib``: made from records as the recorder writes them."""
    from slimwheel.cubin import read_element
    from slimwheel.elf import open_elf
    from slimwheel.fatbin import scan
    from slimwheel.profile import collect

    where: dict[str, int] = {}  # kernel or variable -> vaddr of its region
    with open_elf(lib) as elf:
        for region in scan(elf).regions:
            for el in region.elements:
                syms = read_element(elf.buf, el, name=str(lib))
                for name in [*(syms.kernels if syms else ()), *(v.name for v in syms.variables)]:
                    where.setdefault(name, region.vaddr)
    records = dest.parent / f"{dest.stem}-records"
    records.mkdir(parents=True)
    lines: list[dict[str, object]] = [
        {"t": "process", "pid": 1, "ppid": 0},
        {"t": "gpu", "index": 0, "name": "NVIDIA H200", "cc": "9.0"},
    ]
    for i, name in enumerate([*kernels, *variables]):
        lines.append({"t": "origin", "id": i, "api": "cuLibraryLoadData", "lib": str(lib)})
        lines[-1]["vaddr"] = where[name]
        lines.append({"t": "launch" if name in kernels else "global", "o": i, "name": name})
    (records / "rec-1-1.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    dest.write_text(json.dumps(collect(str(records)).to_json()))
    return dest
