"""HTTPS for the drain endpoint: the token crosses the pod network, so it may go over TLS.

A self-signed certificate made here with the openssl CLI (Debian's ``openssl``, in
APT_PACKAGES); the agent in-process and as ``python -m connbalance.agent`` with
``--tls-cert-file`` and ``--tls-key-file``.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from connbalance.agent import AgentServer, ProxyAgent
from connbalance.agent.http import server_tls
from connbalance.agent.main import run
from tests.agent import certs
from tests.agent.support import deadline_in
from tests.agent.support import run as run_scenario

HOST = "127.0.4.21"
TOKEN = "tls-token"
ROOT = Path(__file__).resolve().parents[2]


def self_signed(folder: Path) -> tuple[Path, Path]:
    made = certs.self_signed(folder, name="agent", subject_alt_name=f"IP:{HOST}")
    return made.cert, made.key


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def test_a_drain_over_https_cycles_and_plain_http_or_an_untrusted_client_gets_nothing(tmp_path):
    cert, key = self_signed(tmp_path)

    async def scenario() -> None:
        held: list[asyncio.StreamWriter] = []

        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)

        upstream = await asyncio.start_server(hold, HOST, 0)
        agent = ProxyAgent(listen=(HOST, 0), upstream=(HOST, upstream.sockets[0].getsockname()[1]),
                           max_fraction=1.0)  # fmt: skip
        await agent.start()
        tls = server_tls(cert_file=str(cert), key_file=str(key))
        server = AgentServer(agent, host=HOST, port=0, token=TOKEN, ssl_context=tls)
        await server.start()
        clients = [await asyncio.open_connection(HOST, agent.port) for _ in range(4)]
        try:
            async with asyncio.timeout(10):
                while agent.active_count() < 4:
                    await asyncio.sleep(0.02)
            body = {"id": "tls-1", "count": 2, "windowSeconds": 0, "deadline": deadline_in(30)}
            headers = {"Authorization": f"Bearer {TOKEN}"}
            url = f"https://{HOST}:{server.port}/v1/drain"
            async with aiohttp.ClientSession() as http:
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await http.post(url, json=body, headers=headers)  # not trusted: no request
                with pytest.raises(aiohttp.ClientError):
                    await http.post(url.replace("https", "http"), json=body, headers=headers)
                assert agent.status().requests == ()
                async with http.post(url, json=body, headers=headers, ssl=trusting(cert)) as resp:
                    assert resp.status == 202, await resp.text()
            final = await agent.wait("tls-1", timeout=30)
            assert (final.cycled, agent.cycled_total) == (2, 2)
        finally:
            for writer in [w for _, w in clients] + held:
                writer.close()
            await server.stop()
            await agent.stop()
            upstream.close()
            await upstream.wait_closed()

    run_scenario(scenario())


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--tls-cert-file", "CERT"], "--tls-cert-file and --tls-key-file go together"),
        (["--tls-key-file", "KEY"], "--tls-cert-file and --tls-key-file go together"),
        (["--tls-cert-file", "/nonexistent/c", "--tls-key-file", "KEY"], "cannot read"),
        (["--tls-cert-file", "KEY", "--tls-key-file", "CERT"], "not a PEM pair"),
    ],
)
def test_tls_flags_that_cannot_serve_are_refused_at_start_naming_them(
    tmp_path, capsys, flags, says
):
    cert, key = self_signed(tmp_path)
    flags = [{"CERT": str(cert), "KEY": str(key)}.get(f, f) for f in flags]
    base = ["--mode", "proxy", "--upstream", f"{HOST}:1", "--proxy-listen", f"{HOST}:0"]
    assert run([*base, *flags]) == 2
    error = capsys.readouterr().err
    assert says in error
    assert "--tls-cert-file" in error


def test_the_agent_command_serves_https_with_the_two_flags(tmp_path):
    cert, key = self_signed(tmp_path)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    command = [sys.executable, "-m", "connbalance.agent", "--mode", "proxy",
               "--upstream", f"{HOST}:1", "--proxy-listen", f"{HOST}:0", "--listen", f"{HOST}:0",
               "--token-file", str(token), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
               "--loop", "asyncio"]  # fmt: skip
    env = {"PYTHONPATH": str(ROOT / "operator"), "PATH": "/usr/bin:/bin"}
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) as agent:
        try:
            assert agent.stderr is not None
            line = ""
            for line in agent.stderr:
                if "agent up" in line:
                    break
            assert "HTTPS on" in line, line
            port = int(line.rsplit(f"{HOST}:", 1)[1].split(",")[0])
            base = f"https://{HOST}:{port}"
            with urllib.request.urlopen(f"{base}/healthz", context=trusting(cert), timeout=10) as r:
                assert r.read() == b"ok\n"
            forged = urllib.request.Request(
                f"{base}/v1/drain", data=json.dumps({"id": "x", "count": 1}).encode(),
                headers={"Authorization": "Bearer wrong"}, method="POST",
            )  # fmt: skip
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(forged, context=trusting(cert), timeout=10)
            refused.value.close()
            assert refused.value.code == 401
        finally:
            agent.terminate()
            agent.wait(10)
