"""The one exception root of slimwheel.

Every problem that a user can cause (a bad path, a truncated library, a corrupt
fatbin, an unknown GPU name) is raised as a :class:`SlimwheelError` subclass.
The CLI catches this root once and prints one line; anything else is a bug.
"""

from __future__ import annotations


class SlimwheelError(Exception):
    """Root of every error slimwheel raises on purpose.

    ``path`` names the file the problem is in, when there is one; ``str()``
    gives the one-line message shown to the user.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        if self.path:
            return f"{self.path}: {self.message}"
        return self.message

    def with_path(self, path: str) -> SlimwheelError:
        """Return this error naming ``path``, unless it already names a file."""
        if self.path is None:
            self.path = path
        return self


class UsageError(SlimwheelError):
    """The command line asks for something that cannot be done (exit code 2)."""


class InputError(SlimwheelError):
    """An input (file, directory, distribution) is missing or unusable."""


class ElfError(SlimwheelError):
    """A file is not a well-formed ELF object of a supported kind."""


class FatbinError(SlimwheelError):
    """A fatbin region or element is malformed."""


class CubinError(SlimwheelError):
    """A cubin (device ELF) inside a fatbin is malformed."""


class ArchError(UsageError):
    """A GPU target cannot be understood."""
