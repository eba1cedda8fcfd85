"""Two answering gateways behind nginx (round robin, TLS at nginx), one fake ACS: a call
answered by one replica streams to the other, its callbacks land on either, and its
processor hangs up or transfers from either. The replicas share only the call-token key; each
knows its own `replica_url`. Two servers in this process (their state inspected), then two
gateway processes. Skipped where nginx is not installed (.ci/run installs it)."""

from __future__ import annotations

import socket
import ssl
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import pytest
import trio
import trustme

from gateway.config import Config, Route
from gateway.processors import Call, Processor, load
from gateway.server.serve import Server, serve
from tests import replica_processor
from tests.daemons import free_port, gateway_process
from tests.replica_processor import TRANSFER_TO
from tests.test_nginx import NGINX, running_nginx, site_for_test

pytest.importorskip("azure.communication.callautomation")
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx; .ci/run does it)"
)

from gateway.control import ControlPlane  # noqa: E402
from gateway.control import plane as control_plane  # noqa: E402
from gateway.testing.acs_auth import AcsTokenIssuer, serve_key_set  # noqa: E402
from gateway.testing.answering import CALL_TOKEN_KEY, SECRET  # noqa: E402
from gateway.testing.fake_acs import RESOURCE_ID, FakeAcs, FakeCall, open_fake_acs  # noqa: E402

ECHO = load("echo", {})
HALF_SECOND = bytes(range(256)) * 62 + bytes(128)  # 16,000 bytes of a recognisable pattern


@attrs.define(eq=False)
class Replica:
    name: str
    server: Server
    control: ControlPlane
    calls: list[Call]  # the calls its processor ran


@attrs.define(eq=False)
class Cluster:
    acs: FakeAcs
    replicas: list[Replica]
    public_url: str

    def by_name(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)

    def other(self, replica: Replica) -> Replica:
        return next(r for r in self.replicas if r is not replica)

    async def probe(self) -> Replica:
        """One request through nginx: the replica that got it (round robin: the next one
        goes to the other)."""
        before = {r.name: r.control.stats.refused["not_found"] for r in self.replicas}
        response = await self.acs.http.post(f"{self.public_url}/probe", content=b"{}")
        assert response.status_code == 404
        (hit,) = [r for r in self.replicas if r.control.stats.refused["not_found"] > before[r.name]]
        return hit

    async def next_goes_to(self, replica: Replica) -> None:
        """Steer nginx's round robin: the next request through it goes to `replica`."""
        for _ in range(3):
            if (await self.probe()) is not replica:
                return
        raise AssertionError("nginx does not alternate between the replicas")

    async def callback_to(self, replica: Replica, call: FakeCall, kind: str, **data: Any) -> None:
        """ACS posts the call's callback `kind`, and nginx hands it to `replica`."""
        before = replica.control.stats.callbacks[kind]
        await self.next_goes_to(replica)
        await self.acs.callback(call, kind, **data)
        assert call.callbacks[-1].status == 200
        assert replica.control.stats.callbacks[kind] == before + 1


def on_keys(seen: list[Call]) -> Processor:
    """The processors' processor (`tests.replica_processor`), noting each call it runs."""
    keys = replica_processor.make({})

    async def processor(call: Call) -> None:
        seen.append(call)
        await keys(call)

    return processor


@asynccontextmanager
async def open_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    ca = trustme.CA()
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    issuer = AcsTokenIssuer()
    port = free_port()
    public_url = f"https://127.0.0.1:{port}"
    async with trio.open_nursery() as nursery:
        keys = await nursery.start(serve_key_set, issuer)
        async with open_fake_acs(issuer=issuer, client_ssl=trusting) as acs:
            replicas = []
            for name in ("a", "b"):
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                sock.listen(128)
                seen: list[Call] = []
                config = Config(
                    host="127.0.0.1",
                    port=0,
                    public_url=public_url,
                    replica_url=f"http://127.0.0.1:{sock.getsockname()[1]}",
                    acs_resource_id=RESOURCE_ID,
                    auth_key_set_url=keys.url,
                    routes=(Route(name="agent", processor="keys", dtmf=True),),
                )
                environ = {
                    "ACS_CONNECTION_STRING": acs.connection_string,
                    "ACS_GATEWAY_CALL_TOKEN_KEY": CALL_TOKEN_KEY,
                    "ACS_GATEWAY_EVENTGRID_SECRET": SECRET,
                }
                processors: Mapping[str, Processor] = {"keys": on_keys(seen)}

                def loader(
                    name: str,
                    options: Mapping[str, object],
                    p: Mapping[str, Processor] = processors,
                ) -> Processor:
                    return p[name]

                control = control_plane.from_config(config, environ, loader, **acs.sdk_options)
                assert control is not None
                server = await nursery.start(
                    partial(serve, config, ECHO, sockets=[sock], control=control)
                )
                replicas.append(Replica(name, server, control, seen))
            site = site_for_test(port, replicas[0].server.port, certfile, keyfile)
            site = site.replace("least_conn;", "")  # round robin: the test places each request
            site = site.replace(
                f"server 127.0.0.1:{replicas[0].server.port} max_fails=0;",
                f"server 127.0.0.1:{replicas[0].server.port} max_fails=0;\n"
                f"    server 127.0.0.1:{replicas[1].server.port} max_fails=0;",
            )
            try:
                async with running_nginx(tmp_path, site, port):
                    await acs.subscribe(f"{public_url}/eventgrid?secret={SECRET}")
                    yield Cluster(acs, replicas, public_url)
            finally:
                for replica in replicas:
                    replica.server.stop_now()
        nursery.cancel_scope.cancel()


async def ring_across(cluster: Cluster, answering: Replica) -> tuple[FakeCall, Replica]:
    """Ring a call that `answering` answers and the other replica streams; its
    CallConnected and MediaStreamingStarted are dropped on the way (posted later, by hand)."""
    acs = cluster.acs
    await cluster.next_goes_to(answering)
    acs.drop_callbacks = True  # round robin: IncomingCall to one, the media WebSocket next
    call = await acs.ring()
    with trio.fail_after(10):
        await call.media_connected.wait()
    acs.drop_callbacks = False
    holder = cluster.other(answering)
    assert call.correlation_id in answering.control.answering.answered  # type: ignore[union-attr]  # answering is on
    with trio.fail_after(5):
        while not holder.calls or holder.calls[-1].correlation_id != call.correlation_id:  # noqa: ASYNC110
            await trio.sleep(0.01)
    return call, holder


async def echo_once(call: FakeCall) -> None:
    assert call.media is not None
    already = len(call.media.received_pcm)
    await call.media.stream(HALF_SECOND, realtime=False)
    with trio.fail_after(10):
        await call.media.wait_for_audio(already + len(HALF_SECOND))
    assert call.media.received_pcm[already:] == HALF_SECOND


async def test_a_call_answered_by_one_replica_streams_to_the_other_and_hangs_up(tmp_path):
    async with open_cluster(tmp_path) as cluster:
        a, b = cluster.replicas
        for answering in (a, b):  # each replica answers one call the other streams
            call, holder = await ring_across(cluster, answering)
            await echo_once(call)
            processor_call = holder.calls[-1]
            control = processor_call.control
            assert control is not None
            # the home told the holder the IncomingCall's data
            assert (control.caller, control.callee) == ("4:+14255550123", "4:+18005550100")
            # callbacks to either replica reach the call on the holder
            kwargs: dict[str, Any] = {"result": (200, 0, "ok")}
            await cluster.callback_to(answering, call, "MediaStreamingStarted", **kwargs)
            assert control.media_streaming == "started"
            await cluster.callback_to(holder, call, "MediaStreamingStopped", **kwargs)
            assert control.media_streaming == "stopped"
            await cluster.callback_to(answering, call, "MediaStreamingStarted", **kwargs)
            assert control.media_streaming == "started"
            # the processor (on the holder) hangs up through ACS
            assert call.media is not None
            await call.media.send_dtmf("1")
            with trio.fail_after(10):
                await call.disconnected.wait()
                await call.media.closed.wait()
            last = [urlsplit(r.target).path.rpartition("/")[2] for r in cluster.acs.requests]
            assert last[-1] == f"{call.call_connection_id}:terminate"
            assert answering.control.answering is not None
            with trio.fail_after(5):
                while answering.control.answering.answered[call.correlation_id].state != "ended":  # noqa: ASYNC110
                    await trio.sleep(0.01)
        assert [r.server.stats.calls_accepted for r in (a, b)] == [1, 1]
        assert [r.control.stats.answers["answered"] for r in (a, b)] == [1, 1]


async def test_a_callback_on_either_replica_ends_the_call_on_the_other_and_transfers(tmp_path):
    async with open_cluster(tmp_path) as cluster:
        a, b = cluster.replicas
        # 1: CallDisconnected reaches the home (a), which is not the holder (b): b ends it
        call, holder = await ring_across(cluster, a)
        assert holder is b
        await echo_once(call)
        await cluster.callback_to(a, call, "CallDisconnected")  # ACS's socket has not closed yet
        assert call.media is not None
        with trio.fail_after(5):
            await call.media.closed.wait()
            await call.wait_for_callback("MediaStreamingStopped")  # the fake's, to b, passed to a
        assert call.media.close_code == 1000
        with trio.fail_after(5):
            while b.server.live:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert b.server.stats.ended_by == {"hangup": 1}
        assert a.control.replicas is not None and a.control.replicas.forwards == {"events:ok": 1}
        exposition = a.server.metrics.exposition()[0].decode()
        assert (
            'acs_gateway_replica_requests_total{operation="events",outcome="ok"} 1.0' in exposition
        )
        # 2: b answers, a streams; the processor on a transfers; the fake posts the outcome
        call, holder = await ring_across(cluster, b)
        assert holder is a
        await echo_once(call)
        assert call.media is not None
        await call.media.send_dtmf("2")
        with trio.fail_after(10):
            await call.disconnected.wait()
            await call.media.closed.wait()
        ((transfer),) = call.transfers
        assert transfer["targetParticipant"]["rawId"] == f"4:{TRANSFER_TO}"
        # 3: a token whose call has ended takes no more media, whichever replica it reaches
        assert b.control.answering is not None
        with trio.fail_after(5):
            while b.control.answering.answered[call.correlation_id].state != "ended":  # noqa: ASYNC110
                await trio.sleep(0.01)
        refused_before = a.control.stats.refused["media_call_over"]
        await cluster.next_goes_to(a)
        call.state = "connected"
        await cluster.acs.run_media(call)  # ACS tries the same transport URL again
        assert call.callbacks[-1].kind == "MediaStreamingFailed"
        assert a.control.stats.refused["media_call_over"] == refused_before + 1


# -- two gateway processes --


def metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


@attrs.define(eq=False)
class Process:
    port: int
    health: int

    async def metric(self, series: str) -> float:
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"http://127.0.0.1:{self.health}/metrics")
        return metric(reply.text, f"acs_gateway_{series}")


async def test_two_gateway_processes_behind_nginx(tmp_path):
    ca = trustme.CA()
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    issuer = AcsTokenIssuer()
    port = free_port()
    public_url = f"https://127.0.0.1:{port}"
    a, b = Process(free_port(), free_port()), Process(free_port(), free_port())
    async with trio.open_nursery() as nursery:
        keys = await nursery.start(serve_key_set, issuer)
        async with open_fake_acs(issuer=issuer, client_ssl=trusting) as acs:
            env = {
                "ACS_CONNECTION_STRING": acs.connection_string,
                "ACS_GATEWAY_CALL_TOKEN_KEY": CALL_TOKEN_KEY,
                "ACS_GATEWAY_EVENTGRID_SECRET": SECRET,
                "REQUESTS_CA_BUNDLE": acs.ca_path,  # the SDK's requests trusts the fake
            }
            for process in (a, b):
                (tmp_path / f"{process.port}.toml").write_text(
                    f'host = "127.0.0.1"\nport = {process.port}\nhealth_host = "127.0.0.1"\n'
                    f'health_port = {process.health}\npublic_url = "{public_url}"\n'
                    f'replica_url = "http://127.0.0.1:{process.port}"\n'
                    f'acs_resource_id = "{RESOURCE_ID}"\nauth_key_set_url = "{keys.url}"\n'
                    'processor = "tests.replica_processor:make"\n'
                    '[[routes]]\nname = "agent"\ndtmf = true\n'
                )
            site = site_for_test(port, a.port, certfile, keyfile).replace("least_conn;", "")
            site = site.replace(
                f"server 127.0.0.1:{a.port} max_fails=0;",
                f"server 127.0.0.1:{a.port} max_fails=0;\n"
                f"    server 127.0.0.1:{b.port} max_fails=0;",
            )
            serve_a = [sys.executable, "-m", "gateway", "serve", "--config"]
            async with (
                gateway_process([*serve_a, str(tmp_path / f"{a.port}.toml")], env=env),
                gateway_process([*serve_a, str(tmp_path / f"{b.port}.toml")], env=env),
                running_nginx(tmp_path, site, port),
            ):
                await acs.subscribe(f"{public_url}/eventgrid?secret={SECRET}")

                async def next_goes_to(target: Process) -> None:
                    for _ in range(3):
                        before = await target.metric('control_refused_total{reason="not_found"}')
                        await acs.http.post(f"{public_url}/probe", content=b"{}")
                        after = await target.metric('control_refused_total{reason="not_found"}')
                        if after == before:  # the other one got it: the next is the target's
                            return
                    raise AssertionError("nginx does not alternate between the replicas")

                for home, holder in ((a, b), (b, a)):
                    await next_goes_to(home)
                    acs.drop_callbacks = True  # IncomingCall to the home, the media next
                    call = await acs.ring()
                    with trio.fail_after(10):
                        await call.media_connected.wait()
                    acs.drop_callbacks = False
                    await echo_once(call)
                    assert await home.metric('answers_total{result="answered"}') == 1
                    assert (
                        await holder.metric(
                            'replica_requests_total{operation="media",outcome="ok"}'
                        )
                        == 1
                    )
                    assert call.media is not None
                    if home is a:  # CallDisconnected at the home ends the call on the holder
                        await next_goes_to(home)
                        await acs.callback(call, "CallDisconnected")
                        with trio.fail_after(5):
                            await call.media.closed.wait()
                            await call.wait_for_callback("MediaStreamingStopped")  # the fake's
                        assert call.media.close_code == 1000
                        assert (
                            await home.metric(
                                'replica_requests_total{operation="events",outcome="ok"}'
                            )
                            == 1
                        )
                    else:  # the processor on the holder hangs up through ACS
                        await call.media.send_dtmf("1")
                        with trio.fail_after(10):
                            await call.disconnected.wait()
                            await call.media.closed.wait()
                        last = urlsplit(acs.requests[-1].target).path.rpartition("/")[2]
                        assert last == f"{call.call_connection_id}:terminate"
                assert await a.metric("calls_accepted_total") == 1
                assert await b.metric("calls_accepted_total") == 1
        nursery.cancel_scope.cancel()
