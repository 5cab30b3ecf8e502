"""``slimwheel index``: per-target static indexes that pip installs from."""

from __future__ import annotations

import hashlib
import html.parser
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slimwheel.cli import main
from slimwheel.serve import serving
from tests.helpers import local_wheel
from tests.integration.test_build import make_wheel

JSON_TYPE = "application/vnd.pypi.simple.v1+json"


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict[str, str | None]] = []
        self.meta: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.append(dict(attrs))
        elif tag == "meta":
            d = dict(attrs)
            self.meta[str(d.get("name"))] = d.get("content")


def _parse(page: Path) -> _Links:
    p = _Links()
    p.feed(page.read_text())
    return p


def _site(tmp_path: Path, fixture_libs: dict[str, Path]) -> Path:
    lib = fixture_libs["many_size"].read_bytes()
    src = tmp_path / "src"
    src.mkdir()
    gpu = make_wheel(src, "Demo_GPU", "1.0", {"demo_gpu/lib.so": lib})
    plain = make_wheel(tmp_path, "pure_pkg", "2.0", {"pure_pkg/__init__.py": b""})
    store = str(tmp_path / "store")
    for arch in ("sm_80", "sm_90"):
        assert (
            main(
                [
                    "build",
                    str(gpu),
                    "--arch",
                    arch,
                    "-o",
                    str(tmp_path / arch),
                    "-q",
                    "--store",
                    store,
                ]
            )
            == 0
        )
    site = tmp_path / "site"
    assert (
        main(
            ["index", str(tmp_path / "sm_80"), str(tmp_path / "sm_90"), str(plain), "-o", str(site)]
        )
        == 0
    )
    return site


def test_pages_follow_the_peps(
    fixture_libs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(tmp_path, fixture_libs)
    assert sorted(p.name for p in site.iterdir()) == ["files", "simple", "sm_80", "sm_90"]
    root = _parse(site / "sm_90/simple/index.html")
    assert root.meta["pypi:repository-version"] == "1.1"
    assert sorted(str(a["href"]) for a in root.links) == ["demo-gpu/", "pure-pkg/"]
    assert [str(a["href"]) for a in _parse(site / "simple/index.html").links] == ["pure-pkg/"]
    page = site / "sm_90/simple/demo-gpu/index.html"
    (link,) = _parse(page).links
    href = str(link["href"])
    url, _, frag = href.partition("#")
    wheel = (page.parent / url).resolve()
    assert wheel.name == "demo_gpu-1.0+sm90-py3-none-linux_x86_64.whl"
    assert frag == "sha256=" + hashlib.sha256(wheel.read_bytes()).hexdigest()
    metadata = Path(str(wheel) + ".metadata").read_bytes()
    assert b"Version: 1.0+sm90" in metadata
    meta_hash = "sha256=" + hashlib.sha256(metadata).hexdigest()
    assert link["data-core-metadata"] == link["data-dist-info-metadata"] == meta_hash
    doc = json.loads((page.parent / "index.v1.json").read_text())
    assert doc["meta"] == {"api-version": "1.1"} and doc["name"] == "demo-gpu"
    assert doc["versions"] == ["1.0+sm90"]  # PEP 700
    (f,) = doc["files"]
    assert f["hashes"] == {"sha256": frag[7:]} and f["size"] == wheel.stat().st_size
    assert f["core-metadata"] == {"sha256": meta_hash[7:]}  # PEP 714
    root_json = json.loads((site / "sm_80/simple/index.v1.json").read_text())
    assert [p["name"] for p in root_json["projects"]] == ["demo-gpu", "pure-pkg"]
    sm80 = json.loads((site / "sm_80/simple/demo-gpu/index.v1.json").read_text())
    assert sm80["versions"] == ["1.0+sm80"]


def test_updates_are_incremental_and_complete(
    fixture_libs: dict[str, Path], tmp_path: Path
) -> None:
    site = _site(tmp_path, fixture_libs)
    page = site / "sm_90/simple/demo-gpu/index.html"
    before = page.stat()
    extra = make_wheel(tmp_path, "other_pkg", "0.1", {"other_pkg/x.py": b"x = 1\n"})
    sources = [str(tmp_path / "sm_80"), str(tmp_path / "sm_90"), str(extra)]
    assert main(["index", *sources, "-o", str(site)]) == 0
    assert (site / "simple/other-pkg/index.html").is_file()
    assert not (site / "simple/pure-pkg").exists(), "a wheel gone from the sources is gone"
    after = page.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in site.parent.iterdir() if p.name.startswith(".site")] == []


def test_bad_wheels_are_refused(
    fixture_libs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    make_wheel(a, "same", "1.0", {"same/x.py": b"1"})
    make_wheel(b, "same", "1.0", {"same/x.py": b"2"})
    site = tmp_path / "site"
    assert main(["index", str(a), str(b), "-o", str(site)]) == 1
    assert "two different files named" in capsys.readouterr().err
    assert not site.exists()
    liar = make_wheel(tmp_path, "liar", "1.0", {"liar/x.py": b""})
    # METADATA that names another project than the file name
    import zipfile

    bad = tmp_path / "bad" / liar.name
    bad.parent.mkdir()
    with zipfile.ZipFile(liar) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("METADATA"):
                data = data.replace(b"Name: liar", b"Name: somebody-else")
            zout.writestr(info, data)
    assert main(["index", str(bad.parent), "-o", str(site)]) == 1
    err = capsys.readouterr().err
    assert "liar" in err and err.count("\n") == 1
    assert not site.exists()


def test_serve_negotiates(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    import urllib.request

    site = _site(tmp_path, fixture_libs)
    with serving(site) as url:
        req = urllib.request.Request(url + "/sm_90/simple/demo-gpu/", headers={"Accept": JSON_TYPE})
        with urllib.request.urlopen(req) as r:
            assert r.headers["Content-Type"] == JSON_TYPE
            assert json.load(r)["name"] == "demo-gpu"
        req = urllib.request.Request(
            url + "/sm_90/simple/demo-gpu/", headers={"Accept": "text/html"}
        )
        with urllib.request.urlopen(req) as r:
            assert r.headers["Content-Type"] == "text/html"
            assert b"<a href=" in r.read()


@pytest.mark.slow
def test_pip_installs_the_build_for_its_index(tmp_path: Path) -> None:
    wheel = local_wheel("nvidia-curand==10.4.0.35")
    store = str(tmp_path / "store")
    site = tmp_path / "site"
    for arch in ("sm_80", "sm_90"):
        assert (
            main(
                [
                    "build",
                    str(wheel),
                    "--arch",
                    arch,
                    "-o",
                    str(tmp_path / arch),
                    "-q",
                    "--store",
                    store,
                    "--publish",
                    str(site),
                ]
            )
            == 0
        )
    log = io.StringIO()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # only our index, not the machine's pip configuration
    with serving(site, log) as url:
        for arch, label in (("sm_90", "+sm90"), ("sm_80", "+sm80")):
            venv = tmp_path / f"venv-{arch}"
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
            py = str(venv / "bin" / "python")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "--python",
                    py,
                    "install",
                    "-q",
                    "--no-deps",
                    "--index-url",
                    f"{url}/{arch}/simple/",
                    "nvidia-curand",
                ],
                check=True,
                env=env,
            )
            shown = subprocess.run(
                [sys.executable, "-m", "pip", "--python", py, "show", "nvidia-curand"],
                capture_output=True,
                text=True,
                env=env,
            )
            assert f"Version: 10.4.0.35{label}" in shown.stdout
    text = log.getvalue()
    assert ".whl.metadata" in text, "pip fetched the PEP 658 metadata file"
    assert "index.v1.json" in text, "pip used the JSON API (PEP 691)"


def test_variants_are_experimental_and_separate(
    fixture_libs: dict[str, Path], tmp_path: Path
) -> None:
    import csv as csv_mod
    import zipfile

    site = _site(tmp_path, fixture_libs)
    plain_pages = {p: p.read_bytes() for p in site.rglob("*.html")}
    sources = [str(tmp_path / "sm_80"), str(tmp_path / "sm_90")]
    sources.append(str(next(tmp_path.glob("pure_pkg-*.whl"))))
    assert main(["index", *sources, "-o", str(site), "--variants"]) == 0
    for page, content in plain_pages.items():
        assert page.read_bytes() == content, "--variants changes no default output"
    files = sorted(p.name for p in (site / "variants/files").iterdir())
    assert files == [
        "demo_gpu-1.0-py3-none-linux_x86_64-sm80.whl",
        "demo_gpu-1.0-py3-none-linux_x86_64-sm90.whl",
        "demo_gpu-1.0-variants.json",
    ]
    doc = json.loads((site / "variants/files/demo_gpu-1.0-variants.json").read_text())
    assert doc["variants"] == {
        "sm80": {"nvidia": {"sm_arch": ["80_real"]}},
        "sm90": {"nvidia": {"sm_arch": ["90_real"]}},
    }
    wheel = site / "variants/files/demo_gpu-1.0-py3-none-linux_x86_64-sm90.whl"
    with zipfile.ZipFile(wheel) as zf:
        assert json.loads(zf.read("demo_gpu-1.0.dist-info/variant.json"))["variants"] == {
            "sm90": {"nvidia": {"sm_arch": ["90_real"]}}
        }
        assert b"Version: 1.0\n" in zf.read("demo_gpu-1.0.dist-info/METADATA")
        record = zf.read("demo_gpu-1.0.dist-info/RECORD").decode()
        for path, h, _size in csv_mod.reader(record.splitlines()):
            if h:
                digest = hashlib.sha256(zf.read(path)).digest()
                import base64

                assert h == "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    (link,) = [
        a
        for a in _parse(site / "variants/simple/demo-gpu/index.html").links
        if "sm90" in str(a["href"])
    ]
    assert str(link["href"]).startswith("../../files/")


def test_variant_wheels_follow_source_date_epoch(
    fixture_libs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Variant wheels come from the one wheel writer: SOURCE_DATE_EPOCH, same bytes twice."""
    import time
    import zipfile

    site = _site(tmp_path, fixture_libs)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    sources = [str(tmp_path / "sm_80"), str(tmp_path / "sm_90")]
    assert main(["index", *sources, "-o", str(site), "--variants"]) == 0
    wheel = site / "variants/files/demo_gpu-1.0-py3-none-linux_x86_64-sm90.whl"
    first = wheel.read_bytes()
    stamp = time.gmtime(1700000000)[:5]
    with zipfile.ZipFile(wheel) as zf:
        assert {i.date_time[:5] for i in zf.infolist()} == {stamp}
    again = tmp_path / "again"
    assert main(["index", *sources, "-o", str(again), "--variants"]) == 0
    assert (again / wheel.relative_to(site)).read_bytes() == first


def test_variantlib_validates_every_variant_file(
    fixture_libs: dict[str, Path], tmp_path: Path
) -> None:
    """variantlib, the reference implementation of the wheel variant drafts, reads and
    validates every variant wheel name, variant.json and -variants.json the index writes."""
    import importlib.util
    import zipfile

    pytest.importorskip("variantlib")
    from variantlib.constants import VALIDATION_WHEEL_NAME_REGEX, VARIANT_INFO_SCHEMA_URL
    from variantlib.errors import ValidationError
    from variantlib.validators.base import ValidationError as SchemaError
    from variantlib.variant_dist_info import VariantDistInfo
    from variantlib.variants_json import VariantsJson

    site = _site(tmp_path, fixture_libs)
    sources = [str(tmp_path / "sm_80"), str(tmp_path / "sm_90")]
    assert main(["index", *sources, "-o", str(site), "--variants"]) == 0
    files = sorted((site / "variants/files").iterdir())
    wheels = [f for f in files if f.suffix == ".whl"]
    (listing,) = [f for f in files if f.name.endswith("-variants.json")]
    assert len(wheels) == 2
    doc = json.loads(listing.read_text())
    assert doc["$schema"] == VARIANT_INFO_SCHEMA_URL, "the schema variantlib writes"
    index = VariantsJson(doc)  # raises ValidationError on anything it rejects
    seen = set()
    for wheel in wheels:
        m = VALIDATION_WHEEL_NAME_REGEX.fullmatch(wheel.name)
        assert m is not None and m.group("variant_label"), wheel.name
        label = m.group("variant_label")
        with zipfile.ZipFile(wheel) as zf:
            info = VariantDistInfo(
                zf.read(f"{m.group('namever')}.dist-info/variant.json"), expected_label=label
            )
        assert index.variants[label] == info.variant_desc, "the listing and the wheel agree"
        VariantsJson(doc).merge(info)  # as an index tool adds a wheel: consistent
        seen.add((label, tuple(p.to_str() for p in info.variant_desc.properties)))
    assert seen == {
        ("sm80", ("nvidia :: sm_arch :: 80_real",)),
        ("sm90", ("nvidia :: sm_arch :: 90_real",)),
    }
    # inspect says what installers see of a variant wheel.
    vwheel = next(w for w in wheels if w.name.endswith("-sm90.whl"))
    got = subprocess.run(
        [sys.executable, "-m", "slimwheel", "inspect", str(vwheel), "--json"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    (build,) = json.loads(got.stdout)["builds"]
    assert build["variant_label"] == "sm90" and build["version"] == "1.0"
    # The validator is real: a label or value outside the grammar is refused.
    with pytest.raises((ValidationError, SchemaError)):
        VariantsJson({**doc, "variants": {"SM90": doc["variants"]["sm90"]}})
    with pytest.raises((ValidationError, SchemaError)):
        VariantsJson({**doc, "variants": {"sm90": {"nvidia": {"sm_arch": ["90 real"]}}}})

    # With NVIDIA's provider plugin installed (not on PyPI: wheelnext/nvidia-variant-provider),
    # variantlib ranks the variants as an installer would, for a forced GPU.
    if importlib.util.find_spec("nvidia_variant_provider") is None or (
        importlib.util.find_spec("nvidia_variant_provider.plugin") is None
    ):
        return
    # ("null": the wheel without a variant label, every installer's fallback.) One process
    # per GPU: the provider caches what it detected.
    rank = (
        "import json, sys; from variantlib.api import get_variants_by_priority; "
        "doc = json.load(open(sys.argv[1])); "
        "print(json.dumps([v.label for v in get_variants_by_priority(variants_json=doc)]))"
    )
    for gpu, want in (
        ("9.0", ["sm90", "null"]),
        ("8.6", ["sm80", "null"]),
        ("8.0", ["sm80", "null"]),
        ("7.5", ["null"]),
    ):
        env = dict(
            os.environ,
            NV_VARIANT_PROVIDER_FORCE_CUDA_DRIVER_VERSION="13.0",
            NV_VARIANT_PROVIDER_FORCE_SM_ARCH=gpu,
        )
        got = subprocess.run(
            [sys.executable, "-c", rank, str(listing)], env=env, capture_output=True, text=True
        )
        assert got.returncode == 0, got.stderr[-2000:]
        assert json.loads(got.stdout.strip().splitlines()[-1]) == want, gpu
