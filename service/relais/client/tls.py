"""Client-side TLS: which CA to trust and, for mutual TLS, which certificate to present.

    TranslateClient("relais.example.com:443", tls=ClientTls())                    # system CAs
    TranslateClient("10.0.0.5:50051", tls=ClientTls(ca_file="ca.crt", cert_file="client.crt",
                                                    key_file="client.key", server_name="relais.example.com"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class ClientTls:
    ca_file: str = ""  # PEM CA(s) that sign the server's certificate; "": the system's trusted CAs
    cert_file: str = ""  # mutual TLS: this client's PEM certificate chain
    key_file: str = ""  # mutual TLS: its PEM private key
    server_name: str = ""  # the name to check the server's certificate against ("": the address's host)

    def validate(self) -> ClientTls:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("a client certificate needs both --cert and --key (cert_file and key_file), "
                             f"got cert={self.cert_file!r} key={self.key_file!r}")
        return self

    def credentials(self) -> grpc.ChannelCredentials:
        self.validate()
        return grpc.ssl_channel_credentials(root_certificates=_read(self.ca_file, "CA"),
                                            private_key=_read(self.key_file, "key"),
                                            certificate_chain=_read(self.cert_file, "certificate"))

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def open_channel(address: str, tls: ClientTls | None = None) -> grpc.Channel:
    """A plaintext channel, or a TLS one when ``tls`` is given."""
    if tls is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, tls.credentials(), options=tls.channel_options())


def _read(path: str, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS {what} file {path}: {exc.strerror or exc}") from None
