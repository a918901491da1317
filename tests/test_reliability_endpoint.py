"""Bad input and untrusted artifacts against a real sim endpoint serving the model built from the fixtures.

Fit and deploy once for the module (like test_cycle_real.py). Every bad request goes straight to the
endpoint's own port over HTTP and must get a 4xx with a JSON body naming the problem; afterwards
/ping is healthy and a known query still brings its product first. A few go through the runtime
gateway (boto3 / the SDK predictor) and arrive as ModelError 424 with OriginalStatusCode. A tampered,
truncated or foreign model.tar.gz is refused at deploy with a clear reason. Every listening socket of
this process and the endpoint is on 127.0.0.1.
"""
from __future__ import annotations

import http.client
import io
import json
import socket
import tarfile
import time
from urllib.parse import urlsplit

import psutil
import pytest
from botocore.exceptions import ClientError
from sagemaker.exceptions import UnexpectedStatusException

from conftest import FIXTURES
from knn.query_request import MAX_N_ITEMS, MAX_QUERIES, MAX_QUERY_CHARS, MAX_QUERY_SENTENCES
from local_runs import job, s3_server
from local_runs.sim import registry

pytestmark = pytest.mark.integration

QUERIES = json.loads((FIXTURES / "queries.json").read_text())
KNOWN = QUERIES[0]  # a paraphrase with a known product
J = "application/json"
SIX_MIB = 6 * 1024 * 1024


def _j(value) -> bytes:
    return json.dumps(value).encode()


# id, body, Content-Type (None: no header), Accept (None: no header), status, fragment of the message
BAD_REQUESTS = [
    ("no-content-type", _j({"query": "kite"}), None, J, 415, "no Content-Type"),
    ("text-plain", _j({"query": "kite"}), "text/plain", J, 415, "'text/plain' is not supported"),
    ("csv", b"kite", "text/csv", J, 415, "'text/csv' is not supported"),
    ("form", b"query=kite", "application/x-www-form-urlencoded", J, 415, "is not supported"),
    ("accept-csv", _j({"query": "kite"}), J, "text/csv", 406, "Accept 'text/csv' cannot be served"),
    ("accept-xml", _j({"query": "kite"}), J, "application/xml, text/html", 406, "cannot be served"),
    ("malformed-json", b'{"query": "kite"', J, J, 400, "not valid JSON"),
    ("empty-body", b"", J, J, 400, "not valid JSON"),
    ("bom", b"\xef\xbb\xbf" + _j({"query": "kite"}), J, J, 400, "not valid JSON"),
    ("json-array", _j(["kite"]), J, J, 400, "must be a JSON object"),
    ("json-string", _j("kite"), J, J, 400, "must be a JSON object"),
    ("json-null", b"null", J, J, 400, "must be a JSON object"),
    ("missing-query", _j({"n_items": 2}), J, J, 400, "query is required"),
    ("query-number", _j({"query": 42}), J, J, 400, "query"),
    ("query-null", _j({"query": None}), J, J, 400, "query"),
    ("query-object", _j({"query": {"text": "kite"}}), J, J, 400, "query"),
    ("query-empty", _j({"query": ""}), J, J, 400, "no letters or digits"),
    ("query-whitespace", _j({"query": " \t\n  "}), J, J, 400, "no letters or digits"),
    ("query-punctuation", _j({"query": "?!... --- ***"}), J, J, 400, "no letters or digits"),
    ("query-emoji-only", _j({"query": "\U0001F600\U0001F680"}), J, J, 400, "no letters or digits"),
    ("list-bad-element", _j({"query": ["kite", 3]}), J, J, 400, "query"),
    ("list-empty-element", _j({"query": ["kite", "  "]}), J, J, 400, "query[1] has no letters"),
    ("list-empty", _j({"query": []}), J, J, 400, "query"),
    ("too-many-sentences", _j({"query": ["kite"] * (MAX_QUERIES + 1)}), J, J, 400, f"at most {MAX_QUERIES}"),
    ("very-long-sentence", _j({"query": "kite " * (MAX_QUERY_CHARS // 5 + 1)}), J, J, 400,
     f"at most {MAX_QUERY_CHARS} are allowed"),
    ("over-6-mib", b'{"query": "' + b"a" * (SIX_MIB + 10) + b'"}', J, J, 413, "exceeds 6291456 bytes"),
    ("n-items-zero", _j({"query": "kite", "n_items": 0}), J, J, 400, "n_items must be a whole number from 1 to 100"),
    ("n-items-negative", _j({"query": "kite", "n_items": -3}), J, J, 400, "got -3"),
    ("n-items-huge", _j({"query": "kite", "n_items": 10**12}), J, J, 400, "n_items must be"),
    ("n-items-overflow", b'{"query": "kite", "n_items": 1e400}', J, J, 400, "n_items must be"),
    ("n-items-fraction", _j({"query": "kite", "n_items": 2.5}), J, J, 400, "got 2.5"),
    ("n-items-string", _j({"query": "kite", "n_items": "3"}), J, J, 400, "got '3'"),
    ("n-items-boolean", _j({"query": "kite", "n_items": True}), J, J, 400, "got True"),
    ("n-items-null", _j({"query": "kite", "n_items": None}), J, J, 400, "n_items must be"),
    ("invalid-utf8", b'{"query": "kite \xff\xfe"}', J, J, 400, "not valid UTF-8"),
    ("invalid-utf8-charset", b'{"query": "caf\xe9"}', "application/json; charset=utf-8", J, 400, "not valid UTF-8"),
    ("nul-escape", _j({"query": "kite\u0000"}), J, J, 400, "NUL"),
    ("nul-byte", b'{"query": "kite\x00"}', J, J, 400, "not valid JSON"),
    ("lone-surrogate", b'{"query": "kite \\ud800"}', J, J, 400, "surrogate"),
    ("surrogate-key", b'{"\\udfff": 1, "query": "kite"}', J, J, 400, "surrogate"),
    ("unknown-field", _j({"query": "kite", "limit": 3}), J, J, 400, "unknown field 'limit'"),
    ("deep-nesting", b"[" * 100_000 + b"]" * 100_000, J, J, 400, "not valid JSON"),
    ("star-rating-range", _j({"query": "kite", "min_star_rating": 6}), J, J, 400, "min_star_rating"),
    ("offset-negative", _j({"query": "kite", "offset": -1}), J, J, 400, "offset"),
    # work per request: sentences, not characters, cost CPU (each is embedded and searched)
    ("too-many-query-sentences", _j({"query": ["A kite. " * 40] * 2}), J, J, 400,
     f"at most {MAX_QUERY_SENTENCES} are allowed"),
    ("max-work-request", _j({"query": ["Kite. " * 300] * MAX_QUERIES}), J, J, 400,
     f"at most {MAX_QUERY_SENTENCES}"),
    ("duplicate-query-key", b'{"query": "a kite", "query": "a doll"}', J, J, 400, "the key 'query' more than once"),
    ("duplicate-nested-key", b'{"query": "kite", "n_items": 2, "n_items": 3}', J, J, 400, "'n_items' more than once"),
]


@pytest.fixture(scope="module")
def deployed(backend):
    estimator = job.fit(backend, backend.upload(FIXTURES / "reviews.csv"))
    predictor = job.deploy(estimator, backend)
    record = backend.session.endpoint_record(predictor.endpoint_name)
    yield estimator, predictor, record
    predictor.delete_model()
    predictor.delete_endpoint()


def post(url: str, body: bytes, content_type: str | None = J, accept: str | None = J, path="/invocations"):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if accept is not None:
        headers["Accept"] = accept
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def assert_healthy_and_right(url: str) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", "/ping")
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read()) == {"status": "Healthy"}
    finally:
        conn.close()
    status, _, body = post(url, _j({"query": KNOWN["query"], "n_items": 1}))
    assert status == 200 and json.loads(body)["pred0"]["product_id"] == KNOWN["product_id"], body[:300]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_4xx_json_and_endpoint_keeps_serving(deployed, case):
    _, _, record = deployed
    _name, body, content_type, accept, status, fragment = case
    got, got_type, payload = post(record["url"], body, content_type, accept)
    assert got == status, payload[:500]
    assert (got_type or "").startswith(J), got_type
    error = json.loads(payload)["error"]
    assert error["code"] == status and fragment in error["message"], error
    assert "Traceback" not in error["message"]
    assert_healthy_and_right(record["url"])


def test_bad_request_table_is_big_enough():
    assert len(BAD_REQUESTS) >= 25


def _raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
                length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), b"0"))
                if len(rest) >= length:
                    break
        return b"".join(chunks)


@pytest.mark.parametrize("framing, body", [
    (b"Content-Length: -5\r\n", b""),
    (b"Content-Length: lots\r\n", b""),
    (b"Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n"),  # a chunk size that is not hex
    (b"Transfer-Encoding: chunked\r\n", b"-5\r\n{}\r\n"),  # a negative chunk size
], ids=["negative-length", "non-numeric-length", "bad-chunk-size", "negative-chunk-size"])
def test_broken_http_framing_is_answered_not_hung(deployed, framing, body):
    _, _, record = deployed
    request = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + framing + b"\r\n" + body
    started = time.monotonic()
    answer = _raw_exchange(record["port"], request)
    assert answer.split(b" ", 2)[1] == b"400", answer[:300]
    assert b'"error"' in answer and time.monotonic() - started < 10
    assert_healthy_and_right(record["url"])


@pytest.mark.parametrize("body, content_type, n_products", [
    (_j({"query": KNOWN["query"]}), J, 3),  # n_items missing: the documented default, 3
    (_j({"query": KNOWN["query"], "n_items": MAX_N_ITEMS}), J, None),  # every product there is
    (_j({"query": [KNOWN["query"]] * MAX_QUERIES, "n_items": 2}), J, 2),
    (_j({"query": KNOWN["query"], "n_items": 1}), "application/json; charset=utf-8", 1),
    (_j({"query": KNOWN["query"], "n_items": 1}), "Application/JSON", 1),
], ids=["n-items-default", "n-items-max", "max-sentences", "charset", "upper-case-type"])
def test_valid_edge_requests_answer_200(deployed, body, content_type, n_products):
    _, _, record = deployed
    status, got_type, payload = post(record["url"], body, content_type, "*/*")
    assert status == 200 and got_type.startswith(J), payload[:300]
    answer = json.loads(payload)
    assert answer["pred0"]["product_id"] == KNOWN["product_id"]
    if n_products is not None:
        assert list(answer) == [f"pred{i}" for i in range(n_products)]
    else:
        assert 3 < len(answer) <= 20 and len({p["product_id"] for p in answer.values()}) == len(answer)


@pytest.mark.parametrize("query", [
    "\u05d4\u05e6\u05d5\u05dc\u05dc\u05ea \u05d1\u05d0\u05de\u05d1\u05d8\u05d9\u05d4 \U0001F6C1",  # Hebrew (RTL)
    "\u0644\u0639\u0628\u0629 \u062d\u0645\u0627\u0645 \u062a\u0637\u0641\u0648 \U0001F986",  # Arabic (RTL)
    "bath toy that floats \U0001F6C1\U0001F986\u200f\u202e",  # emoji and bidi control characters
    "\u0628\u0627\u0644\u0648\u0646 kite \u05e2\u05e4\u05d9\u05e4\u05d5\u05df \U0001FA81",  # mixed directions
], ids=["hebrew", "arabic", "emoji-bidi", "mixed"])
def test_right_to_left_and_emoji_queries_answer_200(deployed, query):
    _, _, record = deployed
    status, _, payload = post(record["url"], json.dumps({"query": query, "n_items": 2}, ensure_ascii=False).encode())
    assert status == 200, payload[:300]
    answer = json.loads(payload)
    assert list(answer) == ["pred0", "pred1"] and all(isinstance(p["product_search_score"], float) for p in answer.values())


# Through the runtime gateway: what a boto3 / SDK user sees.
GATEWAY_CASES = [c for c in BAD_REQUESTS if c[0] in {
    "text-plain", "accept-csv", "malformed-json", "n-items-zero", "invalid-utf8", "query-whitespace",
    "lone-surrogate", "too-many-sentences"}]


@pytest.mark.parametrize("case", GATEWAY_CASES, ids=[c[0] for c in GATEWAY_CASES])
def test_bad_request_through_gateway_is_model_error(backend, deployed, case):
    _, predictor, _ = deployed
    _name, body, content_type, accept, status, fragment = case
    runtime = backend.session.boto_session.client("sagemaker-runtime", endpoint_url=backend.session.runtime_url)
    with pytest.raises(ClientError) as info:
        runtime.invoke_endpoint(EndpointName=predictor.endpoint_name, Body=body, ContentType=content_type,
                                Accept=accept)
    error = info.value.response
    assert isinstance(info.value, runtime.exceptions.ModelError)
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 424 and error["OriginalStatusCode"] == status
    assert fragment in json.loads(error["OriginalMessage"])["error"]["message"]
    assert job.predict(predictor, KNOWN["query"], n_items=1)["pred0"]["product_id"] == KNOWN["product_id"]


def test_sdk_predictor_sees_model_error_and_the_gateway_refuses_big_bodies(backend, deployed):
    _, predictor, _ = deployed
    with pytest.raises(ClientError) as info:
        predictor.predict({"query": "   ", "n_items": 2})
    assert info.value.response["Error"]["Code"] == "ModelError" and info.value.response["OriginalStatusCode"] == 400
    with pytest.raises(ClientError) as info:
        predictor.predict({"query": "kite", "n_items": "three"})
    assert "n_items" in info.value.response["OriginalMessage"]
    # over 6 MiB: the front end (gateway) answers 413 itself, as SageMaker's does
    runtime = backend.session.sagemaker_runtime_client
    with pytest.raises(ClientError) as info:
        runtime.invoke_endpoint(EndpointName=predictor.endpoint_name, ContentType=J,
                                Body=b'{"query": "' + b"a" * (SIX_MIB + 10) + b'"}')
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert job.predict(predictor, KNOWN["query"], n_items=1)["pred0"]["product_id"] == KNOWN["product_id"]


# --- trust in artifacts ----------------------------------------------------------------------

def _rewrite_model(data: bytes, change) -> bytes:
    """A copy of a model.tar.gz with `change(name, bytes) -> bytes | None` applied to each file."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, \
            tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as dst:
        for member in src.getmembers():
            content = src.extractfile(member).read() if member.isfile() else None
            if member.isfile():
                content = change(member.name, content)
                if content is None:
                    continue
                member.size = len(content)
            dst.addfile(member, io.BytesIO(content) if content is not None else None)
        extra = change("__add__", b"")
        if extra:
            info = tarfile.TarInfo("extra.pkl")
            info.size = len(extra)
            dst.addfile(info, io.BytesIO(extra))
    return out.getvalue()


def _flip_middle_byte(content: bytes) -> bytes:
    middle = len(content) // 2
    return content[:middle] + bytes([content[middle] ^ 0xFF]) + content[middle + 1:]


TAMPERING = [
    ("tampered", lambda n, c: _flip_middle_byte(c) if n.endswith("catalog.parquet") else (None if n == "__add__" else c),
     "catalog.parquet does not match its sha256"),
    ("truncated", lambda n, c: c[: len(c) // 2] if n.endswith("vectors.npy") and "headline" not in n
     else (None if n == "__add__" else c), "vectors.npy has"),
    ("foreign-file", lambda n, c: b"cos\nsystem\n(S'echo pwned'\ntR." if n == "__add__" else c,
     "extra.pkl is not part of the model"),
]  # (missing manifest, bad format and more are unit-tested in test_model_dir.py)


@pytest.mark.parametrize("name, change, fragment", TAMPERING, ids=[t[0] for t in TAMPERING])
def test_untrusted_model_is_refused_at_deploy(backend, deployed, name, change, fragment):
    estimator, _, _ = deployed
    client = backend.session.s3_client
    bucket, key = estimator.model_data[len("s3://"):].split("/", 1)
    original = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    bad_key = f"untrusted/{name}/model.tar.gz"
    client.put_object(Bucket=bucket, Key=bad_key, Body=_rewrite_model(original, change))
    endpoint = f"untrusted-{name}"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(UnexpectedStatusException) as info:
        job.deploy(job.make_model(backend, f"s3://{bucket}/{bad_key}"), backend, endpoint_name=endpoint)
    message = str(info.value)
    assert "Failed. Reason:" in message and fragment in message, message[-1500:]
    assert registry.read(backend.session.state_dir, endpoint) is None
    leftover = {p.pid for p in psutil.Process().children(recursive=True)} - before
    _gone, alive = psutil.wait_procs([psutil.Process(p) for p in leftover if psutil.pid_exists(p)], timeout=10)
    assert not alive


def test_every_listening_socket_is_loopback(backend, deployed):
    _, _, record = deployed
    processes = [psutil.Process()] + psutil.Process().children(recursive=True)
    listening = []
    for proc in processes:
        try:
            listening += [(proc.pid, c.laddr) for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            pass
    ports = {laddr.port for _, laddr in listening}
    s3_port = urlsplit(backend.extra["s3_url"]).port
    assert {s3_port, record["port"], urlsplit(backend.session.runtime_url).port} <= ports, listening
    assert all(laddr.ip == "127.0.0.1" for _, laddr in listening), listening


def test_dummy_credentials_are_not_on_disk(backend, deployed):
    _, _, _ = deployed
    secrets = [s3_server.DUMMY_ACCESS_KEY_ID.encode(), s3_server.DUMMY_SECRET_ACCESS_KEY.encode()]
    found = []
    for path in backend.session.state_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [str(path) for secret in secrets if secret in data]
    assert found == []
