"""knn.query_request: the request schema and its documented bounds."""
import pytest

from knn.errors import QueryError
from knn.query_request import DEFAULT_N_ITEMS, MAX_N_ITEMS, MAX_QUERIES, MAX_QUERY_CHARS, parse_request


def test_defaults_and_lists():
    assert parse_request({"query": "kids loved it"}).n_items == DEFAULT_N_ITEMS
    request = parse_request({"query": ["a kite", "for windy days"], "n_items": 5})
    assert request.query == ["a kite", "for windy days"] and request.n_items == 5


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ([], "JSON object"),
        ("kids", "JSON object"),
        ({}, "query is required"),
        ({"query": 3}, "query"),
        ({"query": None}, "query"),
        ({"query": {"a": 1}}, "query"),
        ({"query": ""}, "no letters or digits"),
        ({"query": "   "}, "no letters or digits"),
        ({"query": "?!"}, "no letters or digits"),
        ({"query": ["ok", 3]}, "query"),
        ({"query": ["ok", ""]}, "query[1] has no letters"),
        ({"query": []}, "query"),
        ({"query": ["x"] * (MAX_QUERIES + 1)}, "query"),
        ({"query": "a" * (MAX_QUERY_CHARS + 1)}, f"at most {MAX_QUERY_CHARS}"),
        ({"query": "a\x00b"}, "NUL"),
        ({"query": "ok", "n_items": 0}, "n_items"),
        ({"query": "ok", "n_items": -1}, "n_items"),
        ({"query": "ok", "n_items": MAX_N_ITEMS + 1}, "n_items"),
        ({"query": "ok", "n_items": 2.5}, "n_items"),
        ({"query": "ok", "n_items": "3"}, "n_items"),
        ({"query": "ok", "n_items": True}, "n_items"),
        ({"query": "ok", "colour": "red"}, "unknown field 'colour'"),
    ],
)
def test_invalid_requests_name_the_problem(payload, fragment):
    with pytest.raises(QueryError) as info:
        parse_request(payload)
    assert fragment in str(info.value)
