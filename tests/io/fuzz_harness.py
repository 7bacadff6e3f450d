"""Send fuzz mutants through `xt info` and a full read, one JSON line per mutant.

Run by tests/io/test_fuzz.py in a subprocess with a memory limit and a timeout:
``python tests/io/fuzz_harness.py FILE...``. For each file it prints ``{"start": name}``
before the work (so a crash or a hang names its file) and then ``{"file", "info",
"read"}``: ``"ok"``, ``"xterror: <message>"`` (a clean error: exit 2, one line) or
``"raw: <type>: <message>"`` (anything else, a failure of the test).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

MAX_SIDE = 4096  # read the whole image up to this side, else its corners


def xt_info(path: str) -> str:
    from xtimage.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(["info", path])
        except SystemExit as exc:
            code = exc.code
    text = err.getvalue()
    text = text[text.find("xt info:") :] if "xt info:" in text else text  # warnings before
    if code == 0:
        return "ok"
    if code == 2 and text.count("\n") <= 1:
        return "xterror: " + text.strip()
    return f"raw: exit {code}: {text.strip()[:300]}"


def full_read(path: str) -> str:
    from xtimage.errors import XTError

    try:
        if path.endswith(".safetensors"):
            from xtimage.checkpoint import load_model

            load_model(path)
            return "ok"
        from xtimage.io import open_reader
        from xtimage.window import Window

        reader = open_reader(path)
        try:
            h, w = reader.height, reader.width
            if max(h, w) <= MAX_SIDE:
                windows = [Window(0, 0, h, w)]
            else:  # the first and the last region of a huge declared size
                side = 256
                windows = [Window(0, 0, min(h, side), min(w, side)),
                           Window(max(h - side, 0), max(w - side, 0), min(h, side), min(w, side))]
            for window in windows:
                reader.read_region(window)
        finally:
            reader.close()
        return "ok"
    except XTError as exc:
        return "xterror: " + str(exc).splitlines()[0]
    except Exception as exc:  # noqa: BLE001 reported, and the test fails on it
        return f"raw: {type(exc).__name__}: {str(exc)[:300]}"


def main(paths: list[str]) -> None:
    import logging
    import warnings

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    warnings.simplefilter("ignore")
    for path in paths:
        print(json.dumps({"start": path}), flush=True)
        info = xt_info(path)
        read = full_read(path)
        print(json.dumps({"file": path, "info": info, "read": read}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
