"""Batch transform, the parts that need no serving process: splitting, batching, assembly, dealing,
output names, failure reasons, /execution-parameters, the request checks, the entry point's
application/jsonlines contract, the command line, and the sagemaker dry run's CreateTransformJob.
"""
from __future__ import annotations

import http.server
import importlib.util
import json
import threading

import pytest
from sagemaker_inference.errors import GenericInferenceToolkitError

from conftest import ROOT
from local_runs.sim import transform as t

JSONLINES = "application/jsonlines"


# --- splitting --------------------------------------------------------------------------------------
def test_split_by_line_numbers_every_line_and_skips_blank_ones():
    data = b'{"query": "a"}\n\n{"query": "b"}\r\n   \n{"query": "c"}'
    records = list(t.split_records(data, "Line"))
    assert [(r.line, r.data) for r in records] == [(1, b'{"query": "a"}'), (3, b'{"query": "b"}'),
                                                   (5, b'{"query": "c"}')]
    assert list(t.split_records(b"x\n", "Line")) == [t.Record(1, b"x")]  # the final newline ends a line
    assert list(t.split_records(b"", "Line")) == []


def test_split_none_is_one_record_per_object():
    assert list(t.split_records(b"a\nb\n", None)) == [t.Record(1, b"a\nb\n")]
    assert list(t.split_records(b"a\nb\n", "None")) == [t.Record(1, b"a\nb\n")]
    assert list(t.split_records(b" \n", None)) == []
    with pytest.raises(t.TransformValidationError, match="RecordIO"):
        list(t.split_records(b"a", "RecordIO"))


# --- batching ----------------------------------------------------------------------------------------
def _records(*sizes):
    return [t.Record(i + 1, b"x" * size) for i, size in enumerate(sizes)]


def test_single_record_sends_each_record_alone():
    batches = list(t.make_batches(_records(3, 5, 2), "SingleRecord", 6))
    assert [b.body for b in batches] == [b"xxx", b"xxxxx", b"xx"]
    assert [b.lines for b in batches] == ["line 1", "line 2", "line 3"]


def test_multi_record_packs_whole_records_up_to_the_payload(monkeypatch):
    monkeypatch.setattr(t, "MiB", 10)  # 1 "MB" = 10 bytes, so the limits are visible
    batches = list(t.make_batches(_records(3, 4, 2, 9, 1), "MultiRecord", 1))
    # each record costs its bytes + a newline: [4 + 5] = 9, [3] then 10 alone, [2]
    assert [b.body for b in batches] == [b"xxx\nxxxx\n", b"xx\n", b"x" * 9 + b"\n", b"x\n"]
    assert [b.lines for b in batches] == ["lines 1-2", "line 3", "line 4", "line 5"]
    assert sum(len(b.records) for b in batches) == 5
    assert all(len(b.body) <= 10 for b in batches)


def test_multi_record_without_limit_is_one_request_and_keeps_order():
    records = [t.Record(i * 2 + 1, f'{{"query": "q{i}"}}'.encode()) for i in range(1000)]
    (batch,) = list(t.make_batches(records, "MultiRecord", 0))
    assert batch.body.splitlines() == [r.data for r in records] and batch.lines == "lines 1-1999"


def test_a_record_over_the_payload_fails_naming_its_line(monkeypatch):
    monkeypatch.setattr(t, "MiB", 10)
    for strategy in ("SingleRecord", "MultiRecord"):
        with pytest.raises(t.TransformFailed, match=r"line 2 of s3://b/q.jsonl has 1[12] bytes, more than MaxPayloadInMB \(1 MB\)"):
            list(t.make_batches(_records(2, 11), strategy, 1, where="s3://b/q.jsonl"))


def test_split_none_with_multi_record_sends_the_object_as_is():
    (batch,) = list(t.make_batches(t.split_records(b"a\nb", None), "MultiRecord", 6, split_type=None))
    assert batch.body == b"a\nb"


# --- assembly, dealing, names --------------------------------------------------------------------------
def test_assemble_with_line_ends_each_answer_with_one_newline():
    assert t.assemble(b'{"a": 1}', "Line") == b'{"a": 1}\n'
    assert t.assemble(b'{"a": 1}\n{"a": 2}\n', "Line") == b'{"a": 1}\n{"a": 2}\n'  # not doubled
    assert t.assemble(b"x", None) == b"x" and t.assemble(b"x", "None") == b"x"


def test_objects_are_dealt_in_key_order_and_no_instance_idles():
    assert t.deal(["c", "a", "b", "d", "e"], 2) == [["a", "c", "e"], ["b", "d"]]
    assert t.deal(["a", "b"], 4) == [["a"], ["b"]]
    assert t.deal(["a"], 1) == [["a"]]


@pytest.mark.parametrize("prefix, key, expected", [
    ("in/q.jsonl", "in/q.jsonl", "out/q.jsonl.out"),  # the prefix is the object
    ("in", "in/q.jsonl", "out/q.jsonl.out"),  # a folder, without the slash
    ("in/", "in/sub/q.jsonl", "out/sub/q.jsonl.out"),
    ("data/q", "data/q2/x.jsonl", "out/q2/x.jsonl.out"),  # a key that only extends the prefix
])
def test_output_key(prefix, key, expected):
    assert t.output_key(prefix, key, "out/") == expected


# --- failure reasons ---------------------------------------------------------------------------------------
def _batch(*lines):
    return t.Batch([t.Record(n, b"{}") for n in lines], b"")


def test_a_refused_single_record_names_object_line_and_message():
    body = json.dumps({"error": {"code": 400, "message": "n_items must be a whole number from 1 to 100"}}).encode()
    reason = t.refused_reason(400, body, _batch(7), "s3://b/q.jsonl", "SingleRecord")
    assert reason == ("ClientError: the model refused line 7 of s3://b/q.jsonl with 400: "
                      "n_items must be a whole number from 1 to 100")


def test_a_refused_multi_record_request_maps_the_models_line_back_to_the_object():
    body = json.dumps({"error": {"code": 400, "message": "line 2: query is required"}}).encode()
    reason = t.refused_reason(400, body, _batch(10, 12, 13), "s3://b/q.jsonl", "MultiRecord")
    assert reason == ("ClientError: the model refused line 12 of s3://b/q.jsonl with 400: query is required "
                      "(MultiRecord request of lines 10-13)")
    plain = t.refused_reason(415, b"unsupported", _batch(10, 12), "s3://b/q.jsonl", "MultiRecord")
    assert plain == "ClientError: the model refused the MultiRecord request of lines 10-12 of s3://b/q.jsonl with 415: unsupported"


# --- parameters ------------------------------------------------------------------------------------------
def test_parameters_come_from_the_request_then_the_container_then_defaults():
    assert t.resolve_parameters({}, None) == {"BatchStrategy": "MultiRecord", "MaxPayloadInMB": 6,
                                              "MaxConcurrentTransforms": 1}
    container = {"BatchStrategy": "SingleRecord", "MaxPayloadInMB": 2, "MaxConcurrentTransforms": 4}
    assert t.resolve_parameters({}, container) == container
    assert t.resolve_parameters({"BatchStrategy": "MultiRecord", "MaxPayloadInMB": 0}, container) == \
        {"BatchStrategy": "MultiRecord", "MaxPayloadInMB": 0, "MaxConcurrentTransforms": 4}


def _serve_once(status: int, body: bytes):
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    return server, seen


def test_execution_parameters_are_asked_and_used_when_offered():
    offered = {"MaxConcurrentTransforms": 2, "BatchStrategy": "SingleRecord", "MaxPayloadInMB": 1}
    server, seen = _serve_once(200, json.dumps(offered).encode())
    assert t.execution_parameters("127.0.0.1", server.server_address[1]) == offered
    assert seen == ["/execution-parameters"]
    server.server_close()
    server, seen = _serve_once(404, b'{"error": "no such path"}')  # the PyTorch serving stack: none
    assert t.execution_parameters("127.0.0.1", server.server_address[1]) is None and seen == ["/execution-parameters"]
    server.server_close()


def _request(**changes):
    request = {"TransformJobName": "j", "ModelName": "m",
               "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in"}},
                                  "ContentType": JSONLINES, "SplitType": "Line"},
               "TransformOutput": {"S3OutputPath": "s3://b/out", "AssembleWith": "Line"},
               "TransformResources": {"InstanceCount": 1, "InstanceType": "local"}}
    for key, value in changes.items():
        request[key] = value
    return request


@pytest.mark.parametrize("changes, fragment", [
    ({"MaxPayloadInMB": 101}, "MaxPayloadInMB 101 must be 0-100"),
    ({"MaxPayloadInMB": 30, "MaxConcurrentTransforms": 4}, "must not exceed 100 MB"),
    ({"BatchStrategy": "Everything"}, "SingleRecord or MultiRecord"),
    ({"TransformResources": {"InstanceCount": 0, "InstanceType": "local"}}, "at least 1"),
    ({"DataProcessing": {"InputFilter": "$.query"}}, "does not apply input/output filters"),
    ({"TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": "s3://b/m"}},
                         "SplitType": "Line"}}, "S3Prefix inputs only"),
    ({"TransformInput": {"DataSource": {"S3DataSource": {"S3Uri": "s3://b/in"}}, "SplitType": "RecordIO"}},
     "Line or None"),
])
def test_what_cannot_run_is_refused_at_create(changes, fragment):
    with pytest.raises(t.TransformValidationError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        t.validate_request(_request(**changes))
    t.validate_request(_request())  # the SDK's own request passes


# --- the entry point's application/jsonlines ---------------------------------------------------------------
@pytest.fixture(scope="module")
def entry():
    spec = importlib.util.spec_from_file_location("entry_point_for_transform", ROOT / "entry" / "entry_point.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jsonlines_in_one_answer_per_line_out_in_order(entry, fixture_search):
    queries = ["a kite for windy days", "a bath toy that floats", "good for long car rides"]
    body = "".join(json.dumps({"query": q, "n_items": 2}) + "\n" for q in queries).encode()
    request = entry.input_fn(bytearray(body), JSONLINES)
    answer, content_type = entry.output_fn(entry.predict_fn(request, fixture_search), JSONLINES)
    assert content_type == JSONLINES and answer.endswith("\n")
    lines = [json.loads(line) for line in answer.splitlines()]
    single = [entry.predict_fn(entry.input_fn(json.dumps({"query": q, "n_items": 2}), "application/json"),
                               fixture_search) for q in queries]
    assert len(lines) == 3
    for got, want in zip(lines, single):  # the batched encoder call finds what one query at a time finds
        assert [p["product_id"] for p in got.values()] == [p["product_id"] for p in want.values()]
        for g, w in zip(got.values(), want.values()):
            assert g["product_search_score"] == pytest.approx(w["product_search_score"], abs=1e-4)


def test_jsonlines_answers_even_when_json_is_accepted(entry, fixture_search):
    request = entry.input_fn('{"query": "kite"}\n{"query": "boat"}', "application/jsonlines; charset=utf-8")
    answer, content_type = entry.output_fn(entry.predict_fn(request, fixture_search), "application/json")
    assert content_type == JSONLINES and len(answer.splitlines()) == 2


def test_a_single_json_request_can_be_answered_as_a_json_line(entry, fixture_search):
    prediction = entry.predict_fn(entry.input_fn('{"query": "kite"}', "application/json"), fixture_search)
    answer, content_type = entry.output_fn(prediction, JSONLINES)
    assert content_type == JSONLINES and answer.endswith("\n") and len(answer.splitlines()) == 1


@pytest.mark.parametrize("body, fragment", [
    ('{"query": "kite"}\n{"query": ""}\n', "line 2: "),
    ('{"query": "kite"}\n\nnot json\n', "line 3: the body is not valid JSON"),
    ('{"query": "kite", "n_items": 500}', "line 1: "),
    ('{"query": "kite"}\n{"query": "boat", "color": "red"}', "line 2: "),
    ("\n\n", "no request lines"),
])
def test_a_bad_line_is_a_400_naming_its_line(entry, body, fragment):
    with pytest.raises(GenericInferenceToolkitError) as info:
        entry.input_fn(body.encode(), JSONLINES)
    assert info.value.status_code == 400 and fragment in info.value.message


def test_other_content_types_are_still_415(entry):
    with pytest.raises(GenericInferenceToolkitError) as info:
        entry.input_fn(b'{"query": "kite"}', "text/csv")
    assert info.value.status_code == 415 and JSONLINES in info.value.message


# --- the command line ---------------------------------------------------------------------------------
def test_cli_transform_checks_the_queries_file_first(tmp_path, capsys):
    from local_runs.cli import main

    state = ["--state-dir", str(tmp_path / "s")]
    assert main(["transform", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "r.jsonl"), *state]) == 1
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "kite"}\n{"query": kite}\n')
    assert main(["transform", str(bad), "--out", str(tmp_path / "r.jsonl"), *state]) == 1
    assert "line 2: not JSON" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text('{"query": "kite"}\n')
    assert main(["transform", str(good), "--out", str(tmp_path / "r.jsonl"), *state]) == 1
    assert "no trained model yet" in capsys.readouterr().err


def test_split_for_instances_keeps_every_line_in_order(tmp_path):
    from local_runs.commands import _split_for_instances

    source = tmp_path / "q.jsonl"
    source.write_bytes(b"".join(b'{"query": "q%d"}\n' % i for i in range(10)))
    parts = _split_for_instances(source, 3, tmp_path)
    assert [p.name for p in parts] == ["q.part-00001-lines-1-4.jsonl", "q.part-00002-lines-5-8.jsonl",
                                       "q.part-00003-lines-9-10.jsonl"]
    assert b"".join(p.read_bytes() for p in parts) == source.read_bytes()


# --- scoring a transform's output (knn.evaluate_transform) ------------------------------------------------
def test_evaluate_transform_scores_answers_in_request_order(tmp_path):
    from knn import evaluate_transform as et

    queries_file = tmp_path / "queries.json"
    queries_file.write_text(json.dumps([
        {"id": "kite", "kind": "specific", "query": "a kite", "relevant": ["P1"]},
        {"id": "boat", "kind": "vague", "query": ["a boat", "it floats"], "relevant": ["P2", "P9"]},
        {"id": "gone", "query": "not sold here", "relevant": ["P404"]},
    ]))
    requests = tmp_path / "requests.jsonl"
    assert et.main([str(queries_file), "--write-requests", str(requests)]) == 0
    assert [json.loads(line) for line in requests.read_text().splitlines()] == [
        {"query": "a kite", "n_items": 10}, {"query": ["a boat", "it floats"], "n_items": 10},
        {"query": "not sold here", "n_items": 10}]
    results = tmp_path / "results.jsonl"
    answer = lambda *ids: json.dumps({f"pred{i}": {"product_id": p} for i, p in enumerate(ids)})  # noqa: E731
    results.write_text("\n".join([answer("P1", "P2"), answer("P3", "P2"), answer("P5")]) + "\n")
    from knn.evaluate import load_queries

    scored = et.score(load_queries(queries_file), et.read_results(results), catalog={"P1", "P2", "P3", "P5", "P9"})
    assert scored["skipped"] == ["gone"]
    assert scored["metrics"]["recall@1"] == 0.5 and scored["metrics"]["mrr@10"] == 0.75
    assert scored["by_kind"]["vague"]["recall@5"] == 0.5
    results.write_text(answer("P1") + "\n")
    with pytest.raises(ValueError, match="1 answers for 3 queries"):
        et.score(load_queries(queries_file), et.read_results(results))
    results.write_text('{"error": "x"}\n')
    with pytest.raises(ValueError, match="line 1: not an answer"):
        et.read_results(results)


def test_where_each_backend_finds_the_transform_results():
    from local_runs.backends.base import Backend
    from local_runs.backends.docker import DockerBackend

    assert Backend.transform_results_uri(None, "s3://b/out", "job-1") == "s3://b/out"  # SageMaker, sim
    assert DockerBackend.transform_results_uri(None, "s3://b/out/", "job-1") == "s3://b/out/job-1"  # the SDK's local mode
