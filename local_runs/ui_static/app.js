// The search page. Every piece of text from the endpoint goes into the DOM with textContent:
// review text is never parsed as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("search-form"), query = $("query"), nItems = $("n-items"), minStars = $("min-star-rating");
  const offset = $("offset"), button = $("search-button"), previous = $("previous"), next = $("next");
  const status = $("status"), errorBox = $("error"), errorTitle = $("error-title"), errorMessage = $("error-message");
  const results = $("results"), raw = $("raw"), rawJson = $("raw-json");
  let busy = false;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function sameWords(a, b) {
    const words = (text) => String(text || "").toLowerCase().replace(/[^\p{L}\p{N}]+/gu, " ").trim();
    return words(a) !== "" && words(a) === words(b);
  }

  function starsText(rating) {
    const full = Math.max(0, Math.min(5, Math.round(Number(rating) || 0)));
    return "★".repeat(full) + "☆".repeat(5 - full);
  }

  function showError(title, message) {
    errorTitle.textContent = title;
    errorMessage.textContent = message || "(no message)";
    errorBox.hidden = false;
  }

  function clearResults() {
    results.replaceChildren();
    errorBox.hidden = true;
    raw.hidden = true;
    rawJson.textContent = "";
  }

  function card(product) {
    const item = el("li", "card");
    item.dataset.productId = product.product_id;

    const head = el("div", "card-head");
    head.append(el("span", "rank", "#" + product.rank));
    const titles = el("div", "titles");
    titles.append(el("h2", "title", product.product_title));
    const meta = el("p", "meta");
    const stars = el("span", "stars", starsText(product.star_rating));
    const rating = product.star_rating === null ? "no rating" : product.star_rating + " of 5 stars";
    stars.setAttribute("aria-label", rating);
    stars.title = rating;
    meta.append(stars, el("span", "ids", product.product_id + " · review " + product.review_id));
    titles.append(meta);
    head.append(titles);
    const score = el("span", "score");
    score.append(el("span", "score-label", "score "),
                 el("span", "score-value", product.score === null ? "–" : product.score.toFixed(3)));
    score.title = "product search score: how closely its reviews say what you typed";
    head.append(score);
    item.append(head);

    // The best match can be the review's headline ("matched_field": "headline"): highlight the
    // headline itself, not a body sentence. Cards without the field: a matched sentence that is not
    // in the review and reads like the headline is the headline.
    const headlineMatched = Boolean(product.review_headline) && (product.matched_field === "headline" ||
      (product.matched_field === undefined && !product.matched_in_review &&
       sameWords(product.matched_sentence, product.review_headline)));
    if (product.review_headline) {
      const headline = el("p", headlineMatched ? "headline headline-matched" : "headline");
      if (headlineMatched) {
        headline.append(el("mark", null, product.review_headline));
        headline.title = "the best match for your search is this review's headline";
      } else {
        headline.textContent = product.review_headline;
      }
      item.append(headline);
    }
    if (!headlineMatched && !product.matched_in_review && product.matched_sentence) {
      const matched = el("p", "matched");
      matched.append(el("span", "label", "matched: "), el("mark", null, product.matched_sentence));
      item.append(matched);
    }
    const review = el("div", "review");
    for (const paragraph of product.review) {
      const p = el("p");
      for (const part of paragraph) p.append(part.match ? el("mark", null, part.text) : document.createTextNode(part.text));
      review.append(p);
    }
    item.append(review);
    return item;
  }

  function numberOr(input, fallback) {
    const value = input.value.trim();
    return value === "" ? fallback : value;
  }

  function updatePager(request, count) {
    const skip = Number(request.offset || 0), size = Number(request.n_items || 0);
    previous.disabled = skip <= 0;
    next.disabled = !(size > 0 && count >= size);
  }

  async function search() {
    if (busy) return;
    busy = true;
    button.disabled = true;
    const body = {
      query: query.value,
      n_items: numberOr(nItems, null),
      min_star_rating: minStars.value === "" ? null : minStars.value,
      offset: numberOr(offset, null),
    };
    clearResults();
    status.textContent = "Searching…";
    const started = performance.now();
    try {
      let response, answer = null;
      try {
        response = await fetch("/api/search", {
          method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
        });
      } catch (err) {
        status.textContent = "";
        showError("The page server did not answer",
                  "Is `local-runs ui` still running? (" + (err && err.message ? err.message : err) + ")");
        return;
      }
      try { answer = await response.json(); } catch (err) { answer = null; }
      const roundTrip = performance.now() - started;
      if (!response.ok || !answer || answer.error) {
        const error = answer && answer.error ? answer.error : {};
        const title = error.source === "endpoint" ? "The endpoint refused the query" : "The query failed";
        status.textContent = "";
        showError(title, error.message || ("HTTP " + response.status + " " + response.statusText));
        previous.disabled = true;
        next.disabled = true;
        return;
      }
      const products = answer.products;
      for (const product of products) results.append(card(product));
      const shown = typeof body.query === "string" ? body.query : "";
      status.textContent = "";
      const summary = el("span", "summary",
        (products.length === 0 ? "No products" : products.length + (products.length === 1 ? " product" : " products")) +
        " for “" + shown + "”");
      const timing = el("span", "timing", answer.elapsed_ms.toFixed(0) + " ms");
      timing.id = "elapsed";
      timing.title = "endpoint round trip; " + roundTrip.toFixed(0) + " ms including the page";
      status.append(summary, " · took ", timing);
      rawJson.textContent = JSON.stringify(answer.raw, null, 1);
      raw.hidden = false;
      updatePager(answer.request, products.length);
      const params = new URLSearchParams({q: shown});
      history.replaceState(null, "", "?" + params.toString());
    } finally {
      busy = false;
      button.disabled = false;
    }
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); search(); });
  previous.addEventListener("click", () => {
    offset.value = String(Math.max(0, Number(offset.value || 0) - Number(nItems.value || 0)));
    search();
  });
  next.addEventListener("click", () => {
    offset.value = String(Number(offset.value || 0) + Number(nItems.value || 0));
    search();
  });
  // A new query starts from the first page.
  query.addEventListener("input", () => { offset.value = "0"; });

  fetch("/api/info").then((r) => r.json()).then((info) => {
    $("endpoint-name").textContent = info.endpoint;
    $("backend-name").textContent = info.backend ? "(" + info.backend + ")" : "";
    document.title = "Review search · " + info.endpoint;
    const limits = info.limits || {};
    if (limits.n_items) { nItems.min = limits.n_items[0]; nItems.max = limits.n_items[1]; }
    if (limits.offset) { offset.min = limits.offset[0]; offset.max = limits.offset[1]; }
  }).catch(() => showError("The page server did not answer", "Is `local-runs ui` still running?"))
    .finally(() => {
      document.body.dataset.ready = "true";
      const q = new URLSearchParams(location.search).get("q");
      if (q) { query.value = q; search(); }
    });
})();
