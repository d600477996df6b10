"""Helpers for the Python end-to-end tests: the real `switchboard` binary on a free loopback port,
a production-like configuration (HMAC token secret, API key), and small helpers.

Environment:
  SWITCHBOARD_BIN    path to the binary (default: target/release/switchboard of this repo)
  E2E_SERVER_LOGS=1  copy the server's output to stderr when the server stops
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler


HERE = Path(__file__).resolve().parent
BIN = Path(os.environ.get("SWITCHBOARD_BIN") or HERE.parent.parent / "target" / "release" / "switchboard")

SECRET = "py-e2e-hmac-secret"
API_KEY = "py-e2e-api-key"

CONFIG = f"""
[client]
allow_anonymous = false
expired_close_delay = "2s"

[client.token]
hmac_secret_key = "{SECRET}"

[api]
key = "{API_KEY}"

[channel.default]
allow_subscribe_for_client = true

[[channel.namespaces]]
name = "room"
allow_subscribe_for_client = true
history_size = 100
history_ttl = "300s"
force_recovery = true
presence = true
join_leave = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    dir: tempfile.TemporaryDirectory
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.http_url}/api"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-65536:]
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if os.environ.get("E2E_SERVER_LOGS") == "1":
            sys.stderr.write(self.logs())
        self.dir.cleanup()


def start_server(config: str = CONFIG, ready_timeout: float = 15.0, attempts: int = 5) -> Server:
    """Starts the binary with `config` on a free port and waits for `GET /health` to answer 200."""
    if not BIN.exists():
        raise RuntimeError(
            f"switchboard binary not found at {BIN}; run `cargo build --release -p switchboard-server` "
            "or set SWITCHBOARD_BIN"
        )
    last_error: Optional[Exception] = None
    for _ in range(attempts):
        port = free_port()
        tmp = tempfile.TemporaryDirectory(prefix="switchboard-py-e2e-")
        cfg = Path(tmp.name) / "switchboard.toml"
        cfg.write_text(config)
        log_path = Path(tmp.name) / "server.log"
        # The developer's SWITCHBOARD_* settings stay out of the server under test.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            [str(BIN), "--config", str(cfg), "--address", f"127.0.0.1:{port}"],
            cwd=tmp.name,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        server = Server(proc, port, tmp, log_path)
        try:
            _wait_healthy(server, ready_timeout)
            return server
        except Exception as err:  # noqa: BLE001 - retried or re-raised below
            last_error = err
            output = server.logs()
            server.stop(1.0)
            if "in use" not in output and "AddrInUse" not in output and "os error 98" not in output:
                raise
    assert last_error is not None
    raise last_error


def _wait_healthy(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"switchboard exited with {server.proc.returncode} before it was healthy:\n{server.logs()}"
            )
        try:
            with urllib.request.urlopen(f"{server.http_url}/health", timeout=1) as res:
                if res.status == 200:
                    return
                last = f"HTTP {res.status}"
        except (urllib.error.URLError, OSError) as err:
            last = str(err)
        time.sleep(0.05)
    raise RuntimeError(f"switchboard on port {server.port} not healthy after {timeout}s ({last}):\n{server.logs()}")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(claims: dict, secret: str = SECRET, ttl: Optional[int] = 3600) -> str:
    """An HS256 JWT signed by hand (hmac + hashlib), the way a backend signs tokens."""
    now = int(time.time())
    payload = {"iat": now, **claims}
    if ttl and "exp" not in payload:
        payload["exp"] = now + ttl
    header = _b64(json.dumps({"typ": "JWT", "alg": "HS256"}).encode())
    body = _b64(json.dumps(payload).encode())
    signing_input = f"{header}.{body}".encode()
    sig = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(sig)}"


def token(user: str, ttl: int = 3600) -> str:
    return sign_jwt({"sub": user}, ttl=ttl)


_seq = 0


def unique_channel(namespace: str = "") -> str:
    global _seq
    _seq += 1
    name = f"py-{os.getpid()}-{int(time.time() * 1000):x}-{_seq}"
    return f"{namespace}:{name}" if namespace else name


class EventLog:
    """Records events as (name, ctx) and lets tests await one with a deadline."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []
        self._cond: Optional[asyncio.Condition] = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    async def add(self, name: str, ctx: Any) -> None:
        cond = self._condition()
        async with cond:
            self.items.append((name, ctx))
            cond.notify_all()

    def names(self) -> list[str]:
        return [n for n, _ in self.items]

    def of(self, name: str) -> list[Any]:
        return [c for n, c in self.items if n == name]

    async def wait(
        self,
        name: str,
        timeout: float = 5.0,
        predicate: Callable[[Any], bool] = lambda _: True,
        count: int = 1,
    ) -> Any:
        """Waits until `count` events `name` matching `predicate` were recorded; returns the last."""
        cond = self._condition()

        def matching() -> list[Any]:
            return [c for n, c in self.items if n == name and predicate(c)]

        async def waiter() -> Any:
            async with cond:
                await cond.wait_for(lambda: len(matching()) >= count)
                return matching()[count - 1]

        try:
            return await asyncio.wait_for(waiter(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {count} x {name!r}; events: {self.names()}"
            ) from None


async def within(awaitable: Awaitable[Any], timeout: float = 5.0, what: str = "operation") -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"{what} did not finish within {timeout}s") from None


class ClientEvents(ClientEventHandler):
    """Records every client event into `log` (names: connecting, connected, disconnected, error)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log

    async def on_connecting(self, ctx):
        await self.log.add("connecting", ctx)

    async def on_connected(self, ctx):
        await self.log.add("connected", ctx)

    async def on_disconnected(self, ctx):
        await self.log.add("disconnected", ctx)

    async def on_error(self, ctx):
        await self.log.add("error", ctx)


class SubscriptionEvents(SubscriptionEventHandler):
    """Records every subscription event into `log`."""

    def __init__(self, log: EventLog) -> None:
        self.log = log

    async def on_subscribing(self, ctx):
        await self.log.add("subscribing", ctx)

    async def on_subscribed(self, ctx):
        await self.log.add("subscribed", ctx)

    async def on_unsubscribed(self, ctx):
        await self.log.add("unsubscribed", ctx)

    async def on_publication(self, ctx):
        await self.log.add("publication", ctx)

    async def on_join(self, ctx):
        await self.log.add("join", ctx)

    async def on_leave(self, ctx):
        await self.log.add("leave", ctx)

    async def on_error(self, ctx):
        await self.log.add("error", ctx)


def new_client(server: Server, log: EventLog, **kwargs: Any) -> Client:
    """A centrifuge-python client for `server`; not connected. No proxy from the environment."""
    opts: dict[str, Any] = {"min_reconnect_delay": 0.1, "max_reconnect_delay": 1.0, "timeout": 5.0, "proxy": None}
    opts.update(kwargs)
    return Client(server.ws_url, events=ClientEvents(log), **opts)
