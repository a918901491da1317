"""knn.reviews: both file shapes, gzip, and a clear one-line error for every bad file."""
import gzip

import pytest

from knn.errors import ReviewDataError
from knn.reviews import CATALOG_COLUMNS, find_reviews_file, read_reviews

HEADER = "review_id,product_id,product_title,star_rating,review_headline,review_body\n"
TSV_HEADER = ("marketplace\tcustomer_id\treview_id\tproduct_id\tproduct_parent\tproduct_title\tproduct_category\t"
              "star_rating\thelpful_votes\ttotal_votes\tvine\tverified_purchase\treview_headline\treview_body\treview_date\n")


def write(tmp_path, name, text, compress=False):
    path = tmp_path / name
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_reads_six_column_csv_with_float_ratings(tmp_path):
    path = write(tmp_path, "r.csv", HEADER + 'R1,P1,Kite,5.0,Fun,"Flies high, <br />lovely."\nR2,P2,Ball,3.0,Ok,\n')
    frame = read_reviews(path)
    assert list(frame.columns) == CATALOG_COLUMNS
    assert frame["star_rating"].tolist() == [5, 3]
    assert frame.loc[1, "review_body"] == ""  # empty body kept


def test_reads_fifteen_column_tsv_gzip_with_quotes_kept(tmp_path):
    row = 'US\t1\tR9\tP9\t7\tTrain "Deluxe"\tToys\t4\t0\t0\tN\tY\tNice\tShe said "wow".\t2015-01-02\n'
    path = write(tmp_path, "reviews.data", TSV_HEADER + row, compress=True)
    frame = read_reviews(path)
    assert frame.loc[0, "product_title"] == 'Train "Deluxe"'
    assert frame.loc[0, "review_body"] == 'She said "wow".'
    assert frame.loc[0, "star_rating"] == 4


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        (HEADER, "no reviews"),
        ("review_id,product_id,star_rating\nR1,P1,5\n", "missing column(s) review_body"),
        (HEADER + "R1,P1,T,5,H,a\nR1,P2,T,4,H,b\n", "duplicate review_id 'R1'"),
        (HEADER + "R1,P1,T,6,H,a\n", "star_rating '6'"),
        (HEADER + "R1,P1,T,0,H,a\n", "star_rating '0'"),
        (HEADER + "R1,P1,T,4.5,H,a\n", "star_rating '4.5'"),
        (HEADER + "R1,P1,T,five,H,a\n", "star_rating 'five'"),
        (HEADER + "R1,,T,5,H,a\n", "empty product_id"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, text, fragment):
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(ReviewDataError) as info:
        read_reviews(path)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ReviewDataError, match="no such file"):
        read_reviews(tmp_path / "nope.csv")


def test_truncated_gzip(tmp_path):
    data = gzip.compress((HEADER + "R1,P1,T,5,H,a\n" * 1).encode() * 50)
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReviewDataError, match="cut off or corrupt"):
        read_reviews(path)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes((HEADER + "R1,P1,T,5,H,fine\nR2,P1,T,5,H,").encode() + "caf\xe9\n".encode("latin-1"))
    with pytest.raises(ReviewDataError, match="line 3 is not valid UTF-8"):
        read_reviews(path)


def test_find_reviews_file(tmp_path):
    with pytest.raises(ReviewDataError, match="no reviews file"):
        find_reviews_file(tmp_path)
    write(tmp_path, "a.csv", HEADER)
    assert find_reviews_file(tmp_path).name == "a.csv"
    write(tmp_path, "b.tsv", TSV_HEADER)
    with pytest.raises(ReviewDataError, match="exactly one"):
        find_reviews_file(tmp_path)
