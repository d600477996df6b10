"""The `centrifuge-python` client SDK from PyPI, unchanged, against the real switchboard binary;
publications are made with the `cent` server API library."""

from __future__ import annotations

import asyncio
import time

import pytest
from cent import AsyncClient, Disconnect, DisconnectRequest, PublishRequest
from centrifuge import ClientState, SubscriptionState

from support import (
    API_KEY,
    SECRET,
    EventLog,
    SubscriptionEvents,
    new_client,
    sign_jwt,
    token,
    unique_channel,
    within,
)


@pytest.fixture
async def async_api(server):
    client = AsyncClient(server.api_url, API_KEY, timeout=5.0)
    yield client
    await client.close()


@pytest.fixture
async def clients():
    opened = []
    yield opened
    for c in opened:
        await within(c.disconnect(), 5, "client disconnect")


def sub_with_log(client, channel, **kwargs):
    log = EventLog()
    return client.new_subscription(channel, events=SubscriptionEvents(log), **kwargs), log


async def test_connect_with_token_subscribe_and_receive_a_cent_publication(server, async_api, clients):
    log = EventLog()
    client = new_client(server, log, token=token("py-1"))
    clients.append(client)
    await within(client.connect(), 5, "connect")
    connected = await log.wait("connected", 5)
    assert connected.client
    assert client.state == ClientState.CONNECTED

    channel = unique_channel("room")
    sub, sub_log = sub_with_log(client, channel)
    await within(sub.subscribe(), 5, "subscribe")
    await sub_log.wait("subscribed", 5)
    assert sub.state == SubscriptionState.SUBSCRIBED

    result = await async_api.publish(PublishRequest(channel=channel, data={"from": "cent", "n": 1}))
    pub = await sub_log.wait("publication", 5)
    assert pub.pub.data == {"from": "cent", "n": 1}
    assert pub.pub.offset == result.offset

    # Clients may not publish in this namespace (no allow_publish_*): error 103.
    with pytest.raises(Exception) as err:
        await within(sub.publish({"from": "client"}), 5, "client publish")
    assert getattr(err.value, "code", None) == 103, err.value

    presence = await within(sub.presence(), 5, "presence")
    assert [c.user for c in presence.clients.values()] == ["py-1"]
    stats = await within(sub.presence_stats(), 5, "presence_stats")
    assert (stats.num_clients, stats.num_users) == (1, 1)

    history = await within(sub.history(limit=10), 5, "history")
    assert [p.data for p in history.publications] == [{"from": "cent", "n": 1}]


async def test_get_token_refreshes_a_short_token_and_stays_connected(server, async_api, clients):
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        return token("py-2", ttl=3)

    log = EventLog()
    client = new_client(server, log, get_token=get_token)
    clients.append(client)
    await within(client.connect(), 5, "connect")
    await log.wait("connected", 5)
    channel = unique_channel("room")
    sub, sub_log = sub_with_log(client, channel)
    await within(sub.subscribe(), 5, "subscribe")
    await sub_log.wait("subscribed", 5)

    # Expiry at 3 s, server grace 2 s: without a refresh the server closes 3005 at ~5 s.
    await asyncio.sleep(7.5)
    assert client.state == ClientState.CONNECTED, log.names()
    names = log.names()
    assert names[names.index("connected") + 1 :] == [], f"events after connecting: {names}"
    assert calls >= 2, calls

    await async_api.publish(PublishRequest(channel=channel, data={"still": "here"}))
    pub = await sub_log.wait("publication", 5)
    assert pub.pub.data == {"still": "here"}


async def test_invalid_token_is_refused_with_3500(server, clients):
    log = EventLog()
    client = new_client(server, log, token=sign_jwt({"sub": "py-3"}, secret="not-the-secret"))
    clients.append(client)
    await within(client.connect(), 5, "connect")
    ctx = await log.wait("disconnected", 5)
    assert ctx.code == 3500, (ctx, log.names())
    assert client.state == ClientState.DISCONNECTED


async def test_private_channel_with_subscription_token(server, async_api, clients):
    log = EventLog()
    client = new_client(server, log, token=token("py-4"))
    clients.append(client)
    await within(client.connect(), 5, "connect")
    await log.wait("connected", 5)

    channel = "$" + unique_channel()
    asked = []

    async def get_sub_token(ch: str) -> str:
        asked.append(ch)
        return sign_jwt({"sub": "py-4", "channel": ch}, secret=SECRET)

    sub, sub_log = sub_with_log(client, channel, get_token=get_sub_token)
    await within(sub.subscribe(), 5, "subscribe")
    await sub_log.wait("subscribed", 5)
    assert asked == [channel]
    await async_api.publish(PublishRequest(channel=channel, data={"private": True}))
    assert (await sub_log.wait("publication", 5)).pub.data == {"private": True}

    other, other_log = sub_with_log(client, "$" + unique_channel())
    await within(other.subscribe(), 5, "subscribe")
    ctx = await other_log.wait("unsubscribed", 5)
    assert ctx.code == 103, ctx


async def test_recovery_after_a_forced_reconnect(server, async_api, clients):
    """The python SDK recovers the publications it missed while disconnected (3011)."""
    log = EventLog()
    # Reconnect no sooner than 2 s after the disconnect: the publications below take milliseconds.
    client = new_client(server, log, token=token("py-5"), min_reconnect_delay=2.0, max_reconnect_delay=2.5)
    clients.append(client)
    await within(client.connect(), 5, "connect")
    await log.wait("connected", 5)
    channel = unique_channel("room")
    sub, sub_log = sub_with_log(client, channel)
    await within(sub.subscribe(), 5, "subscribe")
    await sub_log.wait("subscribed", 5)
    await async_api.publish(PublishRequest(channel=channel, data={"i": 0}))
    await sub_log.wait("publication", 5)

    await async_api.disconnect(
        DisconnectRequest(user="py-5", disconnect=Disconnect(code=3011, reason="force reconnect"))
    )
    await log.wait("connecting", 5, lambda c: c.code == 3011)
    for i in range(1, 11):
        await async_api.publish(PublishRequest(channel=channel, data={"i": i}))
    published_at = time.monotonic()
    assert len(log.of("connected")) == 1, "reconnected before the publications were made"

    ctx = await sub_log.wait("subscribed", 10, count=2)
    assert len(log.of("connected")) == 2
    assert time.monotonic() >= published_at
    assert ctx.was_recovering is True, ctx
    assert ctx.recovered is True, ctx
    await sub_log.wait("publication", 5, count=11)
    got = [c.pub.data["i"] for c in sub_log.of("publication")]
    assert got == list(range(0, 11)), got
