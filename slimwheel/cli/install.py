"""``slimwheel install --arch TARGET -- PIP_ARGS...``: pip install, then slim what it installed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from ..env import site_dirs, slim_env
from ..errors import InputError, UsageError
from ..write import scratch_dir
from .options import (
    add_jobs_option,
    add_policy_options,
    add_store_option,
    human,
    policy_from,
    store_from,
    warn,
)

HELP = "run pip install, then slim exactly the distributions pip installed or upgraded"


def configure_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "install", help=HELP, description=HELP + ". Usage: slimwheel install --arch GPU -- PIP_ARGS"
    )
    add_policy_options(p)
    p.add_argument(
        "--python",
        default=sys.executable,
        metavar="PATH",
        help="the environment's interpreter (default: the one running slimwheel)",
    )
    add_store_option(p)
    add_jobs_option(p)
    p.add_argument("pip_args", nargs=argparse.REMAINDER, metavar="-- PIP_ARGS")
    return p


def _pip(python: str) -> list[str]:
    """The environment's own pip, or this one's pointed at it (pip >= 22.3)."""
    own = subprocess.run([python, "-m", "pip", "--version"], capture_output=True)
    return (
        [python, "-m", "pip"]
        if own.returncode == 0
        else [sys.executable, "-m", "pip", "--python", python]
    )


def execute(args: argparse.Namespace) -> int:
    policy = policy_from(args)  # before pip runs: a bad flag or profile changes nothing
    pip_args = list(args.pip_args)
    if pip_args and pip_args[0] == "--":
        pip_args = pip_args[1:]
    if not pip_args:
        raise UsageError("usage: slimwheel install --arch GPU -- PIP_ARGS...")
    with scratch_dir("install-") as tmp:
        report = os.path.join(tmp, "report.json")
        proc = subprocess.run([*_pip(args.python), "install", "--report", report, *pip_args])
        if proc.returncode != 0:
            return proc.returncode
        try:
            with open(report) as f:
                installed = [i["metadata"]["name"] for i in json.load(f).get("install", [])]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"cannot read pip's installation report ({exc})") from None
    if not installed:
        print("pip installed nothing; nothing to slim")
        return 0
    store = store_from(args)
    saved = 0
    for site in site_dirs(args.python):
        for c in slim_env(site, store, policy, only=installed, jobs=args.jobs):
            if c.note:
                warn(c.note)
            print(f"{c.path}: {human(c.before)} -> {human(c.after)}")
            saved += c.before - c.after
    print(f"slimmed {', '.join(installed)}: saved {human(saved)}")
    return 0
