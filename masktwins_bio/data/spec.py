"""Parse a volume spec: ``PATH[:KEY][#OPTION=VALUE...]``.

``PATH`` is a file or folder; ``KEY`` names an array inside a container (a zarr or HDF5 group
member, an OME-Zarr level); options after ``#`` select a channel (``#channel=1``, or ``#c=1``) or an
OME-Zarr level (``#level=2``). A path that exists as written is always taken whole, so file names
containing ``:`` or ``#`` still open.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

_OPTION_ALIASES = {"c": "channel", "channel": "channel", "level": "level"}


@dataclass(frozen=True)
class VolumeSpec:
    """A parsed spec: the path on disk, the key inside it ('' when none) and integer options."""

    path: Path
    key: str = ""
    options: dict = field(default_factory=dict)

    @property
    def channel(self) -> int | None:
        return self.options.get("channel")

    @property
    def level(self) -> int | None:
        return self.options.get("level")


def _parse_options(text: str, spec: str) -> dict:
    options = {}
    for part in text.split("#"):
        name, sep, value = part.partition("=")
        name = _OPTION_ALIASES.get(name.strip().lower())
        if not sep or name is None:
            raise InputError(f"Unknown option '#{part}' in '{spec}'; use '#channel=N' or "
                             "'#level=N'.")
        try:
            options[name] = int(value)
        except ValueError:
            raise InputError(f"Option '#{part}' in '{spec}' needs a whole number, "
                             f"e.g. '#{name}=0'.") from None
        if options[name] < 0:
            raise InputError(f"Option '#{part}' in '{spec}' must not be negative.")
    return options


def _split_key(text: str) -> tuple[str, str]:
    """Split ``path:key`` at the first ':' whose left part exists on disk."""
    if os.path.exists(text):
        return text, ""
    for i, ch in enumerate(text):
        if ch == ":" and i > 0 and os.path.exists(text[:i]):
            return text[:i], text[i + 1:].strip("/")
    return text, ""


def parse_spec(spec: str | os.PathLike) -> VolumeSpec:
    """Split a spec into path, key and options; InputError when the path does not exist."""
    text = os.fspath(spec)
    if not isinstance(text, str) or not text.strip():
        raise InputError("An empty path was given as a volume; give a file or folder.")
    text = os.path.expanduser(text)
    options: dict = {}
    if not os.path.exists(text) and "#" in text:
        # options start at the first '#' whose left part (less any ':key') exists, so a name
        # holding '#' (scan#2.tif) still takes them: 'scan#2.tif#channel=0'
        cuts = [i for i, ch in enumerate(text) if ch == "#"]
        cut = next((i for i in cuts if os.path.exists(_split_key(text[:i])[0])), cuts[0])
        options = _parse_options(text[cut + 1:], text)
        text = text[:cut]
    path, key = _split_key(text)
    if not os.path.exists(path):
        raise InputError(f"No such file or folder: '{path}'; check the path.")
    return VolumeSpec(Path(path), key, options)
