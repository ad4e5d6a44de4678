"""Where the store lives: the database URL from an argument, the environment, a config file, or the default."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from medtwin.errors import MedtwinError

__all__ = ["DEFAULT_DATABASE_FILE", "ENV_VAR", "StoreConfigError", "config_files", "resolve_database_url"]

ENV_VAR = "MEDTWIN_DATABASE_URL"
DEFAULT_DATABASE_FILE = "medtwin.db"


class StoreConfigError(MedtwinError):
    """A configuration file that cannot be read, or a database URL that names no database medtwin can open."""


def config_files(cwd: Path | None = None, home: Path | None = None) -> list[Path]:
    """The config files consulted, in order: ``./medtwin.toml`` then ``~/.config/medtwin/medtwin.toml``."""
    cwd = Path.cwd() if cwd is None else cwd
    home = Path.home() if home is None else home
    return [cwd / "medtwin.toml", home / ".config" / "medtwin" / "medtwin.toml"]


def _url_from_file(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise StoreConfigError(f"{path}: not valid TOML ({exc})") from exc
    section = data.get("store")
    if section is None:
        return None
    url = section.get("url") if isinstance(section, dict) else None
    if not isinstance(url, str) or not url:
        raise StoreConfigError(f"{path}: [store] url must be a non-empty string, got {url!r}")
    return url


def resolve_database_url(url: str | None = None, *, cwd: Path | None = None, home: Path | None = None) -> str:
    """The database URL to use.

    Parameters
    ----------
    url
        An explicit URL wins. Otherwise ``$MEDTWIN_DATABASE_URL``, then ``[store] url`` in the first config file
        of :func:`config_files` that has one, then ``sqlite:///<cwd>/medtwin.db``.
    """
    if url:
        return url
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    for path in config_files(cwd, home):
        if path.is_file():
            found = _url_from_file(path)
            if found:
                return found
    base = Path.cwd() if cwd is None else cwd
    return f"sqlite:///{(base / DEFAULT_DATABASE_FILE).resolve()}"
