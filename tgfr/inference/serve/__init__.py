"""``tgfr serve``: the local web app (:mod:`tgfr.inference.serve.app`) on uvicorn, bound to 127.0.0.1 by default."""
from __future__ import annotations

import contextlib
import threading
import time

from .app import create_app


def open_gallery(recognizer, directory) -> tuple[object | None, str | None]:
    """``(gallery, None)`` with its indexes built (the face alone, and the fused mode when every photo is
    described), or ``(None, why not)``: a gallery the server cannot use is the page's message, not a crash."""
    try:
        gallery = recognizer.gallery(directory)
        gallery.index("image")
        if recognizer.fused_modes and gallery.captions is not None and None not in gallery.captions:
            gallery.index(recognizer.resolve_mode(None, True))
    except (OSError, ValueError) as error:
        return None, f"the gallery cannot be used: {error}"
    return gallery, None


def _server(app, host: str, port: int):
    """A uvicorn server for ``app`` and its socket, already bound (port 0: any free port)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    return uvicorn.Server(config), config.bind_socket()


def serve(app, host: str = "127.0.0.1", port: int = 7860, announce=print) -> None:
    """Serve ``app`` until interrupted; ``announce`` gets the address once the socket is bound."""
    server, sock = _server(app, host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    announce(f"tgfr serve: http://{bound_host}:{bound_port}/ (Ctrl-C stops it)")
    server.run(sockets=[sock])


@contextlib.contextmanager
def serving(app, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 60.0):
    """``app`` served from a background thread (tests, benchmarks); yields its base URL, stops on exit."""
    server, sock = _server(app, host, port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError(f"the server did not start within {start_timeout:g} s")
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


__all__ = ["create_app", "open_gallery", "serve", "serving"]
