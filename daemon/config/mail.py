"""The ``[notifications.email]`` table: the SMTP relay, who gets the mail, and how often."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from daemon.configmodel import Model, credential_ok, not_blank

Security = Literal["starttls", "tls", "none"]
DEFAULT_PORTS: dict[Security, int] = {"starttls": 587, "tls": 465, "none": 25}

# A bare address: no display name, no spaces, no line breaks, one @ with text on each side.
_ADDRESS = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+\.?[^@\s<>,;\"]*")


def _address_ok(value: str) -> str:
    if not _ADDRESS.fullmatch(value):
        raise ValueError(f"{value!r} is not an e-mail address such as pilot@example.org")
    return value


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (a relay nothing on the network can listen to)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class EmailConfig(Model):
    """E-mail to the operator: a short message per event, or one digest a day."""

    # `from` is the key in the file; Python code says `sender`.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    host: str = Field(
        min_length=1,
        description="The SMTP server (mail relay) that sends the messages.",
        json_schema_extra={"example": "smtp.example.org"},
    )
    port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Its port; unset: 587 for starttls, 465 for tls, 25 for none.",
        json_schema_extra={"example": 587},
    )
    security: Security = Field(
        "starttls",
        description='"starttls": plain connection upgraded to TLS (port 587); "tls": TLS from'
        ' the start (port 465); "none": no encryption (with a login, only to this machine).',
    )
    ca_file: Path | None = Field(
        None,
        description="PEM file of the certificate authorities to trust instead of the system's"
        " (a relay with a certificate of its own).",
        json_schema_extra={"example": "/etc/dronesync/relay-ca.pem"},
    )
    user: str | None = Field(
        None,
        description="Log in with this user name; unset: send without logging in.",
        json_schema_extra={"example": "dronesync@example.org"},
    )
    password_file: Path | None = Field(
        None,
        description="File holding the password (mode 0600).",
        json_schema_extra={"example": "/etc/dronesync/smtp.password"},
    )
    password_credential: str | None = Field(
        None,
        description="Or a systemd credential holding it (LoadCredential=); wins over the file.",
        json_schema_extra={"example": "smtp-password"},
    )
    sender: str = Field(
        alias="from",
        description="The sender's address.",
        json_schema_extra={"example": "dronesync@example.org"},
    )
    to: list[str] = Field(
        min_length=1,
        description="Who gets the messages.",
        json_schema_extra={"example": ["pilot@example.org"]},
    )
    digest: bool = Field(
        False,
        description="true: one message a day listing every event (a busy box), sent at"
        " digest_hour; false: one message per event.",
    )
    digest_hour: int = Field(
        18, ge=0, le=23, description="Hour of the day (local time) the digest is sent."
    )

    _paths_ok = field_validator("ca_file", "password_file", mode="before")(not_blank)
    _credential_ok = field_validator("password_credential")(credential_ok)

    @field_validator("host")
    @classmethod
    def _host_ok(cls, value: str) -> str:
        if any(ch.isspace() or ch in "/@" for ch in value):
            raise ValueError(f"{value!r} is not a host name or address")
        if value.count(":") == 1:  # more than one: an IPv6 address
            raise ValueError(f"{value!r}: give the port in `port`, the host alone here")
        return value

    @field_validator("sender")
    @classmethod
    def _sender_ok(cls, value: str) -> str:
        return _address_ok(value)

    @field_validator("to")
    @classmethod
    def _to_ok(cls, value: list[str]) -> list[str]:
        return [_address_ok(address) for address in value]

    @model_validator(mode="after")
    def _login_ok(self) -> EmailConfig:
        has_password = self.password_file is not None or self.password_credential is not None
        if self.user is not None and not has_password:
            raise ValueError("user is set: name password_file (or password_credential)")
        if self.user is None and has_password:
            raise ValueError("a password is named: set user too")
        if self.user is not None and self.security == "none" and not is_loopback(self.host):
            raise ValueError(
                f'security = "none" would send the password to {self.host} in clear;'
                ' use "starttls" or "tls"'
            )
        return self

    @property
    def port_or_default(self) -> int:
        """The port to connect to."""
        return self.port if self.port is not None else DEFAULT_PORTS[self.security]
