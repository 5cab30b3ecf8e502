"""ehframe.py: FDE ranges, against pyelftools (an independent parser), and hostile input."""

from __future__ import annotations

import glob
import struct
from pathlib import Path

import pytest
from elftools.dwarf.callframe import FDE
from elftools.elf.elffile import ELFFile

from slimwheel.ehframe import fdes
from slimwheel.elf import ElfFile, open_elf
from slimwheel.errors import ElfError

SYSTEM_LIBS = sorted(
    {
        p
        for pattern in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6*",
                        "/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libm.so.6")
        for p in glob.glob(pattern)
    }
)  # fmt: skip


def reference(path: str) -> set[tuple[int, int]]:
    with open(path, "rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        if not dwarf.has_EH_CFI():
            return set()
        return {
            (e.header["initial_location"], e.header["initial_location"] + e.header["address_range"])
            for e in dwarf.EH_CFI_entries()
            if isinstance(e, FDE) and e.header["address_range"]
        }


@pytest.mark.parametrize("path", SYSTEM_LIBS or ["none"])
def test_fdes_match_pyelftools(path: str) -> None:
    if path == "none":
        pytest.skip("no system libraries to compare")
    with open_elf(path) as elf:
        mine = {(f.start, f.end) for f in fdes(elf)}
    assert mine and mine == reference(path)


def _with_eh_frame(lib: Path, tmp: Path, patch: bytes, at: int = 0) -> ElfFile:
    data = bytearray(lib.read_bytes())
    elf = ElfFile(bytes(data))
    sec = elf.section_by_name(".eh_frame")
    assert sec is not None
    data[sec.offset + at : sec.offset + at + len(patch)] = patch
    return ElfFile(bytes(data), str(tmp / "patched.so"))


@pytest.mark.skipif(not SYSTEM_LIBS, reason="no system library to patch")
@pytest.mark.parametrize(
    "patch",
    [
        struct.pack("<I", 0xFFFFFFF0),  # a record longer than the section
        struct.pack("<II", 0xFFFFFFFF, 0),  # a 64-bit length, cut short
        struct.pack("<IIB", 16, 0, 9),  # a CIE of an unknown version
    ],
)
def test_a_corrupt_eh_frame_is_refused_with_one_error(tmp_path: Path, patch: bytes) -> None:
    elf = _with_eh_frame(Path(SYSTEM_LIBS[0]), tmp_path, patch)
    with pytest.raises(ElfError) as err:
        list(fdes(elf))
    assert ".eh_frame" in str(err.value)


@pytest.mark.skipif(not SYSTEM_LIBS, reason="no system library to patch")
def test_an_fde_naming_no_cie_is_refused(tmp_path: Path) -> None:
    lib = Path(SYSTEM_LIBS[0])
    with open_elf(lib) as elf:
        sec = elf.section_by_name(".eh_frame")
        assert sec is not None
        (first_len,) = struct.unpack_from("<I", elf.buf, sec.offset)
    second = 4 + first_len  # the record after the first CIE: an FDE in practice
    elf2 = _with_eh_frame(lib, tmp_path, struct.pack("<I", 0x7FFFFFF0), at=second + 4)
    with pytest.raises(ElfError, match="names no CIE"):
        list(fdes(elf2))
