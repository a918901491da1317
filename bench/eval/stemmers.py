"""BM25 with another stemmer: rebuild both BM25 indexes in-process and evaluate the default ranking.

    python bench/eval/stemmers.py MODEL_DIR QUERIES.json [QUERIES.json ...]

Rows: Porter (what knn/lexical.py ships), Snowball (english), no stemming. The model dir's own
BM25 files are not used (they were built with Porter); nothing is written.
"""
import functools
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import knn.lexical as lx
from knn.lexical import LexicalIndex, review_documents, passage_documents
from knn.model_dir import load_model_dir
from knn.evaluate import load_queries, run_queries
import dataclasses

def stemmer(kind):
    from nltk.stem import PorterStemmer, SnowballStemmer
    if kind == "porter": return PorterStemmer()
    if kind == "snowball": return SnowballStemmer("english")
    if kind == "none":
        class N:
            def stem(self, w): return w
        return N()
    if kind == "lancaster":
        from nltk.stem import LancasterStemmer; return LancasterStemmer()

model, *sets = sys.argv[1:]
base = load_model_dir(model)
qs = [(s, load_queries(s)) for s in sets]
enc = {s: {} for s in sets}
for kind in ("porter", "snowball", "none"):
    lx._stem.cache_clear(); lx._stemmer.cache_clear()
    st = stemmer(kind)
    lx._stemmer = functools.lru_cache(maxsize=1)(lambda st=st: st)
    c = base.corpus
    corpus = dataclasses.replace(c, lexical=LexicalIndex.build(review_documents(c.catalog)),
                                 passage_lexical=LexicalIndex.build(passage_documents(c.sentences, c.headlines)))
    from knn.search import ProductSearch
    s = ProductSearch(base.encoder, base.index, corpus, ranking=base.ranking, headline_index=base.headline_index)
    cells = []
    for name, q in qs:
        m = run_queries(s, q, enc[name])["metrics"]
        cells.append(f"{m['recall@1']:.3f} / {m['recall@5']:.3f} / {m['recall@10']:.3f} / {m['mrr@10']:.3f}")
    print(f"| BM25 stemmer: {kind} | " + " | ".join(cells) + " |", flush=True)
