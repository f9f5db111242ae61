"""TLS and mutual TLS for the gRPC port and the web port, with certificates re-read on rotation.

    tls:
      cert_file: /etc/relais/tls/tls.crt       # PEM chain (leaf first); setting it turns TLS on
      key_file: /etc/relais/tls/tls.key        # its PEM private key
      client_ca_file: /etc/relais/tls/ca.crt   # optional: CA(s) that sign client certificates
      require_client_cert: false               # true: mutual TLS, a client without a valid cert is refused

``CertificateFiles`` reads the files once at start (a missing, unreadable or mismatched
file is a ``ValueError`` naming the key) and re-reads them when their stat changes. The
check runs on each new TLS handshake (a ``stat`` of three files), so a rotated
certificate (cert-manager renewing a mounted Secret: the kubelet swaps the files
atomically) is served to the next connection while live streams keep the session they
negotiated. A half-written pair (the key does not match the cert yet) is logged and the
previous pair kept until the files agree.

- gRPC: ``grpc_credentials()``, ``grpc.dynamic_ssl_server_credentials`` whose fetcher
  gRPC calls before each handshake.
- web port: ``ssl_context()``, an ``ssl.SSLContext`` whose SNI callback (called on every
  ClientHello, with or without SNI) switches the connection to a context built from the
  current files.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_KEYS = ("cert_file", "key_file", "client_ca_file")


@dataclass(frozen=True)
class TlsSection:
    cert_file: str = ""  # "": TLS off (plaintext); PEM certificate chain, leaf first
    key_file: str = ""  # PEM private key of cert_file (unencrypted)
    client_ca_file: str = ""  # PEM CA bundle that client certificates must chain to
    require_client_cert: bool = False  # mutual TLS: refuse a client without a certificate from client_ca_file

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    def validate(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            missing = "tls.key_file" if self.cert_file else "tls.cert_file"
            raise ValueError(f"{missing}: set both tls.cert_file and tls.key_file to turn TLS on "
                             f"(or neither for plaintext), got cert_file={self.cert_file!r} key_file={self.key_file!r}")
        if self.client_ca_file and not self.enabled:
            raise ValueError(f"tls.client_ca_file: client certificates need TLS; set tls.cert_file and tls.key_file "
                             f"too, got client_ca_file={self.client_ca_file!r}")
        if self.require_client_cert and not self.client_ca_file:
            raise ValueError("tls.require_client_cert: mutual TLS needs tls.client_ca_file (the CA that signs "
                             "client certificates), got require_client_cert=True without it")
        if self.client_ca_file and not self.require_client_cert:
            raise ValueError("tls.client_ca_file: set tls.require_client_cert: true to verify client certificates "
                             "(an optional client certificate is not supported: gRPC does not ask for one then)")


@dataclass(frozen=True)
class CertificateMaterial:
    """One consistent read of the files: what a handshake serves."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    stamp: tuple  # the files' (path, inode, size, mtime) when read
    context: ssl.SSLContext  # a server context built from them (the web port; also the consistency check)


class CertificateFiles:
    """The tls section's files: read and checked at start, re-read when they change."""

    def __init__(self, section: TlsSection):
        if not section.enabled:
            raise ValueError("tls.cert_file: TLS is off; set tls.cert_file and tls.key_file")
        self.section = section
        self._lock = threading.Lock()
        self._failed_stamp: tuple | None = None
        self.reloads = 0  # how many times rotated files were taken up
        self.material = _read(section, _stamp(section))  # ValueError names the key

    # --- rotation --------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Re-read the files if they changed since the last good read; True if new material was taken up."""
        with self._lock:
            try:
                stamp = _stamp(self.section)
            except ValueError as exc:  # a file is missing for a moment (being replaced)
                self._warn_once(("missing", str(exc)), exc)
                return False
            if stamp == self.material.stamp or stamp == self._failed_stamp:
                return False
            try:
                self.material = _read(self.section, stamp)
            except ValueError as exc:
                self._warn_once(stamp, exc)
                return False
            self._failed_stamp = None
            self.reloads += 1
            log.info("TLS certificate files changed: serving the new certificate to new connections")
            return True

    def _warn_once(self, stamp: tuple, exc: Exception) -> None:
        if stamp != self._failed_stamp:
            self._failed_stamp = stamp
            log.warning("TLS certificate files changed but cannot be used yet (%s); still serving the previous "
                        "certificate", exc)

    # --- the two transports --------------------------------------------------------------------

    def grpc_credentials(self):
        """Server credentials whose certificate follows the files (checked before each handshake)."""
        import grpc

        def configuration(material: CertificateMaterial):
            return grpc.ssl_server_certificate_configuration(
                [(material.private_key, material.cert_chain)], root_certificates=material.client_ca)

        def fetch():
            try:
                return configuration(self.material) if self.refresh() else None
            except Exception:
                log.exception("TLS certificate reload failed; still serving the previous certificate")
                return None

        return grpc.dynamic_ssl_server_credentials(configuration(self.material), fetch,
                                                   require_client_authentication=self.section.require_client_cert)

    def ssl_context(self) -> ssl.SSLContext:
        """A server context for the web port that switches each new connection to the current files."""
        base = _server_context(self.section)

        def on_client_hello(connection, server_name, context) -> None:
            self.refresh()
            connection.context = self.material.context

        base.sni_callback = on_client_hello
        return base


# --- internals -----------------------------------------------------------------------------------

def _paths(section: TlsSection) -> list[tuple[str, str]]:
    return [(key, getattr(section, key)) for key in _KEYS if getattr(section, key)]


def _stamp(section: TlsSection) -> tuple:
    out = []
    for key, path in _paths(section):
        try:
            st = os.stat(path)  # follows the symlinks of a mounted Secret (..data -> a new folder on rotation)
        except OSError as exc:
            raise ValueError(f"tls.{key}: cannot read {path}: {exc.strerror or exc}") from None
        out.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _read(section: TlsSection, stamp: tuple) -> CertificateMaterial:
    data: dict[str, bytes] = {}
    for key, path in _paths(section):
        try:
            data[key] = Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"tls.{key}: cannot read {path}: {exc.strerror or exc}") from None
        if b"-----BEGIN" not in data[key]:
            raise ValueError(f"tls.{key}: {path} is not PEM (expected a '-----BEGIN ...' block)")
    context = _server_context(section)  # the checks: parsable, and the key belongs to the certificate
    return CertificateMaterial(cert_chain=data["cert_file"], private_key=data["key_file"],
                               client_ca=data.get("client_ca_file"), stamp=stamp, context=context)


def _server_context(section: TlsSection) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(section.cert_file, section.key_file)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc).upper() or "key values mismatch" in str(exc):
            raise ValueError(f"tls.key_file: {section.key_file} is not the private key of tls.cert_file "
                             f"{section.cert_file} (key values mismatch)") from None
        raise ValueError(f"tls.cert_file/tls.key_file: cannot load {section.cert_file} with {section.key_file} "
                         f"({exc.reason or exc}); both must be PEM, the key unencrypted") from None
    except OSError as exc:
        raise ValueError(f"tls.cert_file/tls.key_file: cannot read {section.cert_file} or {section.key_file}: "
                         f"{exc.strerror or exc}") from None
    if section.client_ca_file:
        try:
            context.load_verify_locations(cafile=section.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"tls.client_ca_file: cannot load {section.client_ca_file} as PEM CA certificates "
                             f"({getattr(exc, 'reason', None) or exc})") from None
        context.verify_mode = ssl.CERT_REQUIRED  # validate() allows a client CA only with require_client_cert
    return context


async def start_health_port(health_servicer, bind_host: str, port: int):
    """A plaintext port serving only grpc.health.v1 (the same statuses as the main port), for probes that
    cannot speak TLS (Kubernetes' native gRPC probes). It carries no audio. Returns (server, port bound)."""
    import grpc
    from grpc_health.v1 import health_pb2_grpc

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        bound = server.add_insecure_port(f"{bind_host}:{port}")
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {bind_host}:{port} (server.host/server.health_port): {exc}") from None
    await server.start()
    log.info("plaintext health port (grpc.health.v1 only) on %s:%d", bind_host, bound)
    return server, bound
