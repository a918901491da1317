"""Review-based semantic product search: split reviews into sentences, embed them, index them, search.

This package knows nothing of SageMaker or S3. Importing it loads only the error classes; each module
imports what it needs. Serving (knn.model_dir, knn.encoder, knn.search) needs onnxruntime, tokenizers
and the index library, never torch: torch and transformers are imported only by knn.encoder_export,
when the encoder is built from its weights (once per machine, at fit time).
"""
from knn.errors import EncoderError, IndexFileError, ModelDirError, QueryError, ReviewDataError, SearchError

__all__ = ["EncoderError", "IndexFileError", "ModelDirError", "QueryError", "ReviewDataError", "SearchError"]
