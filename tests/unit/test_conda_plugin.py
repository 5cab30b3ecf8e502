"""The conda plugin's hooks, where conda is installed."""

from __future__ import annotations

import pytest

conda = pytest.importorskip("conda", reason="conda is not installed here")


def test_hooks_register() -> None:
    from slimwheel import conda_plugin

    (sub,) = list(conda_plugin.conda_subcommands())
    assert sub.name == "slimwheel"
    (post,) = list(conda_plugin.conda_post_commands())
    assert {"install", "create", "update"} <= set(post.run_for)
    (setting,) = list(conda_plugin.conda_settings())
    assert setting.name == "slimwheel_arch"
