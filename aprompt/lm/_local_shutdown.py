"""Stopping the embedded llama.cpp server in bounded time, whoever keeps its slots busy.

Destroying an xllamacpp server while a request is in flight hangs the destructor for good (holding the
GIL, the whole process with it): the request waits on a decoding loop that the shutdown has stopped, for
as long as its connection is open. llama.cpp neither cancels a request whose client went away nor has a
call that cancels one. So the requests in flight when the server is left are let finish (each ends within
its token budget; cut after a minute all the same); then the server's end of each connection still open
is shut, which fails the requests sent since (their clients see the connection closed without a reply:
another program's, or a task's that kept calling) and lets the destructor finish. Waiting for the slots to
go idle instead never ended while another client kept them busy.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from urllib.parse import urlsplit

#: Seconds between two looks at the server's slots while it finishes the requests in flight.
IDLE_POLL_SECONDS = 0.05
#: Seconds the requests in flight when the server is left get to finish before they are cut too.
FINISH_SECONDS = 60.0
#: /proc/net's state of a listening TCP socket.
_LISTEN = "0A"


def finish_requests_in_flight(address: str, within: float = FINISH_SECONDS) -> None:
    """Block until the requests the server at ``address`` is decoding now have ended (not those it
    starts meanwhile), or ``within`` seconds have passed."""
    deadline = time.monotonic() + within
    in_flight = _tasks_decoding(address)
    while in_flight and time.monotonic() < deadline:
        time.sleep(IDLE_POLL_SECONDS)
        in_flight &= _tasks_decoding(address)


def _tasks_decoding(address: str) -> set[tuple[object, object]]:
    """The (slot, task) pairs the server's slots are decoding; none when the slots cannot be read."""
    # No proxy: the server is on loopback, whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{address}/slots", timeout=5) as answer:
            slots = json.load(answer)
    except (OSError, ValueError):  # no slots to read: nothing to wait for
        return set()
    if not isinstance(slots, list):
        return set()
    return {
        (slot.get("id"), slot.get("id_task"))
        for slot in slots
        if isinstance(slot, dict) and slot.get("is_processing")
    }


def cut_connections(address: str) -> int:
    """Shut this process's server end of every connection to ``address`` (the listening socket aside):
    a request in flight on one fails at once. Returns how many were cut; 0 where the system does not
    tell sockets apart as Linux's /proc does."""
    port = urlsplit(address).port
    if port is None:
        return 0
    cut = 0
    for fd in _server_side_fds(port):
        try:
            # A duplicate, closed after: the server's own descriptor stays its to close.
            with socket.socket(fileno=os.dup(fd)) as connection:
                connection.shutdown(socket.SHUT_RDWR)
            cut += 1
        except OSError:  # closed meanwhile, or not a socket any more
            continue
    return cut


def _server_side_fds(port: int) -> list[int]:
    """This process's descriptors of TCP connections whose local port is ``port``, not listening."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as rows:
                next(rows, None)
                for row in rows:
                    fields = row.split()
                    if (
                        len(fields) > 9
                        and fields[3] != _LISTEN
                        and int(fields[1].rsplit(":", 1)[1], 16) == port
                    ):
                        inodes.add(fields[9])
        except (OSError, ValueError):
            continue
    if not inodes:
        return []
    found = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            found.append(int(name))
    return found
