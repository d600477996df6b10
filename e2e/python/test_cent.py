"""The `cent` server API library from PyPI, unchanged, against the real switchboard binary.

Clients on the other side of the API calls are centrifuge-python clients with tokens, so that
presence, disconnect and delivery are observed the way an application would see them.
"""

from __future__ import annotations

import asyncio

import pytest
from cent import (
    AsyncClient,
    BatchRequest,
    BroadcastRequest,
    ChannelsRequest,
    Client,
    Disconnect,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    StreamPosition,
)
from cent.exceptions import CentApiResponseError, CentError, CentUnauthorizedError

from support import API_KEY, EventLog, SubscriptionEvents, new_client, token, unique_channel, within


@pytest.fixture
def api(server):
    client = Client(server.api_url, API_KEY, timeout=5.0)
    yield client
    client.close()


@pytest.fixture
async def async_api(server):
    client = AsyncClient(server.api_url, API_KEY, timeout=5.0)
    yield client
    await client.close()


@pytest.fixture
async def clients():
    """Connected centrifuge-python clients of a test; disconnected after it."""
    opened = []
    yield opened
    for c in opened:
        await within(c.disconnect(), 5, "client disconnect")


async def connected_client(server, clients, user: str, **kwargs):
    log = EventLog()
    client = new_client(server, log, token=token(user), **kwargs)
    clients.append(client)
    await within(client.connect(), 5, "connect")
    await log.wait("connected", 5)
    return client, log


async def subscribed(client, channel: str, **kwargs):
    log = EventLog()
    sub = client.new_subscription(channel, events=SubscriptionEvents(log), **kwargs)
    await within(sub.subscribe(), 5, "subscribe")
    await log.wait("subscribed", 5)
    return sub, log


def test_publish_returns_the_stream_position_and_history_keeps_it(api):
    channel = unique_channel("room")
    first = api.publish(PublishRequest(channel=channel, data={"n": 1}))
    second = api.publish(PublishRequest(channel=channel, data={"n": 2}))
    assert first.offset == 1
    assert second.offset == 2
    assert first.epoch and first.epoch == second.epoch

    history = api.history(HistoryRequest(channel=channel, limit=10))
    assert [p.data for p in history.publications] == [{"n": 1}, {"n": 2}]
    assert [p.offset for p in history.publications] == [1, 2]
    assert history.offset == 2
    assert history.epoch == first.epoch

    since = api.history(
        HistoryRequest(channel=channel, limit=10, since=StreamPosition(offset=1, epoch=first.epoch))
    )
    assert [p.data for p in since.publications] == [{"n": 2}]

    newest_first = api.history(HistoryRequest(channel=channel, limit=1, reverse=True))
    assert [p.data for p in newest_first.publications] == [{"n": 2}]

    api.history_remove(HistoryRemoveRequest(channel=channel))
    emptied = api.history(HistoryRequest(channel=channel, limit=10))
    assert emptied.publications == []
    # The stream position survives history_remove.
    assert emptied.offset == 2
    assert emptied.epoch == first.epoch


def test_publish_idempotency_key_drops_the_retry(api):
    channel = unique_channel("room")
    first = api.publish(PublishRequest(channel=channel, data={"once": True}, idempotency_key="k-1"))
    retry = api.publish(PublishRequest(channel=channel, data={"once": True}, idempotency_key="k-1"))
    assert retry.offset == first.offset
    history = api.history(HistoryRequest(channel=channel, limit=10))
    assert [p.data for p in history.publications] == [{"once": True}]


def test_broadcast_answers_per_channel(api):
    channels = [unique_channel("room"), unique_channel("room")]
    result = api.broadcast(BroadcastRequest(channels=channels, data={"all": 1}))
    assert len(result.responses) == 2
    for response in result.responses:
        assert response.error is None, response
        assert response.result is not None and response.result.offset == 1
    for channel in channels:
        history = api.history(HistoryRequest(channel=channel, limit=10))
        assert [p.data for p in history.publications] == [{"all": 1}]


def test_errors_come_back_with_codes(server, api):
    with pytest.raises(CentApiResponseError) as err:
        api.publish(PublishRequest(channel="nosuchnamespace:x", data={}))
    assert err.value.code == 102, err.value

    with pytest.raises(CentApiResponseError) as err:
        api.history(HistoryRequest(channel=unique_channel(), limit=10))  # default namespace: no history
    assert err.value.code == 108, err.value

    bad = Client(server.api_url, "wrong-key", timeout=5.0)
    try:
        with pytest.raises(CentUnauthorizedError):
            bad.publish(PublishRequest(channel=unique_channel("room"), data={}))
    finally:
        bad.close()


def test_batch(api):
    channel = unique_channel("room")
    result = api.batch(
        BatchRequest(
            requests=[
                PublishRequest(channel=channel, data={"b": 1}),
                PublishRequest(channel=channel, data={"b": 2}),
                HistoryRequest(channel=channel, limit=10),
            ]
        )
    )
    assert len(result.replies) == 3
    assert result.replies[0].offset == 1
    assert result.replies[1].offset == 2
    assert [p.data for p in result.replies[2].publications] == [{"b": 1}, {"b": 2}]


def test_info_lists_this_node(api):
    info = api.info(InfoRequest())
    assert len(info.nodes) >= 1
    node = info.nodes[0]
    assert node.uid
    assert node.name


async def test_publish_reaches_a_subscriber_and_presence_lists_it(server, async_api, clients):
    channel = unique_channel("room")
    client, _ = await connected_client(server, clients, "py-alice")
    _, sub_log = await subscribed(client, channel)

    result = await async_api.publish(PublishRequest(channel=channel, data={"hello": "python"}))
    pub = await sub_log.wait("publication", 5)
    assert pub.pub.data == {"hello": "python"}
    assert pub.pub.offset == result.offset

    presence = await async_api.presence(PresenceRequest(channel=channel))
    assert [c.user for c in presence.presence.values()] == ["py-alice"]
    stats = await async_api.presence_stats(PresenceStatsRequest(channel=channel))
    assert (stats.num_clients, stats.num_users) == (1, 1)

    channels = await async_api.channels(ChannelsRequest(pattern=channel))
    assert channel in channels.channels, channels
    assert channels.channels[channel].num_clients == 1

    info = await async_api.info(InfoRequest())
    assert sum(n.num_clients for n in info.nodes) >= 1


async def test_disconnect_with_reconnect_code(server, async_api, clients):
    channel = unique_channel("room")
    client, log = await connected_client(server, clients, "py-bob")
    _, sub_log = await subscribed(client, channel)

    await async_api.disconnect(
        DisconnectRequest(user="py-bob", disconnect=Disconnect(code=3011, reason="force reconnect"))
    )
    connecting = await log.wait("connecting", 5, lambda c: c.code == 3011)
    assert connecting.reason == "force reconnect"
    await log.wait("connected", 10, count=2)
    await sub_log.wait("subscribed", 10, count=2)

    await async_api.publish(PublishRequest(channel=channel, data={"back": True}))
    pub = await sub_log.wait("publication", 5)
    assert pub.pub.data == {"back": True}
    assert "disconnected" not in log.names()


async def test_disconnect_for_good(server, async_api, clients):
    client, log = await connected_client(server, clients, "py-carol")
    await async_api.disconnect(DisconnectRequest(user="py-carol"))
    ctx = await log.wait("disconnected", 5)
    # docs/PROTOCOL.md: 3503 "force disconnect", no reconnect.
    assert ctx.code == 3503, (ctx, log.names())
    await asyncio.sleep(0.5)
    assert log.names().count("connected") == 1, log.names()
