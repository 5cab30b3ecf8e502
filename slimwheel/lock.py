"""Lock files in and out: hash-pinned requirements files and ``pylock.toml`` (PEP 751).

In: a requirements file whose requirements carry ``--hash`` pins (pip's
hash-checking format) or a ``pylock.toml``. Every requirement must be pinned
to one version (``name==version``); every file fetched for it must have one
of its pinned hashes, or the build is refused with one line naming the
package. A ``pylock.toml`` names its wheels (``path`` relative to the lock,
or ``url``); sdists, directories and VCS sources are refused: slimwheel
builds nothing from source.

Out, beside the slim wheels: ``requirements.txt`` (``name==version
--hash=sha256:...`` for every wheel built, markers kept) for ``pip install
--require-hashes -r``, and ``pylock.toml`` naming the same wheels (``path``
beside the lock, or ``url`` under a base URL) for ``uv pip sync``. Same
inputs, same bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from packaging.markers import InvalidMarker, Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import (
    InvalidName,
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import Version

from .errors import InputError
from .files import open_regular, read_capped

#: The most bytes of a lock file read, and of pins taken from one.
MAX_LOCK_BYTES = 16 << 20
MAX_PINS = 100_000
#: The most bytes fetched for one wheel a pylock.toml names by URL without a size.
MAX_WHEEL_BYTES = 16 << 30
_ALGORITHMS = ("sha256", "sha384", "sha512")
_HASH = re.compile(r"--hash[= ](sha256|sha384|sha512):([0-9a-fA-F]+)")


class LockError(InputError):
    """A lock file that cannot be used, or a file that does not match it."""


@dataclass(frozen=True, slots=True)
class LockedWheel:
    """A wheel a pylock.toml names: where to get it and what it must hash to."""

    filename: str
    location: str  # an absolute path, or an http(s) URL
    hashes: tuple[tuple[str, str], ...]  # (algorithm, hex digest)
    size: int | None = None


@dataclass(frozen=True, slots=True)
class Pin:
    name: NormalizedName
    version: str
    hashes: frozenset[tuple[str, str]]  # (algorithm, hex digest), any one will do
    marker: str | None = None
    wheels: tuple[LockedWheel, ...] = ()  # pylock.toml: the files themselves


@dataclass(slots=True)
class Lock:
    """What a lock file pins, and the pip options a requirements file carries."""

    path: str
    pins: dict[NormalizedName, Pin] = field(default_factory=dict)
    pip_options: list[str] = field(default_factory=list)
    requires_python: str | None = None

    def fail(self, message: str) -> LockError:
        """The error, on one line (parsers' messages draw carets on several)."""
        return LockError(_one_line(message), path=self.path)


def _one_line(text: str) -> str:
    first, _nl, rest = text.partition("\n")
    return first.rstrip() + (" ...)" if rest and "(" in first and ")" not in first else "")


def _read_text(path: str) -> str:
    try:
        return read_capped(path, limit=MAX_LOCK_BYTES).decode("utf-8")
    except UnicodeDecodeError:
        raise LockError("not UTF-8 text", path=path) from None


def is_pylock(path: str) -> bool:
    name = os.path.basename(path)
    return name == "pylock.toml" or bool(re.fullmatch(r"pylock\.[^.]+\.toml", name))


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """Lines as pip joins them: backslash continuations, comments removed."""
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw)
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            yield start, buf.strip()
        buf = ""
    if buf.strip():
        yield start, buf.strip()


#: Option lines of a requirements lock passed to pip: where to look, nothing else
#: (no --no-binary, no build or log options: slimwheel builds nothing from source).
_VALUE_OPTIONS = {
    "-i": "--index-url",
    "--index-url": "--index-url",
    "--extra-index-url": "--extra-index-url",
    "-f": "--find-links",
    "--find-links": "--find-links",
    "--trusted-host": "--trusted-host",
}
_FLAG_OPTIONS = {"--no-index", "--pre", "--prefer-binary", "--require-hashes"}


def _options(lock: Lock, n: int, line: str) -> list[str]:
    """A requirements lock's option line as pip arguments, refused unless it only says
    where to find the files; a relative --find-links is the lock's directory's."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise lock.fail(f"line {n}: {exc}") from None
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        name, eq, value = word.partition("=")
        if not eq and word[:2] in ("-i", "-f") and len(word) > 2:
            name, value, eq = word[:2], word[2:], "="
        if name in _FLAG_OPTIONS and not eq:
            if name != "--require-hashes":  # slimwheel checks every hash itself
                out.append(name)
            i += 1
            continue
        if name not in _VALUE_OPTIONS:
            raise lock.fail(f"line {n}: {name} in a lock file: only index and find-links options")
        if not eq:
            if i + 1 >= len(words):
                raise lock.fail(f"line {n}: {name} needs a value")
            value = words[i + 1]
            i += 1
        option = _VALUE_OPTIONS[name]
        if option == "--find-links" and "://" not in value and not os.path.isabs(value):
            value = os.path.normpath(
                os.path.join(os.path.dirname(os.path.abspath(lock.path)), value)
            )
        out += [option, value]
        i += 1
    return out


def read_requirements(path: str) -> Lock | None:
    """The pins of a requirements file, or None when no requirement has a ``--hash``
    (not a lock)."""
    lines = list(_logical_lines(_read_text(path)))
    if not any(_HASH.search(line) for _n, line in lines):
        return None
    lock = Lock(path)
    for n, line in lines:
        if line.startswith("-"):
            lock.pip_options += _options(lock, n, line)
            continue
        hashes = frozenset((a, h.lower()) for a, h in _HASH.findall(line))
        spec = _HASH.sub("", line).strip()
        try:
            req = Requirement(spec)
        except InvalidRequirement as exc:
            raise lock.fail(f"line {n}: {exc}") from None
        versions = [s.version for s in req.specifier if s.operator in ("==", "===")]
        if len(req.specifier) != 1 or not versions or "*" in versions[0] or req.url:
            raise lock.fail(f"line {n}: {req.name} is not pinned to one version (name==version)")
        if not hashes:
            raise lock.fail(f"line {n}: {req.name} has no --hash (a lock pins every file)")
        _add(lock, Pin(canonicalize_name(req.name), versions[0], hashes, _marker(req)), n)
    return lock


def _marker(req: Requirement) -> str | None:
    return str(req.marker) if req.marker is not None else None


def _pylock_marker(lock: Lock, where: str, text: object) -> str | None:
    """A package's marker in a pylock.toml, normalized; refused when it is not one, or
    when it asks for extras or dependency groups (a requirements file cannot say that)."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise lock.fail(f"{where}: marker is not a string")
    try:
        marker = Marker(text)
    except InvalidMarker as exc:
        raise lock.fail(f"{where}: bad marker ({exc})") from None
    normal = str(marker)
    if re.search(r"\b(extras|dependency_groups)\b", normal):
        raise lock.fail(f"{where}: a marker on extras or dependency groups is not taken")
    return normal


def _add(lock: Lock, pin: Pin, where: object) -> None:
    if pin.name in lock.pins:
        raise lock.fail(
            f"{where}: {pin.name} is pinned twice (a lock with a version per environment is "
            "not taken: lock for the environment you build)"
        )
    if len(lock.pins) >= MAX_PINS:
        raise lock.fail(f"more than {MAX_PINS} packages")
    lock.pins[pin.name] = pin


def read_pylock(path: str) -> Lock:
    """The packages and wheels of a PEP 751 lock file."""
    lock = Lock(path)
    try:
        doc = tomllib.loads(_read_text(path))
    except tomllib.TOMLDecodeError as exc:
        raise lock.fail(f"not TOML ({exc})") from None
    version = doc.get("lock-version")
    if not isinstance(version, str) or not version.startswith("1."):
        raise lock.fail(f"lock-version {version!r}: only 1.x is read")
    rp = doc.get("requires-python")
    lock.requires_python = rp if isinstance(rp, str) else None
    packages = doc.get("packages")
    if not isinstance(packages, list):
        raise lock.fail("no [[packages]]")
    base = os.path.dirname(os.path.abspath(path))
    seen: set[str] = set()
    for i, pkg in enumerate(packages):
        where = f"packages[{i}]"
        if not isinstance(pkg, dict) or not isinstance(pkg.get("name"), str):
            raise lock.fail(f"{where}: no name")
        try:
            name = canonicalize_name(pkg["name"], validate=True)
        except InvalidName:
            raise lock.fail(f"{where}: {pkg['name']!r} is not a package name") from None
        ver = pkg.get("version")
        if not isinstance(ver, str) or not ver:
            raise lock.fail(f"{where}: {name} has no version")
        for kind in ("sdist", "directory", "vcs", "archive"):
            if kind in pkg and "wheels" not in pkg:
                raise lock.fail(f"{where}: {name} comes from a {kind}: slimwheel needs wheels")
        wheels = pkg.get("wheels")
        if not isinstance(wheels, list) or not wheels:
            raise lock.fail(f"{where}: {name} lists no wheels")
        files = tuple(
            _locked_wheel(lock, base, f"{where}.wheels[{j}]", w) for j, w in enumerate(wheels)
        )
        marker = _pylock_marker(lock, where, pkg.get("marker"))
        for w in files:
            try:
                wname, wver, _b, _t = parse_wheel_filename(w.filename)
            except InvalidWheelFilename as exc:
                raise lock.fail(f"{where}: {exc}") from None
            if wname != name or not _pinned(ver, wver):
                raise lock.fail(f"{where}: {w.filename} is not a wheel of {name} {ver}")
            if w.filename in seen:
                raise lock.fail(f"{where}: {w.filename} is listed twice")
            seen.add(w.filename)
        hashes = frozenset(h for w in files for h in w.hashes)
        _add(lock, Pin(name, ver, hashes, marker, files), where)
    return lock


def _locked_wheel(lock: Lock, base: str, where: str, w: object) -> LockedWheel:
    if not isinstance(w, dict):
        raise lock.fail(f"{where}: not a table")
    hashes = w.get("hashes")
    if not isinstance(hashes, dict) or not hashes:
        raise lock.fail(f"{where}: no hashes")
    for a, h in hashes.items():
        if a not in _ALGORITHMS or not isinstance(h, str) or not re.fullmatch(r"[0-9a-fA-F]+", h):
            raise lock.fail(f"{where}: hash {a!r} is not a sha256, sha384 or sha512 hex digest")
    pairs = tuple(sorted((str(a), str(h).lower()) for a, h in hashes.items()))
    url, rel = w.get("url"), w.get("path")
    if isinstance(rel, str):
        location = os.path.normpath(os.path.join(base, rel))
    elif isinstance(url, str):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "file":
            location = urllib.request.url2pathname(parts.path)
        elif parts.scheme in ("http", "https"):
            location = url
        else:
            raise lock.fail(f"{where}: url scheme {parts.scheme!r} is not fetched")
    else:
        raise lock.fail(f"{where}: neither path nor url")
    filename = w.get("name")
    if not isinstance(filename, str):
        filename = os.path.basename(urllib.parse.urlsplit(location).path)
    if "/" in filename or "\0" in filename or not filename.endswith(".whl"):
        raise lock.fail(f"{where}: {filename!r} is not a wheel file name")
    size = w.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise lock.fail(f"{where}: size {size!r} is not a byte count")
    if "\0" in location:
        raise lock.fail(f"{where}: a NUL in the wheel's location")
    return LockedWheel(filename, location, pairs, size)


def read_lock(path: str) -> Lock | None:
    """A pylock.toml, or a requirements file with hash pins; None for a plain one."""
    return read_pylock(path) if is_pylock(path) else read_requirements(path)


# -- fetching and checking --------------------------------------------------------


def _digests(path: str, algorithms: Iterable[str]) -> dict[str, str]:
    hs = {a: hashlib.new(a) for a in set(algorithms)}
    with open_regular(path) as f:
        while chunk := f.read(1 << 20):
            for h in hs.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hs.items()}


def check_wheel(lock: Lock, wheel: str) -> Pin:
    """The pin ``wheel`` satisfies; a wheel the lock does not pin, or whose bytes
    match none of its pinned hashes, is refused with one line naming the package."""
    name = os.path.basename(wheel)
    try:
        dist, version, _build, _tags = parse_wheel_filename(name)
    except InvalidWheelFilename as exc:
        raise lock.fail(f"{name}: {exc}") from None
    pin = lock.pins.get(dist)
    if pin is None:
        raise lock.fail(f"{dist} {version}: fetched ({name}) but not in the lock")
    if not _pinned(pin.version, version):
        raise lock.fail(f"{dist}: fetched version {version}, the lock pins {pin.version}")
    _check_hashes(lock, pin, wheel, pin.hashes, every=False)
    return pin


def _check_hashes(
    lock: Lock, pin: Pin, path: str, hashes: Iterable[tuple[str, str]], *, every: bool
) -> None:
    """The file has one of ``hashes`` (all of them: ``every``), or it is refused."""
    pairs = list(hashes)
    got = _digests(path, {a for a, _h in pairs} | {"sha256"})
    matched = [got[a] == h for a, h in pairs]
    if not (all(matched) if every else any(matched)):
        raise lock.fail(
            f"{pin.name} {pin.version}: {os.path.basename(path)} has sha256 {got['sha256']}, "
            "which the lock does not pin (tampered, or another build)"
        )


def _pinned(pinned: str, version: Version) -> bool:
    """``name==pinned`` matches ``version`` as pip has it (PEP 440: a local label of the
    candidate is ignored when the pin has none)."""
    try:
        return SpecifierSet(f"=={pinned}").contains(version, prereleases=True)
    except InvalidSpecifier:
        return str(version) == pinned


def check_complete(lock: Lock, fetched: Iterable[Pin]) -> None:
    """Every pin that applies here (its marker) came with a file."""
    got = {p.name for p in fetched}
    for pin in sorted(lock.pins.values(), key=lambda p: p.name):
        if pin.name not in got and (pin.marker is None or Marker(pin.marker).evaluate()):
            raise lock.fail(f"{pin.name} {pin.version}: pinned, but no wheel of it was fetched")


def download_requirements(lock: Lock) -> list[str]:
    """What pip downloads for a requirements lock: one ``name==version`` per pin that
    applies here (its marker), without dependencies (a lock is complete)."""
    out = []
    for pin in sorted(lock.pins.values(), key=lambda p: p.name):
        spec = f"{pin.name}=={pin.version}"
        if pin.marker:
            spec += f"; {pin.marker}"
        out.append(spec)
    return out


def fetch_pylock(lock: Lock, dest: str) -> list[tuple[str, Pin]]:
    """Every wheel of a pylock.toml with its pin, each checked against its own hashes:
    local files as they are, URLs fetched into ``dest``."""
    out = []
    for pin in sorted(lock.pins.values(), key=lambda p: p.name):
        for w in pin.wheels:
            if w.location.startswith(("http://", "https://")):
                path = os.path.join(dest, w.filename)
                _fetch_url(lock, w, path)
            else:
                path = w.location
                if os.path.basename(path) != w.filename:
                    raise lock.fail(f"{pin.name}: {path} is not named {w.filename}")
            _check_hashes(lock, pin, path, w.hashes, every=True)
            out.append((path, pin))
    return out


def _fetch_url(lock: Lock, w: LockedWheel, path: str) -> None:
    limit = w.size if w.size is not None else MAX_WHEEL_BYTES
    try:
        with urllib.request.urlopen(w.location, timeout=60) as resp, open(path, "wb") as out:
            copied = 0
            while chunk := resp.read(1 << 20):
                copied += len(chunk)
                if copied > limit:
                    raise lock.fail(f"{w.filename}: more than {limit} bytes at {w.location}")
                out.write(chunk)
    except OSError as exc:
        raise lock.fail(f"{w.filename}: cannot fetch {w.location} ({exc})") from None


# -- writing ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BuiltWheel:
    """A wheel of the slim environment, for the lock files written beside it."""

    pin: Pin
    path: str
    version: str
    sha256: str
    size: int


def built_wheel(pin: Pin, path: str) -> BuiltWheel:
    _dist, version, _b, _t = parse_wheel_filename(os.path.basename(path))
    sha = _digests(path, ["sha256"])["sha256"]
    return BuiltWheel(pin, path, str(version), sha, os.path.getsize(path))


def _by_package(wheels: Sequence[BuiltWheel], where: str) -> list[tuple[Pin, list[BuiltWheel]]]:
    groups: dict[str, list[BuiltWheel]] = {}
    for w in wheels:
        groups.setdefault(w.pin.name, []).append(w)
    out = []
    for name in sorted(groups):
        ws = sorted(groups[name], key=lambda w: os.path.basename(w.path))
        if len({w.version for w in ws}) != 1:
            versions = ", ".join(sorted({w.version for w in ws}))
            raise LockError(f"{name}: its wheels came out with versions {versions}", path=where)
        out.append((ws[0].pin, ws))
    return out


def requirements_text(wheels: Sequence[BuiltWheel], where: str) -> str:
    lines = ["# slim environment, written by slimwheel build: pip install --require-hashes -r"]
    for pin, ws in _by_package(wheels, where):
        spec = f"{pin.name}=={ws[0].version}"
        if pin.marker:
            spec += f" ; {pin.marker}"
        hashes = " ".join(f"--hash=sha256:{w.sha256}" for w in ws)
        lines.append(f"{spec} \\\n    {hashes}")
    return "\n".join(lines) + "\n"


def _toml(s: str) -> str:
    """A TOML basic string: backslash, quote and control characters escaped; the
    rest as it is (UTF-8)."""
    out = []
    for ch in s:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def pylock_text(
    wheels: Sequence[BuiltWheel],
    where: str,
    *,
    base_url: str | None = None,
    requires_python: str | None = None,
) -> str:
    """A PEP 751 lock naming the slim wheels: ``path`` beside the lock file, or ``url``
    under ``base_url`` (where they are served)."""
    out = ['lock-version = "1.0"', 'created-by = "slimwheel"']
    if requires_python:
        out.append(f"requires-python = {_toml(requires_python)}")
    for pin, ws in _by_package(wheels, where):
        out += [
            "",
            "[[packages]]",
            f"name = {_toml(pin.name)}",
            f"version = {_toml(ws[0].version)}",
        ]
        if pin.marker:
            out.append(f"marker = {_toml(pin.marker)}")
        for w in ws:
            fname = os.path.basename(w.path)
            out += ["", "[[packages.wheels]]", f"name = {_toml(fname)}"]
            if base_url:
                out.append(f"url = {_toml(base_url.rstrip('/') + '/' + urllib.parse.quote(fname))}")
            else:
                out.append(f"path = {_toml('./' + fname)}")
            out += [f"size = {w.size}", f"hashes = {{ sha256 = {_toml(w.sha256)} }}"]
    return "\n".join(out) + "\n"
