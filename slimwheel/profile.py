"""Usage profiles: which kernels and device variables a workload really uses.

A profile is recorded by running a command with the CUPTI recorder in
``shim/`` injected (``CUDA_INJECTION64_PATH``); each process writes JSON lines
(``origin``, ``launch``, ``global``, ``image``, ``gpu``, ``versions``) to a
directory, and :func:`collect` turns them into one :class:`Profile`: per
library file (identified by its SHA-256) the kernels launched, the variables
accessed, the regions loaded and the loaded images matched to elements. Code
from heap images (Triton, NVRTC) is counted under ``jit`` and never drives
removal. With host recording (``hostuse.py``), each library also gets the
pages of its executable mappings the processes ran (``host``); such a
profile says so (``host_recorded``). Profiles merge by union. The document's
schema is ``schemas/profile.schema.json`` (checked on load); version 1
profiles (before host recording) still load.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from . import __version__
from .child import run_command
from .elf import ElfFile, map_file
from .errors import InputError, SlimwheelError
from .fatbin import ElementKind, payload, scan
from .files import read_json
from .hostuse import HostRecorder, HostUse, collect_host, host_exact, host_processes
from .native import BuildError, compile_c, find_cc, helper_key, source
from .store import Store, file_sha256

SCHEMA = "slimwheel.profile"
SCHEMA_VERSION = 2  # 2: host code use (per library "host", and "host_recorded")
READABLE_VERSIONS = (1, 2)


class ProfileError(InputError):
    """A profile is malformed, or cannot be recorded."""


@dataclass(frozen=True, slots=True)
class LibraryUsage:
    sha256: str
    path: str  # where it was recorded
    name: str  # file name
    soname: str | None = None
    site_relative: str | None = None
    distribution: tuple[str, str] | None = None  # (name, version)
    kernels: tuple[str, ...] = ()  # launched
    variables: tuple[str, ...] = ()
    regions: tuple[int, ...] = ()  # vaddrs of loaded regions
    images: tuple[str, ...] = ()  # SHA-256 of element payloads the driver loaded
    resolved: tuple[str, ...] = ()  # resolved (handles obtained), launched or not
    host: HostUse | None = None  # executed pages of the file (host recording)

    @property
    def needed_kernels(self) -> frozenset[str]:
        """Kernels whose elements must stay: launched, or resolved (a library may
        query a resolved kernel's attributes without launching it)."""
        return frozenset(self.kernels) | frozenset(self.resolved)

    def digest(self) -> str:
        """What slimming depends on: the kernels and variables used, the regions loaded."""
        doc: dict[str, list[str] | list[int]] = {
            "kernels": list(self.kernels),
            "resolved": list(self.resolved),
            "variables": list(self.variables),
        }
        if self.regions:
            doc["regions"] = list(self.regions)
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Profile:
    gpus: tuple[tuple[str, str], ...] = ()  # (name, compute capability)
    driver_version: int | None = None
    runtimes: tuple[tuple[str, int], ...] = ()  # (CUDA runtime library file name, version)
    libraries: tuple[LibraryUsage, ...] = ()
    jit: tuple[tuple[str, int], ...] = ()  # (load API, count) of heap images
    unmatched_images: int = 0
    processes: int = 0
    unattributed: tuple[str, ...] = ()  # kernels launched from an origin not known
    host_recorded: bool = False  # host code use was recorded (``host`` of each library)
    host_exact: bool = False  # ... with fault-around off in every process: pages that ran, only

    def digest(self) -> str:
        """The profile's identity (of what it recorded per library), as labels and notes name it."""
        doc = self.to_json()["libraries"]
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def host_for(self, sha256: str) -> HostUse | None:
        """Executed pages of exactly these bytes: host use is matched by hash only."""
        found = next((lib for lib in self.libraries if lib.sha256 == sha256), None)
        return found.host if found is not None else None

    def for_library(self, sha256: str, name: str, *, by_name: bool = False) -> LibraryUsage | None:
        found = next((lib for lib in self.libraries if lib.sha256 == sha256), None)
        if found is None and by_name:
            found = self.same_name(name)
        if found is not None and self.unattributed:
            # Launched from an origin the recorder could not name: kept wherever defined.
            found = replace(found, resolved=tuple(sorted({*found.resolved, *self.unattributed})))
        return found

    def same_name(self, name: str) -> LibraryUsage | None:
        return next((lib for lib in self.libraries if lib.name == name), None)

    # -- JSON -----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "slimwheel", "version": __version__},
            "host_recorded": self.host_recorded,
            "host_exact": self.host_exact,
            "gpus": [{"name": n, "cc": cc} for n, cc in self.gpus],
            "driver_version": self.driver_version,
            "runtimes": [{"library": n, "version": v} for n, v in self.runtimes],
            "processes": self.processes,
            "libraries": [
                {
                    "sha256": lib.sha256,
                    "path": lib.path,
                    "name": lib.name,
                    "soname": lib.soname,
                    "site_relative": lib.site_relative,
                    "distribution": (
                        {"name": lib.distribution[0], "version": lib.distribution[1]}
                        if lib.distribution
                        else None
                    ),
                    "kernels": list(lib.kernels),
                    "resolved": list(lib.resolved),
                    "variables": list(lib.variables),
                    "regions": list(lib.regions),
                    "images": list(lib.images),
                    "host": lib.host.to_json() if lib.host is not None else None,
                }
                for lib in sorted(self.libraries, key=lambda x: (x.name, x.sha256))
            ],
            "jit": [{"api": api, "count": n} for api, n in self.jit],
            "unmatched_images": self.unmatched_images,
            "unattributed_kernels": list(self.unattributed),
        }

    @staticmethod
    def from_json(doc: Any, where: str) -> Profile:
        try:
            if doc.get("schema") != SCHEMA:
                raise ProfileError("not a slimwheel profile", path=where)
            if doc.get("schema_version") not in READABLE_VERSIONS:
                raise ProfileError(
                    f"profile version {doc.get('schema_version')} is not supported", path=where
                )
            libs = []
            for lib in doc["libraries"]:
                dist = lib.get("distribution")
                libs.append(
                    LibraryUsage(
                        sha256=_hex64(lib["sha256"], where),
                        path=str(lib["path"]),
                        name=str(lib["name"]),
                        soname=lib.get("soname"),
                        site_relative=lib.get("site_relative"),
                        distribution=(str(dist["name"]), str(dist["version"])) if dist else None,
                        kernels=tuple(sorted({str(k) for k in lib["kernels"]})),
                        resolved=tuple(sorted({str(k) for k in lib.get("resolved", [])})),
                        variables=tuple(sorted({str(v) for v in lib["variables"]})),
                        regions=tuple(sorted({int(r) for r in lib.get("regions", [])})),
                        images=tuple(sorted({_hex64(i, where) for i in lib.get("images", [])})),
                        host=(
                            HostUse.from_json(lib["host"], where)
                            if lib.get("host") is not None
                            else None
                        ),
                    )
                )
            return Profile(
                gpus=tuple((str(g["name"]), str(g["cc"])) for g in doc.get("gpus", [])),
                driver_version=doc.get("driver_version"),
                runtimes=tuple(
                    sorted(
                        {(str(r["library"]), int(r["version"])) for r in doc.get("runtimes", [])}
                    )
                ),
                libraries=tuple(libs),
                jit=tuple((str(j["api"]), int(j["count"])) for j in doc.get("jit", [])),
                unmatched_images=int(doc.get("unmatched_images", 0)),
                processes=int(doc.get("processes", 0)),
                unattributed=tuple(sorted({str(k) for k in doc.get("unattributed_kernels", [])})),
                host_recorded=bool(doc.get("host_recorded", False)),
                host_exact=bool(doc.get("host_exact", False)),
            )
        except SlimwheelError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProfileError(
                f"malformed profile ({type(exc).__name__}: {exc})", path=where
            ) from None


def _hex64(value: Any, where: str) -> str:
    s = str(value)
    if len(s) != 64 or any(c not in "0123456789abcdef" for c in s):
        raise ProfileError(f"not a SHA-256: {s[:20]!r}", path=where)
    return s


#: Profiles of real workloads are well under 1 MB.
MAX_PROFILE_BYTES = 64 << 20


@cache
def _validator() -> Any:
    import jsonschema

    text = resources.files("slimwheel").joinpath("schemas/profile.schema.json").read_text()
    return jsonschema.Draft202012Validator(json.loads(text))


def validate(doc: object, where: str) -> None:
    """Refuse, with one line, a document its schema does not allow."""
    error = next(iter(_validator().iter_errors(doc)), None)
    if error is not None:
        at = "/".join(str(p) for p in error.absolute_path) or "the document"
        raise ProfileError(f"not a valid profile: {at}: {error.message}"[:300], path=where)


def load_profile(path: str | os.PathLike[str]) -> Profile:
    where = os.fspath(path)
    try:
        doc = read_json(path, limit=MAX_PROFILE_BYTES)
    except ProfileError:
        raise
    except InputError as exc:
        raise ProfileError(exc.message, path=where) from None
    if isinstance(doc, dict) and doc.get("schema") == SCHEMA:
        if doc.get("schema_version") not in READABLE_VERSIONS:
            raise ProfileError(
                f"profile version {doc.get('schema_version')} is not supported", path=where
            )
        validate(doc, where)
    return Profile.from_json(doc, where)


def save_profile(profile: Profile, path: str | os.PathLike[str]) -> None:
    from .write import atomic_output

    data = (json.dumps(profile.to_json(), indent=1, sort_keys=True) + "\n").encode()
    with atomic_output(path, mode=0o644) as f:
        f.write(data)


def merge(profiles: Iterable[Profile]) -> Profile:
    libs: dict[str, LibraryUsage] = {}
    gpus: set[tuple[str, str]] = set()
    jit: dict[str, int] = defaultdict(int)
    unmatched = processes = 0
    driver = None
    runtimes: set[tuple[str, int]] = set()
    unattributed: set[str] = set()
    host_recorded = False
    exact = True
    for p in profiles:
        host_recorded = host_recorded or p.host_recorded
        if p.host_recorded:
            exact = exact and p.host_exact
        unattributed.update(p.unattributed)
        runtimes.update(p.runtimes)
        gpus.update(p.gpus)
        for api, n in p.jit:
            jit[api] += n
        unmatched += p.unmatched_images
        processes += p.processes
        driver = driver or p.driver_version
        for lib in p.libraries:
            old = libs.get(lib.sha256)
            if old is None:
                libs[lib.sha256] = lib
                continue
            libs[lib.sha256] = replace(
                old,
                kernels=tuple(sorted(set(old.kernels) | set(lib.kernels))),
                resolved=tuple(sorted(set(old.resolved) | set(lib.resolved))),
                variables=tuple(sorted(set(old.variables) | set(lib.variables))),
                regions=tuple(sorted(set(old.regions) | set(lib.regions))),
                images=tuple(sorted(set(old.images) | set(lib.images))),
                host=_union(old.host, lib.host),
            )
    return Profile(
        gpus=tuple(sorted(gpus)),
        driver_version=driver,
        runtimes=tuple(sorted(runtimes)),
        libraries=tuple(sorted(libs.values(), key=lambda x: (x.name, x.sha256))),
        jit=tuple(sorted(jit.items())),
        unmatched_images=unmatched,
        processes=processes,
        unattributed=tuple(sorted(unattributed)),
        host_recorded=host_recorded,
        host_exact=host_recorded and exact,
    )


def _union(a: HostUse | None, b: HostUse | None) -> HostUse | None:
    if a is None or b is None:
        return a or b
    return a.union(b)


# -- turning recorder output into a profile ---------------------------------


@dataclass(slots=True)
class _Lib:
    kernels: set[str] = field(default_factory=set)
    resolved: set[str] = field(default_factory=set)
    variables: set[str] = field(default_factory=set)
    regions: set[int] = field(default_factory=set)


def _records(directory: str) -> Iterable[tuple[str, list[dict[str, Any]]]]:
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".jsonl"):
            continue
        rows = []
        with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue  # a process killed mid-line: the lines before it count
        yield name, rows


def _site_info(
    path: str, dists: dict[str, tuple[str, str]]
) -> tuple[str | None, tuple[str, str] | None]:
    parts = Path(path).parts
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] in ("site-packages", "dist-packages"):
            rel = "/".join(parts[i + 1 :])
            return rel, dists.get(rel)
    return None, None


def _distributions() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for d in metadata.distributions():
        for f in d.files or ():
            out.setdefault(str(f), (d.metadata["Name"], d.version))
    return out


def _element_hashes(path: str) -> dict[str, int]:
    """SHA-256 of every cubin element's payload -> region vaddr."""
    out: dict[str, int] = {}
    with map_file(path) as buf:
        elf = ElfFile(buf, path)
        for region, el in scan(elf).elements:
            if el.kind == ElementKind.ELF:
                out[hashlib.sha256(payload(buf, el, name=path)).hexdigest()] = region.vaddr
    return out


def collect(directory: str) -> Profile:
    """One profile from every process's records in ``directory``."""
    libs: dict[str, _Lib] = defaultdict(_Lib)
    gpus: set[tuple[str, str]] = set()
    jit: dict[str, int] = defaultdict(int)
    images: set[str] = set()
    unattributed: set[str] = set()
    runtimes: set[tuple[str, int]] = set()
    driver = None
    processes = 0
    device_pids: set[str] = set()
    for file_name, rows in _records(directory):
        processes += 1
        parts = file_name.split("-")
        device_pids.add(parts[1] if file_name.startswith("rec-") and len(parts) > 2 else file_name)
        origins: dict[int, tuple[str | None, int | None]] = {}
        for r in rows:
            t = r.get("t")
            if t == "origin":
                if r.get("jit"):
                    origins[r["id"]] = (None, None)
                    jit[str(r.get("api"))] += 1
                else:
                    lib = r.get("lib") or r.get("file")
                    origins[r["id"]] = (lib, r.get("vaddr"))
                    if lib and r.get("vaddr") is not None:
                        libs[lib].regions.add(int(r["vaddr"]))
            elif t in ("launch", "global", "resolve"):
                name = r.get("name")
                if not name:
                    continue
                known = r.get("o", -1) in origins
                lib, _vaddr = origins.get(r.get("o", -1), (None, None))
                if not known and t == "launch":
                    unattributed.add(name)  # kept wherever it is defined
                if lib is None:
                    continue
                use = libs[lib]
                {"launch": use.kernels, "global": use.variables, "resolve": use.resolved}[t].add(
                    name
                )
            elif t == "image":
                images.add(r["sha256"])
            elif t == "gpu":
                gpus.add((r["name"], r["cc"]))
            elif t == "versions":
                driver = r.get("driver") or driver
            elif t == "runtime":
                runtimes.add((os.path.basename(str(r.get("lib"))), int(r.get("version") or 0)))
    dists = _distributions()
    usages: list[LibraryUsage] = []
    matched: set[str] = set()
    hosts = {os.path.realpath(r.path): r for r in collect_host(directory)}
    for path, use in sorted(libs.items()):
        if not os.path.isfile(path):
            continue
        rec = hosts.pop(os.path.realpath(path), None)
        try:
            hashes = _element_hashes(path)
            with map_file(path) as buf:
                soname = ElfFile(buf, path).soname
        except SlimwheelError:
            hashes, soname = {}, None
        loaded = sorted(images & set(hashes))
        matched.update(loaded)
        rel, dist = _site_info(os.path.realpath(path), dists)
        usages.append(
            LibraryUsage(
                sha256=file_sha256(path),
                path=path,
                name=os.path.basename(path),
                soname=soname,
                site_relative=rel,
                distribution=dist,
                kernels=tuple(sorted(use.kernels)),
                resolved=tuple(sorted(use.resolved)),
                variables=tuple(sorted(use.variables)),
                regions=tuple(sorted(use.regions)),
                images=tuple(loaded),
                host=rec.use if rec is not None else None,  # one hash per file
            )
        )
    pids = host_processes(directory)
    host_recorded = bool(pids)
    processes += len(pids - device_pids)
    for rec in hosts.values():
        try:
            with map_file(rec.path) as buf:
                soname = ElfFile(buf, rec.path).soname
        except SlimwheelError:
            continue  # not an ELF file (a JIT's memfd, a data file mapped executable)
        rel, dist = _site_info(os.path.realpath(rec.path), dists)
        usages.append(
            LibraryUsage(
                sha256=file_sha256(rec.path),
                path=rec.path,
                name=os.path.basename(rec.path),
                soname=soname,
                site_relative=rel,
                distribution=dist,
                host=rec.use,
            )
        )
    return merge(
        [
            Profile(
                gpus=tuple(sorted(gpus)),
                driver_version=driver,
                runtimes=tuple(sorted(runtimes)),
                libraries=tuple(usages),
                jit=tuple(sorted(jit.items())),
                unmatched_images=len(images - matched),
                processes=processes,
                unattributed=tuple(sorted(unattributed)),
                host_recorded=host_recorded,
                host_exact=host_recorded and host_exact(directory),
            )
        ]
    )


# -- the recorder library ---------------------------------------------------


def _shim_source() -> bytes:
    """shim/slimwheel_recorder.c (shipped in the package as data/, a link in the source tree)."""
    return source("slimwheel_recorder.c")


def find_cupti() -> tuple[list[str], str]:
    """(include directories, library directory) of a CUPTI to build against."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    candidates: list[tuple[Path, Path]] = []
    for r in roots:
        if r:
            candidates.append((Path(r) / "include", Path(r) / "lib64"))
            candidates.append((Path(r) / "extras/CUPTI/include", Path(r) / "extras/CUPTI/lib64"))
    for entry in sys.path:
        base = Path(entry) / "nvidia"
        for sub in ("cu13", "cu12", "cuda_cupti"):
            candidates.append((base / sub / "include", base / sub / "lib"))
    headers = [inc for inc, _ in candidates if (inc / "cupti.h").is_file()]
    cuda_h = [inc for inc, _ in candidates if (inc / "cuda.h").is_file()]
    libs = [lib for _, lib in candidates if lib.is_dir() and any(lib.glob("libcupti.so*"))]
    if not headers:
        raise ProfileError(
            "cannot build the recorder: no CUPTI headers (cupti.h) found; "
            "set CUDA_HOME or pip install nvidia-cuda-cupti"
        )
    if not cuda_h:
        raise ProfileError("cannot build the recorder: cuda.h not found; set CUDA_HOME")
    if not libs:
        raise ProfileError("cannot build the recorder: libcupti.so not found; set CUDA_HOME")
    return [str(headers[0]), str(cuda_h[0])], str(libs[0])


def build_recorder(store: Store) -> Path:
    """The recorder library, compiled once per source and CUPTI (cached in the store)."""
    try:
        cc = find_cc()
    except BuildError as exc:
        raise ProfileError(f"cannot build the recorder: {exc.message}") from None
    includes, libdir = find_cupti()
    src = _shim_source()
    version_h = Path(includes[0]) / "cupti_version.h"
    key = helper_key(
        src, cc, version_h.read_bytes() if version_h.is_file() else b"", libdir.encode()
    )
    cupti = sorted(Path(libdir).glob("libcupti.so*"), key=lambda p: len(p.name))[0]
    flags = [f"-L{libdir}", f"-l:{cupti.name}", "-ldl", "-lpthread", f"-Wl,-rpath,{libdir}"]
    try:
        return compile_c(
            cc,
            src,
            store.recorder_dir(key) / "libslimwheel_recorder.so",
            flags,
            "recorder",
            pre=[f"-I{i}" for i in includes],
        )
    except BuildError as exc:
        raise ProfileError(exc.message) from None


def record(
    command: Sequence[str], recorder: Path | None, host: HostRecorder | None = None
) -> tuple[int, Profile]:
    """Run ``command`` with the device recorder (CUPTI) and/or the host recorder;
    return its exit status and the profile."""
    if not command:
        raise ProfileError("no command to profile (give it after --)")
    from .write import scratch_dir

    with scratch_dir("profile-") as scratch:
        tmp = str(scratch)
        env = dict(os.environ, SLIMWHEEL_PROFILE_DIR=tmp)
        if recorder is not None:
            env["CUDA_INJECTION64_PATH"] = str(recorder)
        if host is not None:
            env = host.environment(env, tmp)
        try:
            code = run_command(command, env)
        except InputError as exc:
            raise ProfileError(exc.message) from None
        return code, collect(tmp)
