"""The MQTT broker's URL, TLS options and credentials (medtwin.interop.mqtt_broker): defaults, what is refused and
why, and that no password is ever shown."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.errors import ValidationError
from medtwin.interop.mqtt_broker import PASSWORD_ENV, broker_from_url, parse_mqtt_url


def test_schemes_ports_and_the_shown_url() -> None:
    assert parse_mqtt_url("mqtt://127.0.0.1") == ("127.0.0.1", 1883)
    assert parse_mqtt_url("tcp://broker:1999") == ("broker", 1999)
    assert parse_mqtt_url("mqtts://broker.example.org") == ("broker.example.org", 8883)
    plain = broker_from_url("mqtt://127.0.0.1:1884", environ={})
    assert (plain.tls, plain.username, plain.password, plain.url) == (None, None, None, "mqtt://127.0.0.1:1884")
    tls = broker_from_url("mqtts://ward%40a@broker.example.org", environ={PASSWORD_ENV: "pw"})
    assert (tls.username, tls.password, tls.password_source) == ("ward@a", b"pw", f"${PASSWORD_ENV}")
    assert tls.url == "mqtts://ward@a@broker.example.org:8883"
    assert "pw" not in repr(tls)


def test_the_tls_context_verifies_the_broker_by_name_with_tls_1_2_at_least() -> None:
    context = broker_from_url("mqtts://broker.example.org", environ={}).tls
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("url", "kwargs", "said"),
    [
        ("http://broker", {}, "expected mqtt://HOST[:PORT] or mqtts://"),
        ("mqtt://broker:99999", {}, "expected mqtt://"),
        ("mqtt://", {}, "expected mqtt://"),
        ("mqtt://broker", {"ca_file": "ca.pem"}, "need TLS: use mqtts://broker"),
        ("mqtts://broker", {"key_file": "k.pem"}, "--mqtt-key without --mqtt-cert"),
        ("mqtts://broker", {"ca_file": "/nonexistent/ca.pem"}, "--mqtt-ca /nonexistent/ca.pem: not a readable PEM"),
        ("mqtts://broker", {"cert_file": "/nonexistent/c.pem"}, "cannot load the client certificate"),
        ("mqtts://broker", {"password_file": "pw.txt"}, "--mqtt-password-file without a user"),
        ("mqtts://u@broker", {"password_file": "/nonexistent/pw"}, "--mqtt-password-file /nonexistent/pw: cannot"),
    ],
)
def test_refused_options_say_what_is_wrong(url: str, kwargs: dict[str, str], said: str) -> None:
    with pytest.raises(ValidationError, match=None) as err:
        broker_from_url(url, environ={}, **kwargs)
    assert said in str(err.value)


def test_a_password_in_the_url_is_refused_and_not_repeated() -> None:
    for url in ("mqtts://ward:hunter2@broker", "mqtts://ward:hunter2@broker:notaport", "ftp://ward:hunter2@broker"):
        with pytest.raises(ValidationError) as err:
            broker_from_url(url, environ={})
        assert "hunter2" not in str(err.value)
        assert "ward" not in str(err.value)


def test_the_password_comes_from_the_file_else_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_bytes(b"from-file\nignored second line\n")
    env = {PASSWORD_ENV: "from-env"}
    from_file = broker_from_url("mqtts://u@broker", password_file=str(secret), environ=env)
    assert (from_file.password, from_file.password_source) == (b"from-file", f"--mqtt-password-file {secret}")
    assert broker_from_url("mqtts://u@broker", environ=env).password == b"from-env"
    assert broker_from_url("mqtts://u@broker", environ={}).password is None  # user name only
    assert broker_from_url("mqtts://broker", environ=env).password is None  # no user: the variable is not read
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValidationError, match="the file is empty"):
        broker_from_url("mqtts://u@broker", password_file=str(tmp_path / "empty"), environ={})


def test_a_password_never_crosses_the_network_in_the_clear() -> None:
    env = {PASSWORD_ENV: "pw"}
    with pytest.raises(ValidationError, match="in the clear over mqtt://; use mqtts://"):
        broker_from_url("mqtt://u@broker.example.org", environ=env)
    for host in ("127.0.0.1", "localhost", "[::1]"):  # this machine's loopback
        assert broker_from_url(f"mqtt://u@{host}", environ=env).password == b"pw"


def test_the_cli_options_and_their_help() -> None:
    runner = CliRunner()
    helped = runner.invoke(app, ["listen", "--help"], env={"COLUMNS": "200"})
    assert helped.exit_code == 0
    for option in ("--mqtt-ca", "--mqtt-cert", "--mqtt-key", "--mqtt-password-file", PASSWORD_ENV):
        assert option in helped.output
    assert "Never give it on the command line" in helped.output
    sim_help = runner.invoke(app, ["devices", "simulate", "--help"], env={"COLUMNS": "200"})
    assert "--mqtt-password-file" in sim_help.output
    leaked = runner.invoke(app, ["devices", "simulate", "--mqtt", "mqtts://u:hunter2@broker"])
    assert leaked.exit_code == 2
    assert "a password does not belong in the URL" in leaked.output
    assert "hunter2" not in leaked.output
    stray = runner.invoke(app, ["listen", "--mqtt-ca", "ca.pem", "--minutes", "0"])
    assert stray.exit_code == 2
    assert "go with --mqtt" in stray.output
