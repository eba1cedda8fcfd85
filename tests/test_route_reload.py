"""SIGHUP reloads `[[routes]]`: new calls take the new routes, calls already answered keep
theirs, and a table whose processor does not load is refused whole, the old one kept."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping
from urllib.parse import urlsplit

import orjson
import trio

from gateway import config as configuration
from gateway.config import Config
from gateway.control import CallTokens, ControlPlane
from gateway.control import plane as control_plane
from gateway.errors import ConfigError
from gateway.ops.reload import reload, reload_on_sighup
from gateway.processors import Call, Processor, load
from gateway.testing import simulated_call
from tests.test_control import EG, KEY, SECRET, FakeAnswerer, http, incoming, post, served

ECHO = load("echo", {})


def loader(seen: list[tuple[str, Call]]):  # type: ignore[no-untyped-def]  # a test's factory
    def make(name: str, options: Mapping[str, object]) -> Processor:
        if name not in ("old", "new", "echo"):
            raise ConfigError(f"no processor {name!r}")

        async def processor(call: Call) -> None:
            seen.append((name, call))
            await ECHO(call)

        return processor

    return make


def routes_file(path, table: str) -> None:  # type: ignore[no-untyped-def]
    path.write_text(f'public_url = "https://gw.example.com"\nprocessor = "echo"\n{table}')


def answering_plane(config: Config, seen: list[tuple[str, Call]], answerer: FakeAnswerer):
    make = loader(seen)
    return ControlPlane(
        config,
        control_plane.route_processors(config, make),
        answerer=answerer,
        tokens=CallTokens(KEY, config.call_token_lifetime),
        eventgrid_secret=SECRET,
        load_processor=make,
    )


async def ring(server, corr: str) -> None:  # type: ignore[no-untyped-def]
    body = orjson.dumps([incoming(corr, to="4:+18005550100")])
    assert (await http(server, post(EG, body)))[0] == 200


def media_path(url: str) -> str:
    target = urlsplit(url)
    return f"{target.path}?{target.query}"


async def test_sighup_reloads_routes_new_calls_new_routes_answered_calls_keep_theirs(
    tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    path = tmp_path / "gateway.toml"
    routes_file(path, '[[routes]]\nname = "sales"\ncallee = ["+18005550100"]\nprocessor = "old"\n')

    def load_config() -> Config:
        return configuration.load(path, environ={}, overrides={"host": "127.0.0.1", "port": 0})

    seen: list[tuple[str, Call]] = []
    answerer = FakeAnswerer()
    control = answering_plane(load_config(), seen, answerer)
    async with served(control) as server:
        await ring(server, "before")
        routes_file(
            path, '[[routes]]\nname = "support"\ncallee = ["+18005550100"]\nprocessor = "new"\n'
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(reload_on_sighup, server, load_config)
            os.kill(os.getpid(), signal.SIGHUP)
            with trio.fail_after(5):
                while "support" not in control.routes:  # noqa: ASYNC110  (the signal's task)
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert "sales" not in control.routes
        await ring(server, "after")
        before, after = answerer.requests
        assert urlsplit(before.transport_url).path == "/ws/sales"
        assert urlsplit(after.transport_url).path == "/ws/support"  # a new call: the new route
        for n, (request, corr) in enumerate(((before, "before"), (after, "after")), 1):
            async with simulated_call(
                server.urls[0],
                resource=media_path(request.transport_url),
                correlation_id=corr,
                connection_id=f"conn-{n}",
            ) as call:
                await call.stream(b"\x01\x00" * 320, realtime=False)
                with trio.fail_after(5):
                    await call.wait_for_audio(640)
        # answered before the reload: its route is gone, its call keeps it
        assert [name for name, _ in seen] == ["old", "new"]
    assert "configuration reloaded: routes=" in caplog.text


async def test_a_routes_table_whose_processor_does_not_load_is_refused_and_the_old_kept(
    tmp_path, caplog
):
    path = tmp_path / "gateway.toml"
    routes_file(path, '[[routes]]\nname = "sales"\ncallee = ["+18005550100"]\nprocessor = "old"\n')

    def load_config() -> Config:
        return configuration.load(path, environ={}, overrides={"host": "127.0.0.1", "port": 0})

    seen: list[tuple[str, Call]] = []
    answerer = FakeAnswerer()
    control = answering_plane(load_config(), seen, answerer)
    async with served(control) as server:
        routes_file(
            path, '[[routes]]\nname = "sales"\ncallee = ["+18005550100"]\nprocessor = "nope"\n'
        )
        running = server.config
        assert reload(server, load_config) is None
        assert server.config is running and control.config.routes == running.routes
        await ring(server, "still")
        (request,) = answerer.requests
        assert urlsplit(request.transport_url).path == "/ws/sales"
        async with simulated_call(
            server.urls[0],
            resource=media_path(request.transport_url),
            correlation_id="still",
            connection_id="conn-1",
        ) as call:
            await call.stream(b"\x01\x00" * 320, realtime=False)
            with trio.fail_after(5):
                await call.wait_for_audio(640)
        assert [name for name, _ in seen] == ["old"]
    assert "reload rejected, the running configuration stays: routes.sales:" in caplog.text
    assert "no processor 'nope'" in caplog.text
