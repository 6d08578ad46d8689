"""A blocking WebSocket connection for the sync policy client, tuned for one small request at a time."""

from __future__ import annotations

import collections
import socket
import time

# Replies are a few hundred bytes: a 64 KiB read buffer is plenty (a larger one costs an mmap per read).
RECV_CHUNK = 1 << 16
# A 224x224 image is 150 KB: a send buffer that holds a whole request lets sendall return at once
# instead of waiting for the server to drain it piece by piece (-0.1 to -0.2 ms a round trip here).
SEND_BUFFER = 1 << 20


def tune_socket(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


class SyncWebSocket:
    """A blocking WebSocket connection on websockets' sans-I/O protocol, without the reader thread of
    websockets.sync (which hands each message between threads: 0.1-0.2 ms a round trip here).
    Pings are answered whenever the connection is read; a connection left idle past the server's
    ping timeout is closed by the server, and the next call reconnects."""

    def __init__(self, url: str, headers: dict[str, str], max_size: int, timeout_s: float) -> None:
        from websockets.client import ClientProtocol
        from websockets.protocol import State
        from websockets.uri import parse_uri

        self._closed_states = (State.CLOSING, State.CLOSED)
        uri = parse_uri(url)
        sock = socket.create_connection((uri.host, uri.port), timeout=timeout_s)
        tune_socket(sock)
        if uri.secure:
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=uri.host)
        self.sock = sock
        self.proto = ClientProtocol(uri, max_size=max_size)  # no extensions: no per-message compression
        self._events: collections.deque = collections.deque()
        self._parts: list[bytes] = []
        self._text = False
        request = self.proto.connect()
        for name, value in headers.items():
            request.headers[name] = value
        self.proto.send_request(request)
        self._flush()
        deadline = time.monotonic() + timeout_s
        while self.proto.state is State.CONNECTING:
            self._read(deadline)
        if self.proto.handshake_exc is not None:
            self.sock.close()
            raise self.proto.handshake_exc

    def send(self, data: bytes) -> None:
        self.proto.send_binary(data)
        self._flush()

    def recv(self, timeout: float) -> bytes | str:
        from websockets.frames import Frame, Opcode

        deadline = time.monotonic() + timeout
        while True:
            while self._events:
                frame = self._events.popleft()
                if not isinstance(frame, Frame):
                    continue  # the handshake response
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                    self._parts, self._text = [frame.data], frame.opcode is Opcode.TEXT
                elif frame.opcode is Opcode.CONT:
                    self._parts.append(frame.data)
                else:
                    continue  # ping, pong, close: the protocol answers them
                if frame.fin:
                    data = b"".join(self._parts)
                    self._parts = []
                    return data.decode() if self._text else data
            if self.proto.state in self._closed_states:
                raise self.proto.close_exc
            self._read(deadline)

    def close(self) -> None:
        try:
            if self.proto.state not in self._closed_states:
                self.proto.send_close()
                self._flush()
        finally:
            self.sock.close()

    def _read(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no WebSocket message in time")
        self.sock.settimeout(remaining)
        data = self.sock.recv(RECV_CHUNK)
        if data:
            self.proto.receive_data(data)
        else:
            self.proto.receive_eof()
        self._events.extend(self.proto.events_received())
        self._flush()  # pongs and close replies

    def _flush(self) -> None:
        chunks = [c for c in self.proto.data_to_send() if c]  # frame header + payload: one send
        if chunks:
            self.sock.sendall(chunks[0] if len(chunks) == 1 else b"".join(chunks))
