#!/usr/bin/env python3
"""A network link with switchable one-way latency, for kernels without sch_netem.

timing-advisor.sh uses `tc ... netem delay` when the kernel has it. Where it does not (a
Firecracker guest, for one, builds no sch_netem), this stands in for the cable between one
node's namespace and the bridge: two TAP devices, the frames of one relayed to the other by
this process. Frames leaving the node's side are held DELAY_MS while the delay is on (SIGUSR1
turns it on, SIGUSR2 off), as netem on the node's interface would hold its egress; frames
towards the node pass at once. Order is kept on each direction, also when the delay is
turned off with frames still held. The kernel's TCP sees real round trips: nothing above
the link knows.

    slow-link.py NODE_TAP BRIDGE_TAP DELAY_MS      # e.g. 40, or 200-500

DELAY_MS is one figure, or a range LO-HI: then each frame is held a delay drawn uniformly
from it (order still kept, so a frame after a long-held one waits for it, as on a real
queue). deploy/docker/chaos.py puts a container's link through it the same way.

Creates both TAP devices in the network namespace it runs in and prints "ready" once they
exist (the caller moves NODE_TAP into the node's namespace and addresses it). Exits on
SIGTERM or SIGINT; the TAP devices disappear with it. Every held frame is bounded
(HELD_FRAMES_MAX per direction; beyond that the oldest is dropped, as a full queue would).
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
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
FRAME_BYTES_MAX = 65536
HELD_FRAMES_MAX = 10000


def open_tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: slow-link.py NODE_TAP BRIDGE_TAP DELAY_MS|LO-HI")
    node_name, bridge_name = sys.argv[1], sys.argv[2]
    try:
        lo, _, hi = sys.argv[3].partition("-")
        lo_ms = float(lo)
        hi_ms = float(hi) if hi else lo_ms
    except ValueError:
        sys.exit(f"slow-link.py: DELAY_MS {sys.argv[3]!r} is not a number or a range LO-HI")
    if not 0 <= lo_ms <= hi_ms:
        sys.exit(f"slow-link.py: DELAY_MS {sys.argv[3]!r}: need 0 <= LO <= HI")
    node, bridge = open_tap(node_name), open_tap(bridge_name)
    state = {"delay_on": False, "stop": False}

    def on(*_):
        state["delay_on"] = True

    def off(*_):
        state["delay_on"] = False

    def delay_s():
        if not state["delay_on"]:
            return 0.0
        return random.uniform(lo_ms, hi_ms) / 1000.0

    def stop(*_):
        state["stop"] = True

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)

    # Per direction: (due, frame), due never earlier than the frame before it.
    held = {node: collections.deque(), bridge: collections.deque()}
    dest = {node: bridge, bridge: node}
    while not state["stop"]:
        now = time.monotonic()
        for src, q in held.items():
            while q and q[0][0] <= now:
                _, frame = q.popleft()
                try:
                    os.write(dest[src], frame)
                except OSError:
                    pass  # the other side is down or its queue full: the frame is lost
        dues = [q[0][0] for q in held.values() if q]
        wait = max(0.0, min(dues) - now) if dues else 0.5
        try:
            ready, _, _ = select.select([node, bridge], [], [], wait)
        except InterruptedError:
            continue
        now = time.monotonic()
        for src in ready:
            for _ in range(64):  # drain a burst, then look at the clock again
                try:
                    frame = os.read(src, FRAME_BYTES_MAX)
                except BlockingIOError:
                    break
                except OSError:
                    break  # the interface is down (e.g. not yet up): nothing to relay
                q = held[src]
                due = now + (delay_s() if src == node else 0.0)
                if q and q[-1][0] > due:
                    due = q[-1][0]
                if len(q) >= HELD_FRAMES_MAX:
                    q.popleft()
                q.append((due, frame))


if __name__ == "__main__":
    main()
