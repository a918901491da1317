"""The search page for a running endpoint, by layer: `cards` (the answer as the page shows it),
`search_page` (form -> endpoint request -> cards or a readable error), `server` (HTTP on 127.0.0.1),
`serve` (running it for a backend until Ctrl-C)."""
from local_runs.ui.cards import highlight, present
from local_runs.ui.search_page import DEFAULT_N_ITEMS, LIMITS, PageError, SearchPage, describe_failure, endpoint_request
from local_runs.ui.serve import page_for, serve_until_interrupted
from local_runs.ui.server import MAX_API_BODY, STATIC_DIR, RunningPage, make_server, server_url

__all__ = ["DEFAULT_N_ITEMS", "LIMITS", "MAX_API_BODY", "PageError", "RunningPage", "STATIC_DIR", "SearchPage",
           "describe_failure", "endpoint_request", "highlight", "make_server", "page_for", "present",
           "serve_until_interrupted", "server_url"]
