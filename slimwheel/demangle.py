"""C++ symbol names as people read them: the Itanium ABI demangler of the C++ runtime.

GCC's ``__cxa_demangle`` (libstdc++, present wherever C++ libraries run)
is called through ctypes; where no C++ runtime can be loaded, or a name does
not demangle, the name is returned as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

#: Longer names are returned as they are (demangling cost grows with length).
MAX_MANGLED = 4096


@cache
def _runtime() -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr] | None:  # type: ignore[name-defined]
    for name in ("libstdc++.so.6", ctypes.util.find_library("stdc++"), "libc++abi.so.1"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            fn = lib.__cxa_demangle
            libc = ctypes.CDLL(None)
            free = libc.free
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_void_p
        fn.argtypes = [
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_int),
        ]
        free.argtypes = [ctypes.c_void_p]
        free.restype = None
        return fn, free
    return None


def demangle(name: str) -> str:
    """``_ZN3foo3barEv`` -> ``foo::bar()``; anything else unchanged."""
    if not name.startswith("_Z") or len(name) > MAX_MANGLED:
        return name
    rt = _runtime()
    if rt is None:
        return name
    fn, free = rt
    status = ctypes.c_int(0)
    ptr = fn(name.encode("utf-8", "replace"), None, None, ctypes.byref(status))
    if status.value != 0 or not ptr:
        return name
    try:
        return ctypes.string_at(ptr).decode("utf-8", "replace")
    finally:
        free(ptr)
