"""End-to-end on ../shared/data/toys-10k: exact-sentence queries, and graph recall vs exact search."""
import numpy as np
import pytest



pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def toys_search(toys_model_dir):
    from knn.model_dir import load_model_dir

    return load_model_dir(toys_model_dir)


def test_query_equal_to_a_review_sentence_brings_its_product_first(toys_search, toys_model_dir):
    import pandas as pd

    # the tables of record (a served graph model reads its texts a row at a time: knn.stored_texts)
    sentences = pd.read_parquet(toys_model_dir / "sentences.parquet")
    catalog = pd.read_parquet(toys_model_dir / "catalog.parquet")
    rng = np.random.default_rng(7)
    checked = 0
    for row in rng.permutation(len(sentences)):
        sentence = sentences["sentence"].iloc[row]
        if len(sentence.split()) < 8:
            continue  # short sentences ("Great toy!") occur in many products' reviews
        same_text = sentences.index[sentences["sentence"] == sentence]
        products = catalog["product_id"].iloc[sentences["review_row"].iloc[same_text]].unique()
        if len(products) > 1:
            continue
        result = toys_search.search(sentence, n_items=3)[0]
        assert result["product_id"] == products[0], sentence
        assert result["product_search_score"] >= 0.99
        checked += 1
        if checked == 20:
            break
    assert checked == 20


def test_seed_example_brand_new(toys_search):
    result = toys_search.search("it still looks brand new too", n_items=3)[0]
    assert "Learning Kitchen" in result["product_title"]


def test_graph_recall_at_10_vs_exact(toys_search):
    from knn.index import ExactIndex

    vectors = toys_search.corpus.vectors  # QuantizedVectors: the walk reads int8 codes, scores are float16
    sample = np.random.default_rng(1).choice(len(vectors), 500, replace=False)
    queries = vectors.rows.take(sample).astype(np.float32)
    # the top 10 of the k a search asks for (int8 codes alone rank the true top 10 for ~0.97-0.98 of them)
    graph_ids, graph_sims = toys_search.index.query(queries, toys_search.candidates_per_sentence)
    graph_ids, graph_sims = graph_ids[:, :10], graph_sims[:, :10]
    _, exact_sims = ExactIndex(vectors).query(queries, 10)
    # A hit counts when its similarity reaches the exact 10th best: the corpus holds many identical
    # sentences, and which of several equal ones is returned does not matter (ann-benchmarks' rule).
    recall = np.mean([(g >= e[-1] - 1e-6).sum() / 10 for g, e in zip(graph_sims, exact_sims)])
    print(f"recall@10 graph vs exact on 500 toys-10k sentences: {recall:.4f}")
    assert recall >= 0.99
