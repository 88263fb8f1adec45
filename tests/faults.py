"""A store that misbehaves on purpose, and what a run left in its lake. Import as `from faults import ...`.

FaultyStore is an HTTP proxy on loopback in front of an S3 endpoint (moto's) that adds latency to every request
and answers a fraction of them with an S3 error (500 InternalError, 503 SlowDown) instead of passing them on, as
a loaded object store does. MotoOnPort is a moto server that can be stopped and started again on its port with its
objects kept (moto's state lives in the process), as a store that restarts does.
"""

from __future__ import annotations

import hashlib
import http.client
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_RUN_RECORDS = ("/metrics.json", "/training_args.bin")
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}
_ERRORS = ((500, "InternalError", "We encountered an internal error. Please try again."),
           (503, "SlowDown", "Please reduce your request rate."))


class FaultyStore:
    """A proxy to `upstream` on 127.0.0.1: `url` is its endpoint. Set `latency` (seconds added to each request) and
    `error_rate` (the share of requests answered with a 500 or 503, never forwarded) at any time; `counts` says
    what it did (requests seen, errors injected by status), `log` every request with its answer."""

    def __init__(self, upstream: str, latency: float = 0.0, error_rate: float = 0.0, seed: int = 0):
        self.upstream = urlsplit(upstream)
        self.latency, self.error_rate = latency, error_rate
        self.counts: Counter = Counter()
        self.log: list[tuple[str, str, int]] = []  # (method, path, status) of every request, answered in order
        self._rng, self._lock = random.Random(seed), threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FaultyStore:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _fault(self) -> tuple[int, str, str] | None:
        with self._lock:
            self.counts["requests"] += 1
            if self._rng.random() < self.error_rate:
                error = self._rng.choice(_ERRORS)
                self.counts[error[0]] += 1
                return error
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        store = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the S3 clients expect

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        data += self.rfile.read(size)
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return data
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _relay(self) -> None:
                body = self._body()  # read whole either way, so the connection stays usable
                time.sleep(store.latency)
                if fault := store._fault():
                    status, code, message = fault
                    with store._lock:
                        store.log.append((self.command, self.path, status))
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                               f"<Message>{message}</Message></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                up = http.client.HTTPConnection(store.upstream.hostname, store.upstream.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    up.request(self.command, self.path, body=body, headers=headers)
                    resp = up.getresponse()
                    data = resp.read()
                except OSError:  # the store behind is down: so is this
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                finally:
                    up.close()
                with store._lock:
                    store.log.append((self.command, self.path, resp.status))
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                # A HEAD's length is the object's, not its (empty) body's.
                self.send_header("Content-Length", resp.getheader("Content-Length", "0") if self.command == "HEAD"
                                 else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

        return Handler


class MotoOnPort:
    """A moto S3 server on a fixed port of 127.0.0.1 that can be stopped and restarted; its objects survive."""

    def __init__(self, port: int = 0):
        if not port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port, self._server = port, None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        self._server.stop()
        self._server = None

    def outage(self, seconds: float) -> None:
        """Down for `seconds` (connections refused), then up again."""
        self.stop()
        time.sleep(seconds)
        self.start()


def stage_digests(lake, run_id: str) -> dict[str, tuple[int, str]]:
    """Every committed stage of a run -> (rows, a hash of its rows in any order), from the Parquet parts the marker
    lists; a model stage -> (files, a hash of its files but the two that record how the training ran, its timings
    and temporary folder). Two runs with equal digests hold the same data and models."""
    import pyarrow.parquet as pq

    out = {}
    for stage, marker in lake.stages(run_id).items():
        base = lake.stage_path(run_id, stage)
        if marker["record"]:
            rows = []
            for part in marker["parts"]:
                with lake.fs.open(f"{base}/{part}", "rb") as f:
                    rows += [repr(sorted(r.items())) for r in pq.read_table(f).to_pylist()]
            out[stage] = (len(rows), hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()[:16])
        else:
            files = sorted(f for f in lake.fs.find(f"{base}/model") if not f.endswith(_RUN_RECORDS))
            h = hashlib.sha256()
            for path in files:
                h.update(path.rsplit("/model/", 1)[1].encode() + lake.fs.cat_file(path))
            out[stage] = (len(files), h.hexdigest()[:16])
    return out
