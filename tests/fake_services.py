"""A real HTTP server on 127.0.0.1 that plays DANDI, Zenodo and a plain file host, with faults.

It serves the JSON shapes of the real services (the DANDI and Zenodo REST APIs):

    /dandi/api/dandisets/{id}/versions/{v}/assets/?page_size=&page=   paginated list
        {count, next, previous, results: [{asset_id, blob, zarr, path, size, created, modified}]}
        (the server caps page_size at `page_size_limit`, default 1, so `next` is exercised)
    /dandi/api/assets/{asset_id}/            JSON-LD metadata incl. digest {"dandi:sha2-256"}
    /dandi/api/assets/{asset_id}/download/   302 -> /content/blobs/... (the "content host")
    /zenodo/api/records/{id}                 record: {id, doi, metadata, links, files: [...]}
    /zenodo/api/records/{id}/files           {entries: [{key, size, checksum "md5:..", links}]}
    /zenodo/api/records/{id}/files/{key}/content
    anything added with `add_file`           plain bytes

File bytes honour `Range: bytes=N-` (206 + Content-Range, 416 past the end). Faults are
queued per request path with `inject(path, ...)`, and each request to that path uses up
one: `fail(status)`, `drop(at)` (connection reset part-way), `truncate(at)` (a clean close
before Content-Length bytes), `slow(delay_s)` and `ignore_range()`. Every request is logged
in `log` (path, query and Range header).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

_CREATED = "2022-01-13T04:08:00.000000Z"


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, used up by the next request to its path.

    kind: "status" (answer `status`), "drop" (send `at` of the body, then reset the
    connection), "truncate" (send `at` of the body under the full Content-Length, then
    close cleanly), "slow" (send in `chunk`-byte pieces `delay_s` apart), "ignore_range"
    (answer 200 with the whole body whatever the Range header says).
    """

    kind: str
    status: int = 200
    at: float = 0.5
    delay_s: float = 0.0
    chunk: int = 4096


def fail(status: int) -> Fault:
    return Fault("status", status=status)


def drop(at: float = 0.5) -> Fault:
    return Fault("drop", at=at)


def truncate(at: float = 0.5) -> Fault:
    return Fault("truncate", at=at)


def slow(delay_s: float = 0.03, chunk: int = 4096) -> Fault:
    return Fault("slow", delay_s=delay_s, chunk=chunk)


def ignore_range() -> Fault:
    return Fault("ignore_range")


@dataclass(frozen=True)
class Seen:
    """One request the server received."""

    path: str
    query: str
    range: str | None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a slow stream to a killed client must not hold up stop()
    fake: FakeServices


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.fake._handle(self)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - keep test output clean
        pass


class FakeServices:
    """The fake DANDI + Zenodo + file host. Use as a context manager (start/stop)."""

    def __init__(self, *, page_size_limit: int = 1):
        self.page_size_limit = page_size_limit
        self.log: list[Seen] = []
        self._blobs: dict[str, bytes] = {}
        self._faults: dict[str, list[Fault]] = {}
        self._assets: dict[tuple[str, str], list[dict]] = {}
        self._meta: dict[str, dict] = {}
        self._blob_of: dict[str, str] = {}
        self._records: dict[str, list[dict]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None

    # -- lifecycle
    def start(self) -> FakeServices:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeServices:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def dandi_api_url(self) -> str:
        return f"{self.url}/dandi/api"

    @property
    def zenodo_api_url(self) -> str:
        return f"{self.url}/zenodo/api"

    # -- content
    def add_dandi_asset(self, dandiset_id: str, version: str, path: str, data: bytes, *,
                        sha256: str | None = None) -> str:
        """Publish `data` as asset `path` of a dandiset version; returns the asset id.

        `sha256` overrides the digest in the metadata (to simulate a wrong digest).
        """
        asset_id, blob = str(uuid.uuid4()), str(uuid.uuid4())
        content = f"/content/blobs/{blob[:3]}/{blob[3:6]}/{blob}"
        self._blobs[content] = data
        self._blob_of[asset_id] = content
        self._assets.setdefault((dandiset_id, version), []).append({
            "asset_id": asset_id, "blob": blob, "zarr": None, "path": path, "size": len(data),
            "created": _CREATED, "modified": _CREATED})
        self._meta[asset_id] = {
            "id": f"dandiasset:{asset_id}", "identifier": asset_id, "schemaKey": "Asset",
            "path": path, "contentSize": len(data), "encodingFormat": "application/x-nwb",
            "digest": {"dandi:dandi-etag": hashlib.md5(data).hexdigest() + "-1",
                       "dandi:sha2-256": sha256 or hashlib.sha256(data).hexdigest()}}
        return asset_id

    def content_path(self, asset_id: str) -> str:
        """The content-host path the asset's download endpoint redirects to."""
        return self._blob_of[asset_id]

    def add_zenodo_file(self, record_id: str, key: str, data: bytes, *,
                        md5: str | None = None) -> str:
        """Publish `data` as file `key` of a record; returns its content path."""
        content = f"/zenodo/api/records/{record_id}/files/{key}/content"
        self._blobs[content] = data
        self._records.setdefault(record_id, []).append(
            {"key": key, "size": len(data), "md5": md5 or hashlib.md5(data).hexdigest()})
        return content

    def add_file(self, path: str, data: bytes) -> str:
        """Serve `data` at `path`; returns its full URL."""
        self._blobs[path] = data
        return self.url + path

    # -- faults and log
    def inject(self, path: str, *faults: Fault) -> None:
        """Queue faults for the next requests to `path`, one per request."""
        with self._lock:
            self._faults.setdefault(path, []).extend(faults)

    def requests_to(self, path: str) -> list[Seen]:
        return [seen for seen in self.log if seen.path == path]

    def ranges(self, path: str) -> list[str | None]:
        """The Range headers of the requests to `path`, in order (None: no header)."""
        return [seen.range for seen in self.requests_to(path)]

    # -- serving
    def _handle(self, h: _Handler) -> None:
        parts = urlsplit(h.path)
        path = parts.path
        self.log.append(Seen(path, parts.query, h.headers.get("Range")))
        with self._lock:
            queue = self._faults.get(path)
            fault = queue.pop(0) if queue else None
        try:
            if fault is not None and fault.kind == "status":
                return self._json(h, {"detail": "injected fault"}, fault.status)
            if path in self._blobs:
                return self._bytes(h, self._blobs[path], fault)
            self._route(h, path, parse_qs(parts.query))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (Ctrl-C test); nothing to answer

    def _route(self, h: _Handler, path: str, query: dict[str, list[str]]) -> None:
        api = self.dandi_api_url
        if m := re.fullmatch(r"/dandi/api/dandisets/(\w+)/versions/([^/]+)/assets/", path):
            return self._asset_page(h, m[1], m[2], query)
        if m := re.fullmatch(r"/dandi/api/assets/([-\w]+)/", path):
            if m[1] in self._meta:
                meta = dict(self._meta[m[1]], contentUrl=[
                    f"{api}/assets/{m[1]}/download/", self.url + self._blob_of[m[1]]])
                return self._json(h, meta)
        if m := re.fullmatch(r"/dandi/api/assets/([-\w]+)/download/", path):
            if m[1] in self._blob_of:
                h.send_response(302)
                h.send_header("Location", self.url + self._blob_of[m[1]])
                h.send_header("Content-Length", "0")
                h.end_headers()
                return None
        if m := re.fullmatch(r"/zenodo/api/records/(\w+)(/files)?", path):
            if m[1] in self._records:
                return self._json(h, self._zenodo(m[1], files_endpoint=bool(m[2])))
        return self._json(h, {"detail": "Not found."}, 404)

    def _asset_page(self, h: _Handler, dandiset: str, version: str,
                    query: dict[str, list[str]]) -> None:
        if (dandiset, version) not in self._assets:
            return self._json(h, {"detail": "Not found."}, 404)
        assets = sorted(self._assets[(dandiset, version)], key=lambda a: a["path"])
        size = min(int(query.get("page_size", ["100"])[0]), self.page_size_limit)
        page = int(query.get("page", ["1"])[0])
        base = f"{self.url}{h.path.split('?')[0]}"

        def link(n: int) -> str:
            return f"{base}?{urlencode({'page': n, 'page_size': size, 'order': 'path'})}"

        self._json(h, {
            "count": len(assets),
            "next": link(page + 1) if page * size < len(assets) else None,
            "previous": link(page - 1) if page > 1 else None,
            "results": assets[(page - 1) * size: page * size]})

    def _zenodo(self, record_id: str, *, files_endpoint: bool) -> dict:
        api = f"{self.zenodo_api_url}/records/{record_id}"

        def entry(f: dict) -> dict:
            links = {"self": f"{api}/files/{f['key']}"}
            if files_endpoint:
                links["content"] = f"{api}/files/{f['key']}/content"
            return {"key": f["key"], "size": f["size"], "checksum": f"md5:{f['md5']}",
                    "links": links}

        files = [entry(f) for f in self._records[record_id]]
        if files_endpoint:
            return {"enabled": True, "entries": files, "links": {"self": f"{api}/files"}}
        return {"id": int(record_id), "doi": f"10.5281/zenodo.{record_id}",
                "metadata": {"title": "fake record"}, "files": files,
                "links": {"self": api, "files": f"{api}/files"}}

    @staticmethod
    def _json(h: _Handler, body: object, status: int = 200) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _bytes(self, h: _Handler, data: bytes, fault: Fault | None) -> None:
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", (h.headers.get("Range") or "").strip())
        if match and not (fault and fault.kind == "ignore_range"):
            start = int(match[1])
            end = min(int(match[2]), len(data) - 1) if match[2] else len(data) - 1
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            body = data[start:end + 1]
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            body = data
            h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if fault is not None and fault.kind in ("drop", "truncate"):
            h.wfile.write(body[:int(len(body) * fault.at)])
            h.wfile.flush()
            if fault.kind == "drop":
                time.sleep(0.1)  # let the client take what was sent, then reset
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                h.connection.close()
            return
        if fault is not None and fault.kind == "slow":
            for i in range(0, len(body), fault.chunk):
                if self._stopping.is_set():
                    return
                h.wfile.write(body[i:i + fault.chunk])
                h.wfile.flush()
                time.sleep(fault.delay_s)
            return
        h.wfile.write(body)
