"""One query's products as a table for the terminal, aligned by display width (CJK and emoji count as two)."""
from __future__ import annotations

import unicodedata

TITLE_WIDTH = 42
SENTENCE_WIDTH = 70


def char_width(char: str) -> int:
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def display_width(text: str) -> int:
    return sum(char_width(c) for c in text)


def fit(text: str, width: int, pad: bool = True) -> str:
    """`text` cut to `width` columns (with "…" when cut) and, with `pad`, filled with spaces to it."""
    text = " ".join(str(text).split())  # no newlines or tabs inside a cell
    if display_width(text) > width:
        out, used = [], 0
        for char in text:
            w = char_width(char)
            if used + w > width - 1:
                break
            out.append(char)
            used += w
        text = "".join(out) + "…"
    return text + " " * (width - display_width(text)) if pad else text


def format_results(query, response: dict) -> str:
    """A readable table of one query's products."""
    shown = query if isinstance(query, str) else " / ".join(query)
    lines = [f'\nQuery: "{shown}"']
    if not response:
        return "\n".join(lines + ["  (no products)"])
    lines.append(f"  {'#':>2}  {'score':>6}  {'stars':<5}  {fit('product', TITLE_WIDTH)}  matched sentence")
    for rank, item in enumerate(response.values(), 1):
        stars = "*" * int(item["star_rating"])
        title = fit(item["product_title"], TITLE_WIDTH)
        sentence = fit(item["matched_sentence"], SENTENCE_WIDTH, pad=False)
        lines.append(f"  {rank:>2}  {item['product_search_score']:6.3f}  {stars:<5}  {title}  {sentence}")
    return "\n".join(lines)
