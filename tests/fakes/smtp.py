"""A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps what it receives.

It can speak STARTTLS or TLS from the start with a certificate of a throw-away authority
(``Authority``), ask for a login, and refuse the first messages with a temporary error.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Authority:
    """A certificate authority and a certificate it signed for 127.0.0.1, as PEM files."""

    def __init__(self, folder: Path) -> None:
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dronesync test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert_file = folder / "server.pem"
        self.cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        self.key_file = folder / "server.key"
        self.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass
class Inbox:
    """The handler: keeps each message, refusing the first ``refuse_first`` with a 451."""

    refuse_first: int = 0
    refused: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        if self.refused < self.refuse_first:
            self.refused += 1
            return "451 4.3.0 Try again later"
        content = envelope.content
        assert isinstance(content, bytes)
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self.arrived:
            self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
            self.messages.append(message)
            self.arrived.notify_all()
        return "250 OK"

    def wait(self, count: int, timeout: float = 30.0) -> list[EmailMessage]:
        """The messages once ``count`` arrived (fails after ``timeout``)."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"{len(self.messages)} message(s) arrived, not {count}")
            return list(self.messages)


class SmtpServer:
    """aiosmtpd on 127.0.0.1: ``security`` as the client's key says it, optional login."""

    def __init__(
        self,
        *,
        security: Literal["starttls", "tls", "none"] = "none",
        authority: Authority | None = None,
        login: tuple[str, str] | None = None,
        refuse_first: int = 0,
    ) -> None:
        self.inbox = Inbox(refuse_first=refuse_first)
        self.logins: list[tuple[str, str]] = []
        self.port = free_port()
        params: dict[str, Any] = {}
        ssl_context = None
        if security == "starttls":
            assert authority is not None
            params.update(tls_context=authority.server_context(), require_starttls=True)
        elif security == "tls":
            assert authority is not None
            ssl_context = authority.server_context()
        if login is not None:
            params.update(
                authenticator=self._authenticator(login),
                # aiosmtpd only knows of TLS it negotiated itself (STARTTLS): elsewhere a
                # login is offered and checked, not required.
                auth_required=security == "starttls",
                auth_require_tls=security == "starttls",
            )
        self.controller = Controller(
            self.inbox, hostname="127.0.0.1", port=self.port, ssl_context=ssl_context, **params
        )
        self.controller.start()

    def _authenticator(self, expected: tuple[str, str]) -> Any:
        def check(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            if not isinstance(data, LoginPassword):
                return AuthResult(success=False, handled=False)
            given = (data.login.decode(), data.password.decode())
            self.logins.append(given)
            # handled=False: the server answers 535 itself on a refusal.
            return AuthResult(success=given == expected, handled=False)

        return check

    def close(self) -> None:
        self.controller.stop()
