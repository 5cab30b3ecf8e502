"""``slimwheel slim`` on nvcc-built fixtures: selection, structure, cuobjdump, dlopen, CLI."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from slimwheel.arch import parse_targets
from slimwheel.cli import main
from slimwheel.elf import ElfFile, open_elf
from slimwheel.fatbin import Region, scan
from slimwheel.policy import LibraryPolicy
from slimwheel.profile import LibraryUsage
from slimwheel.slim import slim_library, verify_pair
from slimwheel.store import file_sha256
from tests.helpers import cuobjdump_listing, our_listing

# What the driver loads from the many_* fixture's kernel region, per GPU:
# written out by hand from NVIDIA's compatibility rules, not computed.
EXPECTED = {
    "sm_75": {"sm_75"},
    "sm_80": {"sm_80"},
    "sm_86": {"sm_86"},
    "sm_87": {"sm_86"},
    "sm_89": {"sm_86"},
    "sm_90": {"sm_90a"},
    "sm_100": {"sm_100f"},
    "sm_103": {"sm_100f"},
    "sm_110": {"compute_75"},
    "sm_120": {"sm_120"},
    "sm_121": {"sm_120"},
    "sm_80,sm_90": {"sm_80", "sm_90a"},
    "T4,H100,B200": {"sm_75", "sm_90a", "sm_100f"},
}


def _kernel_region_arches(path: Path) -> set[str]:
    with open_elf(path) as elf:
        regions = scan(elf).regions
    biggest = max(regions, key=lambda r: r.total_size)
    return {e.arch_name for e in biggest.elements}


def readelf_warnings(path: Path, what: str = "-a") -> set[str]:
    proc = subprocess.run(["readelf", "-W", what, str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return {line for line in proc.stderr.splitlines() if line.strip()}


@pytest.mark.parametrize("targets", list(EXPECTED))
@pytest.mark.parametrize("name", ["many_none", "many_size", "many_speed"])
def test_selection_per_target(
    fixture_libs: dict[str, Path], tmp_path: Path, name: str, targets: str
) -> None:
    orig = fixture_libs[name]
    out = tmp_path / "slim.so"
    result = slim_library(orig, out, LibraryPolicy(targets=parse_targets([targets])))
    assert result.report.problems == []
    assert _kernel_region_arches(out) == EXPECTED[targets]
    assert readelf_warnings(out) <= readelf_warnings(orig)
    with open_elf(out) as elf:
        assert our_listing(scan(elf), (".nv_fatbin",)) == cuobjdump_listing(out)
    ctypes.CDLL(str(out))  # loads: cudart is static, nothing runs until a launch


def test_keep_ptx(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "slim.so"
    slim_library(
        fixture_libs["many_none"],
        out,
        LibraryPolicy(targets=parse_targets(["sm_90"]), keep_ptx=True),
    )
    assert _kernel_region_arches(out) == {"sm_90a", "compute_120"}


@pytest.mark.parametrize("name", ["big", "embedded", "rdc", "relr", "managed", "sm90_debug"])
def test_compaction_and_structure(fixture_libs: dict[str, Path], tmp_path: Path, name: str) -> None:
    orig = fixture_libs[name]
    out = tmp_path / orig.name
    r = slim_library(orig, out, LibraryPolicy(targets=parse_targets(["sm_90"])))
    assert r.report.problems == []
    assert out.stat().st_size == r.file_bytes_after
    if name in ("big", "embedded"):
        # ~2 MB of foreign-arch code leaves the file, not just zeroed.
        assert r.holes >= 1 and r.loads_after == r.loads_before + r.holes
        assert r.saved >= 0.95 * r.plan.removed_bytes - 2 * 4096 * r.holes
    assert readelf_warnings(out) <= readelf_warnings(orig)
    with open_elf(out) as elf:
        layout = scan(elf)
    assert our_listing(layout, (".nv_fatbin", "__nv_relfatbin")) == cuobjdump_listing(
        out, include_rel=True
    )
    if name != "embedded":  # embedded resolves the driver at run time only
        ctypes.CDLL(str(out))
    # pyelftools reads every section and segment of the output
    from elftools.elf.elffile import ELFFile

    with open(out, "rb") as f:
        ref = ELFFile(f)
        assert sum(1 for _ in ref.iter_sections()) >= 1
        assert sum(1 for s in ref.iter_segments() if s["p_type"] == "PT_LOAD") == r.loads_after


def _rodata_regions(elf: ElfFile) -> list[Region]:
    return [g for g in scan(elf).regions if g.section == ".rodata"]


def test_a_region_the_library_loaded_keeps_its_element(
    fixture_libs: dict[str, Path], tmp_path: Path
) -> None:
    """cuFFT loads its own per-size images (cuLibraryLoadData) and fails when a load
    finds nothing for the GPU, whether or not it launches a kernel of it: a region
    the profile saw loaded, and no wrapper registers, keeps its element."""
    orig = fixture_libs["per_arch"]
    with open_elf(orig) as elf:
        sm90 = next(g for g in _rodata_regions(elf) if g.elements[0].arch_name == "sm_90")
    sha = file_sha256(orig)
    kept = {}
    for name, regions in (
        ("unloaded", ()),
        ("loaded", (sm90.vaddr,)),
        ("inside", (sm90.vaddr + 40,)),
    ):
        usage = LibraryUsage(sha, str(orig), orig.name, regions=regions)
        out = tmp_path / f"{name}.so"
        r = slim_library(orig, out, LibraryPolicy(targets=parse_targets(["sm_90"]), usage=usage))
        assert r.report.problems == []
        with open_elf(out) as elf:
            kept[name] = sorted(e.arch_name for g in _rodata_regions(elf) for e in g.elements)
    assert kept == {"unloaded": [], "loaded": ["sm_90"], "inside": ["sm_90"]}
    # The runtime's own regions (a wrapper registers them) are judged by their kernels.
    lib = fixture_libs["usage"]
    with open_elf(lib) as elf:
        registered = [g.vaddr for g in scan(elf).regions]
    usage = LibraryUsage(
        file_sha256(lib), str(lib), lib.name, kernels=("usage_kA",), regions=tuple(registered)
    )
    r = slim_library(
        lib, tmp_path / "u.so", LibraryPolicy(targets=parse_targets(["sm_90"]), usage=usage)
    )
    assert "usage_kB" in r.plan.unused_kernels


def test_wrong_arch_regions_vanish_whole(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    """cuFFT's pattern: one region per arch in .rodata, the library picking one.

    Regions left with nothing are zeroed whole (header and padding too) and
    leave the file; the sm_90 region keeps its address and its bytes.
    """
    orig = fixture_libs["per_arch"]
    out = tmp_path / orig.name
    r = slim_library(orig, out, LibraryPolicy(targets=parse_targets(["sm_90"])))
    assert r.report.problems == []
    with open_elf(orig) as elf:
        before = {g.vaddr: [e.arch_name for e in g.elements] for g in _rodata_regions(elf)}
    with open_elf(out) as elf:
        after = {g.vaddr: [e.arch_name for e in g.elements] for g in _rodata_regions(elf)}
    assert sorted(before.values()) == [["sm_120"], ["sm_75"], ["sm_80"], ["sm_90"]]
    assert after == {v: a for v, a in before.items() if a == ["sm_90"]}
    # ~800 KB of three foreign cubins: the file loses (almost) all of it.
    assert r.holes >= 1 and r.saved >= r.plan.removed_bytes - 2 * 4096 * r.holes
    assert r.saved > 700_000
    # Verification notices a vanished region whose bytes are not all zero
    # (zeroed, not compacted, so the region's bytes are still in the file).
    zeroed = tmp_path / "zeroed.so"
    slim_library(orig, zeroed, LibraryPolicy(targets=parse_targets(["sm_90"]), compact=False))
    vaddr = next(v for v, a in before.items() if a == ["sm_80"])
    with open_elf(zeroed) as elf:
        off = elf.vaddr_to_offset(vaddr)
    with open(zeroed, "r+b") as f:
        f.seek(off + 100)
        f.write(b"\x01")
    problems = verify_pair(orig, zeroed, LibraryPolicy(targets=parse_targets(["sm_90"]))).problems
    assert any("are not zero" in p for p in problems), problems


def test_no_compact_keeps_size_and_zeroes(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    orig = fixture_libs["big"]
    out = tmp_path / "zeroed.so"
    r = slim_library(orig, out, LibraryPolicy(targets=parse_targets(["sm_90"]), compact=False))
    assert out.stat().st_size == orig.stat().st_size and r.holes == 0
    assert r.report.problems == []
    assert verify_pair(orig, out, LibraryPolicy(targets=parse_targets(["sm_90"]))).problems == []


def test_verify_catches_a_changed_byte(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    orig = fixture_libs["big"]
    out = tmp_path / "slim.so"
    slim_library(orig, out, LibraryPolicy(targets=parse_targets(["sm_90"])))
    data = bytearray(out.read_bytes())
    with open_elf(out) as elf:
        text = next(s for s in elf.sections if s.name == ".text")
        el = next(e for _, e in scan(elf).elements)
    data[text.offset + 100] ^= 0xFF
    bad = tmp_path / "bad.so"
    bad.write_bytes(bytes(data))
    problems = verify_pair(orig, bad, LibraryPolicy(targets=parse_targets(["sm_90"]))).problems
    assert any("loaded bytes differ" in p for p in problems)
    data[text.offset + 100] ^= 0xFF
    data[el.payload_offset + 64] ^= 0x01
    bad.write_bytes(bytes(data))
    problems = verify_pair(orig, bad, LibraryPolicy(targets=parse_targets(["sm_90"]))).problems
    assert any("changed" in p for p in problems)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_slim(
    fixture_libs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "libbig.so"
    src.write_bytes(fixture_libs["big"].read_bytes())
    os.chmod(src, 0o751)
    before = _sha(src)
    out = tmp_path / "out" / "libbig.so"
    out.parent.mkdir()
    assert main(["slim", str(src), "--arch", "H200", "-o", str(out), "--explain"]) == 0
    text = capsys.readouterr().out
    assert "remove elf  sm_80" in text and "keep   elf  sm_90" in text
    assert "PT_LOAD       4 -> 5" in text and "verified" in text
    assert _sha(src) == before
    assert stat.S_IMODE(out.stat().st_mode) == 0o751
    assert main(["slim", str(src), "--arch", "sm_90", "-o", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "slimwheel.slim" and doc["file_bytes"]["after"] == out.stat().st_size
    assert doc["by_arch"]["sm_80"] == {"before": doc["by_arch"]["sm_80"]["before"], "after": 0}
    assert main(["verify", str(src), str(out), "--arch", "sm_90"]) == 0
    assert "ok (" in capsys.readouterr().out
    assert main(["verify", str(src), str(out), "--arch", "sm_80"]) == 1
    assert "sm_80" in capsys.readouterr().err


def test_cli_in_place_never_writes_through_a_hard_link(
    fixture_libs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache.so"
    cache.write_bytes(fixture_libs["big"].read_bytes())
    env = tmp_path / "env.so"
    os.link(cache, env)
    before = _sha(cache)
    assert main(["slim", str(env), "--arch", "sm_90", "--in-place", "-q"]) == 0
    assert _sha(cache) == before, "the hard-linked original must stay untouched"
    assert env.stat().st_ino != cache.stat().st_ino
    assert env.stat().st_size < cache.stat().st_size
    assert main(["slim", str(env), "--arch", "sm_90", "-o", str(env)]) == 2
    assert "use --in-place" in capsys.readouterr().err


def test_cli_bad_input_leaves_nothing(
    fixture_libs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = fixture_libs["big"].read_bytes()
    bad = tmp_path / "libtrunc.so"
    bad.write_bytes(data[: len(data) // 3])
    outdir = tmp_path / "out"
    outdir.mkdir()
    assert main(["slim", str(bad), "--arch", "sm_90", "-o", str(outdir / "x.so")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "libtrunc.so" in err and "Traceback" not in err
    assert list(outdir.iterdir()) == []
    assert bad.read_bytes() == data[: len(data) // 3]
    assert main(["slim", str(bad), "--arch", "sm_90"]) == 2  # no -o / --in-place
    assert main(["slim", str(tmp_path / "missing.so"), "--arch", "sm_90", "-o", "x"]) == 1


@pytest.mark.parametrize("name", ["many_none", "rdc", "big"])
def test_symtab_follows_moved_regions(
    fixture_libs: dict[str, Path], tmp_path: Path, name: str
) -> None:
    out = tmp_path / "slim.so"
    slim_library(fixture_libs[name], out, LibraryPolicy(targets=parse_targets(["sm_90"])))
    with open_elf(out) as elf:
        starts = {r.vaddr for r in scan(elf).regions}
        symtab = next(s for s in elf.sections if s.name == ".symtab")
        values = [s.value for s in elf.symbols(symtab) if s.name == "fatbinData"]
    assert values and set(values) <= starts


def test_extended_section_numbering(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    """65,000+ sections (e_shnum 0, e_shstrndx SHN_XINDEX): compacted and read back."""
    from elftools.elf.elffile import ELFFile

    orig = fixture_libs["many_sections"]
    out = tmp_path / orig.name
    # Its cubins are small: 4 KiB holes, so that something leaves the file.
    r = slim_library(orig, out, LibraryPolicy(targets=parse_targets(["sm_90"]), min_hole=4096))
    assert r.report.problems == [] and r.report.compared_bytes > 0
    assert r.holes >= 1 and out.stat().st_size == r.file_bytes_after < r.file_bytes_before
    with open_elf(orig) as before, open_elf(out) as after:
        assert (after.header.shnum, after.header.shstrndx) == (0, 0xFFFF)
        count, shstrndx = after.section_numbering
        assert count == len(after.sections) == after.sections[0].size
        assert shstrndx == before.section_numbering[1] == after.sections[0].link
        ours = [s.name for s in after.sections]
        assert ours[: len(before.sections)] == [s.name for s in before.sections]
        assert our_listing(scan(after), (".nv_fatbin",)) == cuobjdump_listing(out)
        symtab = next(s for s in after.sections if s.name == ".symtab")
        starts = {g.vaddr for g in scan(after).regions}
        values = [s.value for s in after.symbols(symtab) if s.name == "fatbinData"]
        assert values and set(values) <= starts
    with open(out, "rb") as f:
        ref = ELFFile(f)
        assert ref.num_sections() == count
        assert [s.name for s in ref.iter_sections()] == ours
    assert readelf_warnings(out, "-S") == set()
    assert readelf_warnings(out) <= readelf_warnings(orig)
    ctypes.CDLL(str(out))


def test_pt_phdr_library_is_compacted(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    """PT_PHDR (gold, lld) no longer stops compaction: the new program header table
    lies outside every segment and PT_PHDR is dropped, so glibc copies the table
    from the file instead of using the stale one in memory."""
    import ctypes

    from slimwheel.elf import PT, open_elf

    orig = fixture_libs["big_phdr"]
    with open_elf(orig) as elf:
        assert any(p.type == PT.PHDR for p in elf.segments), "the fixture has PT_PHDR"
    out = tmp_path / "slim.so"
    r = slim_library(orig, out, LibraryPolicy(targets=parse_targets(["sm_90"])))
    assert r.compacted and r.note == "" and r.report.problems == []
    removed = r.device_bytes_before - r.device_bytes_after
    assert r.saved >= 0.95 * removed - 64 * 1024, (r.saved, removed)
    with open_elf(out) as slim:
        assert not any(p.type == PT.PHDR for p in slim.segments)
        assert slim.header.phoff >= max(p.offset + p.filesz for p in slim.loads)
    assert readelf_warnings(out) <= readelf_warnings(orig)
    ctypes.CDLL(str(out))  # glibc maps it
    zeroed = tmp_path / "zeroed.so"
    slim_library(orig, zeroed, LibraryPolicy(targets=parse_targets(["sm_90"]), compact=False))
    with open_elf(zeroed) as z:
        assert any(p.type == PT.PHDR for p in z.segments), "nothing moves: PT_PHDR stays"
    # verify refuses a PT_PHDR whose memory is not the file's program header table:
    # the original with e_phoff pointing at a changed copy of its table, appended.
    import struct

    from slimwheel.elf import ElfFile
    from slimwheel.verify import VerifyReport, check_structure

    data = bytearray(orig.read_bytes())
    h = ElfFile(bytes(data)).header
    table = bytearray(data[h.phoff : h.phoff + h.phnum * 56])
    table[-56 + 24 : -56 + 32] = (12345).to_bytes(8, "little")  # last entry's p_paddr
    struct.pack_into("<Q", data, 0x20, len(data))
    data += table
    report = VerifyReport()
    check_structure(ElfFile(bytes(data)), report)
    assert "PT_PHDR's memory is not the file's program header table" in report.problems


def test_strip_removes_what_no_process_maps(
    fixture_libs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--strip: DWARF and .symtab/.strtab leave the file; .dynsym, build-id notes,
    .eh_frame and every loaded byte stay; the library loads; readelf finds no DWARF."""
    import ctypes
    import json

    from elftools.elf.elffile import ELFFile

    from slimwheel.layout import strippable_sections

    orig = fixture_libs["big_g"]
    with open_elf(orig) as elf:
        names = {s.name for s in strippable_sections(elf)}
        strip_bytes = sum(s.size for s in strippable_sections(elf))
        dynsym = elf.read(
            elf.section_by_name(".dynsym").offset, elf.section_by_name(".dynsym").size
        )
    assert {".debug_info", ".debug_line", ".symtab", ".strtab"} <= names
    assert main(["inspect", str(orig), "--json", "-q"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["libraries"][0]["strip_bytes"] == strip_bytes == doc["totals"]["strip_bytes"]
    out = tmp_path / "slim.so"
    r = slim_library(orig, out, LibraryPolicy(targets=parse_targets(["sm_90"]), strip=True))
    assert (
        r.report.problems == [] and strip_bytes <= r.stripped_bytes < strip_bytes + 64
    )  # + padding
    plain = slim_library(
        orig, tmp_path / "plain.so", LibraryPolicy(targets=parse_targets(["sm_90"]))
    )
    assert r.file_bytes_after <= plain.file_bytes_after - strip_bytes + 4096
    with open(out, "rb") as f:
        e = ELFFile(f)
        kept = {s.name for s in e.iter_sections()}
        assert not kept & names and {".dynsym", ".dynstr", ".eh_frame", ".shstrtab"} <= kept
        assert e.get_section_by_name(".note.gnu.build-id") is not None
        assert not e.has_dwarf_info() or not e.get_dwarf_info().has_debug_info
        assert e.get_section_by_name(".dynsym").data() == dynsym
    dwarf = subprocess.run(
        ["readelf", "--debug-dump=info,abbrev,line,str,ranges,loc,aranges", str(out)],
        capture_output=True,
        text=True,
    )
    assert dwarf.stdout.strip() == "" and dwarf.returncode == 0
    assert readelf_warnings(out) <= readelf_warnings(orig)
    ctypes.CDLL(str(out))
    zeroed = tmp_path / "zeroed.so"  # --no-compact keeps the loaded layout; --strip still strips
    z = slim_library(
        orig, zeroed, LibraryPolicy(targets=parse_targets(["sm_90"]), compact=False, strip=True)
    )
    assert z.stripped_bytes == r.stripped_bytes and z.report.problems == []


def test_executables_keep_their_layout(tmp_path: Path) -> None:
    """A program's headers are found by the kernel (AT_PHDR), so they never move:
    no compaction, no --strip, and the program still runs."""
    src = Path(__file__).resolve().parents[1] / "fixtures" / "src" / "hostonly.c"
    main_c = tmp_path / "main.c"
    main_c.write_text(
        "#include <stdio.h>\nint hostonly_add(int, int);\n"
        'int main(void) { printf("%d\\n", hostonly_add(2, 3)); return 0; }\n'
    )
    exe = tmp_path / "prog"
    subprocess.run(["cc", "-g", "-o", str(exe), str(main_c), str(src)], check=True)
    out = tmp_path / "prog-slim"
    r = slim_library(exe, out, LibraryPolicy(targets=parse_targets(["sm_90"]), strip=True))
    assert r.report.problems == [] and r.stripped_bytes == 0 and "executable" in r.note
    assert out.read_bytes() == exe.read_bytes()
    os.chmod(out, 0o755)
    assert subprocess.run([str(out)], capture_output=True, text=True).stdout == "5\n"
