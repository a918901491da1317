"""knn.sentences: offline Punkt splitting with HTML and unicode handled."""
import pytest

from knn.sentences import clean_text, split_many, split_sentences


def test_glued_sentences_are_split():
    assert split_sentences("This is great.My kids love it") == ["This is great.", "My kids love it"]


def test_abbreviations_do_not_split():
    text = "We met Mr. Potato on Dec. 3 at the shop. It was fun."
    assert split_sentences(text) == ["We met Mr. Potato on Dec. 3 at the shop.", "It was fun."]


def test_html_breaks_and_entities():
    assert split_sentences("Fast shipping<br />Works &amp; looks good<br/><br/>") == [
        "Fast shipping", "Works & looks good"]
    assert clean_text("a &lt;br /&gt; b") == ["a", "b"]


def test_unicode_apostrophes_and_hyphens_kept():
    text = "Viel Spaß — naïve café “quotes”. Don't miss this well-made toy!"
    assert split_sentences(text) == ["Viel Spaß — naïve café “quotes”.", "Don't miss this well-made toy!"]


@pytest.mark.parametrize("text", ["", "!", "...", " <br /> ", "?!?"])
def test_fragments_without_letters_are_not_indexed(text):
    assert split_sentences(text) == []


def test_trailing_punctuation_stays_with_its_sentence():
    assert split_sentences("Great toy! ! Kids love it.") == ["Great toy!!", "Kids love it."]


def test_split_many_tracks_owners():
    sentences, owners = split_many(["One. Two.", "", "Three"])
    assert sentences == ["One.", "Two.", "Three"]
    assert owners == [0, 0, 2]


def test_no_download_is_needed(monkeypatch):
    import nltk

    def refuse(*args, **kwargs):
        raise AssertionError("nltk.download must not be called")

    monkeypatch.setattr(nltk, "download", refuse)
    assert split_sentences("It works. Offline.") == ["It works.", "Offline."]
