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


def test_punkt_and_porter_come_without_nltks_whole_package_and_split_and_stem_as_nltk_does():
    """knn.nltk_parts: a fresh process splits and stems without running nltk/__init__ (which imports
    scipy.stats and ~3 s of the rest of nltk), leaves no nltk module behind, and gets the same sentences
    and stems as nltk's own package imported in full afterwards."""
    import subprocess
    import sys

    from conftest import FIXTURES, ROOT

    code = r'''
import sys
import pandas as pd
from knn.lexical import _stemmer, tokens
from knn.sentences import _tokenizer, clean_text
texts = pd.read_csv(sys.argv[1], dtype=str, keep_default_na=False)["review_body"].tolist()
paragraphs = [p for text in texts for p in clean_text(text)]
light_split = [_tokenizer().tokenize(p) for p in paragraphs]
words = sorted({w for p in paragraphs for w in p.lower().split()} | {"running", "generously", "hopping"})
light_stems = [_stemmer().stem(w) for w in words]
tokens("warm up")
left = sorted(m for m in sys.modules if m == "nltk" or m.startswith("nltk."))
assert not left, left
assert "scipy.stats" not in sys.modules
import nltk
from nltk.stem import PorterStemmer
from nltk.tokenize.punkt import PunktSentenceTokenizer
assert hasattr(nltk, "download") and type(_stemmer()) is not PorterStemmer  # the whole real package now
full = PunktSentenceTokenizer(_tokenizer()._params)
assert [full.tokenize(p) for p in paragraphs] == light_split
assert [PorterStemmer().stem(w) for w in words] == light_stems
print(len(paragraphs), "paragraphs", len(words), "words")
'''
    done = subprocess.run([sys.executable, "-c", code, str(FIXTURES / "reviews.csv")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "paragraphs" in done.stdout
