"""Error types of the search library. Each message is one line that says what is wrong and what to do."""


class SearchError(Exception):
    """Base class of every error this package raises on purpose."""


class ReviewDataError(SearchError, ValueError):
    """A reviews file cannot be used (missing, empty, wrong columns, bad values)."""


class QueryError(SearchError, ValueError):
    """A search request cannot be answered as asked (empty query, bad n_items)."""


class ModelDirError(SearchError):
    """A model directory is missing, incomplete, tampered with or of an unknown format."""


class IndexFileError(ModelDirError):
    """A saved vector index cannot be loaded."""


class EncoderError(SearchError):
    """The sentence encoder cannot be loaded (missing package, missing or corrupt weights)."""
