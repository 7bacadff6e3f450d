"""`xt view`: look at an image and its predictions in the browser, zoomable and pannable."""

from __future__ import annotations

import argparse

ABOUT = """Serve a local web page (127.0.0.1 only) that shows an image and xt predict's class
map, heat map and boxes as overlays you can zoom and pan, with tiles made on the fly from
the files' pyramids, so a 100k x 100k prediction opens at once. PATH is an image, one of
the outputs (NAME.mask.tif, NAME.heatmap.tif, NAME.boxes.csv: all of NAME's are shown) or
the output folder. Stop with Ctrl-C.
"""

EXAMPLE = """examples:
  xt view out/ --image scene.tif          # the first prediction in out/ over its input
  xt view out/slide.mask.tif --image slide.svs --port 8000
  xt view scene.tif                        # any large image on its own
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "view",
        help="show an image and its predictions as a zoomable overlay in the browser",
        description=ABOUT,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", help="image file, xt predict output file, or output folder")
    p.add_argument("--image", help="the input image to show under the predictions")
    p.add_argument("--name", help="which prediction of a folder (NAME of NAME.mask.tif)")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xtimage.view.server import make_server, open_scene

    scene = open_scene(args.path, image=args.image, name=args.name)
    try:
        server = make_server(scene, args.port)
        layers = ", ".join(layer.name for layer in scene.layers)
        print(f"xt view: {scene.height} x {scene.width} px ({layers})")
        print(f"open {server.url} in a browser (Ctrl-C stops)", flush=True)
        if not args.no_browser:
            import webbrowser

            webbrowser.open(server.url)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        scene.close()
    return 0
