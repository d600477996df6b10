#!/usr/bin/env python3
"""Delay and loss for IP packets in user space, for kernels without the netem qdisc.

Used by e2e/faults (netns.mjs, `degrade`) inside the router namespace of a fault run: it
creates the TUN device NAME, and the router's policy rules send one host's packets (both
directions) through it. Every packet read from the device is dropped with probability LOSS
(percent), else written back after DELAY ms, in order: the kernel then forwards it as if it had
arrived on the device. TCP sees real loss (it retransmits) and real latency.

    netem.py NAME DELAY_MS LOSS_PERCENT

Prints "ready" once the device exists; runs until SIGTERM/SIGINT. Linux only; needs root
(CAP_NET_ADMIN) and /dev/net/tun.
"""

import collections
import fcntl
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def main():
    name, delay_ms, loss = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    running = [True]

    def stop(*_):
        running[0] = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    queue = collections.deque()  # (due, packet), due in order: the delay is constant
    delay = delay_ms / 1000.0
    seen = dropped = 0
    while running[0]:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            try:
                os.write(fd, queue.popleft()[1])
            except OSError:
                pass  # e.g. no route any more: the packet is lost, as on a wire
        timeout = max(0.0, queue[0][0] - now) if queue else 0.2
        try:
            readable, _, _ = select.select([fd], [], [], timeout)
        except InterruptedError:
            continue
        if not readable:
            continue
        while True:
            try:
                packet = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                break
            seen += 1
            if random.random() * 100.0 < loss:
                dropped += 1
                continue
            queue.append((time.monotonic() + delay, packet))
    print(f"packets {seen}, dropped {dropped}", flush=True)


if __name__ == "__main__":
    main()
