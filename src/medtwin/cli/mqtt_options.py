"""The MQTT connection options that `medtwin listen --mqtt` and `medtwin devices simulate` share: TLS files and
where the password comes from (medtwin.interop.mqtt_broker)."""

from __future__ import annotations

import typer

from medtwin.errors import MedtwinError
from medtwin.interop.mqtt_broker import PASSWORD_ENV, MqttBroker, broker_from_url

__all__ = [
    "MQTT_URL_HELP",
    "MqttCaOption",
    "MqttCertOption",
    "MqttKeyOption",
    "MqttPasswordFileOption",
    "broker_or_exit",
]

MQTT_URL_HELP = (
    "mqtt://HOST[:PORT] (TCP, 1883) or mqtts://[USER@]HOST[:PORT] (TLS, 8883; the broker's certificate is verified). "
    f"Never put the password in the URL: it comes from --mqtt-password-file or ${PASSWORD_ENV}."
)
MqttCaOption = typer.Option(
    None, "--mqtt-ca", metavar="FILE", help="With mqtts://: PEM CA certificate(s) to verify the broker by, instead of "
    "the system's CAs."
)  # fmt: skip
MqttCertOption = typer.Option(
    None, "--mqtt-cert", metavar="FILE", help="With mqtts://: PEM client certificate (mutual TLS)."
)
MqttKeyOption = typer.Option(
    None, "--mqtt-key", metavar="FILE", help="With --mqtt-cert: its PEM private key (unencrypted; default: in the "
    "--mqtt-cert file)."
)  # fmt: skip
MqttPasswordFileOption = typer.Option(
    None, "--mqtt-password-file", metavar="FILE", help="The password of the URL's user: the first line of FILE (else "
    f"${PASSWORD_ENV}). Never give it on the command line or in the URL: other users of the machine can read "
    "command lines."
)  # fmt: skip


def broker_or_exit(
    url: str, ca_file: str | None, cert_file: str | None, key_file: str | None, password_file: str | None
) -> MqttBroker:
    """The broker of *url* with these options; a refused URL or file is printed (without any password) and exits
    with status 2."""
    try:
        return broker_from_url(url, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                               password_file=password_file)  # fmt: skip
    except MedtwinError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
