// The search page: asks GET /search and shows the hits. Passage and query text only ever enter the page
// as text nodes (textContent / append(string)), never as HTML, so a passage containing markup shows
// that markup as text and cannot run script.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form"), queryBox = $("q"), kBox = $("k"), statusLine = $("status"), results = $("results");

// Words as the model's tokenizer splits them: letters and digits with the combining marks inside a word (the
// vowel signs of Indic scripts, accents typed apart: "हिन्दी" is one word, not "ह", "न", "द"), with inner '
// ("don't"). A hyphen ends a word ("boundary-layer": boundary, layer), as BM25 reads it and as tokenizers with
// split_hyphens do; with one that keeps "x-ray" whole, both halves are marked. Compared lower-cased, in NFC.
const RUN = String.raw`[\p{L}\p{N}]+(?:\p{M}+[\p{L}\p{N}]*)*`;
const WORD = new RegExp(`${RUN}(?:'${RUN})*`, "gu");
const normal = (word) => word.toLowerCase().normalize("NFC");
// Not highlighted: they match nearly every passage and hide the words that matter.
const STOPWORDS = new Set(("a an and are as at be by do does for from how in is it of on or that the this to was what " +
  "when where which who why with").split(" "));

function queryTerms(query) {
  const terms = new Set();
  for (const m of query.matchAll(WORD)) if (!STOPWORDS.has(normal(m[0]))) terms.add(normal(m[0]));
  return terms;
}

// The passage as text nodes, with the query's words wrapped in <mark>.
function highlighted(text, terms) {
  const out = document.createDocumentFragment();
  let at = 0;
  for (const m of text.matchAll(WORD)) {
    if (!terms.has(normal(m[0]))) continue;
    if (m.index > at) out.append(text.slice(at, m.index));
    const mark = document.createElement("mark");
    mark.textContent = m[0];
    out.append(mark);
    at = m.index + m[0].length;
  }
  if (at < text.length) out.append(text.slice(at));
  return out;
}

function span(className, text) {
  const el = document.createElement("span");
  el.className = className;
  el.textContent = text;
  return el;
}

function showStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function render(answer, roundTripMs) {
  const terms = queryTerms(answer.query);
  results.replaceChildren();
  answer.hits.forEach((hit, i) => {
    const item = document.createElement("li");
    item.className = "hit";
    const meta = document.createElement("div");
    meta.className = "meta";
    // The id in a <bdi>, laid out in its own direction apart from "id " (a right-to-left id "5 שלום" read with the
    // label's left-to-right: its digits on the wrong side); bidi controls in it end with it.
    const pid = span("pid", "id "), id = document.createElement("bdi");
    id.textContent = hit.id;
    pid.append(id);
    meta.append(span("rank", `#${i + 1}`), span("score", `score ${hit.score.toFixed(4)}`), pid);
    const text = document.createElement("p");
    text.className = "text";
    text.dir = "auto"; // a right-to-left passage (Arabic, Hebrew) reads right to left: in the page's LTR its end "." and "(...)" were misplaced
    text.append(highlighted(hit.text, terms));
    item.append(meta, text);
    results.append(item);
  });
  const n = answer.hits.length;
  // a query longer than the model's query window: its last words were not read (BM25 in a hybrid folder reads them)
  const unread = answer.words_unread ? ` · the model did not read the query's last ${answer.words_unread} word${answer.words_unread === 1 ? "" : "s"}` : "";
  showStatus(`${n} passage${n === 1 ? "" : "s"} · search ${answer.took_ms.toFixed(1)} ms · round trip ${roundTripMs.toFixed(1)} ms${unread}`);
}

let latest = 0; // only the newest request's answer is shown

// A failed search leaves no hits on the page: those shown would be the previous query's, under this one.
function showError(text) {
  results.replaceChildren();
  showStatus(text, true);
}

async function search(query, k) {
  const mine = ++latest;
  showStatus("Searching…");
  const started = performance.now();
  let response;
  try {
    const params = new URLSearchParams({ q: query });
    if (k) params.set("k", k); // else the server's default
    response = await fetch(`/search?${params}`, { headers: { Accept: "application/json" } });
  } catch (err) {
    if (mine === latest) showError(`Could not reach the server: ${err.message}`);
    return;
  }
  const answer = await response.json().catch(() => null);
  if (mine !== latest) return;
  if (!response.ok) {
    showError(answer && answer.error ? answer.error : `HTTP ${response.status}`);
    return;
  }
  if (!answer || !Array.isArray(answer.hits)) { // cut short, or not the server's (a proxy's page): "Searching…" stayed
    showError(`The server's answer could not be read (HTTP ${response.status}); search again`);
    return;
  }
  render(answer, performance.now() - started);
}

// The page's state is its URL (/?q=...&k=...): it can be linked to, and each search is a step of the browser's
// history, so Back shows the search before (it left the page).
function searchFromUrl() {
  const params = new URLSearchParams(location.search);
  const query = params.get("q") || "", k = params.get("k");
  queryBox.value = query;
  kBox.value = k || "";
  if (query) {
    search(query, k); // the URL's k as written: one the box cannot hold (k=ten) is the server's error, not the default
  } else {
    latest++; // an answer still on its way is not shown
    results.replaceChildren();
    showStatus("");
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const query = queryBox.value, k = kBox.value;
  const params = new URLSearchParams({ q: query });
  if (k) params.set("k", k);
  const url = `/?${params}`;
  // compared as parameters: a linked /?q=how%20long is the search /?q=how+long (a step of its own for the same search)
  if (url !== `${location.pathname}?${new URLSearchParams(location.search)}`) history.pushState(null, "", url);
  search(query, k);
});

window.addEventListener("popstate", searchFromUrl);

async function describeService() {
  try {
    const health = await (await fetch("/health")).json();
    const model = health.model || {}, encoder = model.encoder || {};
    const faiss = (health.index && health.index.faiss) || {};
    $("about").textContent = `${health.passages.toLocaleString("en")} passages · ${encoder.cell || "rnn"} query encoder ` +
      `(dim ${model.dim}) · FAISS ${faiss.type || "?"}`;
    // No maxLength on the query box: it cut a longer query pasted into it to max_query_chars and searched that,
    // saying nothing; the server's 422 says the limit instead.
    kBox.max = health.limits.k_max;
    kBox.placeholder = health.limits.k_default;
  } catch (err) {
    $("about").textContent = "Service details unavailable.";
  }
}

// /?q=...&k=... searches on load, so a search can be linked to (and the form works without script).
describeService();
searchFromUrl();
