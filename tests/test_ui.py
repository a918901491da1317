"""local_runs.ui without a browser or an endpoint: the page's HTTP API against a fake runtime client."""
from __future__ import annotations

import http.client
import io
import json
import re

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from local_runs import http_base, ui
from local_runs.cli import build_parser


class FakeRuntime:
    """Stands in for a session's `sagemaker_runtime_client`: records calls, answers what it is given."""

    def __init__(self, answer=None, raises=None):
        self.answer = answer if answer is not None else {}
        self.raises = raises
        self.calls = []

    def invoke_endpoint(self, **kwargs):
        self.calls.append({**kwargs, "Body": json.loads(kwargs["Body"])})
        if self.raises is not None:
            raise self.raises
        body = self.answer if isinstance(self.answer, bytes) else json.dumps(self.answer).encode()
        return {"Body": io.BytesIO(body), "ContentType": "application/json"}


def model_error(status: int, message: str) -> ClientError:
    """What botocore raises for a container's 4xx/5xx (sim's gateway and real SageMaker alike)."""
    original = json.dumps({"error": {"code": status, "message": message}})
    return ClientError({"Error": {"Code": "ModelError", "Message": f"Received client error ({status}) from primary"},
                        "OriginalStatusCode": status, "OriginalMessage": original,
                        "ResponseMetadata": {"HTTPStatusCode": 424}}, "InvokeEndpoint")


PRODUCTS = {
    "pred0": {"review_id": "R0002", "product_id": "P001", "product_title": "Deep Sea Submarine Bath Toy",
              "star_rating": 4, "review_headline": "Squirts water, kids love it",
              "review_body": "The nose squirts a stream of water.<br /><br />Only complaint: water gets trapped inside.",
              "product_search_score": 0.71234, "matched_sentence": "Only complaint: water gets trapped inside."},
    "pred1": {"review_id": "R0003", "product_id": "P009", "product_title": "Rock &amp; Roll Drum",
              "star_rating": 2, "review_headline": "Loud", "review_body": "There&#39;s no volume knob.",
              "product_search_score": 0.5, "matched_sentence": "There's no volume knob."},
}


class Clock:
    def __init__(self, *ticks):
        self.ticks = list(ticks)

    def __call__(self):
        return self.ticks.pop(0)


@pytest.fixture
def serve():
    servers = []

    def start(runtime, endpoint="review-search", clock=None):
        page = ui.SearchPage(runtime, endpoint, backend_name="sim", clock=clock or Clock(10.0, 10.042))
        running = ui.RunningPage(page).__enter__()
        servers.append(running)
        return running

    yield start
    for running in servers:
        running.__exit__(None, None, None)


def request(running, method, path, body=None, headers=None):
    host, port = running.server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    connection.request(method, path, body=body, headers=all_headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response, data


def search(running, payload, **kwargs):
    response, data = request(running, "POST", "/api/search", payload, **kwargs)
    return response.status, json.loads(data)


# --- the page itself ------------------------------------------------------------------------------
def test_server_listens_on_loopback_and_serves_the_page(serve):
    running = serve(FakeRuntime())
    assert running.server.server_address[0] == "127.0.0.1"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", running.url)
    response, body = request(running, "GET", "/")
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/html")
    assert b'<script src="/app.js"' in body and b'id="query"' in body
    assert "script-src 'self'" in response.getheader("Content-Security-Policy")
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    for path, kind in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
        response, _ = request(running, "GET", path)
        assert response.status == 200 and response.getheader("Content-Type").startswith(kind)
    response, _ = request(running, "GET", "/../ui.py")
    assert response.status == 404


def test_static_files_are_offline_and_build_no_html_from_data():
    texts = {p.name: p.read_text() for p in ui.STATIC_DIR.iterdir()}
    assert set(texts) >= {"index.html", "app.js", "style.css"}
    for name, text in texts.items():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), f"{name} loads something from the internet"
        assert "@import" not in text
    # The script never parses strings as HTML.
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", texts["app.js"])


def test_info_names_the_endpoint_and_limits(serve):
    response, body = request(serve(FakeRuntime(), endpoint="steps"), "GET", "/api/info")
    info = json.loads(body)
    assert response.status == 200 and info["endpoint"] == "steps" and info["backend"] == "sim"
    assert info["limits"]["n_items"] == [1, 100] and info["limits"]["min_star_rating"] == [1, 5]


def test_limits_match_the_endpoints_bounds():
    from knn import query_request

    assert ui.LIMITS["n_items"] == [1, query_request.MAX_N_ITEMS]
    assert ui.LIMITS["min_star_rating"] == [query_request.MIN_STAR_RATING, query_request.MAX_STAR_RATING]
    assert ui.LIMITS["offset"] == [0, query_request.MAX_OFFSET]
    assert ui.LIMITS["query_chars"] == query_request.MAX_QUERY_CHARS


# --- searching ------------------------------------------------------------------------------------
def test_search_goes_through_invoke_endpoint_and_presents_cards(serve):
    runtime = FakeRuntime(PRODUCTS)
    status, answer = search(serve(runtime), {"query": "water stays inside", "n_items": "2", "min_star_rating": "",
                                             "offset": "0"})
    assert status == 200
    call, = runtime.calls
    assert call["EndpointName"] == "review-search" and call["ContentType"] == "application/json"
    assert call["Accept"] == "application/json"
    assert call["Body"] == {"query": "water stays inside", "n_items": 2}  # unset filters are left out
    assert answer["elapsed_ms"] == pytest.approx(42.0)
    assert answer["raw"] == PRODUCTS and answer["request"] == call["Body"]
    first, second = answer["products"]
    assert first["rank"] == 1 and first["product_id"] == "P001" and first["score"] == pytest.approx(0.71234)
    assert first["star_rating"] == 4 and first["review_headline"] == "Squirts water, kids love it"
    assert first["matched_in_review"] is True
    assert first["review"] == [[{"text": "The nose squirts a stream of water.", "match": False}],
                               [{"text": "Only complaint: water gets trapped inside.", "match": True}]]
    assert second["product_title"] == "Rock & Roll Drum"  # entities decoded; the page shows it as text
    assert second["review"] == [[{"text": "There's no volume knob.", "match": True}]]


def test_filters_are_sent_as_numbers(serve):
    runtime = FakeRuntime({})
    status, answer = search(serve(runtime), {"query": "kite", "n_items": 4, "min_star_rating": "5", "offset": "8"})
    assert status == 200 and answer["products"] == []
    assert runtime.calls[0]["Body"] == {"query": "kite", "n_items": 4, "min_star_rating": 5, "offset": 8}


def test_default_n_items_when_blank(serve):
    runtime = FakeRuntime({})
    search(serve(runtime), {"query": "kite", "n_items": ""})
    assert runtime.calls[0]["Body"] == {"query": "kite", "n_items": ui.DEFAULT_N_ITEMS}


def test_ranks_continue_after_offset_and_follow_pred_numbers():
    response = {f"pred{i}": {**PRODUCTS["pred1"], "product_id": f"P{i}"} for i in (10, 2, 0, 1)}
    cards = ui.present(response, offset=20)
    assert [c["product_id"] for c in cards] == ["P0", "P1", "P2", "P10"]
    assert [c["rank"] for c in cards] == [21, 22, 23, 24]


@pytest.mark.parametrize("payload, fragment", [
    ({"query": "kite", "n_items": "many"}, "n_items must be a whole number"),
    ({"query": "kite", "offset": 1.5}, "offset must be a whole number"),
    ({"query": "kite", "min_star_rating": True}, "min_star_rating must be a whole number"),
    ({"query": 7}, "query must be text"),
    (["kite"], "JSON object"),
])
def test_bad_form_values_are_refused_before_the_endpoint(serve, payload, fragment):
    runtime = FakeRuntime(PRODUCTS)
    status, answer = search(serve(runtime), payload)
    assert status == 400 and fragment in answer["error"]["message"] and answer["error"]["source"] == "page"
    assert runtime.calls == []


def test_empty_query_goes_to_the_endpoint_which_decides(serve):
    runtime = FakeRuntime(raises=model_error(400, "invalid request: query has no letters or digits to search for"))
    status, answer = search(serve(runtime), {"query": "", "n_items": 3})
    assert runtime.calls[0]["Body"] == {"query": "", "n_items": 3}
    assert status == 400
    assert answer["error"] == {"code": 400, "source": "endpoint",
                               "message": "invalid request: query has no letters or digits to search for"}


@pytest.mark.parametrize("error, status, fragment", [
    (model_error(400, "min_star_rating must be a whole number from 1 to 5 (or null), got 9"), 400,
     "min_star_rating must be a whole number from 1 to 5"),
    (model_error(500, "index file is damaged"), 502, "index file is damaged"),
    (ClientError({"Error": {"Code": "ModelError", "Message": "no answer"}, "OriginalStatusCode": 0,
                  "OriginalMessage": "timed out after 60 s", "ResponseMetadata": {"HTTPStatusCode": 424}},
                 "InvokeEndpoint"), 502, "did not answer: timed out after 60 s"),
    (ClientError({"Error": {"Code": "ValidationError", "Message": "Endpoint nope of account 000000000000 not found."},
                  "ResponseMetadata": {"HTTPStatusCode": 400}}, "InvokeEndpoint"), 400,
     "not found. Deploy it first (local-runs deploy --name review-search)"),
    (ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not authorized"},
                  "ResponseMetadata": {"HTTPStatusCode": 403}}, "InvokeEndpoint"), 403,
     "AccessDeniedException: not authorized"),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1/endpoints/x/invocations"), 502,
     "cannot reach the SageMaker runtime"),
    (RuntimeError("boom"), 500, "RuntimeError: boom"),
])
def test_endpoint_failures_become_readable_messages(serve, error, status, fragment):
    got_status, answer = search(serve(FakeRuntime(raises=error)), {"query": "kite"})
    assert got_status == status, answer
    assert fragment in answer["error"]["message"]
    assert "{" not in answer["error"]["message"]  # the message, not the JSON around it


def test_error_body_answered_as_success_is_still_an_error(serve):
    # The SDK's LocalSagemakerRuntimeClient (docker backend) hands a container's 400 back as an answer.
    runtime = FakeRuntime({"error": {"code": 400, "message": "unknown field 'colour'"}})
    status, answer = search(serve(runtime), {"query": "kite"})
    assert status == 400 and answer["error"]["message"] == "unknown field 'colour'"


def test_answer_that_is_not_json_is_reported(serve):
    status, answer = search(serve(FakeRuntime(b"<html>502 Bad Gateway</html>")), {"query": "kite"})
    assert status == 502 and "not JSON" in answer["error"]["message"] and "Bad Gateway" in answer["error"]["message"]


# --- what the server refuses ---------------------------------------------------------------------
def test_search_needs_json_content_type(serve):
    runtime = FakeRuntime(PRODUCTS)
    status, answer = search(serve(runtime), "query=kite", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and runtime.calls == []


def test_other_host_names_are_refused(serve):
    runtime = FakeRuntime(PRODUCTS)
    running = serve(runtime)
    status, answer = search(running, {"query": "kite"}, headers={"Host": "attacker.example:80"})
    assert status == 403 and runtime.calls == []
    response, _ = request(running, "GET", "/", headers={"Host": "attacker.example"})
    assert response.status == 403
    response, _ = request(running, "GET", "/", headers={"Host": f"localhost:{running.server.server_address[1]}"})
    assert response.status == 200


def test_oversized_and_broken_bodies(serve):
    running = serve(FakeRuntime(PRODUCTS))
    status, answer = search(running, json.dumps({"query": "x" * (ui.MAX_API_BODY + 1)}))
    assert status == 413
    status, answer = search(running, "{not json")
    assert status == 400 and "not JSON" in answer["error"]["message"]
    response, body = request(running, "POST", "/api/other", {"query": "kite"})
    assert response.status == 404 and json.loads(body)["error"]["message"]


# --- highlighting ---------------------------------------------------------------------------------
def test_highlight_finds_sentence_across_html_and_spacing():
    paragraphs, found = ui.highlight("It was great.My kids  loved it &amp; so did I.<br/>Second part.", "My kids loved it & so did I.")
    assert found
    assert paragraphs == [[{"text": "It was great.", "match": False}, {"text": "My kids loved it & so did I.", "match": True}],
                          [{"text": "Second part.", "match": False}]]


def test_highlight_without_a_match_keeps_the_text():
    paragraphs, found = ui.highlight("Only the body.", "A headline that matched")
    assert not found and paragraphs == [[{"text": "Only the body.", "match": False}]]
    assert ui.highlight("", "x") == ([], False)


def test_hostile_text_stays_text():
    body = '<script>alert(1)</script>Nice <img src=x onerror="alert(2)"> toy.'
    cards = ui.present({"pred0": {"product_title": "<b>Bold</b>", "review_body": body, "matched_sentence": "toy.",
                                  "star_rating": 5, "product_search_score": 1}})
    # Tags are dropped the way the search's own text cleaning does; what is left is plain text.
    text = "".join(part["text"] for paragraph in cards[0]["review"] for part in paragraph)
    assert "<img" not in text and "onerror" not in text
    assert cards[0]["product_title"] == "<b>Bold</b>"  # shown literally by textContent


# --- command line ---------------------------------------------------------------------------------
def test_cli_options():
    parser = build_parser()
    args = parser.parse_args(["ui", "--endpoint", "steps", "--port", "8123"])
    assert (args.endpoint, args.port, args.open, args.run.__name__) == ("steps", 8123, False, "cmd_ui")
    args = parser.parse_args(["ui"])
    assert args.endpoint == "review-search" and args.port == 0
    for command in ("deploy", "cycle"):
        args = parser.parse_args([command, "--ui", "--ui-port", "8124"])
        assert args.ui and args.ui_port == 8124
        assert not parser.parse_args([command]).ui


def test_serve_until_interrupted_stops_on_ctrl_c(monkeypatch, capsys):
    class Backend:
        name = "sim"

        class session:
            sagemaker_runtime_client = FakeRuntime()

    def interrupted(self, *args, **kwargs):
        assert self.server_address[0] == "127.0.0.1"
        raise KeyboardInterrupt

    monkeypatch.setattr(http_base.Server, "serve_forever", interrupted)
    ui.serve_until_interrupted(Backend, "steps", after="stop the page and delete the endpoint")
    out = capsys.readouterr().out
    assert re.search(r"search page for endpoint steps: http://127\.0\.0\.1:\d+/", out)
    assert "press Ctrl-C to stop the page and delete the endpoint" in out and "search page stopped" in out


def test_port_in_use_is_one_clear_error():
    with ui.RunningPage(ui.SearchPage(FakeRuntime(), "x")) as running:
        port = running.server.server_address[1]
        with pytest.raises(OSError, match=f"cannot serve the search page on 127.0.0.1:{port}"):
            ui.serve_until_interrupted(type("B", (), {"name": "sim", "session": type("S", (), {
                "sagemaker_runtime_client": FakeRuntime()})}), "x", port=port)


def test_sigterm_stops_the_page_like_ctrl_c(capsys):
    import os
    import signal
    import threading

    class Backend:
        name = "sim"

        class session:
            sagemaker_runtime_client = FakeRuntime()

    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        ui.serve_until_interrupted(Backend, "steps")  # returns instead of killing the test run
    finally:
        timer.cancel()
    assert "search page stopped" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is before
