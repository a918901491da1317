"""The search page in a real browser: headless Chromium driven by Playwright.

Chromium comes from Debian (`apt-get install chromium chromium-driver`; .ci/run installs it) and is
started from /usr/bin/chromium (REVIEW_SEARCH_CHROMIUM overrides) with a fresh profile; Playwright
never downloads a browser here. Without either, these tests are skipped and say why.

The fast tests put the page in front of a fake runtime client; the integration tests deploy a real
sim endpoint from fixtures/reviews.csv and run `local-runs ui` and `cycle --ui` as users do.
REVIEW_SEARCH_SCREENSHOT=docs/search-page.png also saves the integration test's screenshot there.
"""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import FIXTURES, ROOT
from local_runs import ui
from test_ui import PRODUCTS, FakeRuntime, model_error

CHROMIUM = Path(os.environ.get("REVIEW_SEARCH_CHROMIUM", "/usr/bin/chromium"))
# Playwright adds --headless (headless=True) and --user-data-dir (the fresh profile) itself.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
QUERIES = json.loads((FIXTURES / "queries.json").read_text())
ENDPOINT = "review-search"  # its own state dir: the name the README's screenshot shows


def _require_browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"headless Chromium is not installed at {CHROMIUM} "
                    "(apt-get install chromium chromium-driver, as .ci/run does; or set REVIEW_SEARCH_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install -e '.[test]')")


@contextmanager
def browser_page(tmp_path):
    """A page in a fresh headless Chromium; fails the test on any uncaught script error or dialog."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    problems = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 900}, timeout=60_000)
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(30_000)
            page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
            page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
            # Offline: nothing but the page server may be asked for anything.
            page.on("request", lambda r: None if r.url.startswith("http://127.0.0.1:") else problems.append(f"request: {r.url}"))
            yield page
        finally:
            context.close()
    assert problems == []


def open_page(page, url):
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")


def run_query(page, text, n_items=None, min_star_rating=None, offset=None):
    if n_items is not None:
        page.fill("#n-items", str(n_items))
    if min_star_rating is not None:
        page.select_option("#min-star-rating", str(min_star_rating))
    page.fill("#query", text)
    if offset is not None:
        page.fill("#offset", str(offset))
    page.click("#search-button")
    page.wait_for_function("() => document.querySelector('#elapsed') || !document.querySelector('#error').hidden")


def cards(page) -> list[dict]:
    return page.eval_on_selector_all("#results .card", """cards => cards.map(c => ({
        product_id: c.dataset.productId, title: c.querySelector('.title').textContent,
        rank: c.querySelector('.rank').textContent, stars: c.querySelector('.stars').getAttribute('aria-label'),
        score: c.querySelector('.score-value').textContent, marked: [...c.querySelectorAll('mark')].map(m => m.textContent),
        review: c.querySelector('.review').textContent,
        headline: (c.querySelector('.headline') || {textContent: ''}).textContent}))""")


def error_text(page) -> str | None:
    return None if page.is_hidden("#error") else page.text_content("#error-message")


# --- fast: the page against a fake runtime client ------------------------------------------------
def test_page_renders_cards_and_sends_the_controls(tmp_path):
    runtime = FakeRuntime(PRODUCTS)
    with ui.RunningPage(ui.SearchPage(runtime, "review-search", "sim")) as running, browser_page(tmp_path) as page:
        open_page(page, running.url)
        assert page.text_content("#endpoint-name") == "review-search"
        run_query(page, "water stays inside", n_items=2, min_star_rating=4)
        assert runtime.calls[-1]["Body"] == {"query": "water stays inside", "n_items": 2, "min_star_rating": 4}
        first, second = cards(page)
        assert first["product_id"] == "P001" and first["title"] == "Deep Sea Submarine Bath Toy"
        assert first["rank"] == "#1" and first["score"] == "0.712" and first["stars"] == "4 of 5 stars"
        assert first["marked"] == ["Only complaint: water gets trapped inside."]
        assert second["title"] == "Rock & Roll Drum"
        assert re.fullmatch(r"\d+ ms", page.text_content("#elapsed"))
        # a full page of answers: Next asks for the following page
        page.click("#next")
        page.wait_for_function("() => document.querySelector('#elapsed')")
        assert runtime.calls[-1]["Body"]["offset"] == 2
        assert [c["rank"] for c in cards(page)] == ["#3", "#4"]


def test_hostile_review_text_is_shown_as_text(tmp_path):
    hostile = '<img src=x onerror="alert(1)">'
    runtime = FakeRuntime({"pred0": {"product_id": "P666", "product_title": hostile + "<script>alert(2)</script>",
                                     "star_rating": 1, "review_headline": "&lt;b onmouseover=alert(3)&gt;hi",
                                     "review_body": "Fine &lt;img src=y onerror=alert(4)&gt; toy.",
                                     "product_search_score": 0.3, "matched_sentence": "<svg onload=alert(5)>"}})
    with ui.RunningPage(ui.SearchPage(runtime, "review-search")) as running, browser_page(tmp_path) as page:
        open_page(page, running.url)
        run_query(page, "anything")
        card, = cards(page)
        assert card["title"] == hostile + "<script>alert(2)</script>"
        assert "<img src=y onerror=alert(4)>" in card["review"]
        assert page.text_content(".headline") == "<b onmouseover=alert(3)>hi"
        assert page.eval_on_selector_all("#results img, #results script, #results svg, #results b", "n => n.length") == 0
        page.hover(".headline")
    # browser_page fails the test had any alert() run


def test_endpoint_error_and_unreachable_server_are_shown(tmp_path):
    runtime = FakeRuntime(raises=model_error(400, "invalid request: query has no letters or digits to search for"))
    with browser_page(tmp_path) as page:
        with ui.RunningPage(ui.SearchPage(runtime, "review-search")) as running:
            open_page(page, running.url)
            run_query(page, "")
            assert error_text(page) == "invalid request: query has no letters or digits to search for"
            assert page.text_content("#error-title") == "The endpoint refused the query"
            assert cards(page) == []
        run_query(page, "kite")  # the page server is gone now
        assert "still running" in error_text(page)


# --- integration: a real sim endpoint, `local-runs ui` and `cycle --ui` ----------------------------
class Process:
    """A `python -m local_runs ...` child whose output is read line by line in the background."""

    def __init__(self, *args):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen([sys.executable, "-m", "local_runs", *args], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.popen.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.popen.poll() is not None and self.lines.empty():
                    break
                continue
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r}; output:\n{''.join(self.output)[-4000:]}")

    def interrupt(self, timeout: float) -> int:
        """Ctrl-C, as a person at the terminal would press it."""
        self.popen.send_signal(signal.SIGINT)
        try:
            return self.popen.wait(timeout=timeout)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()

    @property
    def text(self) -> str:
        return "".join(self.output)


@pytest.fixture(scope="module")
def sim_endpoint(tmp_path_factory):
    """A real endpoint from fixtures/reviews.csv, deployed with the persistent sim services that
    other processes (local-runs ui) find."""
    _require_browser()  # before the minute of fit and deploy, which only the browser test needs
    from local_runs import job
    from local_runs.backends import open_backend
    from local_runs.config import load_settings

    state = tmp_path_factory.mktemp("ui-state")
    settings = load_settings(cli={"backend": "sim", "state_dir": str(state)}, environ={})
    try:
        with open_backend(settings, persistent=True) as backend:
            estimator = job.fit(backend, backend.upload(FIXTURES / "reviews.csv"))
            predictor = job.deploy(estimator, backend, endpoint_name=ENDPOINT)
            try:
                yield state
            finally:
                predictor.delete_model()
                predictor.delete_endpoint()
    finally:
        # In this process, which started the S3 and gateway daemons: it reaps them as they stop.
        from local_runs.cli import main

        main(["--state-dir", str(state), "shutdown"])


@pytest.mark.integration
def test_search_page_on_a_real_sim_endpoint(sim_endpoint, tmp_path):
    _require_browser()
    import pandas as pd

    titles = pd.read_csv(FIXTURES / "reviews.csv").groupby("product_id")["product_title"].first()
    server = Process("--state-dir", str(sim_endpoint), "ui", "--endpoint", ENDPOINT)
    try:
        url = server.wait_for(r"search page for endpoint review-search: (http://127\.0\.0\.1:\d+/)", timeout=120).group(1)
        with browser_page(tmp_path) as page:
            open_page(page, url)
            assert page.text_content("#endpoint-name") == ENDPOINT and page.text_content("#backend-name") == "(sim)"

            # a known query: its product comes first, with title, stars, score, the sentence marked, the time
            case = QUERIES[0]
            run_query(page, case["query"], n_items=3)
            assert error_text(page) is None
            found = cards(page)
            assert [c["rank"] for c in found] == ["#1", "#2", "#3"]
            assert found[0]["product_id"] == case["product_id"] and found[0]["title"] == titles[case["product_id"]]
            assert re.fullmatch(r"[1-5] of 5 stars", found[0]["stars"]) and re.fullmatch(r"\d\.\d{3}", found[0]["score"])
            # the matched passage is marked where it is: a review sentence, or the headline (matched_field)
            assert len(found[0]["marked"]) == 1
            assert found[0]["marked"][0] in found[0]["review"] or found[0]["marked"][0] == found[0]["headline"]
            assert re.fullmatch(r"\d+ ms", page.text_content("#elapsed"))

            # the filters reach the endpoint: only 5-star reviews, then the next page
            run_query(page, "my kids loved it", n_items=3, min_star_rating=5)
            assert error_text(page) is None
            assert {c["stars"] for c in cards(page)} == {"5 of 5 stars"}
            first_page = [c["product_id"] for c in cards(page)]
            page.click("#next")
            page.wait_for_function("() => document.querySelector('#elapsed')")
            second_page = cards(page)
            assert second_page[0]["rank"] == "#4" and not {c["product_id"] for c in second_page} & set(first_page)

            # the endpoint's own refusals, as readable messages
            run_query(page, "", min_star_rating="")
            assert "no letters or digits" in (error_text(page) or "")
            assert page.text_content("#error-title") == "The endpoint refused the query" and cards(page) == []
            run_query(page, "kite", n_items=500)
            assert "n_items must be a whole number from 1 to 100" in (error_text(page) or "")

            # the screenshot for the README
            run_query(page, "a bath toy that floats and my kids love it", n_items=3)
            assert cards(page)[0]["product_id"] == "P001"
            shot = tmp_path / "search-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            if os.environ.get("REVIEW_SEARCH_SCREENSHOT"):
                shutil.copyfile(shot, os.environ["REVIEW_SEARCH_SCREENSHOT"])
    finally:
        code = server.interrupt(timeout=30)
    assert code == 0, server.text[-3000:]
    assert "search page stopped" in server.text


@pytest.mark.integration
def test_cycle_ui_keeps_the_endpoint_until_ctrl_c(tmp_path):
    state = tmp_path / "state"
    cycle = Process("--state-dir", str(state), "cycle", "--query", QUERIES[0]["query"], "--ui")
    try:
        url = cycle.wait_for(r"search page for endpoint \S+: (http://127\.0\.0\.1:\d+/)", timeout=600).group(1)
        cycle.wait_for(r"press Ctrl-C to stop the page and delete the endpoint", timeout=10)
        # the page stays up: the cycle waits (still running, not deleting), the endpoint still answers
        assert cycle.popen.poll() is None and "==> delete" not in cycle.text
        request = urllib.request.Request(url + "api/search", method="POST", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"query": QUERIES[0]["query"], "n_items": 2}).encode())
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        assert answer["products"][0]["product_id"] == QUERIES[0]["product_id"]
        assert list(state.glob("endpoints/*.json")), "the endpoint is gone before Ctrl-C"
    finally:
        code = cycle.interrupt(timeout=120)
    assert code == 0, cycle.text[-3000:]
    assert "search page stopped" in cycle.text and "<== delete" in cycle.text and "cycle: upload" in cycle.text
    assert not list(state.glob("endpoints/*.json"))
