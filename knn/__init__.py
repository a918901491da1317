"""Review-based semantic product search: split reviews into sentences, embed them, index them, search.

This package knows nothing of SageMaker or S3. Heavy dependencies (torch, sentence-transformers,
pynndescent) are imported lazily by the modules that need them.
"""
from knn.errors import EncoderError, IndexFileError, ModelDirError, QueryError, ReviewDataError, SearchError

__all__ = ["EncoderError", "IndexFileError", "ModelDirError", "QueryError", "ReviewDataError", "SearchError"]
