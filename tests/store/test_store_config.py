"""Where the store lives: explicit URL, environment, config file, default."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtwin.store import Store, StoreConfigError, resolve_database_url
from medtwin.store.config import ENV_VAR


def test_explicit_url_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_VAR, "sqlite:///env.db")
    assert resolve_database_url("sqlite:///explicit.db", cwd=tmp_path, home=tmp_path) == "sqlite:///explicit.db"


def test_environment_then_config_files_then_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cwd, home = tmp_path / "work", tmp_path / "home"
    (home / ".config" / "medtwin").mkdir(parents=True)
    cwd.mkdir()
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_database_url(cwd=cwd, home=home) == f"sqlite:///{cwd.resolve() / 'medtwin.db'}"
    (home / ".config" / "medtwin" / "medtwin.toml").write_text('[store]\nurl = "sqlite:///home.db"\n')
    assert resolve_database_url(cwd=cwd, home=home) == "sqlite:///home.db"
    (cwd / "medtwin.toml").write_text('[store]\nurl = "postgresql+psycopg://db/medtwin"\n')
    assert resolve_database_url(cwd=cwd, home=home) == "postgresql+psycopg://db/medtwin"
    monkeypatch.setenv(ENV_VAR, "sqlite:///env.db")
    assert resolve_database_url(cwd=cwd, home=home) == "sqlite:///env.db"


def test_bad_config_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    (tmp_path / "medtwin.toml").write_text("[store]\nurl = 5\n")
    with pytest.raises(StoreConfigError, match=r"medtwin.toml: \[store\] url must be a non-empty string"):
        resolve_database_url(cwd=tmp_path, home=tmp_path)
    (tmp_path / "medtwin.toml").write_text("[store\n")
    with pytest.raises(StoreConfigError, match="not valid TOML"):
        resolve_database_url(cwd=tmp_path, home=tmp_path)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "sqlite:////nonexistent-dir/sub/x.db",
            r"cannot create database sqlite:////nonexistent-dir/sub/x.db: its folder",
        ),
        ("not a url", r"cannot open database 'not a url': not a database URL"),
        ("postgres://u:secret@127.0.0.1:1/x", r"cannot open database postgres://u:\*\*\*@127.0.0.1:1/x: "),
        ("postgresql+psycopg://u:secret@127.0.0.1:1/x", r"cannot open database postgresql\+psycopg://u:\*\*\*@"),
    ],
)
def test_unopenable_database_is_a_clear_error_without_the_password(url: str, expected: str) -> None:
    with pytest.raises(StoreConfigError, match=expected) as info:
        Store(url)
    assert "secret" not in str(info.value)
