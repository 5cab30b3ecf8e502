"""GPU targets and the CUDA driver's rule for which fatbin element it loads.

A *target* is a GPU, named by its compute capability (``sm_90``, ``9.0``,
``90``), a product name (``H100``, ``RTX 4090``; table in
``data/gpus.json``), or ``native``. The rule (``shared/design/fatbin.md`` §5,
NVIDIA's CUDA Compatibility Guide):

* a plain cubin ``sm_XY`` runs on ``X.Z`` when the major matches and ``Y <= Z``;
* an arch-specific cubin ``sm_XYa`` runs only on exactly ``X.Y``, and the
  driver prefers it there over a plain cubin of the same arch (seen on an H200);
* a family cubin ``sm_XYf`` runs on the same major with minor ``>= Y``;
* with no usable cubin the driver JIT-compiles the highest PTX ``<= X.Z``
  (``a`` PTX only on its exact arch, ``f`` PTX within its family).
"""

from __future__ import annotations

import ctypes
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

from .errors import ArchError
from .fatbin import Element, Variant


@dataclass(frozen=True, order=True, slots=True)
class Target:
    """A GPU by compute capability."""

    major: int
    minor: int

    @property
    def name(self) -> str:
        return f"sm_{self.major}{self.minor}"

    @property
    def capability(self) -> str:
        return f"{self.major}.{self.minor}"

    def __str__(self) -> str:
        return self.name


def split_arch(number: int) -> tuple[int, int]:
    """``90 -> (9, 0)``, ``103 -> (10, 3)``, ``121 -> (12, 1)``."""
    return divmod(number, 10)


_SM = re.compile(r"^(?:sm_?|compute_?)?(\d{2,3})([af]?)$")
_CC = re.compile(r"^(\d{1,2})\.(\d)$")


def _norm_name(text: str) -> str:
    t = text.lower()
    for word in ("nvidia", "geforce", "tesla", "quadro"):
        t = t.replace(word, "")
    return re.sub(r"[\s_\-]+", "", t)


@cache
def gpu_table() -> dict[str, Target]:
    """Product name (normalized) -> compute capability, from data/gpus.json."""
    raw = json.loads(resources.files("slimwheel").joinpath("data/gpus.json").read_text())
    table: dict[str, Target] = {}
    for name, cc in raw["gpus"].items():
        m = _CC.match(cc)
        if not m:
            raise ValueError(f"gpus.json: bad capability {cc!r} for {name!r}")
        table[_norm_name(name)] = Target(int(m.group(1)), int(m.group(2)))
    return table


def parse_target(text: str) -> list[Target]:
    """One target word (not a comma list); ``native`` may give several GPUs."""
    word = text.strip()
    if not word:
        raise ArchError("empty GPU target")
    low = word.lower()
    if low == "native":
        return native_targets()
    m = _SM.match(low)
    if m:
        major, minor = split_arch(int(m.group(1)))
        if major < 3:
            raise ArchError(f"unknown GPU target {word!r}")
        return [Target(major, minor)]
    m = _CC.match(low)
    if m:
        return [Target(int(m.group(1)), int(m.group(2)))]
    found = gpu_table().get(_norm_name(word))
    if found is not None:
        return [found]
    raise ArchError(
        f"unknown GPU target {word!r} (use sm_XY, X.Y, a GPU name such as H100, or native)"
    )


def parse_targets(specs: Iterable[str]) -> tuple[Target, ...]:
    """Comma lists and repeated options; sorted, without duplicates."""
    out: set[Target] = set()
    for spec in specs:
        for word in spec.split(","):
            out.update(parse_target(word))
    if not out:
        raise ArchError("no GPU target given")
    return tuple(sorted(out))


def native_targets() -> list[Target]:
    """Compute capabilities of this machine's GPUs, asked of the NVIDIA driver."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        raise ArchError("'native': no NVIDIA driver found on this machine (libcuda.so.1)") from None
    count = ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        raise ArchError("'native': the NVIDIA driver found no usable GPU")
    out = []
    for i in range(count.value):
        dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        if cuda.cuDeviceGet(ctypes.byref(dev), i) != 0:
            raise ArchError(f"'native': cannot open GPU {i}")
        # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
        cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)
        out.append(Target(major.value, minor.value))
    if not out:
        raise ArchError("'native': the NVIDIA driver found no GPU")
    return out


# -- the driver's rule ----------------------------------------------------


def can_run(el: Element, target: Target) -> bool:
    """Whether the driver could use this element (cubin or PTX) on ``target``."""
    major, minor = split_arch(el.arch)
    variant = el.variant
    if variant is Variant.ARCH_SPECIFIC:
        return (major, minor) == (target.major, target.minor)
    if el.is_cubin or variant is Variant.FAMILY:
        return major == target.major and minor <= target.minor
    if el.is_ptx:
        return (major, minor) <= (target.major, target.minor)
    return False


def driver_choice(elements: Sequence[Element], target: Target) -> list[Element]:
    """The element(s) the driver would load from one region on ``target``.

    Cubins first: the highest compatible minor, and there an arch-specific
    cubin over the others. Where plain and family cubins of one arch tie (the
    driver's preference between them is not verified), both are returned so
    neither choice is lost. Without a usable cubin, the highest usable PTX.
    Empty when nothing in the region can run on the target.
    """
    for code in (True, False):
        usable = [e for e in elements if (e.is_cubin if code else e.is_ptx) and can_run(e, target)]
        if not usable:
            continue
        best = max(split_arch(e.arch) for e in usable)
        top = [e for e in usable if split_arch(e.arch) == best]
        specific = [e for e in top if e.variant is Variant.ARCH_SPECIFIC]
        return specific or top
    return []
