"""A load client for an endpoint's /invocations: N threads, each on one kept-alive HTTP connection.

Shared by bench/endpoint_bench.py (latency and throughput) and tests/test_reliability_load.py (every
answer checked under load). http.client rather than a load tool: the figures must include nothing but
the endpoint and a plain client, and the tests must check each answer.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
# A request for (client number, request number): the JSON body, and a check of the answer that
# returns None when it is right, else what is wrong.
Check = Callable[[int, bytes], "str | None"]
MakeRequest = Callable[[int, int], "tuple[dict, Check]"]


def expect_products(status: int, payload: bytes) -> str | None:
    """The default check: a 200 with at least one product."""
    if status != 200:
        return f"HTTP {status}: {payload[:200]!r}"
    return None if "pred0" in json.loads(payload) else f"no products: {payload[:200]!r}"


@dataclass
class LoadResult:
    clients: int
    requests: int
    latencies: list[float] = field(default_factory=list)  # seconds, one per answered request
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


def run_load(port: int, clients: int, requests: int, make_request: MakeRequest,
             host: str = "127.0.0.1", timeout: float = 60.0) -> LoadResult:
    """`clients` threads send `requests` requests each; every answer goes through its check."""
    result = LoadResult(clients, clients * requests)
    lock = threading.Lock()

    def client(number: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        latencies, errors = [], []
        try:
            for i in range(requests):
                body, check = make_request(number, i)
                started = time.perf_counter()
                try:
                    conn.request("POST", "/invocations", body=json.dumps(body), headers=HEADERS)
                    response = conn.getresponse()
                    payload = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    errors.append(f"{str(body)[:60]}: {type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=timeout)
                    continue
                latencies.append(time.perf_counter() - started)
                problem = check(response.status, payload)
                if problem:
                    errors.append(f"{str(body)[:60]}: {problem}")
        finally:
            conn.close()
            with lock:
                result.latencies.extend(latencies)
                result.errors.extend(errors)

    threads = [threading.Thread(target=client, args=(n,), name=f"load-client-{n}") for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.elapsed = time.perf_counter() - started
    return result
