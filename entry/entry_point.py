"""The SageMaker entry point: a training main, and model_fn/input_fn/predict_fn/output_fn for serving.

Thin glue over `knn` (shipped beside this file with `dependencies=['knn']`).

Training (sagemaker-training toolkit): reads the reviews file in SM_CHANNEL_TRAIN, writes a model dir
into SM_MODEL_DIR. With a channel `embedded` (SM_CHANNEL_EMBEDDED: the output of entry/embed.py, the first
step of a two-step fit) it joins the precomputed sentences and vectors instead and builds the index. Hyperparameters arrive as --long-names: --index-kind auto|graph|exact|ivf,
--threads N, --batch-size N, --n-neighbors N, --precision float32|int8 (the encoder's arithmetic; the
model dir keeps that encoder for serving). A bad reviews file ends the job with a one-line reason.

Serving (sagemaker-inference toolkit): `application/json` bodies `{"query": str | [str], "n_items": int}`,
answered as `{"pred0": {...}, "pred1": {...}}`; `application/jsonlines` bodies hold one such request per
line and are answered with one answer per line, in order (what batch transform's MultiRecord sends;
blank lines are skipped, a bad line fails the whole body with a 400 naming its line). Bad requests get a 4xx with a JSON body
`{"error": {"code": 400, "message": "..."}}`: 400 bad body, 406 Accept, 413 too large, 415 Content-Type.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
import traceback
from http import HTTPStatus

# SageMaker's repack puts `dependencies` (knn) under code/lib, which the inference toolkit does not
# add to the import path; training finds knn beside this file.
_LIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib")
if os.path.isdir(_LIB) and _LIB not in sys.path:
    sys.path.insert(0, _LIB)

from knn.errors import QueryError, SearchError  # noqa: E402

log = logging.getLogger("entry_point")

JSON = "application/json"
JSONLINES = "application/jsonlines"
_JSONLINES_TYPES = (JSONLINES, "application/jsonl", "application/x-jsonlines")
MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker's own limit on a request body


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build the review search model from a reviews file.")
    parser.add_argument("--index-kind", "--index_kind", default="auto", choices=["auto", "graph", "exact", "ivf"])
    parser.add_argument("--threads", type=int, default=int(os.environ.get("SM_NUM_CPUS", "1") or 1))
    parser.add_argument("--batch-size", "--batch_size", type=int, default=64)
    parser.add_argument("--n-neighbors", "--n_neighbors", type=int, default=None)
    parser.add_argument("--precision", default="float32", choices=["float32", "int8"])
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    parser.add_argument("--embedded", default=os.environ.get("SM_CHANNEL_EMBEDDED"),
                        help="the embed step's output (two-step fit): build the model from its sentences and vectors")
    return parser.parse_args(argv)


def train(argv=None) -> dict:
    from knn.build import build_model_dir
    from knn.reviews import find_reviews_file

    args = parse_args(argv)
    if args.embedded:  # the index step of a two-step fit (entry/embed.py embedded the parts)
        from knn.shards import build_model_dir_from_shards

        log.info("index step: joining the embedded parts in %s -> %s (index %s)", args.embedded, args.model_dir,
                 args.index_kind)
        figures = build_model_dir_from_shards(args.embedded, args.model_dir, index_kind=args.index_kind,
                                              n_neighbors=args.n_neighbors)
        log.info("model written: %s", json.dumps(figures))
        return figures
    reviews = find_reviews_file(args.train)
    log.info("training on %s -> %s (index %s, %s encoder, %d threads)", reviews, args.model_dir, args.index_kind,
             args.precision, args.threads)
    figures = build_model_dir(reviews, args.model_dir, index_kind=args.index_kind, threads=max(1, args.threads),
                              batch_size=args.batch_size, n_neighbors=args.n_neighbors, precision=args.precision)
    log.info("model written: %s", json.dumps(figures))
    return figures


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        train(argv)
    except SearchError as exc:
        # One line, no traceback. The training toolkit copies stderr into the job's FailureReason
        # from the first line that names a Python error class, hence the class name in front.
        kind = "ValueError" if isinstance(exc, ValueError) else "RuntimeError"
        print(f"{kind}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------------------------------
def _toolkit_error(status: HTTPStatus, message: str):
    from sagemaker_inference.errors import GenericInferenceToolkitError

    return GenericInferenceToolkitError(int(status), message, status.phrase)


def _json_error_bodies() -> None:
    """Make the inference toolkit answer errors as JSON without the server's traceback.

    The toolkit's Transformer.handle_error sends "message\\ntraceback" as the body; the traceback goes
    to the container log instead, and the client gets {"error": {"code", "message"}}.
    """
    try:
        from sagemaker_inference import transformer, utils
    except ImportError:  # training containers need not have the inference toolkit
        return
    if getattr(transformer.Transformer.handle_error, "_json_bodies", False):
        return

    def handle_error(context, inference_exception, trace):
        code = int(inference_exception.status_code)
        message = inference_exception.message if isinstance(inference_exception.message, str) else str(inference_exception.message)
        bad_utf8 = _toolkit_decode_error(sys.exc_info()[1])
        if bad_utf8 is not None:  # the toolkit decodes JSON/CSV bodies before input_fn sees them
            code, message = int(HTTPStatus.BAD_REQUEST), _not_utf8_message(bad_utf8)
            inference_exception = _toolkit_error(HTTPStatus.BAD_REQUEST, message)
        (log.warning if code < 500 else log.error)("request failed with %d: %s%s", code, message,
                                                   "" if code < 500 else "\n" + trace)
        context.set_response_status(code=code, phrase=utils.remove_crlf(str(inference_exception.phrase)))
        try:
            context.set_response_content_type(0, JSON)
        except Exception:  # older contexts without per-request headers
            pass
        return [json.dumps({"error": {"code": code, "message": message}})]

    handle_error._json_bodies = True
    transformer.Transformer.handle_error = staticmethod(handle_error)


def _toolkit_decode_error(exc: BaseException | None) -> UnicodeDecodeError | None:
    """The error of the toolkit's own `body.decode("utf-8")` (in Transformer.transform), else None."""
    if not isinstance(exc, UnicodeDecodeError) or exc.__traceback__ is None:
        return None
    frames = traceback.extract_tb(exc.__traceback__)
    return exc if frames and frames[-1].name == "transform" else None


def _not_utf8_message(exc: UnicodeDecodeError) -> str:
    return f"the body is not valid UTF-8 (byte {exc.start}); send UTF-8 encoded JSON"


_json_error_bodies()


# Answered once in model_fn: the first query of a process loads Punkt and the Porter stemmer (knn.nltk_parts)
# and loads or compiles the graph search; that belongs before the endpoint is InService, not in a
# shopper's first request. Two sentences, so that Punkt runs too.
WARM_UP_QUERY = "My kids loved it. Good for long car rides."


def model_fn(model_dir: str):
    from knn.model_dir import load_model_dir

    logging.basicConfig(level=logging.INFO)
    threads = int(os.environ.get("SEARCH_THREADS", "1"))
    search = load_model_dir(model_dir, threads=threads)
    started = time.perf_counter()
    search.search(WARM_UP_QUERY, n_items=1)
    _parse_one(json.dumps({"query": WARM_UP_QUERY}))  # imports the request checks (pydantic) now, too
    # The model lives as long as the process: its objects leave the garbage collector's generations,
    # so no later collection walks them (a full one during a first request took ~0.4 s at toys-10k).
    gc.collect()
    gc.freeze()
    log.info("warm-up query answered in %.1f s (first-query costs paid before serving)", time.perf_counter() - started)
    return search


def _media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def input_fn(request_body, request_content_type):
    """Decode and validate a request; returns a knn-ready request object (RequestLines for jsonlines)."""
    if not request_content_type:
        raise _toolkit_error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                             f"the request has no Content-Type; send {JSON} (or {JSONLINES})")
    lines = _media_type(request_content_type) in _JSONLINES_TYPES
    if _media_type(request_content_type) != JSON and not lines:
        raise _toolkit_error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                             f"Content-Type {request_content_type!r} is not supported; send {JSON} (or {JSONLINES})")
    if isinstance(request_body, (bytes, bytearray)):
        if len(request_body) > MAX_BODY_BYTES:
            raise _toolkit_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                 f"the body has {len(request_body)} bytes; at most {MAX_BODY_BYTES} are allowed")
        try:
            request_body = bytes(request_body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _toolkit_error(HTTPStatus.BAD_REQUEST, _not_utf8_message(exc)) from None
    if len(request_body.encode("utf-8", "surrogatepass")) > MAX_BODY_BYTES:
        raise _toolkit_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is larger than {MAX_BODY_BYTES} bytes")
    if lines:
        return _parse_lines(request_body)
    return _parse_one(request_body)


class RequestLines(list):
    """An `application/jsonlines` body: [(line number, request), ...], answered line for line."""


def _parse_lines(text: str) -> RequestLines:
    requests = RequestLines()
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            requests.append((number, _parse_one(line)))
        except Exception as exc:  # a toolkit error: keep its status, name the line
            status = getattr(exc, "status_code", None)
            if status is None:
                raise
            raise _toolkit_error(HTTPStatus(int(status)), f"line {number}: {exc.message}") from None
    if not requests:
        raise _toolkit_error(HTTPStatus.BAD_REQUEST, "the jsonlines body has no request lines; "
                             'send one JSON object per line, e.g. {"query": "my kids loved it"}')
    return requests


def _parse_one(request_body: str):
    from knn.query_request import parse_request
    try:
        payload = json.loads(request_body, object_pairs_hook=_object_without_duplicate_keys)
    except _DuplicateKey as exc:
        raise _toolkit_error(HTTPStatus.BAD_REQUEST, str(exc)) from None
    except (ValueError, RecursionError) as exc:
        raise _toolkit_error(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON: {exc}") from None
    if _has_lone_surrogate(payload):
        raise _toolkit_error(HTTPStatus.BAD_REQUEST, "the body has a \\u escape of a lone UTF-16 surrogate "
                             "(\\ud800-\\udfff), which is not text; send valid Unicode")
    try:
        return parse_request(payload)
    except QueryError as exc:
        raise _toolkit_error(HTTPStatus.BAD_REQUEST, str(exc)) from None


class _DuplicateKey(ValueError):
    """A JSON object names one key twice (json.loads would silently keep the last)."""


def _object_without_duplicate_keys(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(f"the body has the key {key!r} more than once; send each field once")
        obj[key] = value
    return obj


def _has_lone_surrogate(value) -> bool:
    """True when a string anywhere in a decoded JSON value cannot be encoded (a lone surrogate)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def predict_fn(request, model):
    if isinstance(request, RequestLines):
        return AnswerLines(_search_lines(request, model))
    try:
        results = model.search(request.query, n_items=request.n_items, min_star_rating=request.min_star_rating, offset=request.offset)
    except QueryError as exc:
        raise _toolkit_error(HTTPStatus.BAD_REQUEST, str(exc)) from None
    return {f"pred{rank}": result for rank, result in enumerate(results)}


class AnswerLines(list):
    """The answers to a RequestLines, in its order."""


def _answer(results) -> dict:
    return {f"pred{rank}": result for rank, result in enumerate(results)}


def _search_lines(requests: RequestLines, model) -> list[dict]:
    """Answer every line; the query sentences of all lines are embedded in one encoder call.

    Same results as one `model.search` per line (search = embed the sentences, then search_vectors).
    """
    batched = all(hasattr(model, name) for name in ("query_sentences", "encoder", "search_vectors", "n_products"))
    try:
        if not batched or model.n_products == 0:
            return [_answer(model.search(r.query, n_items=r.n_items, min_star_rating=r.min_star_rating,
                                         offset=r.offset)) for _, r in requests]
        sentences = []
        for number, r in requests:
            try:
                sentences.append(model.query_sentences(r.query))
            except QueryError as exc:
                raise QueryError(f"line {number}: {exc}") from None
        vectors = model.encoder.encode([s for group in sentences for s in group], progress=False)
        answers, start = [], 0
        for (number, r), group in zip(requests, sentences):
            try:
                answers.append(_answer(model.search_vectors(vectors[start:start + len(group)], r.n_items, group,
                                                            r.min_star_rating, r.offset)))
            except QueryError as exc:
                raise QueryError(f"line {number}: {exc}") from None
            start += len(group)
        return answers
    except QueryError as exc:
        raise _toolkit_error(HTTPStatus.BAD_REQUEST, str(exc)) from None


def output_fn(prediction, accept):
    accepted = [_media_type(part) for part in (accept or JSON).split(",")]
    if not any(media in (JSON, *_JSONLINES_TYPES, "*/*", "application/*", "") for media in accepted):
        raise _toolkit_error(HTTPStatus.NOT_ACCEPTABLE,
                             f"Accept {accept!r} cannot be served; accept {JSON} (or {JSONLINES})")
    if isinstance(prediction, AnswerLines):  # one answer per line, whatever JSON type was asked for
        return "".join(json.dumps(answer, ensure_ascii=False) + "\n" for answer in prediction), JSONLINES
    if any(media in _JSONLINES_TYPES for media in accepted) and JSON not in accepted:
        return json.dumps(prediction, ensure_ascii=False) + "\n", JSONLINES
    return json.dumps(prediction, ensure_ascii=False), JSON


if __name__ == "__main__":
    sys.exit(main())
