"""Running the search page for a backend's endpoint until Ctrl-C: `local-runs ui`, `deploy --ui`, `cycle --ui`."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from local_runs.ui.search_page import SearchPage
from local_runs.ui.server import make_server, server_url


def page_for(backend, endpoint_name: str) -> SearchPage:
    """A SearchPage that queries `endpoint_name` through `backend`'s session, like users do."""
    return SearchPage(backend.session.sagemaker_runtime_client, endpoint_name, backend_name=backend.name)


def serve_until_interrupted(backend, endpoint_name: str, port: int = 0, open_browser: bool = False,
                            after: str = "stop the page") -> None:
    """Serve the page for `endpoint_name` until Ctrl-C, then return (the caller goes on)."""
    try:
        server = make_server(page_for(backend, endpoint_name), port)
    except OSError as exc:
        raise OSError(f"cannot serve the search page on 127.0.0.1:{port}: {exc.strerror or exc}") from None
    url = server_url(server)
    print(f"search page for endpoint {endpoint_name}: {url}\npress Ctrl-C to {after}", flush=True)
    if open_browser:
        import webbrowser

        threading.Timer(0.2, webbrowser.open, args=(url,)).start()
    try:
        with _sigterm_as_ctrl_c():
            server.serve_forever()
    except KeyboardInterrupt:
        print("\nsearch page stopped", flush=True)
    finally:
        server.server_close()


@contextmanager
def _sigterm_as_ctrl_c():
    """While the page is up, `kill PID` stops it like Ctrl-C does, so `cycle --ui` still deletes its endpoint."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
