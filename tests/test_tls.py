"""TLS and mutual TLS on the gRPC and web ports, certificate rotation, and the client's TLS options.

Certificates are made in the test (tests/certs.py: a CA, server and client certificates).
Settings, start-up errors, the rotation rule and the CLI need no server; every server
here runs the real engine on the prepared model set (loaded once for the module).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from certs import TestCA, serial_of
from conftest import load_audio
from relais.cli import main
from relais.client import ClientTls, TranslateClient, TranslateOptions
from relais.server.app import start_in_process
from relais.server.config import ServerConfig, load_config
from relais.server.tls import CertificateFiles, TlsSection
from relais.v1 import translator_pb2 as pb
from relais.v1 import translator_pb2_grpc as pb_grpc

SAMPLE_FR = Path(__file__).resolve().parent.parent / "service" / "relais" / "data" / "samples" / "fr_fleurs_1857.wav"
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def _server_files(folder: Path, ca: TestCA, client_ca: bool = False) -> TlsSection:
    folder.mkdir(parents=True, exist_ok=True)
    ca.server().write(folder / "tls.crt", folder / "tls.key")
    (folder / "ca.crt").write_bytes(ca.pem)
    return TlsSection(cert_file=str(folder / "tls.crt"), key_file=str(folder / "tls.key"),
                      client_ca_file=str(folder / "ca.crt") if client_ca else "", require_client_cert=client_ca)


# --- settings and start-up errors (no models) ----------------------------------------------------

@pytest.mark.parametrize("env, message", [
    ({"RELAIS_TLS_CERT_FILE": "/c.pem"}, r"tls.key_file: set both tls.cert_file and tls.key_file"),
    ({"RELAIS_TLS_KEY_FILE": "/k.pem"}, r"tls.cert_file: set both tls.cert_file and tls.key_file"),
    ({"RELAIS_TLS_CLIENT_CA_FILE": "/ca.pem", "RELAIS_TLS_REQUIRE_CLIENT_CERT": "true"},
     r"tls.client_ca_file: client certificates need TLS"),
    ({"RELAIS_TLS_CERT_FILE": "/c", "RELAIS_TLS_KEY_FILE": "/k", "RELAIS_TLS_REQUIRE_CLIENT_CERT": "1"},
     r"tls.require_client_cert: mutual TLS needs tls.client_ca_file"),
    ({"RELAIS_TLS_CERT_FILE": "/c", "RELAIS_TLS_KEY_FILE": "/k", "RELAIS_TLS_CLIENT_CA_FILE": "/ca"},
     r"tls.client_ca_file: set tls.require_client_cert: true"),
    ({"RELAIS_SERVER_HEALTH_PORT": "-2"}, r"server.health_port: must be -1 \(off\) or 0..65535"),
])
def test_tls_settings_name_the_key(env, message):
    with pytest.raises(ValueError, match=message):
        load_config(env=env)


def test_tls_settings_from_a_file(tmp_path):
    path = tmp_path / "relais.yaml"
    path.write_text("tls:\n  cert_file: /etc/tls/tls.crt\n  key_file: /etc/tls/tls.key\n"
                    "  client_ca_file: /etc/tls/ca.crt\n  require_client_cert: true\n")
    tls = load_config(path, env={}).tls
    assert tls.enabled and tls.require_client_cert and tls.client_ca_file == "/etc/tls/ca.crt"
    assert not load_config(env={}).tls.enabled  # plaintext by default


def test_start_up_errors_name_the_file_and_key(tmp_path, ca):
    good = _server_files(tmp_path / "good", ca, client_ca=True)
    other = _server_files(tmp_path / "other", TestCA("another CA"))
    (tmp_path / "not.pem").write_text("hello\n")
    cases = [
        (TlsSection(str(tmp_path / "missing.crt"), good.key_file),
         rf"tls.cert_file: cannot read {tmp_path}/missing.crt: No such file or directory"),
        (TlsSection(good.cert_file, str(tmp_path / "not.pem")), r"tls.key_file: .*not.pem is not PEM"),
        (TlsSection(good.cert_file, other.key_file),
         r"tls.key_file: .*other/tls.key is not the private key of tls.cert_file .*good/tls.crt"),
        (TlsSection(good.cert_file, good.key_file, client_ca_file=str(tmp_path / "not.pem"), require_client_cert=True),
         r"tls.client_ca_file: .*not.pem is not PEM"),
        (TlsSection(good.cert_file, good.key_file, client_ca_file=good.key_file, require_client_cert=True),
         r"tls.client_ca_file: cannot load .*tls.key as PEM CA certificates"),
    ]
    for section, message in cases:
        with pytest.raises(ValueError, match=message):
            CertificateFiles(section)
    assert CertificateFiles(good).material.client_ca == ca.pem


def test_relais_serve_refuses_bad_files_before_loading_anything(tmp_path, ca, capsys):
    good = _server_files(tmp_path / "good", ca)
    other = _server_files(tmp_path / "other", TestCA("another CA"))
    config = tmp_path / "relais.yaml"
    config.write_text(f"tls:\n  cert_file: {good.cert_file}\n  key_file: {other.key_file}\n")
    assert main(["serve", "--config", str(config)]) == 2
    assert "error: tls.key_file: " in capsys.readouterr().err
    config.write_text(f"tls:\n  cert_file: {good.cert_file}\n  key_file: {good.key_file}\n"
                      f"auth:\n  tokens_file: {tmp_path}/tokens.yaml\n")
    assert main(["serve", "--config", str(config)]) == 2
    assert f"error: auth.tokens_file: cannot read {tmp_path}/tokens.yaml" in capsys.readouterr().err


def test_unreadable_file_is_named(tmp_path, ca):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    section = _server_files(tmp_path, ca)
    Path(section.key_file).chmod(0)
    with pytest.raises(ValueError, match=r"tls.key_file: cannot read .*tls.key: Permission denied"):
        CertificateFiles(section)


def test_rotation_takes_a_consistent_pair_and_keeps_the_old_one_meanwhile(tmp_path, ca):
    section = _server_files(tmp_path, ca)
    files = CertificateFiles(section)
    first = files.material
    assert not files.refresh() and files.material is first  # unchanged files: nothing re-read
    new = ca.server()
    Path(section.cert_file).write_bytes(new.cert_pem)  # half-written: the new cert, the old key
    assert not files.refresh() and files.material is first  # mismatched: the old pair is still served
    Path(section.key_file).unlink()  # a file missing for a moment
    assert not files.refresh() and files.material is first
    Path(section.key_file).write_bytes(new.key_pem)
    assert files.refresh() and files.material.cert_chain == new.cert_pem and files.reloads == 1


def test_cli_tls_options_need_a_server(capsys):
    assert main(["translate", str(SAMPLE_FR), "--to", "en", "--tls"]) == 2
    assert "error: --tls/--ca/--cert/--key/--server-name need --server HOST:PORT" in capsys.readouterr().err
    assert main(["translate", str(SAMPLE_FR), "--to", "en", "--server", "127.0.0.1:1", "--cert", "c.pem"]) == 2
    assert "error: a client certificate needs both --cert and --key" in capsys.readouterr().err


# --- real servers --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(model_set):
    from relais.pipeline.engine import EngineConfig, TranslationEngine

    return TranslationEngine(EngineConfig(models_dir=model_set.root))


def _config(tls: TlsSection, models_dir: Path | None = None, **server) -> ServerConfig:
    return ServerConfig().replace(
        server={"host": "127.0.0.1", "port": 0, "metrics_port": 0, "max_sessions": 2, **server},
        models={"dir": str(models_dir or "")}, runtime={"providers": ["cpu"]},
        tls={"cert_file": tls.cert_file, "key_file": tls.key_file, "client_ca_file": tls.client_ca_file,
             "require_client_cert": tls.require_client_cert})


@pytest.fixture(scope="module")
def tls_health_server(engine, ca, tmp_path_factory):
    """TLS on the gRPC and web ports, and a plaintext health port."""
    section = _server_files(tmp_path_factory.mktemp("tls-health"), ca)
    with start_in_process(_config(section, web_port=0, health_port=0), engine=engine) as handle:
        yield handle, section


@pytest.fixture(scope="module")
def tls_server(model_set, engine, ca, tmp_path_factory):
    """The real engine behind TLS on the gRPC and web ports."""
    section = _server_files(tmp_path_factory.mktemp("tls"), ca)
    with start_in_process(_config(section, model_set.root, web_port=0), engine=engine) as handle:
        yield handle, section


@pytest.fixture(scope="module")
def mtls_server(engine, ca, tmp_path_factory):
    section = _server_files(tmp_path_factory.mktemp("mtls"), ca, client_ca=True)
    with start_in_process(_config(section), engine=engine) as handle:
        yield handle


def _peer_serial(port: int, ca_pem: bytes) -> int:
    """Handshake with the port like a new client and return the serial of the certificate it was shown."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            return serial_of(conn.getpeercert(binary_form=True))


def test_health_and_reflection_over_tls(tls_health_server, ca, tmp_path):
    handle, _ = tls_health_server
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    channel = grpc.secure_channel(handle.address, ClientTls(ca_file=str(tmp_path / "ca.crt")).credentials())
    assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                  timeout=10))
    assert "relais.v1.SpeechTranslator" in {s.name for s in answer.list_services_response.service}
    channel.close()


def test_translate_stream_over_tls(tls_server, ca, tmp_path):
    handle, _ = tls_server
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    audio = load_audio(SAMPLE_FR)
    with TranslateClient(handle.address, tls=ClientTls(ca_file=str(tmp_path / "ca.crt")), timeout_s=120) as client:
        result = client.translate_audio(audio, 16000, TranslateOptions(target_language="en", speed=0))
    assert result.translation.strip() and result.audio.size > 0 and result.summary is not None


def test_plaintext_client_to_the_tls_port_fails_fast(tls_health_server):
    handle, _ = tls_health_server
    started = time.monotonic()
    with grpc.insecure_channel(handle.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.SpeechTranslatorStub(channel).ListCapabilities(pb.ListCapabilitiesRequest(), timeout=20)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE  # the handshake fails: no hang until the deadline
    assert time.monotonic() - started < 10


def test_untrusted_server_certificate_is_refused(tls_health_server, tmp_path):
    handle, _ = tls_health_server
    (tmp_path / "other.crt").write_bytes(TestCA("not the server's CA").pem)
    with TranslateClient(handle.address, tls=ClientTls(ca_file=str(tmp_path / "other.crt")), timeout_s=20) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.capabilities()
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


def test_plaintext_health_port_for_probes(tls_health_server):
    handle, _ = tls_health_server
    with grpc.insecure_channel(f"127.0.0.1:{handle.server.health_port}") as channel:
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
        with pytest.raises(grpc.RpcError) as err:  # health only: no audio on this port
            pb_grpc.SpeechTranslatorStub(channel).ListCapabilities(pb.ListCapabilitiesRequest(), timeout=10)
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_web_port_serves_https(tls_health_server, ca):
    handle, _ = tls_health_server
    context = ssl.create_default_context(cadata=ca.pem.decode())
    url = f"https://localhost:{handle.server.web_port}/v1/capabilities"
    caps = json.loads(urllib.request.urlopen(url, context=context, timeout=10).read())
    assert "en" in json.dumps(caps)
    with pytest.raises((OSError, http.client.HTTPException)):  # plain HTTP to the TLS port gets no page
        urllib.request.urlopen(f"http://127.0.0.1:{handle.server.web_port}/", timeout=10).read()


def test_rotation_keeps_the_live_stream_and_serves_new_connections_the_new_certificate(tls_server, ca, tmp_path):
    handle, section = tls_server
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    ports = (handle.server.port, handle.server.web_port)
    before = {port: _peer_serial(port, ca.pem) for port in ports}
    started = threading.Event()
    outcome: dict = {}

    def stream() -> None:
        audio = load_audio(SAMPLE_FR)[:16000 * 4]  # 4 s in real time
        on_event = lambda event: started.set()
        try:
            with TranslateClient(handle.address, tls=ClientTls(ca_file=str(tmp_path / "ca.crt")),
                                 timeout_s=120) as client:
                outcome["result"] = client.translate_audio(audio, 16000, TranslateOptions(target_language="en"),
                                                           on_event)
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(60), "the stream did not start"
    new = ca.server()
    new.write(Path(section.cert_file), Path(section.key_file))  # as cert-manager renews the Secret
    after = {port: _peer_serial(port, ca.pem) for port in ports}
    thread.join(120)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.summary is not None and result.timings.audio_in_s == pytest.approx(4.0, abs=0.01)
    assert after == {port: new.serial for port in ports} and before != after
    assert handle.server.tls.reloads >= 1


def test_rotation_under_a_live_health_watch(engine, ca, tmp_path):
    """A health Watch stream (server streaming) opened before the rotation stays open on its old
    connection, and that channel still answers new calls, while new connections to both ports are
    shown the new certificate."""
    section = _server_files(tmp_path / "files", ca)
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    with start_in_process(_config(section, web_port=0), engine=engine) as handle:
        channel = grpc.secure_channel(handle.address, ClientTls(ca_file=str(tmp_path / "ca.crt")).credentials())
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
        assert next(watch).status == SERVING
        new = ca.server()
        new.write(Path(section.cert_file), Path(section.key_file))
        assert [_peer_serial(p, ca.pem) for p in (handle.server.port, handle.server.web_port)] == [new.serial] * 2
        stub = pb_grpc.SpeechTranslatorStub(channel)
        assert "en" in stub.ListCapabilities(pb.ListCapabilitiesRequest(), timeout=10).target_languages
        time.sleep(0.2)
        assert not watch.done()  # a dropped connection would have ended it with UNAVAILABLE
        watch.cancel()
        channel.close()
        assert handle.server.tls.reloads == 1


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_server, ca, tmp_path):
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    ca.client("partner-a").write(tmp_path / "client.crt", tmp_path / "client.key")
    TestCA("a stranger's CA").client("stranger").write(tmp_path / "stranger.crt", tmp_path / "stranger.key")
    ca_file = str(tmp_path / "ca.crt")
    for tls in (ClientTls(ca_file=ca_file),
                ClientTls(ca_file=ca_file, cert_file=str(tmp_path / "stranger.crt"),
                          key_file=str(tmp_path / "stranger.key"))):
        with TranslateClient(mtls_server.address, tls=tls, timeout_s=20) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.capabilities()
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    good = ClientTls(ca_file=ca_file, cert_file=str(tmp_path / "client.crt"), key_file=str(tmp_path / "client.key"))
    with TranslateClient(mtls_server.address, tls=good, timeout_s=20) as client:
        assert "en" in client.capabilities().target_languages
