"""slimwheel/cubin.py: the search for bare cubins reads only the bytes between
fatbin regions (a region's compressed payload is hundreds of MB in
libtorch_cuda.so) and finds what a search of the whole section finds."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimwheel.cubin import find_bare_cubins, gaps
from slimwheel.elf import ElfFile
from slimwheel.fatbin import scan


@pytest.mark.parametrize(
    ("spans", "start", "limit", "expected"),
    [
        ([], 0, 10, [(0, 10)]),
        ([(2, 4), (6, 8)], 0, 10, [(0, 2), (4, 6), (8, 10)]),
        ([(0, 4), (4, 10)], 0, 10, []),  # regions back to back, covering it all
        ([(0, 5), (3, 7)], 2, 9, [(7, 9)]),  # overlapping spans, one before the start
        ([(12, 20)], 0, 10, [(0, 10)]),  # a span after the limit
        ([(0, 3)], 5, 10, [(5, 10)]),  # a span before the start
    ],
)
def test_gaps_are_what_no_span_covers(
    spans: list[tuple[int, int]], start: int, limit: int, expected: list[tuple[int, int]]
) -> None:
    assert gaps(spans, start, limit) == expected


class Watched(bytes):
    """A library's bytes that note every range ``find`` searched."""

    searched: list[tuple[int, int]]

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:  # type: ignore[override]
        self.searched.append((start, len(self) if end is None else end))
        return super().find(sub, start, end)


def test_region_payloads_are_never_searched(fixture_libs: dict[str, Path]) -> None:
    data = Watched(fixture_libs["bare"].read_bytes())
    data.searched = []
    elf = ElfFile(data, "bare.so")
    regions = [(r.offset, r.offset + r.total_size) for r in scan(elf).regions]
    assert regions
    data.searched = []  # the searches of find_bare_cubins alone
    found = find_bare_cubins(elf, regions)
    assert [(c.section, c.arch) for c in found] == [(".rodata", "sm_80"), (".rodata", "sm_90")]
    assert data.searched
    for lo, hi in data.searched:
        for a, b in regions:
            # a header may start in the 3 bytes before a region, never inside one
            assert hi <= a + 3 or lo >= b, (lo, hi, a, b)
    # cubins in gaps with regions right before and after them are still found
    rodata = next(s for s in elf.sections if s.name == ".rodata")
    around = [(rodata.offset, found[0].offset), (found[0].end, found[1].offset)]
    assert find_bare_cubins(elf, regions + around) == found
    # one that runs into a region after its header is found too, also when the
    # region begins inside the 4-byte ELF magic
    for k in (1, 2, 3, 4):
        assert find_bare_cubins(elf, [*regions, (found[0].offset + k, found[0].end)]) == found
