"""Property-based fuzzing of the serving handlers (entry/entry_point.py), in process: fast, no endpoint.

Whatever a client sends -- arbitrary bytes or text, any JSON value, near-valid request objects, any
Content-Type or Accept -- `input_fn` either returns a valid request or raises the inference toolkit's
`GenericInferenceToolkitError` with one of the documented 4xx statuses and a message. A request that
`input_fn` accepts is then answered by `predict_fn` + `output_fn` without any other error.
"""
from __future__ import annotations

import importlib.util
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sagemaker_inference.errors import GenericInferenceToolkitError

from conftest import ROOT
from knn.query_request import MAX_N_ITEMS, MAX_OFFSET, MAX_QUERIES, MAX_QUERY_CHARS, MAX_QUERY_SENTENCES, SearchRequest

DOCUMENTED = {400, 406, 413, 415}
JSON = "application/json"


def _load_entry_point():
    spec = importlib.util.spec_from_file_location("entry_point_under_fuzz", ROOT / "entry" / "entry_point.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


entry = _load_entry_point()

# Text with every kind of character, lone surrogates, NULs, controls, RTL marks and emoji included.
any_char = st.characters(codec=None, categories=None)
texts = st.one_of(st.text(any_char, max_size=60),
                  st.text(st.sampled_from(list(" \t\n\x00\u200f\u202eשלום مرحبا😀🚀\ud800\udfffa1.?")), max_size=40))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    texts, st.integers(min_value=-10**30, max_value=10**30))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                            st.dictionaries(texts, inner, max_size=5)),
                           max_leaves=20)
# Objects shaped like a request, so that the field validation (not only the JSON parser) gets fuzzed.
near_valid = st.fixed_dictionaries(
    {"query": st.one_of(texts, st.lists(texts, max_size=MAX_QUERIES + 2), json_values)},
    optional={"n_items": st.one_of(st.integers(-5, MAX_N_ITEMS + 5), json_values),
              "min_star_rating": st.one_of(st.integers(-1, 7), st.none(), json_values),
              "offset": st.one_of(st.integers(-1, MAX_OFFSET + 1), json_values),
              "extra": json_values})
content_types = st.one_of(st.none(), st.just(JSON), st.just("application/json; charset=utf-8"),
                          st.just("APPLICATION/JSON"), st.just("text/csv"), st.just("application/x-npy"),
                          st.text(any_char, max_size=30))


def _encode(value, how: str):
    text = json.dumps(value, ensure_ascii=(how == "ascii"))
    if how == "str":
        return text  # what the toolkit hands input_fn for application/json
    return text.encode("utf-8", "surrogatepass")


def _call_input_fn(body, content_type):
    try:
        request = entry.input_fn(body, content_type)
    except GenericInferenceToolkitError as exc:
        assert exc.status_code in DOCUMENTED, (exc.status_code, exc.message)
        assert isinstance(exc.message, str) and exc.message.strip()
        return None
    assert isinstance(request, SearchRequest)
    queries = [request.query] if isinstance(request.query, str) else request.query
    assert 1 <= len(queries) <= MAX_QUERIES
    assert all(isinstance(q, str) and 0 < len(q) <= MAX_QUERY_CHARS and "\x00" not in q for q in queries)
    assert all(any(ch.isalnum() for ch in q) for q in queries)
    queries_text = json.dumps(request.query, ensure_ascii=False)
    queries_text.encode("utf-8")  # no lone surrogate got through
    assert type(request.n_items) is int and 1 <= request.n_items <= MAX_N_ITEMS
    assert request.min_star_rating is None or type(request.min_star_rating) is int
    assert type(request.offset) is int and 0 <= request.offset <= MAX_OFFSET
    return request


@settings(max_examples=400, deadline=None)
@given(body=st.one_of(st.binary(max_size=300), st.text(any_char, max_size=300)), content_type=content_types)
def test_arbitrary_bodies_get_only_documented_errors(body, content_type):
    _call_input_fn(body, content_type)


@settings(max_examples=400, deadline=None)
@given(value=st.one_of(json_values, near_valid), how=st.sampled_from(["str", "bytes", "ascii"]),
       content_type=st.sampled_from([JSON, "application/json; charset=utf-8", None, "text/plain"]))
@example(value={"\ud800": None}, how="ascii", content_type=JSON)  # once a 500: IndexError in the field messages
@example(value={"query": "kite \ud800"}, how="ascii", content_type=JSON)  # once a 500 from the tokenizer
def test_arbitrary_json_values_get_only_documented_errors(value, how, content_type):
    _call_input_fn(_encode(value, how), content_type)


@settings(max_examples=50, deadline=None)
@given(prefix=st.binary(max_size=20), suffix=st.binary(max_size=20))
def test_invalid_utf8_is_400(prefix, suffix):
    body = prefix + b'{"query": "kite \xff\xfe"}' + suffix
    with pytest.raises(GenericInferenceToolkitError) as info:
        entry.input_fn(body, JSON)
    assert info.value.status_code == 400


def test_oversized_body_is_413():
    body = json.dumps({"query": "kite " * 10, "pad": "x" * entry.MAX_BODY_BYTES})
    for form in (body, body.encode()):
        with pytest.raises(GenericInferenceToolkitError) as info:
            entry.input_fn(form, JSON)
        assert info.value.status_code == 413


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=st.one_of(texts, st.lists(texts, min_size=1, max_size=4)), n_items=st.integers(1, 8),
       accept=st.one_of(st.none(), st.sampled_from([JSON, "*/*", "text/csv", "application/*", "text/html, */*;q=0.1"]),
                        st.text(any_char, max_size=20)))
@example(query="kite \ud800", n_items=3, accept=JSON)  # once accepted, then a 500 from the tokenizer
def test_accepted_requests_are_answered(fixture_search, query, n_items, accept):
    """What input_fn lets through never makes predict_fn/output_fn fail with anything but 406."""
    request = _call_input_fn(json.dumps({"query": query, "n_items": n_items}), JSON)
    if request is None:
        return
    prediction = entry.predict_fn(request, fixture_search)
    assert list(prediction) == [f"pred{i}" for i in range(len(prediction))] and len(prediction) <= n_items
    try:
        body, content_type = entry.output_fn(prediction, accept)
    except GenericInferenceToolkitError as exc:
        assert exc.status_code == 406
        return
    assert content_type == JSON and json.loads(body) == json.loads(json.dumps(prediction))


def test_toolkit_decode_error_becomes_400():
    """The toolkit decodes an application/json body before input_fn; invalid UTF-8 must still be a 400."""
    from sagemaker_inference.transformer import Transformer

    from local_runs.sim.inference import Context

    transformer = Transformer()
    transformer._model = object()
    transformer._transform_fn = transformer._default_transform_fn
    transformer._input_fn, transformer._predict_fn, transformer._output_fn = entry.input_fn, entry.predict_fn, entry.output_fn
    transformer.validate_and_initialize = lambda *args, **kwargs: None  # the handlers are set above
    context = Context("/nonexistent", {"Content-Type": JSON, "Accept": JSON})
    result = transformer.transform([{"body": bytearray(b'{"query": "\xff"}')}], context)
    assert context.status_code == 400
    assert json.loads(result[0])["error"]["message"].startswith("the body is not valid UTF-8")


@pytest.mark.parametrize("body, fragment", [
    ('{"query": "a", "query": "b"}', "the key 'query' more than once"),
    ('{"query": "kite", "offset": 1, "offset": 2}', "the key 'offset' more than once"),
    ('{"query": "kite", "extra": {"x": 1, "x": 2}}', "the key 'x' more than once"),
])
def test_duplicate_keys_are_400_naming_the_key(body, fragment):
    for form in (body, body.encode()):
        with pytest.raises(GenericInferenceToolkitError) as info:
            entry.input_fn(form, JSON)
        assert info.value.status_code == 400 and fragment in info.value.message


@settings(max_examples=30, deadline=None)
@given(per_text=st.integers(1, 200), n_texts=st.integers(1, MAX_QUERIES))
def test_sentence_cap_is_400_naming_the_limit(per_text, n_texts):
    query = ["Kite. " * per_text] * n_texts
    request = _call_input_fn(json.dumps({"query": query}), JSON)
    total = per_text * n_texts
    assert (request is not None) == (total <= MAX_QUERY_SENTENCES and len(query[0]) <= MAX_QUERY_CHARS)
    if total > MAX_QUERY_SENTENCES and len(query[0]) <= MAX_QUERY_CHARS:
        with pytest.raises(GenericInferenceToolkitError, match=f"at most {MAX_QUERY_SENTENCES} are allowed"):
            entry.input_fn(json.dumps({"query": query}), JSON)
