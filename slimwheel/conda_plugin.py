"""The conda plugin: ``conda slimwheel ...``, and slimming after install/create/update.

Registered through the ``conda`` entry-point group. Importable only where
conda is installed. Enable the post-command hook in an environment by
setting ``slimwheel_arch`` in its ``.condarc`` (for example
``conda config --env --set plugins.slimwheel_arch sm_90``); conda then runs
``slim-env --prefix`` with those targets after every install, create and
update in that environment.
"""

from __future__ import annotations

from collections.abc import Iterator

from conda import plugins
from conda.base.context import context
from conda.common.configuration import PrimitiveParameter

SETTING = "slimwheel_arch"


def _subcommand(argv: list[str]) -> int:
    from .cli import main

    return main(argv)


def _after(command: str) -> None:
    targets = getattr(context.plugins, SETTING, None)
    if not targets:
        return
    from .cli import main

    # The command line's own path: the one policy, one-line errors, never a traceback.
    main(["slim-env", "--prefix", str(context.target_prefix), "--arch", str(targets)])


@plugins.hookimpl  # type: ignore[untyped-decorator]
def conda_subcommands() -> Iterator[object]:
    yield plugins.CondaSubcommand(
        name="slimwheel",
        summary="remove CUDA device code the GPUs never load (slimwheel)",
        action=_subcommand,
    )


@plugins.hookimpl  # type: ignore[untyped-decorator]
def conda_settings() -> Iterator[object]:
    yield plugins.CondaSetting(
        name=SETTING,
        description="GPU targets to slim this environment for after install/create/update",
        parameter=PrimitiveParameter("", element_type=str),
    )


@plugins.hookimpl  # type: ignore[untyped-decorator]
def conda_post_commands() -> Iterator[object]:
    yield plugins.CondaPostCommand(
        name="slimwheel-after-install",
        action=_after,
        run_for={"install", "create", "update"},
    )
