"""Validation of search requests (a decoded JSON payload): what a client may ask, with documented bounds.

Kept apart from the entry point so the bounds are one table. The sentence cap bounds the work of one
request (each query sentence is embedded and searched): characters alone do not, since 16 strings of
2000 characters can hold ~1,300 sentences (seconds of CPU). Every violation raises
`knn.QueryError` with a message that names the field and says what is allowed.

| field             | type                 | default | bounds                                              |
|-------------------|----------------------|---------|-----------------------------------------------------|
| `query`           | string or [string]   | -       | 1-16 strings, each <= 2000 characters, with a letter or digit, no NUL; at most 64 sentences in all |
| `n_items`         | whole number         | 3       | 1-100 products                                      |
| `min_star_rating` | whole number or null | null    | 1-5: only reviews rated at least this count         |
| `offset`          | whole number         | 0       | 0-1000: skip this many products (pagination)        |
"""
from __future__ import annotations

from typing import Annotated, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

from knn.errors import QueryError
from knn.sentences import has_content, split_sentences

MAX_QUERIES = 16  # strings in a list query
MAX_QUERY_CHARS = 2000  # characters in one query string
MAX_QUERY_SENTENCES = 64  # sentences in all query strings together (the work of one request)
MAX_N_ITEMS = 100
DEFAULT_N_ITEMS = 3
MIN_STAR_RATING, MAX_STAR_RATING = 1, 5
MAX_OFFSET = 1000
FIELDS = ("query", "n_items", "min_star_rating", "offset")
# Whole-number fields: (lowest, highest) for the messages.
_BOUNDS = {"n_items": (1, MAX_N_ITEMS), "min_star_rating": (MIN_STAR_RATING, MAX_STAR_RATING), "offset": (0, MAX_OFFSET)}


class SearchRequest(BaseModel):
    """The JSON object `{"query": str | [str, ...], "n_items": int, "min_star_rating": int | null,
    "offset": int}`; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    query: Union[StrictStr, Annotated[list[StrictStr], Field(min_length=1, max_length=MAX_QUERIES)]]
    n_items: Annotated[StrictInt, Field(ge=1, le=MAX_N_ITEMS)] = DEFAULT_N_ITEMS
    min_star_rating: Optional[Annotated[StrictInt, Field(ge=MIN_STAR_RATING, le=MAX_STAR_RATING)]] = None
    offset: Annotated[StrictInt, Field(ge=0, le=MAX_OFFSET)] = 0

    @field_validator("query")
    @classmethod
    def _query_has_words(cls, value):
        texts = [value] if isinstance(value, str) else value
        for position, text in enumerate(texts):
            where = "query" if isinstance(value, str) else f"query[{position}]"
            if "\x00" in text:
                raise ValueError(f"{where} contains a NUL character")
            if len(text) > MAX_QUERY_CHARS:
                raise ValueError(f"{where} has {len(text)} characters; at most {MAX_QUERY_CHARS} are allowed")
            if not has_content(text):
                raise ValueError(f"{where} has no letters or digits to search for")
        sentences = 0
        for position, text in enumerate(texts):  # stops at the first string past the cap: refusing stays cheap
            sentences += len(split_sentences(text))
            if sentences > MAX_QUERY_SENTENCES:
                more = " or more" if position < len(texts) - 1 else ""
                raise ValueError(f"the query has {sentences}{more} sentences in all; at most {MAX_QUERY_SENTENCES} "
                                 "are allowed in one request (send the rest in another request)")
        return value


def _describe(error: dict) -> str:
    loc = error.get("loc") or ("",)
    location = ".".join(str(part) for part in loc) or "body"
    message = error.get("msg", "is invalid")
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if error.get("type") == "extra_forbidden":
        return f"unknown field {location!r}; allowed fields are {', '.join(repr(f) for f in FIELDS)}"
    if error.get("type") == "missing":
        return f"{location} is required"
    field = str(loc[0])
    if field in _BOUNDS:
        low, high = _BOUNDS[field]
        nullable = " (or null)" if field == "min_star_rating" else ""
        return f"{field} must be a whole number from {low} to {high}{nullable}, got {error.get('input')!r}"
    return f"{location}: {message}"


def parse_request(payload: object) -> SearchRequest:
    """Validate a decoded JSON payload; raise QueryError naming the first problem."""
    if not isinstance(payload, dict):
        raise QueryError(f"the body must be a JSON object like {{\"query\": \"...\", \"n_items\": 3}}, not {type(payload).__name__}")
    try:
        return SearchRequest.model_validate(payload)
    except ValidationError as exc:
        errors = exc.errors()
        # A union reports one error per branch; the string branch's message is the clearest.
        seen = []
        for error in errors:
            text = _describe(error)
            text = text.replace("query.str:", "query:").replace("query.list[str]", "query")
            if text not in seen:
                seen.append(text)
        raise QueryError("invalid request: " + "; ".join(seen[:3])) from None
