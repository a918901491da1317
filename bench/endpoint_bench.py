"""Endpoint latency and throughput over HTTP on a sim endpoint serving the toys-10k model.

    .venv/bin/python bench/endpoint_bench.py [--reviews ../shared/data/toys-10k/reviews.csv] [--workers 2]

The model (built once under --work-dir) is packed like a training job's model.tar.gz, uploaded to the
sim's local S3 and deployed with the user's SDK code (local_runs.job: PyTorchModel.deploy), with
--workers worker processes (LOCAL_RUNS_SIM_WORKERS; default: one per CPU, as SageMaker's PyTorch
containers do). Clients POST one-sentence queries to the endpoint's /invocations on kept-alive
connections (http.client, one thread each): --requests per client, distinct queries (sentences of
review headlines). Every answer must be a 200 with products. Reports p50/p90/p99 and requests/s for
1, 4 and 8 clients, and 1 client through the runtime API (boto3 invoke_endpoint via the sim gateway).
Targets: 1 client p50 <= 10 ms and p99 <= 30 ms; 4 clients >= 100 requests/s with 0 errors.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import TOYS_10K, WORK_DIR, pack_model_dir, percentiles, report, target, toys_model_dir
from load_client import expect_products, run_load


def distinct_queries(reviews: str | Path, count: int = 400) -> list[str]:
    """One-sentence queries: distinct sentences of review headlines (not the star-rating ones)."""
    from knn.lexical import kept_headline
    from knn.reviews import read_reviews
    from knn.sentences import split_sentences

    seen, queries = set(), []
    for headline in read_reviews(reviews)["review_headline"].tolist():
        for sentence in split_sentences(kept_headline(headline)):
            if len(sentence.split()) >= 2 and sentence.lower() not in seen:
                seen.add(sentence.lower())
                queries.append(sentence)
        if len(queries) >= count:
            break
    return queries


def run_clients(port: int, queries: list[str], clients: int, requests: int) -> dict:
    def request(number: int, i: int):
        return {"query": queries[(number * requests + i) % len(queries)]}, expect_products

    result = run_load(port, clients, requests, request)
    return {"clients": clients, "requests": result.requests, "errors": len(result.errors),
            "first_errors": result.errors[:3], **percentiles(result.latencies),
            "requests_per_s": round(result.requests_per_s, 1)}


def run_runtime_api(runtime, endpoint: str, queries: list[str], requests: int) -> dict:
    latencies, errors = [], 0
    for i in range(requests):
        started = time.perf_counter()
        response = runtime.invoke_endpoint(EndpointName=endpoint, Body=json.dumps({"query": queries[i % len(queries)]}),
                                           ContentType="application/json", Accept="application/json")
        answer = json.loads(response["Body"].read())
        latencies.append(time.perf_counter() - started)
        errors += "pred0" not in answer
    return {"clients": 1, "requests": requests, "errors": errors, **percentiles(latencies)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", default=str(TOYS_10K))
    parser.add_argument("--model-dir", help="an existing model dir (default: build toys-10k's under --work-dir)")
    parser.add_argument("--work-dir", default=str(WORK_DIR))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--requests", type=int, default=300, help="requests per client")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    from local_runs import job
    from local_runs.backends import open_backend
    from local_runs.config import load_settings

    model_dir = Path(args.model_dir) if args.model_dir else toys_model_dir(args.reviews, args.work_dir)
    queries = distinct_queries(args.reviews)
    results = {"model_dir": str(model_dir), "workers": args.workers, "distinct_queries": len(queries), "direct": []}
    with tempfile.TemporaryDirectory(prefix="endpoint-bench-") as scratch:
        archive = pack_model_dir(model_dir, Path(scratch) / "model.tar.gz")
        settings = load_settings(cli={"backend": "sim", "state_dir": str(Path(scratch) / "state")}, environ={})
        with open_backend(settings) as backend:
            uri = backend.session.upload_data(str(archive), bucket=backend.bucket, key_prefix="bench/output")
            started = time.perf_counter()
            saved = os.environ.get("LOCAL_RUNS_SIM_WORKERS")
            os.environ["LOCAL_RUNS_SIM_WORKERS"] = str(args.workers)  # read when the endpoint starts
            try:
                predictor = job.deploy(job.make_model(backend, uri), backend, endpoint_name="endpoint-bench")
            finally:  # leave the caller's environment as it was (the tests run this in-process)
                if saved is None:
                    os.environ.pop("LOCAL_RUNS_SIM_WORKERS", None)
                else:
                    os.environ["LOCAL_RUNS_SIM_WORKERS"] = saved
            results["deploy_s"] = round(time.perf_counter() - started, 2)
            try:
                port = int(backend.session.endpoint_record("endpoint-bench")["port"])
                run_clients(port, queries, 2, 20)  # warm up every worker
                for clients in args.clients:
                    figures = run_clients(port, queries, clients, args.requests)
                    results["direct"].append(figures)
                    print(f"{clients} client(s): p50 {figures['p50_ms']} ms, p90 {figures['p90_ms']} ms, "
                          f"p99 {figures['p99_ms']} ms, {figures['requests_per_s']} requests/s, "
                          f"{figures['errors']} errors", flush=True)
                runtime = run_runtime_api(backend.session.sagemaker_runtime_client, "endpoint-bench", queries,
                                          args.requests)
                results["runtime_api"] = runtime
                print(f"runtime API (boto3 -> gateway -> endpoint), 1 client: p50 {runtime['p50_ms']} ms, "
                      f"p99 {runtime['p99_ms']} ms", flush=True)
            finally:
                predictor.delete_model()
                predictor.delete_endpoint()
    by_clients = {row["clients"]: row for row in results["direct"]}
    targets = []
    if 1 in by_clients:
        targets += [target("endpoint p50, 1 client", by_clients[1]["p50_ms"], 10.0, "ms"),
                    target("endpoint p99, 1 client", by_clients[1]["p99_ms"], 30.0, "ms")]
    if 4 in by_clients:
        targets += [target("endpoint throughput, 4 clients", by_clients[4]["requests_per_s"], 100.0, "req/s",
                           higher_is_better=True, note=f"{args.workers} workers"),
                    target("errors under load, 4 clients", by_clients[4]["errors"], 0, "errors")]
    report("endpoint", results, targets, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
