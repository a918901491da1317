"""Batch transform against one-by-one invoke_endpoint: 10,000 one-sentence queries on the toys-10k model, in sim.

    .venv/bin/python bench/transform_bench.py [--reviews ../shared/data/toys-10k/reviews.csv] [--queries 10000]

All in one run, with the user's SDK code (local_runs.job) on a sim backend:
1. the toys-10k model (built once under --work-dir, as bench/endpoint_bench.py does) packed like a training
   job's model.tar.gz and uploaded to the sim's local S3; the queries (distinct sentences of review headlines,
   then of review bodies, 2-30 words) as one jsonlines object;
2. `job.transform` (model.transformer(...).transform(..., content_type='application/jsonlines',
   split_type='Line')) with SingleRecord, then MultiRecord (MaxPayloadInMB --max-payload), one instance,
   MaxConcurrentTransforms 1 (one serving worker). Timed from the call to its return (the serving process's
   start included) and, from the job's own figures, the sending alone;
3. the same queries one by one through `invoke_endpoint` (boto3 -> the sim runtime gateway -> an endpoint
   deployed with job.deploy, --workers workers) with 1 client, then 4 clients (threads).
Every answer is checked (one line per query, products in each); the transforms' products are compared with
the endpoint's. The ratio is queries/s of each transform over queries/s of invoke_endpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from common import TOYS_10K, WORK_DIR, pack_model_dir, percentiles, report, target, toys_model_dir

CONTENT_TYPE = "application/json"


def one_sentence_queries(reviews: str | Path, count: int) -> list[str]:
    """`count` distinct one-sentence queries: review headline sentences first, then review body sentences."""
    from knn.lexical import kept_headline
    from knn.reviews import read_reviews
    from knn.sentences import split_sentences

    frame = read_reviews(reviews)
    seen, queries = set(), []
    texts = [kept_headline(h) for h in frame["review_headline"].tolist()] + frame["review_body"].tolist()
    for text in texts:
        for sentence in split_sentences(text):
            words = len(sentence.split())
            if 2 <= words <= 30 and sentence.lower() not in seen and any(c.isalpha() for c in sentence):
                seen.add(sentence.lower())
                queries.append(sentence)
                if len(queries) >= count:
                    return queries
    raise SystemExit(f"only {len(queries)} distinct one-sentence queries in {reviews}; ask for fewer (--queries)")


def products(answer: dict) -> list[str]:
    return [answer[f"pred{i}"]["product_id"] for i in range(len(answer))]


def run_transform(backend, model_uri: str, input_uri: str, strategy: str, max_payload: int, queries: int) -> dict:
    from sagemaker.local.local_session import LocalSagemakerClient

    from local_runs import job

    output = f"s3://{backend.bucket}/bench/transform-out-{strategy}"
    started = time.perf_counter()
    transformer = job.transform(backend, model_uri, input_uri, output, instance_count=1, strategy=strategy,
                                max_payload=max_payload, max_concurrent_transforms=1)
    wall = time.perf_counter() - started
    name = transformer.latest_transform_job.name
    sim_job = LocalSagemakerClient._transform_jobs[name]
    key = output[len(f"s3://{backend.bucket}/"):] + "/queries.jsonl.out"
    body = backend.session.s3_client.get_object(Bucket=backend.bucket, Key=key)["Body"].read().decode()
    answers = [json.loads(line) for line in body.splitlines()]
    errors = sum(1 for a in answers if "pred0" not in a) + abs(len(answers) - queries)
    return {"strategy": strategy, "max_payload_mb": max_payload if strategy == "MultiRecord" else None,
            "queries": queries, "answers": len(answers), "errors": errors,
            "requests": sim_job.stats.get("requests"), "wall_s": round(wall, 2),
            "queries_per_s": round(queries / wall, 1), "sending_s": sim_job.stats.get("seconds"),
            "queries_per_s_sending": round(queries / sim_job.stats["seconds"], 1)}, [products(a) for a in answers]


def run_invoke(runtime, endpoint: str, queries: list[str], clients: int) -> tuple[dict, list]:
    """Every query once, one by one, split across `clients` threads (each takes every clients-th query)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    answers: list = [None] * len(queries)
    errors: list[str] = []

    def client(number: int) -> None:
        for i in range(number, len(queries), clients):
            started = time.perf_counter()
            try:
                response = runtime.invoke_endpoint(EndpointName=endpoint, Body=json.dumps({"query": queries[i]}),
                                                   ContentType=CONTENT_TYPE, Accept=CONTENT_TYPE)
                answer = json.loads(response["Body"].read())
            except Exception as exc:  # noqa: BLE001 - counted, reported
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            latencies[number].append(time.perf_counter() - started)
            answers[i] = products(answer) if "pred0" in answer else None
            if "pred0" not in answer:
                errors.append(f"no products for {queries[i]!r}")

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    flat = [x for row in latencies for x in row]
    return {"clients": clients, "queries": len(queries), "errors": len(errors), "first_errors": errors[:3],
            "wall_s": round(wall, 2), "queries_per_s": round(len(flat) / wall, 1), **percentiles(flat)}, answers


def agreement(a: list, b: list) -> float:
    same = sum(1 for x, y in zip(a, b) if x is not None and x == y)
    return round(same / max(1, len(a)), 4)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", default=str(TOYS_10K))
    parser.add_argument("--model-dir", help="an existing model dir (default: build toys-10k's under --work-dir)")
    parser.add_argument("--work-dir", default=str(WORK_DIR))
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--max-payload", type=int, default=6, help="MultiRecord's MaxPayloadInMB (default 6)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="the endpoint's worker processes for invoke_endpoint (default: one per CPU)")
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    from local_runs import job
    from local_runs.backends import open_backend
    from local_runs.config import load_settings

    model_dir = Path(args.model_dir) if args.model_dir else toys_model_dir(args.reviews, args.work_dir)
    queries = one_sentence_queries(args.reviews, args.queries)
    results = {"model_dir": str(model_dir), "queries": len(queries), "cpus": os.cpu_count(),
               "note": "2 CPU cores shared with other agents' jobs while this ran: figures are noisy, the ratios "
                       "between runs of the same bench are the useful part",
               "transform": [], "invoke_endpoint": []}
    answers = {}
    with tempfile.TemporaryDirectory(prefix="transform-bench-") as scratch:
        archive = pack_model_dir(model_dir, Path(scratch) / "model.tar.gz")
        settings = load_settings(cli={"backend": "sim", "state_dir": str(Path(scratch) / "state")}, environ={})
        with open_backend(settings) as backend:
            model_uri = backend.session.upload_data(str(archive), bucket=backend.bucket, key_prefix="bench/model")
            body = "".join(json.dumps({"query": q}) + "\n" for q in queries).encode()
            backend.session.s3_client.put_object(Bucket=backend.bucket, Key="bench/in/queries.jsonl", Body=body)
            input_uri = f"s3://{backend.bucket}/bench/in/queries.jsonl"
            for strategy in ("SingleRecord", "MultiRecord"):
                figures, answers[strategy] = run_transform(backend, model_uri, input_uri, strategy, args.max_payload,
                                                           len(queries))
                results["transform"].append(figures)
                print(f"transform {strategy}: {figures['wall_s']} s, {figures['queries_per_s']} queries/s "
                      f"({figures['requests']} requests; sending alone {figures['sending_s']} s, "
                      f"{figures['queries_per_s_sending']} queries/s), {figures['errors']} errors", flush=True)
            saved = os.environ.get("LOCAL_RUNS_SIM_WORKERS")
            os.environ["LOCAL_RUNS_SIM_WORKERS"] = str(args.workers)
            try:
                started = time.perf_counter()
                predictor = job.deploy(job.make_model(backend, model_uri), backend, endpoint_name="transform-bench")
                results["deploy_s"] = round(time.perf_counter() - started, 2)
            finally:
                if saved is None:
                    os.environ.pop("LOCAL_RUNS_SIM_WORKERS", None)
                else:
                    os.environ["LOCAL_RUNS_SIM_WORKERS"] = saved
            try:
                runtime = backend.session.sagemaker_runtime_client
                run_invoke(runtime, "transform-bench", queries[:50], 2)  # warm up every worker
                for clients in (1, 4):
                    figures, answers[f"invoke-{clients}"] = run_invoke(runtime, "transform-bench", queries, clients)
                    figures["workers"] = args.workers
                    results["invoke_endpoint"].append(figures)
                    print(f"invoke_endpoint, {clients} client(s): {figures['wall_s']} s, {figures['queries_per_s']} "
                          f"queries/s, p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
                          f"{figures['errors']} errors", flush=True)
            finally:
                predictor.delete_model()
                predictor.delete_endpoint()
    qps = {f"transform {t['strategy']}": t["queries_per_s"] for t in results["transform"]}
    qps.update({f"invoke_endpoint {i['clients']} client(s)": i["queries_per_s"] for i in results["invoke_endpoint"]})
    results["ratios"] = {f"{t} / {i}": round(qps[t] / qps[i], 2) for t in qps if t.startswith("transform")
                         for i in qps if i.startswith("invoke")}
    results["same_products_as_invoke_1"] = {k: agreement(v, answers["invoke-1"]) for k, v in answers.items()
                                            if k != "invoke-1"}
    for name, ratio in results["ratios"].items():
        print(f"ratio {name}: {ratio}")
    print(f"same products as invoke_endpoint (1 client), share of queries: {results['same_products_as_invoke_1']}")
    by = {t["strategy"]: t for t in results["transform"]}
    invoke1 = results["invoke_endpoint"][0]
    targets = [
        target("transform errors (both strategies)", sum(t["errors"] for t in results["transform"]), 0, "errors"),
        target("MultiRecord over invoke_endpoint 1 client", by["MultiRecord"]["queries_per_s"] / invoke1["queries_per_s"],
               1.0, "x", higher_is_better=True, note="batching must pay for itself"),
        target("transform answers = invoke_endpoint answers", results["same_products_as_invoke_1"]["MultiRecord"],
               0.99, "share", higher_is_better=True),
    ]
    report("transform", results, targets, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
