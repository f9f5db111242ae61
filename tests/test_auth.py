"""Bearer-token authentication: the tokens file, the check in the interceptor (exact status codes and
messages), reload on change, per-token stream caps, metrics by token name, the web port and the CLI.

All but the last test need no models: the interceptor is exercised with tiny in-test handlers on a
grpc.aio server, plus health and reflection as the real server registers them.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from relais.server.auth import AuthSection, TokenStore, hash_token, read_tokens
from relais.server.config import load_config
from relais.server.interceptor import ErrorMappingInterceptor
from relais.server.metrics import RelaisMetrics

GOOD, CAPPED, OFF = "tok-good-0123456789", "tok-capped-0123456789", "tok-disabled-0123456789"
EXPIRED, LATER = "tok-expired-0123456789", "tok-later-0123456789"


def _write_tokens(path: Path, *extra: str) -> Path:
    path.write_text("tokens:\n"
                    f"  - name: partner-a\n    sha256: {hash_token(GOOD)}\n"
                    f"  - name: capped\n    sha256: {hash_token(CAPPED)}\n    max_streams: 1\n"
                    f"  - name: old-partner\n    sha256: {hash_token(OFF)}\n    disabled: true\n"
                    f"  - name: trial\n    sha256: {hash_token(EXPIRED)}\n    expires: 2020-01-31\n"
                    f"  - name: until-2999\n    sha256: {hash_token(LATER)}\n    expires: 2999-01-31T12:00:00+01:00\n"
                    + "".join(extra))
    return path


# --- the tokens file -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("- a\n", r"must be a mapping with a 'tokens' list"),
    ("tokens:\n  - name: a\n", r"tokens\[0\].sha256: must be the 64 hex digits of the token's sha256"),
    ("tokens:\n  - name: a\n    sha256: my-secret-token\n", r"tokens\[0\].sha256: must be the 64 hex digits"),
    ("tokens:\n  - sha256: " + "a" * 64 + "\n", r"tokens\[0\].name: must be a non-empty string"),
    ("tokens:\n  - {name: a, sha256: " + "a" * 64 + "}\n  - {name: a, sha256: " + "b" * 64 + "}\n",
     r"tokens\[1\].name: 'a' is used twice"),
    ("tokens:\n  - {name: a, sha256: " + "a" * 64 + ", max_streams: -1}\n", r"tokens\[0\].max_streams: must be"),
    ("tokens:\n  - {name: a, sha256: " + "a" * 64 + ", audio_minutes_per_day: -5}\n",
     r"tokens\[0\].audio_minutes_per_day: must be a number of minutes > 0"),
    ("tokens:\n  - {name: a, sha256: " + "a" * 64 + ", role: admin}\n", r"tokens\[0\]: unknown key\(s\) \['role'\]"),
    ("tokens:\n  - {name: a, sha256: " + "a" * 64 + ", expires: next week}\n",
     r"tokens\[0\].expires: must be an ISO 8601 date or time"),
    ("tokens: [\n", r"not valid YAML"),
])
def test_tokens_file_errors_name_the_entry_and_key(tmp_path, text, message):
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"auth.tokens_file {path}: .*{message}"):
        read_tokens(path)


def test_missing_tokens_file_is_a_start_up_error(tmp_path):
    with pytest.raises(ValueError, match=rf"auth.tokens_file: cannot read {tmp_path}/nope.yaml: No such file"):
        TokenStore(AuthSection(tokens_file=str(tmp_path / "nope.yaml")))


def test_auth_settings(tmp_path):
    cfg = load_config(env={"RELAIS_AUTH_TOKENS_FILE": "/etc/relais/auth/tokens.yaml",
                           "RELAIS_AUTH_OPEN_REFLECTION": "false"})
    assert cfg.auth.enabled and cfg.auth.open_health and not cfg.auth.open_reflection
    assert not load_config(env={}).auth.enabled


# --- the check, through the interceptor ----------------------------------------------------------

async def _unary(request, context):
    return b"unary:" + request


async def _stream(request_iterator, context):
    async for request in request_iterator:
        yield b"stream:" + request


def _run_server(store: TokenStore, metrics: RelaisMetrics, scenario):
    """Run ``scenario(port)`` against a grpc.aio server with the auth interceptor, test handlers,
    health and reflection (registered as app.py does)."""

    async def main():
        server = grpc.aio.server(interceptors=[ErrorMappingInterceptor(
            on_error=lambda code: metrics.errors_total.labels(code=code).inc(), auth=store)])
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Auth", {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Stream": grpc.stream_stream_rpc_method_handler(_stream)})])
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(("test.Auth", reflection.SERVICE_NAME), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            return await scenario(port)
        finally:
            await server.stop(0)

    return asyncio.run(main())


async def _call(channel, token: str | None = None, header: str | None = None) -> tuple[str, str]:
    metadata = (("authorization", header if header is not None else f"Bearer {token}"),) \
        if token is not None or header is not None else None
    try:
        reply = await channel.unary_unary("/test.Auth/Unary")(b"x", metadata=metadata, timeout=10)
        return "OK", reply.decode()
    except grpc.aio.AioRpcError as err:
        return err.code().name, err.details()


def test_unary_calls_need_a_known_enabled_token(tmp_path):
    store = TokenStore(AuthSection(tokens_file=str(_write_tokens(tmp_path / "tokens.yaml"))), RelaisMetrics())

    async def scenario(port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return [await _call(channel), await _call(channel, header="Basic dXNlcjpwYXNz"),
                    await _call(channel, header="Bearer "), await _call(channel, "not-a-token"),
                    await _call(channel, OFF), await _call(channel, EXPIRED), await _call(channel, LATER),
                    await _call(channel, GOOD), await _call(channel, header=f"bearer {GOOD}")]

    results = _run_server(store, store.metrics, scenario)
    assert results == [
        ("UNAUTHENTICATED", "missing token: send the metadata 'authorization: Bearer <token>'"),
        ("UNAUTHENTICATED", "the authorization metadata must be 'Bearer <token>', got scheme 'Basic'"),
        ("UNAUTHENTICATED", "the authorization metadata must be 'Bearer <token>', got scheme 'Bearer'"),
        ("UNAUTHENTICATED", "unknown token: check the token you were given (the server keeps only its sha256 in "
                            "auth.tokens_file)"),
        ("PERMISSION_DENIED", "token 'old-partner' is disabled; ask the operator to enable it or issue a new one"),
        ("UNAUTHENTICATED", "token 'trial' expired at 2020-01-31T00:00:00+00:00; ask the operator for a new one"),
        ("OK", "unary:x"), ("OK", "unary:x"), ("OK", "unary:x")]
    text = store.metrics.exposition().decode()
    assert 'relais_errors_total{code="UNAUTHENTICATED"} 5.0' in text
    assert 'relais_errors_total{code="PERMISSION_DENIED"} 1.0' in text
    assert 'relais_token_calls_total{token="partner-a"} 2.0' in text
    assert GOOD not in text and hash_token(GOOD) not in text  # labelled by name, never by token


def test_health_and_reflection_open_by_default_and_closable(tmp_path):
    tokens = str(_write_tokens(tmp_path / "tokens.yaml"))

    async def scenario(port):
        out = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for call in (lambda: health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                           timeout=10),
                         lambda: _first(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                             iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))):
                try:
                    await call()
                    out.append("OK")
                except grpc.aio.AioRpcError as err:
                    out.append(err.code().name)
        return out

    assert _run_server(TokenStore(AuthSection(tokens_file=tokens)), RelaisMetrics(), scenario) == ["OK", "OK"]
    closed = AuthSection(tokens_file=tokens, open_health=False, open_reflection=False)
    assert _run_server(TokenStore(closed), RelaisMetrics(), scenario) == ["UNAUTHENTICATED", "UNAUTHENTICATED"]


async def _first(call):
    async for response in call:
        return response


def test_max_streams_per_token_and_the_slot_is_given_back(tmp_path):
    store = TokenStore(AuthSection(tokens_file=str(_write_tokens(tmp_path / "tokens.yaml"))), RelaisMetrics())

    async def scenario(port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = channel.stream_stream("/test.Auth/Stream")
            queue: asyncio.Queue = asyncio.Queue()

            async def requests():
                while (item := await queue.get()) is not None:
                    yield item

            first = stream(requests(), metadata=(("authorization", f"Bearer {CAPPED}"),), timeout=20)
            await queue.put(b"a")
            assert await first.read() == b"stream:a"  # the first stream is live: it holds capped's one slot
            gauge = store.metrics.exposition().decode()
            second = stream(iter([b"b"]), metadata=(("authorization", f"Bearer {CAPPED}"),), timeout=10)
            try:
                await second.read()
                refused = ("OK", "")
            except grpc.aio.AioRpcError as err:
                refused = (err.code().name, err.details())
            other = [r async for r in stream(iter([b"c"]), metadata=(("authorization", f"Bearer {GOOD}"),),
                                             timeout=10)]
            await queue.put(None)  # end the first stream: its slot comes back
            assert await first.read() == grpc.aio.EOF and await first.code() is grpc.StatusCode.OK
            await asyncio.sleep(0.1)
            again = [r async for r in stream(iter([b"d"]), metadata=(("authorization", f"Bearer {CAPPED}"),),
                                             timeout=10)]
            return refused, other, again, gauge

    refused, other, again, gauge = _run_server(store, store.metrics, scenario)
    assert refused == ("PERMISSION_DENIED", "token 'capped' already has 1 open stream(s), its limit (max_streams 1); "
                                            "end one first or ask for a higher limit")
    assert other == [b"stream:c"] and again == [b"stream:d"]
    assert 'relais_token_streams_active{token="capped"} 1.0' in gauge
    assert store.streams == {"capped": 0, "partner-a": 0}


def test_tokens_file_reload_on_change_and_a_broken_file_keeps_the_old_tokens(tmp_path, caplog):
    path = _write_tokens(tmp_path / "tokens.yaml")
    store = TokenStore(AuthSection(tokens_file=str(path)))
    assert store.authorize("/test.Auth/Unary", f"Bearer {GOOD}", streaming=False).token == "partner-a"
    new = "tok-new-0123456789"
    # as the kubelet updates a mounted Secret: a new file swapped in
    (tmp_path / "next.yaml").write_text(f"tokens:\n  - name: partner-b\n    sha256: {hash_token(new)}\n")
    os.replace(tmp_path / "next.yaml", path)
    assert store.authorize("/test.Auth/Unary", f"Bearer {new}", streaming=False).token == "partner-b"
    with pytest.raises(Exception, match="unknown token"):  # the old token is gone
        store.authorize("/test.Auth/Unary", f"Bearer {GOOD}", streaming=False)
    (tmp_path / "broken.yaml").write_text("tokens:\n  - name: x\n")
    os.replace(tmp_path / "broken.yaml", path)
    with caplog.at_level("WARNING", logger="relais.server.auth"):
        assert store.authorize("/test.Auth/Unary", f"Bearer {new}", streaming=False).token == "partner-b"
    assert "auth.tokens_file cannot be used" in caplog.text and "still using the previous tokens" in caplog.text


# --- the CLI helper ------------------------------------------------------------------------------

def test_token_cli_makes_a_usable_entry(tmp_path, capsys, monkeypatch):
    import io

    from relais.cli import main

    path = tmp_path / "tokens.yaml"
    assert main(["token", "add", "partner-a", "--max-streams", "2", "--file", str(path)]) == 0
    token = capsys.readouterr().out.strip()
    assert main(["token", "add", "partner-a", "--file", str(path)]) == 2
    assert "already has a token named 'partner-a'" in capsys.readouterr().err
    assert main(["token", "add", "trial", "--expires", "2030-06-30", "--file", str(path)]) == 0
    capsys.readouterr()
    assert main(["token", "add", "x", "--expires", "soon", "--file", str(path)]) == 2
    assert "error: --expires: must be an ISO 8601 date or time" in capsys.readouterr().err
    assert token not in path.read_text()  # only the hash is written
    store = TokenStore(AuthSection(tokens_file=str(path)))
    assert store.entries[0].max_streams == 2 and store.entries[1].expires.isoformat() == "2030-06-30T00:00:00+00:00"
    assert store.authorize("/relais.v1.SpeechTranslator/Translate", f"Bearer {token}", streaming=False).token \
        == "partner-a"
    monkeypatch.setattr(sys, "stdin", io.StringIO(token + "\n"))
    assert main(["token", "hash"]) == 0
    assert capsys.readouterr().out.strip() == store.entries[0].sha256


def test_translate_cli_token_file_is_checked_before_any_work(tmp_path, capsys):
    from relais.cli import main

    sample = Path(__file__).resolve().parent.parent / "service" / "relais" / "data" / "samples" / "fr_fleurs_1857.wav"
    args = ["translate", str(sample), "--to", "en", "--server", "127.0.0.1:1", "-o", str(tmp_path / "out.wav")]
    assert main([*args, "--token-file", str(tmp_path / "nope")]) == 2
    assert f"error: --token-file {tmp_path}/nope: cannot read: No such file or directory" in capsys.readouterr().err
    (tmp_path / "empty").write_text("\n")
    assert main([*args, "--token-file", str(tmp_path / "empty")]) == 2
    assert f"error: --token-file {tmp_path}/empty is empty" in capsys.readouterr().err


# --- the server, on the real engine (authentication happens before any model work) -----------------

@pytest.fixture(scope="module")
def engine(model_set):
    from relais.pipeline.engine import EngineConfig, TranslationEngine

    return TranslationEngine(EngineConfig(models_dir=model_set.root))


def test_server_grpc_and_web_port_need_the_token(engine, tmp_path):
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    from relais.client import TranslateClient
    from relais.server.app import start_in_process
    from relais.server.config import ServerConfig

    config = ServerConfig().replace(
        server={"host": "127.0.0.1", "port": 0, "metrics_port": 0, "web_port": 0},
        auth={"tokens_file": str(_write_tokens(tmp_path / "tokens.yaml"))})
    with start_in_process(config, engine=engine) as handle:
        with TranslateClient(handle.address, timeout_s=20) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.capabilities()
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with TranslateClient(handle.address, timeout_s=20, token=GOOD) as client:
            assert "en" in client.capabilities().target_languages
        with grpc.insecure_channel(handle.address) as channel:  # health stays open for probes
            assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status \
                == health_pb2.HealthCheckResponse.SERVING
        web = f"127.0.0.1:{handle.server.web_port}"
        codes = []
        for query in ("", "?token=wrong", f"?token={OFF}"):
            try:
                urllib.request.urlopen(f"http://{web}/v1/capabilities{query}", timeout=10)
            except urllib.error.HTTPError as exc:
                codes.append((exc.code, exc.read().decode().split(" (web port")[0]))
        assert codes == [(401, "missing token: send the metadata 'authorization: Bearer <token>'"),
                         (401, "unknown token: check the token you were given (the server keeps only its sha256 "
                               "in auth.tokens_file)"),
                         (403, "token 'old-partner' is disabled; ask the operator to enable it or issue a new one")]
        assert urllib.request.urlopen(f"http://{web}/v1/capabilities?token={GOOD}", timeout=10).status == 200
        request = urllib.request.Request(f"http://{web}/v1/capabilities", headers={"Authorization": f"Bearer {GOOD}"})
        assert urllib.request.urlopen(request, timeout=10).status == 200
        assert urllib.request.urlopen(f"http://{web}/", timeout=10).status == 200  # the page itself is open
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://{web}/v1/translate", open_timeout=10)
        assert refused.value.response.status_code == 401
        with connect(f"ws://{web}/v1/translate?token={CAPPED}", open_timeout=10):  # holds capped's one stream
            with connect(f"ws://{web}/v1/translate?token={CAPPED}", open_timeout=10) as second:
                error = second.recv(timeout=10)
                with pytest.raises(ConnectionClosed):
                    second.recv(timeout=10)
        assert '"code": "PERMISSION_DENIED"' in error and "max_streams 1" in error
        assert second.close_code == 4007
        deadline = time.monotonic() + 10  # the server sees the first connection close
        while handle.server.auth.streams.get("capped") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert handle.server.auth.streams["capped"] == 0
        with connect(f"ws://{web}/v1/translate?token={CAPPED}", open_timeout=10) as third:  # the slot came back
            third.send("not json")
            assert '"code": "INVALID_ARGUMENT"' in third.recv(timeout=10)


def test_daily_audio_quota_ends_the_stream_that_uses_it_up_and_refuses_the_next(engine, tmp_path):
    """A token with audio_minutes_per_day 0.1 (6 s) streams an 8.3 s French clip: the stream ends with
    RESOURCE_EXHAUSTED once 6 s have been received, the token's next stream is refused at once, and
    another token is not affected."""
    from conftest import load_audio, load_manifest
    from relais.client import TranslateClient, TranslateOptions
    from relais.server.app import start_in_process
    from relais.server.config import ServerConfig

    metered = "tok-metered-0123456789"
    tokens = _write_tokens(tmp_path / "tokens.yaml",
                           f"  - name: metered\n    sha256: {hash_token(metered)}\n    audio_minutes_per_day: 0.1\n")
    config = ServerConfig().replace(server={"host": "127.0.0.1", "port": 0, "metrics_port": 0},
                                    auth={"tokens_file": str(tokens)})
    audio = load_audio(next(u for u in load_manifest("fr_en_dev") if u.id == "fleurs_fr_test_1857").path)
    options = TranslateOptions(target_language="en", source_language="fr", speed=0, return_audio=False)
    with start_in_process(config, engine=engine) as handle:
        outcomes = []
        for token in (metered, metered, GOOD):
            with TranslateClient(handle.address, timeout_s=60, token=token) as client:
                try:
                    result = client.translate_audio(audio, 16000, options)
                    outcomes.append(("OK", result.translation))
                except grpc.RpcError as err:
                    outcomes.append((err.code().name, err.details()))
        metrics = handle.server.metrics.exposition().decode()
        used = handle.server.auth.used_today_s("metered")
    quota_message = "token 'metered' has used its 0.1 audio minutes for "
    assert outcomes[0][0] == "RESOURCE_EXHAUSTED" and outcomes[0][1].startswith(quota_message), outcomes[0]
    assert "resets at midnight UTC" in outcomes[0][1]
    assert outcomes[1][0] == "RESOURCE_EXHAUSTED" and outcomes[1][1].startswith(quota_message), outcomes[1]
    assert outcomes[2][0] == "OK" and "added" in outcomes[2][1].lower(), outcomes[2]
    assert 6.0 <= used < 8.3, used  # charged as the session took the audio, cut once past 6 s
    assert 'relais_token_audio_seconds_total{token="metered"}' in metrics
