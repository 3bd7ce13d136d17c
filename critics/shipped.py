"""Weights shipped inside the package (``milr/critics/weights/<name>/``), found by name.

The trained critics (``world_pref``, ``world_clip``) and the world detector live there, each in a
folder named for it; a critic whose weights argument is such a name loads them from the installed
package, so a recipe works the same from a source checkout and from a wheel.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Optional


def weights_root() -> Path:
    """Folder of the critics' shipped weights (``milr/critics/weights``)."""
    return Path(__file__).resolve().parent / "weights"


def shipped(found: Callable[[Path], Optional[Path]]) -> dict[str, Path]:
    """``{name: found(folder)}`` over the shipped folders for which ``found`` returns a path."""
    root = weights_root()
    if not root.is_dir():
        return {}
    hits = ((p.name, found(p)) for p in sorted(root.iterdir()) if p.is_dir())
    return {name: path for name, path in hits if path is not None}


def resolve_shipped(name: str, available: Mapping[str, Path], problem: str) -> Path:
    """The shipped path called ``name``; else FileNotFoundError with ``problem`` and the names there are."""
    if name in available:
        return available[name]
    raise FileNotFoundError(problem.format(name=repr(name), shipped=", ".join(available) or "none installed"))


def user_config_path() -> Path:
    """The user's critics file (``$MILR_CRITICS_FILE``, else ``$XDG_CONFIG_HOME/milr/critics.yaml``).

    Here, not in :mod:`milr.critics.trained`, so the critic index can look for the file without
    importing a critic module (start-up imports only what a recipe uses)."""
    env = os.environ.get("MILR_CRITICS_FILE")
    if env:
        return Path(os.path.expanduser(env))
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "milr" / "critics.yaml"
