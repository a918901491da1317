"""knn.query_request: the request schema and its documented bounds."""
import pytest

from knn.errors import QueryError
from knn.query_request import (DEFAULT_N_ITEMS, MAX_N_ITEMS, MAX_OFFSET, MAX_QUERIES, MAX_QUERY_CHARS,
                               MAX_QUERY_SENTENCES, parse_request)


def test_defaults_and_lists():
    assert parse_request({"query": "kids loved it"}).n_items == DEFAULT_N_ITEMS
    defaults = parse_request({"query": "kids loved it"})
    assert defaults.min_star_rating is None and defaults.offset == 0
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


@pytest.mark.parametrize("payload", [
    {"query": "ok", "min_star_rating": 1}, {"query": "ok", "min_star_rating": 5}, {"query": "ok", "min_star_rating": None},
    {"query": "ok", "offset": 0}, {"query": "ok", "offset": MAX_OFFSET},
    {"query": "ok", "n_items": 10, "offset": 20, "min_star_rating": 4},
])
def test_filters_within_bounds(payload):
    request = parse_request(payload)
    for name, value in payload.items():
        assert getattr(request, name) == value


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ({"query": "ok", "min_star_rating": 0}, "min_star_rating must be a whole number from 1 to 5 (or null), got 0"),
        ({"query": "ok", "min_star_rating": 6}, "min_star_rating must be a whole number from 1 to 5"),
        ({"query": "ok", "min_star_rating": 4.5}, "min_star_rating"),
        ({"query": "ok", "min_star_rating": "4"}, "min_star_rating"),
        ({"query": "ok", "min_star_rating": True}, "min_star_rating"),
        ({"query": "ok", "min_star_rating": [4]}, "min_star_rating"),
        ({"query": "ok", "offset": -1}, "offset must be a whole number from 0 to 1000, got -1"),
        ({"query": "ok", "offset": MAX_OFFSET + 1}, "offset must be a whole number from 0 to 1000"),
        ({"query": "ok", "offset": 2.0}, "offset"),
        ({"query": "ok", "offset": "10"}, "offset"),
        ({"query": "ok", "offset": None}, "offset"),
        ({"query": "ok", "page": 2}, "allowed fields are 'query', 'n_items', 'min_star_rating', 'offset'"),
    ],
)
def test_invalid_filters_name_the_problem(payload, fragment):
    with pytest.raises(QueryError) as info:
        parse_request(payload)
    assert fragment in str(info.value)


def test_sentence_cap_bounds_the_work_of_one_request():
    at_cap = ["One sentence here."] * MAX_QUERIES
    at_cap[0] = " ".join(["A kite flies."] * (MAX_QUERY_SENTENCES - MAX_QUERIES + 1))
    assert len(parse_request({"query": at_cap}).query) == MAX_QUERIES
    over = at_cap[:]
    over[1] = "One sentence. And another."
    with pytest.raises(QueryError, match=rf"has {MAX_QUERY_SENTENCES + 1} sentences in all; at most {MAX_QUERY_SENTENCES}"):
        parse_request({"query": over})
    # the most sentences the character limits allow (16 x 333 = 5,328) is refused before any embedding,
    # after splitting only the first string
    with pytest.raises(QueryError, match=f"at most {MAX_QUERY_SENTENCES}"):
        parse_request({"query": ["Kite. " * (MAX_QUERY_CHARS // 6)] * MAX_QUERIES})
