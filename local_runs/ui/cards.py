"""The endpoint's answer as the page shows it: one card per product, the matched sentence marked in its review.

Everything stays plain text (HTML entities decoded, tags dropped): the page inserts it with textContent.
"""
from __future__ import annotations

import html
import re
import sys


def _paragraphs(text: str) -> list[str]:
    """Review text as the search saw it: HTML breaks end paragraphs, entities decoded, tags dropped."""
    from knn.sentences import clean_text

    return clean_text(text or "")


def _sentence_pattern(sentence: str) -> re.Pattern | None:
    """Matches the sentence in its paragraph, whatever the spacing (the splitter adds a space after
    "great.My", and collapses runs of spaces)."""
    words = sentence.split()
    if not words:
        return None
    return re.compile(r"\s*".join(re.escape(word) for word in words), re.IGNORECASE)


def highlight(review_body: str, sentence: str) -> tuple[list[list[dict]], bool]:
    """Split a review into paragraphs of `{"text", "match"}` segments, marking the matched sentence.

    Returns (paragraphs, found). When the sentence is not in the body (e.g. a headline matched), the
    paragraphs come back unmarked and `found` is False.
    """
    paragraphs = _paragraphs(review_body)
    pattern = _sentence_pattern(html.unescape(sentence or ""))
    out, found = [], False
    for paragraph in paragraphs:
        match = pattern.search(paragraph) if pattern is not None and not found else None
        if match is None:
            out.append([{"text": paragraph, "match": False}])
            continue
        found = True
        parts = [(paragraph[:match.start()], False), (match.group(0), True), (paragraph[match.end():], False)]
        out.append([{"text": text, "match": marked} for text, marked in parts if text])
    return out, found


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def present(response: dict, offset: int = 0) -> list[dict]:
    """The endpoint's `{"pred0": {...}, ...}` as a list of cards, best first (all text unescaped,
    still plain text: the page inserts it with textContent)."""
    def rank_of(key: str) -> int:
        digits = key[4:] if key.startswith("pred") else ""
        return int(digits) if digits.isdigit() else sys.maxsize

    products = []
    for position, key in enumerate(sorted(response, key=rank_of)):
        item = response[key]
        if not isinstance(item, dict):
            continue
        sentence = html.unescape(str(item.get("matched_sentence") or ""))
        review, found = highlight(str(item.get("review_body") or ""), sentence)
        stars = _number(item.get("star_rating"))
        score = _number(item.get("product_search_score"))
        products.append({
            "rank": offset + position + 1,
            "product_id": str(item.get("product_id", "")),
            "product_title": html.unescape(str(item.get("product_title") or "(no title)")),
            "star_rating": stars,
            "review_id": str(item.get("review_id", "")),
            "review_headline": " ".join(_paragraphs(str(item.get("review_headline") or ""))),
            "review": review,
            "matched_sentence": sentence,
            "matched_field": item.get("matched_field") or "body",
            "matched_in_review": found,
            "score": score,
        })
    return products
