"""A registry of the test's own on 127.0.0.1 (no registry is reachable here otherwise): it
records every request and serves one image, or none, through the Registry HTTP API v2.

The Docker engine treats 127.0.0.0/8 as an insecure registry by default, so it pulls from it
over plain HTTP (after a TLS attempt this server ignores)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_with_files(docker_client, base: str, files: dict[str, bytes]) -> tuple[bytes, dict]:
    """The manifest and the blobs (by digest) of ``base`` (a local image) with one more layer
    holding ``files``: an image the engine has never seen."""
    saved_tar = io.BytesIO(b"".join(docker_client.images.get(base).save()))
    with tarfile.open(fileobj=saved_tar) as archive:
        saved = json.load(archive.extractfile("manifest.json"))[0]
        config = json.load(archive.extractfile(saved["Config"]))
        layers = [archive.extractfile(path).read() for path in saved["Layers"]]
    extra = _tar_of(files)
    layers.append(extra)
    config["rootfs"]["diff_ids"].append(_digest(extra))
    config.setdefault("history", []).append({"created_by": "tests/support_registry.py"})
    blobs = {}
    descriptors = []
    for layer in layers:
        packed = gzip.compress(layer, mtime=0)
        blobs[_digest(packed)] = packed
        descriptors.append(
            {"mediaType": LAYER_TYPE, "size": len(packed), "digest": _digest(packed)}
        )
    config_bytes = json.dumps(config).encode()
    blobs[_digest(config_bytes)] = config_bytes
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": CONFIG_TYPE,
                "size": len(config_bytes),
                "digest": _digest(config_bytes),
            },
            "layers": descriptors,
        }
    ).encode()
    return manifest, blobs


class Registry:
    """``with Registry() as reg``: listening on ``reg.host`` (``127.0.0.1:PORT``);
    ``reg.serve(name, tag, manifest, blobs)`` publishes an image, ``reg.requests`` lists the
    ``(method, path)`` of every request, in order."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self._manifests: dict[str, bytes] = {}
        self._blobs: dict[str, bytes] = {}
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                registry.requests.append((self.command, self.path))
                body, kind = registry._answer(self.path)
                self.send_response(404 if body is None else 200)
                if body is None:
                    body, kind = b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}', "application/json"
                else:
                    self.send_header("Docker-Content-Digest", _digest(body))
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, *args) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self._server.server_address[1]}"

    def _answer(self, path: str) -> tuple[bytes | None, str]:
        if path == "/v2/":
            return b"{}", "application/json"
        name, _, ref = path.removeprefix("/v2/").rpartition("/manifests/")
        if name:
            key = ref if ref.startswith("sha256:") else f"{name}:{ref}"
            return self._manifests.get(key), MANIFEST_TYPE
        _, _, digest = path.rpartition("/blobs/")
        return self._blobs.get(digest), "application/octet-stream"

    def serve(self, name: str, tag: str, manifest: bytes, blobs: dict[str, bytes]) -> None:
        self._manifests[f"{name}:{tag}"] = self._manifests[_digest(manifest)] = manifest
        self._blobs.update(blobs)

    def manifest_requests(self, name: str, tag: str) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[1] == f"/v2/{name}/manifests/{tag}"]

    def __enter__(self) -> Registry:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
