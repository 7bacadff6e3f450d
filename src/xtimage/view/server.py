"""`xt view`: a local web page showing an input and its predictions as a zoomable overlay.

`open_scene` turns what the user names (an image, one of xt predict's outputs, or the
output folder) into layers (`xtimage.view.tiles`): the input image underneath, then the
class map, heat map and boxes of one prediction. `make_server` serves them with the
standard library's threaded HTTP server, bound to 127.0.0.1 only: the page
(``static/index.html``), OpenSeadragon (vendored, BSD-3-Clause, ``static/``), the scene
description (``scene.json``) and the tiles (``tiles/LAYER/LEVEL/COL_ROW.png``), rendered
on request from the readers and cached.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from xtimage.errors import InputError, XTError
from xtimage.view.tiles import BoxLayer, HeatLayer, ImageLayer, Layer, MaskLayer

log = logging.getLogger(__name__)

STATIC = Path(str(importlib.resources.files("xtimage") / "view" / "static"))
OUTPUTS = {".mask.tif": MaskLayer, ".heatmap.tif": HeatLayer, ".boxes.csv": BoxLayer}
_TILE = re.compile(r"^/tiles/(\d+)/(\d+)/(\d+)_(\d+)\.png$")


@dataclass
class Scene:
    """What the page shows: layers bottom to top, all of ``height`` x ``width`` pixels."""

    title: str
    height: int
    width: int
    layers: list[Layer] = field(default_factory=list)
    base: bool = False  # whether layers[0] is the input image (opaque)
    readers: list = field(default_factory=list)

    def describe(self) -> dict:
        layers = [layer.describe() for layer in self.layers]
        return {"title": self.title, "height": self.height, "width": self.width,
                "base": self.base, "layers": layers}  # fmt: skip

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


def _output_kind(path: Path) -> tuple[str, str] | None:
    """(stem, suffix) of one of xt predict's outputs, or None."""
    name = path.name
    for suffix in OUTPUTS:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return None


def open_scene(path: str | Path, image: str | Path | None = None, name: str | None = None):
    """The layers to show for ``path``.

    Args:
        path: an image file (shown alone); one of xt predict's outputs (``NAME.mask.tif``,
            ``NAME.heatmap.tif``, ``NAME.boxes.csv``: all of NAME's outputs beside it are
            shown); or the output folder (the outputs of ``name``, default the first NAME).
        image: the input image to show under the outputs.
        name: which prediction of a folder holding several.
    """
    from xtimage.io import open_reader

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        stems = sorted({k[0] for p in path.iterdir() if p.is_file() and (k := _output_kind(p))})
        if not stems:
            raise InputError(
                f"{path}: no outputs of xt predict here (NAME.mask.tif, NAME.heatmap.tif, "
                f"NAME.boxes.csv); give one of them or an image file"
            )
        if name is not None and name not in stems:
            raise InputError(f"{path}: no outputs named {name!r}; found {', '.join(stems)}")
        folder, stem = path, name or stems[0]
    elif (kind := _output_kind(path)) is not None:
        folder, stem = path.parent, kind[0]
    else:
        folder, stem = None, None

    scene = Scene(title=stem or path.name, height=0, width=0)
    try:
        base_path = path if folder is None else image
        base = open_reader(base_path) if base_path is not None else None
        if base is not None:
            scene.readers.append(base)
            scene.height, scene.width, scene.base = base.height, base.width, True
            scene.layers.append(ImageLayer(Path(base.path or path).name, base))
        if folder is not None:
            for suffix, cls in OUTPUTS.items():
                file = folder / f"{stem}{suffix}"
                if not file.is_file() or cls is BoxLayer:
                    continue
                reader = open_reader(file)
                scene.readers.append(reader)
                if scene.width and (reader.height, reader.width) != (scene.height, scene.width):
                    raise InputError(
                        f"{file}: {reader.height} x {reader.width} px, but the image is "
                        f"{scene.height} x {scene.width}; give the input the outputs came from"
                    )
                scene.height, scene.width = reader.height, reader.width
                scene.layers.append(cls(file.name, reader))
            boxes = folder / f"{stem}.boxes.csv"
            if boxes.is_file():
                if not scene.width:
                    raise InputError(
                        f"{boxes}: boxes need the image they were found in: add --image INPUT"
                    )
                scene.layers.append(BoxLayer(boxes.name, boxes, scene.height, scene.width))
        return scene
    except BaseException:
        scene.close()
        raise


class _Handler(BaseHTTPRequestHandler):
    server: ViewServer

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        route = self.path.split("?", 1)[0].split("#", 1)[0]
        try:
            if route in ("/", "/index.html"):
                self._send((STATIC / "index.html").read_bytes(), "text/html; charset=utf-8")
            elif route == "/static/openseadragon.min.js":
                self._send((STATIC / "openseadragon.min.js").read_bytes(), "text/javascript")
            elif route == "/scene.json":
                self._send(json.dumps(self.server.scene.describe()).encode(), "application/json")
            elif match := _TILE.match(route):
                index, level, col, row = (int(g) for g in match.groups())
                layers = self.server.scene.layers
                if index >= len(layers):
                    raise InputError(f"no layer {index}")
                self._send(layers[index].tile_png(level, col, row), "image/png")
                self.server.served.append((index, level, col, row))
            else:
                self.send_error(HTTPStatus.NOT_FOUND)
        except XTError as exc:
            self.send_error(HTTPStatus.NOT_FOUND, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, body: bytes, kind: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        cache = "no-store" if kind.startswith("text/html") else "max-age=3600"
        self.send_header("Cache-Control", cache)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the standard name)
        log.debug("%s " + format, self.address_string(), *args)


class ViewServer(ThreadingHTTPServer):
    """The viewer's HTTP server; ``served`` lists the tiles sent (layer, level, col, row)."""

    daemon_threads = True

    def __init__(self, scene: Scene, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.scene = scene
        self.served: list[tuple[int, int, int, int]] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> threading.Thread:
        """Serve on a background thread (tests); `shutdown` stops it."""
        thread = threading.Thread(target=self.serve_forever, daemon=True, name="xt-view")
        thread.start()
        return thread


def make_server(scene: Scene, port: int = 0) -> ViewServer:
    """A server of ``scene`` on 127.0.0.1 (``port`` 0: any free port)."""
    try:
        return ViewServer(scene, port)
    except OSError as exc:
        raise InputError(
            f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); try another --port"
        ) from exc
