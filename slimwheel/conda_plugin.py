"""The conda plugin: ``conda slimwheel ...``, and slimming after install/create/update.

Registered through the ``conda`` entry-point group. Enable the post-command
hook in an environment by setting ``slimwheel_arch`` in its ``.condarc``
(for example ``conda config --env --set plugins.slimwheel_arch sm_90``);
conda then runs ``slim-env --prefix`` with those targets after every
install, create and update in that environment.

The plugin types live in ``conda.plugins.types`` (since conda 23.1; conda
26.9 dropped the re-exports from ``conda.plugins`` that older versions of
this module used, which made every conda command fail). A plugin must never
take conda down: a type this conda lacks, or any error in a hook, disables
that hook with one line on stderr, and conda goes on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

SETTING = "slimwheel_arch"

_warned: set[str] = set()


def _disabled(what: str, why: object) -> None:
    if what not in _warned:
        _warned.add(what)
        print(f"slimwheel: conda plugin: {what} disabled ({why})", file=sys.stderr)


def _plugin_type(name: str) -> Any:
    """A conda plugin type: ``conda.plugins.types`` first, the old re-exports second."""
    try:
        from conda.plugins import types

        found = getattr(types, name, None)
    except ImportError:
        found = None
    if found is None:
        from conda import plugins

        found = getattr(plugins, name, None)
    if found is None:
        raise LookupError(f"this conda has no {name}")
    return found


def _subcommand(argv: Any) -> int:
    from .cli import main

    return main(list(argv))


def _after(command: str) -> None:
    try:
        from conda.base.context import context

        targets = getattr(context.plugins, SETTING, None)
        if not targets:
            return
        from .cli import main

        # The command line's own path: the one policy, one-line errors, never a traceback.
        main(["slim-env", "--prefix", str(context.target_prefix), "--arch", str(targets)])
    except Exception as exc:  # after conda's own work: report, never fail conda
        _disabled("slimming after " + command, exc)


def _hooks(make: Callable[[], Iterator[object]], what: str) -> Iterator[object]:
    try:
        yield from list(make())
    except Exception as exc:
        _disabled(what, exc)


try:
    from conda.plugins import hookimpl
except Exception as exc:  # a conda without the plugin system: nothing to register
    _disabled("the plugin", exc)
else:

    @hookimpl  # type: ignore[untyped-decorator]
    def conda_subcommands() -> Iterator[object]:
        def make() -> Iterator[object]:
            yield _plugin_type("CondaSubcommand")(
                name="slimwheel",
                summary="remove CUDA device code the GPUs never load (slimwheel)",
                action=_subcommand,
            )

        return _hooks(make, "conda slimwheel")

    @hookimpl  # type: ignore[untyped-decorator]
    def conda_settings() -> Iterator[object]:
        def make() -> Iterator[object]:
            from conda.common.configuration import PrimitiveParameter

            yield _plugin_type("CondaSetting")(
                name=SETTING,
                description="GPU targets to slim this environment for after install/create/update",
                parameter=PrimitiveParameter("", element_type=str),
            )

        return _hooks(make, f"the {SETTING} setting")

    @hookimpl  # type: ignore[untyped-decorator]
    def conda_post_commands() -> Iterator[object]:
        def make() -> Iterator[object]:
            yield _plugin_type("CondaPostCommand")(
                name="slimwheel-after-install",
                action=_after,
                run_for={"install", "create", "update"},
            )

        return _hooks(make, "slimming after install")
