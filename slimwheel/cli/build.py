"""``slimwheel build INPUT... --arch TARGET -o DIR``: slim, installable wheels."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from ..build import BuildOptions, BuildResult, build_wheels, download
from ..conda_build import build_packages, build_suffix
from ..condapkg import package_format
from ..errors import UsageError
from ..index import build_index
from ..lock import (
    Lock,
    Pin,
    built_wheel,
    check_complete,
    check_wheel,
    download_requirements,
    fetch_pylock,
    is_pylock,
    pylock_text,
    read_lock,
    requirements_text,
)
from ..write import atomic_output, scratch_dir, staged
from .options import (
    add_jobs_option,
    add_output_options,
    add_policy_options,
    add_store_option,
    human,
    make_console,
    policy_from,
    store_from,
    warn,
)
from .progress import wheel_progress

_LABEL = re.compile(r"[A-Za-z0-9]+(\.[A-Za-z0-9]+)*")

HELP = "turn wheels (or requirements pip fetches) into slim wheels for the given GPUs"


def configure_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("build", help=HELP, description=HELP + ".")
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help=(
            "wheel files, conda packages (.conda, .tar.bz2), directories of them, "
            "or requirements (torch, torch==2.14.1)"
        ),
    )
    p.add_argument(
        "-r",
        "--requirement",
        action="append",
        default=[],
        metavar="FILE",
        help="requirements file for pip download (repeatable); a lock (every requirement "
        "==-pinned with --hash, or a pylock.toml) has every file checked against its pins, "
        "and the slim environment's requirements.txt and pylock.toml written beside the wheels",
    )
    p.add_argument(
        "--lock-base-url",
        metavar="URL",
        help="with a lock: the written pylock.toml names each wheel at URL/<file> (where -o "
        "or the --publish site's files/ is served) instead of beside the lock",
    )
    add_policy_options(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="where the wheels go")
    p.add_argument(
        "--publish",
        metavar="SITE",
        help="then add the built wheels to this static index (see slimwheel index)",
    )
    p.add_argument(
        "--deps",
        action="store_true",
        help="also fetch and slim the requirements' dependencies (pip download)",
    )
    label = p.add_mutually_exclusive_group()
    label.add_argument(
        "--local-label",
        metavar="NAME",
        help="local version label (default: the targets, e.g. sm90)",
    )
    label.add_argument("--no-local-label", action="store_true", help="keep the version as is")
    p.add_argument(
        "--build-suffix",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="conda packages: append the targets to the build string (cuda130_0 -> cuda130_0_sm90)",
    )
    pip = p.add_argument_group("passed to pip download")
    pip.add_argument("--index-url", metavar="URL")
    pip.add_argument("--extra-index-url", action="append", default=[], metavar="URL")
    pip.add_argument("--find-links", action="append", default=[], metavar="URL")
    pip.add_argument("--platform", action="append", default=[], metavar="PLATFORM")
    pip.add_argument("--python-version", metavar="VERSION")
    add_jobs_option(p)
    add_store_option(p)
    add_output_options(p)
    return p


def _pip_args(args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    if args.index_url:
        out += ["--index-url", args.index_url]
    for u in args.extra_index_url:
        out += ["--extra-index-url", u]
    for u in args.find_links:
        out += ["--find-links", u]
    for plat in args.platform:
        out += ["--platform", plat]
    if args.python_version:
        out += ["--python-version", args.python_version]
    return out


def execute(args: argparse.Namespace) -> int:
    if not args.inputs and not args.requirement:
        raise UsageError("nothing to build: give wheels, directories or requirements")
    if args.local_label is not None and not _LABEL.fullmatch(args.local_label):
        raise UsageError(
            f"--local-label {args.local_label!r}: letters, digits and dots only (PEP 440)"
        )
    policy = policy_from(args)
    label = None if args.no_local_label else (args.local_label or policy.label)
    opts = BuildOptions(policy=policy, label=label, jobs=args.jobs)
    store = store_from(args)
    wheels: list[str] = []
    packages: list[str] = []
    requirements: list[str] = []
    for item in args.inputs:
        if os.path.isdir(item):
            for f in sorted(os.listdir(item)):
                if f.endswith(".whl"):
                    wheels.append(os.path.join(item, f))
                elif package_format(f):
                    packages.append(os.path.join(item, f))
        elif item.endswith(".whl") or package_format(item) or os.path.exists(item):
            if not os.path.isfile(item):
                raise UsageError(f"{item}: no such file")
            (packages if package_format(item) else wheels).append(item)
        else:
            requirements.append(item)
    locks = {r: read_lock(r) for r in args.requirement}
    plain_files = [r for r, lock in locks.items() if lock is None]
    pinned: dict[str, Pin] = {}  # wheel file name -> the pin it satisfies
    results: list[BuildResult] = []
    with scratch_dir("download-") as tmpdir:
        tmp = str(tmpdir)
        if requirements or plain_files:
            pip_args = _pip_args(args) + [a for r in plain_files for a in ("-r", r)]
            wheels += download(requirements, tmp, deps=args.deps, pip_args=pip_args)
        for n, (source, lock) in enumerate(locks.items()):
            if lock is None:
                continue
            where = os.path.join(tmp, f"lock-{n}")
            os.mkdir(where)
            if is_pylock(source):
                got = fetch_pylock(lock, where)
            else:
                fetched = download(
                    download_requirements(lock),
                    where,
                    deps=False,
                    pip_args=_pip_args(args) + lock.pip_options,
                )
                got = [(w, check_wheel(lock, w)) for w in fetched]
            check_complete(lock, (pin for _w, pin in got))
            pinned.update((os.path.basename(w), pin) for w, pin in got)
            wheels += [w for w, _pin in got]
        if not wheels and not packages:
            raise UsageError("no wheels or conda packages found in the inputs")
        # Every output appears in -o together, or none does.
        with staged(args.output) as staging:
            if packages:
                suffix = ""
                if args.build_suffix:
                    suffix = build_suffix(args.local_label or policy.label)
                results += build_packages(packages, str(staging), opts, store, suffix=suffix)
            if wheels:
                with wheel_progress(enabled=not args.quiet) as progress:
                    results += build_wheels(wheels, str(staging), opts, store, progress=progress)
            if pinned:
                _write_locks(args, results, pinned, locks, staging)
        for r in results:
            r.output = os.path.join(args.output, os.path.basename(r.output))
    for note in sorted({lib.note for r in results for lib in r.libraries if lib.note}):
        warn(note)
    if args.publish:
        site = Path(args.publish)
        sources = [site / "files"] if (site / "files").is_dir() else []
        build_index([*sources, Path(args.output)], site)
    if args.json:
        json.dump(results_document(results, opts), sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif not args.quiet:
        print_table(results)
    return 0


def _write_locks(
    args: argparse.Namespace,
    results: list[BuildResult],
    pinned: dict[str, Pin],
    locks: dict[str, Lock | None],
    staging: Path,
) -> None:
    """requirements.txt and pylock.toml of the slim environment, beside its wheels."""
    built = [
        built_wheel(pinned[os.path.basename(r.source)], r.output)
        for r in results
        if os.path.basename(r.source) in pinned
    ]
    where = str(Path(args.output) / "pylock.toml")
    requires = {lock.requires_python for lock in locks.values() if lock and lock.requires_python}
    texts = {
        "requirements.txt": requirements_text(built, where),
        "pylock.toml": pylock_text(
            built,
            where,
            base_url=args.lock_base_url,
            requires_python=requires.pop() if len(requires) == 1 else None,
        ),
    }
    for name, text in texts.items():
        with atomic_output(staging / name, mode=0o644) as out:
            out.write(text.encode())


def results_document(results: list[BuildResult], opts: BuildOptions) -> dict[str, Any]:
    """The ``--json`` document (schema: ``schemas/build.schema.json``)."""
    from .. import __version__

    return {
        "schema": "slimwheel.build",
        "schema_version": 1,
        "tool": {"name": "slimwheel", "version": __version__},
        "targets": [t.name for t in opts.policy.targets],
        "label": opts.label,
        "wheels": [
            {
                "source": os.path.basename(r.source),
                "output": os.path.basename(r.output),
                "passthrough": r.passthrough,
                "wheel_bytes": {"before": r.wheel_bytes_before, "after": r.wheel_bytes_after},
                "installed_bytes": {
                    "before": r.installed_bytes_before,
                    "after": r.installed_bytes_after,
                },
                "libraries_slimmed": sum(1 for lib in r.libraries if lib.rewritten),
                "libraries_built": sum(1 for lib in r.libraries if lib.built),
            }
            for r in results
        ],
    }


def print_table(results: list[BuildResult]) -> None:
    from rich.table import Table

    console = make_console()
    t = Table(title="slim packages", title_justify="left", show_footer=True)
    wb = sum(r.wheel_bytes_before for r in results)
    wa = sum(r.wheel_bytes_after for r in results)
    ib = sum(r.installed_bytes_before for r in results)
    ia = sum(r.installed_bytes_after for r in results)
    t.add_column("package", footer=f"total ({len(results)} packages)")
    t.add_column("file before", justify="right", footer=human(wb))
    t.add_column("file after", justify="right", footer=human(wa))
    t.add_column("installed before", justify="right", footer=human(ib))
    t.add_column("installed after", justify="right", footer=human(ia))
    t.add_column("saved", justify="right", footer=f"{100 * (ia and (ib - ia) / ib):.1f}%")
    for r in sorted(results, key=lambda r: -r.installed_bytes_before):
        name = os.path.basename(r.output) + (
            " (no device code, unchanged)" if r.passthrough else ""
        )
        saved = (
            100
            * (r.installed_bytes_before - r.installed_bytes_after)
            / max(r.installed_bytes_before, 1)
        )
        t.add_row(
            name,
            human(r.wheel_bytes_before),
            human(r.wheel_bytes_after),
            human(r.installed_bytes_before),
            human(r.installed_bytes_after),
            f"{saved:.1f}%",
        )
    console.print(t)
