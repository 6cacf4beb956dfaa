// The xmr page: one search box over /api/search. The whole query lives in the address
// bar (?q=...&target=...&order=...&min_score=...), so reload, back and a shared link all
// work; an uploaded image cannot travel in a link, so a query by upload is the one thing a
// reload loses. Defaults (results a page, the duplicate threshold, examples) come from the
// server's /api/config, never from this file.
"use strict";

const $ = (id) => document.getElementById(id);
const FIELDS = ["q", "like", "target", "k", "rerank", "under", "after", "before", "ext", "min_score", "dedup", "order", "view", "threshold"];
const FILTERS = ["under", "after", "before", "ext"];
const THUMB = 384;
let config = { examples: [] }; // the server's defaults, from /api/config before the first search
let upload = null; // File chosen or dropped: an image query
let likeId = null; // "more like this": an indexed image's id as the query
let shown = []; // the image hits on the page, in order: the viewer walks through these
let current = -1; // index into `shown` of the hit in the viewer
let paging = null; // {state, next offset, ids shown} of the results on the page
let busy = 0; // requests in flight, newest wins
const names = new Map(); // id -> file name of every image shown: "more like" names its query

// -- the query in the address bar --------------------------------------------------
function stateFromUrl() {
  const p = new URLSearchParams(location.search);
  const s = {};
  for (const f of FIELDS) if (p.has(f)) s[f] = p.get(f);
  return s;
}

function stateFromControls() {
  const s = { target: document.querySelector(".segmented [aria-checked=true]").dataset.target };
  const q = $("q").value.trim();
  if (q) s.q = q;
  if (!upload && likeId && (!q || /^[+-]\s/.test(q))) s.like = likeId;
  if (!$("rerank").checked) s.rerank = "false";
  if ($("dedup").checked) s.dedup = String(config.duplicate_threshold || "");
  for (const f of FILTERS) if ($(f).value.trim()) s[f] = $(f).value.trim();
  if ($("k").value && $("k").value !== String(config.k)) s.k = $("k").value;
  if (Number($("min_score").value) > 0) s.min_score = $("min_score").value;
  if ($("order").value !== "relevance" && s.target === "images") s.order = $("order").value;
  return s;
}

function showState(s) {
  $("q").value = s.q || "";
  likeId = s.q ? null : s.like || null;
  setTarget(s.target || "images");
  $("rerank").checked = s.rerank !== "false";
  $("dedup").checked = Boolean(s.dedup);
  for (const f of FILTERS) $(f).value = s[f] || "";
  $("k").value = s.k || config.k || "";
  $("min_score").value = s.min_score || "0";
  $("order").value = ["newest", "oldest"].includes(s.order) ? s.order : "relevance";
  showMinScore();
  if (FILTERS.some((f) => s[f]) || s.dedup) setFiltersOpen(true);
}

function urlFor(s) {
  const p = new URLSearchParams();
  for (const f of FIELDS) if (s[f] !== undefined && s[f] !== "") p.set(f, s[f]);
  const text = p.toString();
  return text ? "/?" + text : "/";
}

// -- searching ---------------------------------------------------------------------
async function search(s, { push = true } = {}) {
  if (s.view === "duplicates") return showDuplicates(s, push);
  $("duplicates").hidden = true;
  $("duplicates-link").classList.remove("active");
  if (!s.q && !s.like && !upload) return showWelcome();
  if (push && !upload) history.pushState(s, "", urlFor(s));
  paging = { state: s, offset: 0, ids: new Set(), cut: 0 };
  clearResults();
  setStatus("Searching…");
  await fetchPage(paging, performance.now());
}

function apiParams(s, offset) {
  const params = new URLSearchParams();
  const k = s.k || config.k; // without a config the server's own default
  if (k) params.set("k", String(k));
  params.set("target", s.target || "images");
  params.set("rerank", s.rerank === "false" ? "false" : "true");
  for (const f of [...FILTERS, "dedup", "min_score", "order"]) if (s[f]) params.set(f, s[f]);
  if (offset) params.set("offset", String(offset));
  return params;
}

async function fetchPage(pages, started) {
  const s = pages.state;
  const mine = ++busy;
  const params = apiParams(s, pages.offset);
  let response;
  try {
    if (upload) {
      const form = new FormData();
      form.append("image", upload, upload.name || "image");
      if (s.q) form.append("q", s.q); // "+ at night": the image and the words together
      for (const [key, value] of params) form.append(key, value);
      response = await fetch("/api/search", { method: "POST", body: form });
    } else {
      if (s.q) params.set("q", s.q);
      if (s.like) params.set("like", s.like);
      response = await fetch("/api/search?" + params.toString());
    }
  } catch (err) {
    return mine === busy && setStatus("The server cannot be reached (" + err.message + ").", true);
  }
  const answer = await response.json().catch(() => ({ error: "unreadable answer" }));
  if (mine !== busy || pages !== paging) return; // a newer search replaced this one
  if (!response.ok) return setStatus(answer.error || response.statusText, true);
  render(answer, pages, performance.now() - started);
}

function render(answer, pages, roundTrip) {
  const s = pages.state;
  const first = pages.offset === 0;
  $("welcome").hidden = true;
  $("result-controls").hidden = false;
  $("order").disabled = (s.target || "images") === "texts";
  if (first) {
    $("notices").replaceChildren(...answer.notices.map((n) => el("div", { className: "notice", textContent: n })));
    pages.cut = answer.below_min_score || 0;
    showPinned(s);
  }
  for (const hit of answer.results) {
    if (pages.ids.has(hit.id)) continue; // a deeper page re-ranked deeper: shown already
    pages.ids.add(hit.id);
    if (hit.kind === "image") {
      names.set(String(hit.id), fileName(hit.path));
      shown.push(hit);
      $("grid").append(tile(hit, shown.length - 1));
    } else {
      $("text-results").append(textCard(hit));
    }
  }
  const page = answer.page || {};
  pages.offset += answer.results.length;
  const count = pages.ids.size;
  setStatus(count ? resultLabel(s, count) : "Nothing found. " + (answer.notices[0] || ""));
  showCut(s, pages.cut);
  $("more").hidden = !(page.more && answer.results.length);
  $("page-note").textContent = pageNote(answer, page);
  const t = answer.timings_ms;
  $("timings").textContent =
    `${count} results · ${answer.reranked ? "re-ranked by " + (answer.reranker || "the re-ranker") : "stage 1 only"} · encode ${t.encode} ms · ` +
    `stage 1 ${t.stage1} ms · re-rank ${t.rerank} ms · engine ${t.total} ms · round trip ${Math.round(roundTrip)} ms`;
}

function resultLabel(s, count) {
  const what = (s.target || "images") === "texts" ? "texts" : "images";
  let label = `${count} ${what}`;
  if (s.like || upload) label += ` like ${s.like ? likeName(s.like) : upload.name || "the image"}`;
  if (s.q) label += `${s.like || upload ? " " : ""}${/^[+-]/.test(s.q) ? "" : " for "}“${s.q}”`;
  if (s.order === "newest" || s.order === "oldest") label += `, ${s.order} first`;
  return label;
}

function pageNote(answer, page) {
  const parts = [];
  if (page.order && page.order !== "relevance") {
    parts.push(`Ordered by date among the ${page.pool} most relevant.`);
  }
  if (answer.reranked && page.rerank_depth) {
    parts.push(`The re-ranker read the top ${page.rerank_depth} stage-1 candidates for the last page` +
      (page.reranked_results < page.pool ? `; results past ${page.reranked_results} are in stage-1 order.` : "."));
  } else if (!answer.reranked) {
    parts.push("Stage 1 only: no re-ranking for this query.");
  }
  return parts.join(" ");
}

function showCut(s, cut) {
  const on = Number(s.min_score || 0) > 0;
  $("cut-note").textContent = on ? `${cut} cut below ${Number(s.min_score).toFixed(2)}` : "";
}

function showMinScore() {
  const v = Number($("min_score").value);
  $("min-score-value").textContent = v > 0 ? v.toFixed(2) : "off";
}

function showPinned(s) {
  // "more like this" / an uploaded image: the query itself first, marked as the query
  const pinned = $("pinned");
  pinned.replaceChildren();
  pinned.hidden = !(s.like || upload);
  if (pinned.hidden) return;
  const img = el("img", { alt: "" });
  img.src = upload ? $("image-chip-preview").src : `/api/images/${s.like}/thumbnail?size=${THUMB}`;
  img.addEventListener("load", () => markSmall(img));
  const what = upload ? upload.name || "your image" : likeName(s.like);
  const imagesOnly = (s.target || "images") === "images" && !s.q;
  pinned.append(
    el("div", { className: "pin-thumb" }),
    el("p", {
      className: "small",
      textContent: `The query: ${what}.` + (imagesOnly
        ? " Image→image is stage 1 only (the re-ranker matches texts with images): scores are the encoder's similarity."
        : ""),
    }),
  );
  pinned.firstChild.append(img);
}

function likeName(id) { return names.has(String(id)) ? `${names.get(String(id))} (image ${id})` : `image ${id}`; }

function clearResults() {
  shown = [];
  $("grid").replaceChildren();
  $("text-results").replaceChildren();
  $("notices").replaceChildren();
  $("pinned").hidden = true;
  $("more").hidden = true;
}

function loadMore() {
  if (!paging) return;
  const before = shown.length;
  setStatus("Loading more…");
  fetchPage(paging, performance.now()).then(() => {
    const next = $("grid").children[before];
    if (next) next.focus(); // keyboard users go on from the first new result
  });
}

function score(value) { return value === undefined || value === null ? "" : Number(value).toFixed(2); }

function fileName(path) { return path.split("/").pop(); }

function tile(hit, position) {
  const name = fileName(hit.path);
  const button = el("button", { className: "tile", type: "button" });
  button.dataset.id = hit.id;
  button.dataset.position = position;
  const thumb = el("span", { className: "thumb" });
  const img = el("img", { alt: "", loading: "lazy", decoding: "async" });
  img.addEventListener("load", () => { img.classList.add("loaded"); markSmall(img); });
  img.src = `/api/images/${hit.id}/thumbnail?size=${THUMB}`;
  thumb.append(img, el("span", { className: "rank", textContent: hit.rank, ariaHidden: "true" }));
  if (hit.duplicates && hit.duplicates.length) {
    thumb.append(el("span", { className: "folded", textContent: `+${hit.duplicates.length}`, title: "near-duplicates folded into this one" }));
  }
  const cap = el("span", { className: "cap" });
  // The button's name is what it shows: "name.png, score 0.87" (the rank badge is decoration).
  const value = el("span", { className: "score" });
  value.append(el("span", { className: "visually-hidden", textContent: ", score " }), score(hit.score));
  cap.append(el("span", { className: "name", textContent: name }), value);
  button.append(thumb, cap);
  button.addEventListener("click", () => openViewer(position));
  return button;
}

function markSmall(img) {
  // A picture smaller than its box is scaled up pixel by pixel (never blurred).
  const box = img.parentElement.getBoundingClientRect();
  img.classList.toggle("small", img.naturalWidth < box.width && img.naturalHeight < box.height);
}

function textCard(hit) {
  const card = el("article", { className: "text-card" });
  card.append(
    el("span", { className: "rank", textContent: hit.rank }),
    el("span", { className: "text", textContent: hit.text }),
    el("span", { className: "score", textContent: score(hit.score) }),
    el("span", { className: "source", textContent: hit.source ? "from " + hit.source : "" }),
  );
  return card;
}

// -- the viewer: a modal dialog over the results ------------------------------------
function openViewer(position) {
  showInViewer(position);
  if (!$("viewer").open) $("viewer").showModal();
  $("viewer-close").focus();
}

function showInViewer(position) {
  if (position < 0 || position >= shown.length) return;
  current = position;
  const hit = shown[position];
  $("viewer-img").src = `/api/images/${hit.id}`;
  $("viewer-img").alt = fileName(hit.path);
  $("viewer-title").textContent = hit.path;
  const parts = [`rank ${hit.rank}`, `score ${score(hit.score)}`];
  if (hit.stage1_score !== undefined) parts.push(`stage 1 ${score(hit.stage1_score)}`);
  if (hit.date) parts.push(`${hit.date_from} ${hit.date.replace("T", " ")}`);
  parts.push(`id ${hit.id}`);
  $("viewer-score").textContent = parts.join(" · ");
  $("viewer-position").textContent = `${position + 1} of ${shown.length} shown · ← → to move, Escape to close`;
  $("viewer-prev").disabled = position === 0;
  $("viewer-next").disabled = position === shown.length - 1;
  $("open-original").href = `/api/images/${hit.id}`;
  $("descriptions").replaceChildren();
  $("viewer-message").textContent = "";
  $("viewer-message").classList.remove("error");
}

function step(delta) {
  const next = current + delta;
  if (next < 0 || next >= shown.length) return;
  showInViewer(next);
  if (document.activeElement && document.activeElement.disabled) $("viewer-close").focus();
}

function closeViewer() {
  if ($("viewer").open) $("viewer").close();
}

function afterClose() {
  $("viewer-img").removeAttribute("src");
  // back to the tile of the result on show, so the keyboard goes on from there
  const back = $("grid").querySelector(`.tile[data-position="${current}"]`);
  if (back) back.focus();
}

function viewerMessage(text, error = false) {
  $("viewer-message").textContent = text;
  $("viewer-message").classList.toggle("error", error);
}

async function describe() {
  const hit = shown[current];
  const list = $("descriptions");
  list.replaceChildren();
  viewerMessage("Reading the image…");
  const params = new URLSearchParams({ like: hit.id, target: "texts", k: "5", rerank: String($("rerank").checked) });
  let response;
  let answer;
  try {
    response = await fetch("/api/search?" + params);
    answer = await response.json().catch(() => ({ error: `unreadable answer (HTTP ${response.status})` }));
  } catch (err) {
    return viewerMessage("Describe failed: the server cannot be reached (" + err.message + ").", true);
  }
  if (shown[current] !== hit) return; // moved on meanwhile
  if (!response.ok) return viewerMessage("Describe failed: " + (answer.error || response.statusText), true);
  if (!answer.results.length) return viewerMessage(answer.notices[0] || "No texts in this index to describe it with.", true);
  viewerMessage(answer.reranked ? "Texts that match it, re-ranked:" : "Texts that match it (stage 1):");
  list.replaceChildren(...answer.results.map((h) => {
    const item = el("li", { textContent: h.text });
    item.append(el("span", { className: "score", textContent: score(h.score) }));
    return item;
  }));
}

async function copyPath() {
  const path = shown[current].path;
  try {
    await navigator.clipboard.writeText(path);
  } catch {
    // no clipboard API (a non-local address over http): the old way, through a selection
    const area = el("textarea", { value: path });
    $("viewer").append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    if (!ok) return viewerMessage("Copying is not allowed here; the path is above.", true);
  }
  viewerMessage("Path copied.");
}

function moreLikeThis() {
  likeId = String(shown[current].id);
  current = -1; // nothing to return focus to: the results change
  closeViewer();
  clearUpload();
  $("q").value = "";
  setTarget("images");
  search(stateFromControls()).then(() => $("results-start").focus());
}

// -- near-duplicates: groups to review, keep some, export the others ---------------
let dupGroups = [];

async function showDuplicates(s, push) {
  const threshold = s.threshold || String(config.duplicate_threshold || "");
  if (push) history.pushState(s, "", urlFor({ view: "duplicates", under: s.under, threshold: s.threshold }));
  $("welcome").hidden = true;
  $("result-controls").hidden = true;
  clearResults();
  $("duplicates").hidden = false;
  $("duplicates-link").classList.add("active");
  $("dup-threshold").value = threshold;
  $("timings").textContent = "";
  $("duplicate-groups").replaceChildren();
  setStatus("Looking for near-duplicates…");
  const params = new URLSearchParams();
  if (threshold) params.set("threshold", threshold);
  if (s.under) params.set("under", s.under);
  const started = performance.now();
  const response = await fetch("/api/duplicates?" + params);
  const data = await response.json().catch(() => ({ error: "unreadable answer" }));
  if (!response.ok) return setStatus(data.error, true);
  dupGroups = data.groups;
  const extra = dupGroups.reduce((n, g) => n + g.count - 1, 0);
  setStatus(dupGroups.length
    ? `${dupGroups.length} groups of near-duplicates (similarity at least ${threshold}): ${extra} images beyond one of each`
    : "No near-duplicates found.");
  $("duplicate-groups").replaceChildren(...dupGroups.map(groupBox));
  updateDupSummary();
  $("timings").textContent = `${dupGroups.length} groups · ${Math.round(performance.now() - started)} ms`;
}

function groupBox(group, g) {
  const box = el("section", { className: "dup-group" });
  box.setAttribute("aria-label", `Group ${g + 1}`);
  box.append(el("h2", { textContent: `Group ${g + 1} · ${group.count} images` }));
  const row = el("div", { className: "dup-row" });
  group.items.forEach((item, i) => {
    const card = el("figure", { className: "dup-item" });
    const thumb = el("span", { className: "thumb" });
    const img = el("img", { alt: "", loading: "lazy" });
    img.addEventListener("load", () => markSmall(img));
    img.src = `/api/images/${item.id}/thumbnail?size=${THUMB}`;
    thumb.append(img);
    const keep = el("input", { type: "checkbox", checked: i === 0 }); // the largest, first
    keep.dataset.group = g;
    keep.dataset.id = item.id;
    keep.addEventListener("change", updateDupSummary);
    const label = el("label", { className: "keep" });
    label.append(keep, " Keep", el("span", { className: "visually-hidden", textContent: ` ${fileName(item.path)}` }));
    const facts = el("dl", { className: "facts" });
    const rows = [
      ["Size", formatBytes(item.bytes)],
      ["Dimensions", item.width && item.height ? `${item.width} × ${item.height}` : "unknown"],
      ["Format", item.format || "unknown"],
      ["Date", item.date ? item.date.replace("T", " ") : "unknown"],
      ["Path", item.path],
    ];
    for (const [term, value] of rows) facts.append(el("dt", { textContent: term }), el("dd", { textContent: value }));
    card.append(thumb, label, facts);
    row.append(card);
  });
  box.append(row);
  return box;
}

function formatBytes(n) {
  if (n >= 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} bytes`;
}

function keptIds() {
  return new Set(Array.from(document.querySelectorAll("#duplicate-groups input[type=checkbox]:checked"), (c) => Number(c.dataset.id)));
}

function dupReview() {
  const kept = keptIds();
  return dupGroups.map((group) => ({
    keep: group.items.filter((i) => kept.has(i.id)).map((i) => i.path),
    others: group.items.filter((i) => !kept.has(i.id)).map((i) => i.path),
    items: group.items,
  }));
}

function updateDupSummary() {
  const review = dupReview();
  const others = review.reduce((n, g) => n + g.others.length, 0);
  const none = review.filter((g) => !g.keep.length).length;
  $("dup-summary").textContent = `${others} to export as others` + (none ? ` · ${none} groups keep nothing` : "");
}

function download(name, text, type) {
  const a = el("a", { href: URL.createObjectURL(new Blob([text], { type })), download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

function exportTxt() {
  const paths = dupReview().flatMap((g) => g.others);
  download("xmr-duplicates-others.txt", paths.map((p) => p + "\n").join(""), "text/plain");
}

function exportJson() {
  const threshold = Number($("dup-threshold").value);
  const body = { threshold, groups: dupReview() };
  download("xmr-duplicates-review.json", JSON.stringify(body, null, 2) + "\n", "application/json");
}

// -- an image as the query -------------------------------------------------------
function useUpload(file) {
  if (!file || !file.type.startsWith("image/")) return setStatus("That is not an image file.", true);
  upload = file;
  likeId = null;
  $("image-chip-name").textContent = file.name || "image";
  $("image-chip-preview").src = URL.createObjectURL(file);
  $("image-chip").hidden = false;
  $("q").value = "";
  $("q").placeholder = "Searching by this image (type + words to add to it)";
  history.pushState({}, "", "/");
  search(stateFromControls(), { push: false });
}

function clearUpload() {
  upload = null;
  $("image-chip").hidden = true;
  $("image-input").value = "";
  $("q").placeholder = "Describe what you are looking for…";
}

// -- the welcome screen ----------------------------------------------------------
function showWelcome() {
  clearResults();
  paging = null;
  $("timings").textContent = "";
  $("result-controls").hidden = true;
  setStatus("");
  $("welcome").hidden = false;
  if (config.error) {
    $("index-summary").textContent = "The index cannot be read: " + config.error;
    return;
  }
  $("index-summary").textContent = `${config.images} images and ${config.texts} texts indexed with ${config.model}.`;
  $("examples").replaceChildren(...config.examples.map((text) => {
    const b = el("button", { className: "example", type: "button", textContent: text });
    b.addEventListener("click", () => { $("q").value = text; submit(); });
    return b;
  }));
}

async function loadConfig() {
  try {
    const response = await fetch("/api/config");
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    config = data;
  } catch (err) {
    config.error = err.message;
  }
}

// -- small helpers ---------------------------------------------------------------
function el(tag, props) { return Object.assign(document.createElement(tag), props || {}); }

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function setTarget(target) {
  for (const b of document.querySelectorAll(".segmented [role=radio]")) {
    const on = b.dataset.target === target;
    b.classList.toggle("active", on);
    b.setAttribute("aria-checked", String(on));
    b.tabIndex = on ? 0 : -1; // one tab stop for the group; arrows move inside it
  }
}

function setFiltersOpen(open) {
  $("filters").hidden = !open;
  $("filters-toggle").setAttribute("aria-expanded", String(open));
  $("filters-toggle").classList.toggle("active", open);
}

function submit() {
  const q = $("q").value.trim();
  // "+ at night" / "- people" add to the image in use; any other text starts afresh.
  if (q && !/^[+-]\s/.test(q)) {
    clearUpload();
    likeId = null;
  }
  search(stateFromControls());
}

// -- wiring ---------------------------------------------------------------------
$("search-form").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
$("pick-image").addEventListener("click", () => $("image-input").click());
$("image-input").addEventListener("change", (e) => useUpload(e.target.files[0]));
$("image-chip-clear").addEventListener("click", () => { clearUpload(); showWelcome(); $("q").focus(); });
$("rerank").addEventListener("change", () => search(stateFromControls()));
$("filters-toggle").addEventListener("click", () => setFiltersOpen($("filters").hidden));
$("filters-clear").addEventListener("click", () => {
  for (const f of FILTERS) $(f).value = "";
  $("dedup").checked = false;
  search(stateFromControls());
});
for (const f of [...FILTERS, "k", "dedup", "order"]) {
  $(f).addEventListener("change", () => search(stateFromControls()));
}
$("min_score").addEventListener("input", showMinScore);
$("min_score").addEventListener("change", () => search(stateFromControls()));
$("load-more").addEventListener("click", loadMore);
$("duplicates-link").addEventListener("click", () => search({ view: "duplicates", under: $("under").value.trim() }));
$("dup-threshold").addEventListener("change", () => {
  search({ view: "duplicates", under: $("under").value.trim(), threshold: $("dup-threshold").value });
});
$("export-txt").addEventListener("click", exportTxt);
$("export-json").addEventListener("click", exportJson);

const radios = Array.from(document.querySelectorAll(".segmented [role=radio]"));
for (const b of radios) {
  b.addEventListener("click", () => {
    setTarget(b.dataset.target);
    search(stateFromControls());
  });
  b.addEventListener("keydown", (e) => {
    const moves = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };
    if (!(e.key in moves)) return;
    e.preventDefault();
    const next = radios[(radios.indexOf(b) + moves[e.key] + radios.length) % radios.length];
    next.focus();
    next.click(); // a radio group selects as it moves
  });
}

const viewer = $("viewer");
$("viewer-close").addEventListener("click", closeViewer);
$("viewer-img").addEventListener("load", () => markSmall($("viewer-img")));
$("viewer-prev").addEventListener("click", () => step(-1));
$("viewer-next").addEventListener("click", () => step(1));
viewer.addEventListener("close", afterClose);
viewer.addEventListener("click", (e) => { if (e.target === viewer) closeViewer(); }); // the backdrop
viewer.addEventListener("keydown", (e) => {
  if (e.key === "ArrowRight") { e.preventDefault(); step(1); }
  if (e.key === "ArrowLeft") { e.preventDefault(); step(-1); }
  if (e.key === "Tab") trapFocus(e);
});

function trapFocus(e) {
  // A modal dialog keeps Tab inside it (showModal alone lets it out to the browser's bar).
  const stops = Array.from(viewer.querySelectorAll("button, a[href], [tabindex='0']"))
    .filter((x) => !x.disabled && x.getClientRects().length);
  if (!stops.length) return;
  const first = stops[0];
  const last = stops[stops.length - 1];
  const at = document.activeElement;
  if (e.shiftKey && (at === first || !viewer.contains(at))) { e.preventDefault(); last.focus(); }
  else if (!e.shiftKey && (at === last || !viewer.contains(at))) { e.preventDefault(); first.focus(); }
}
let touchX = null;
viewer.addEventListener("touchstart", (e) => { touchX = e.changedTouches[0].clientX; }, { passive: true });
viewer.addEventListener("touchend", (e) => {
  if (touchX === null) return;
  const dx = e.changedTouches[0].clientX - touchX;
  touchX = null;
  if (Math.abs(dx) > 50) step(dx < 0 ? 1 : -1); // swipe left: the next result
});
$("more-like-this").addEventListener("click", moreLikeThis);
$("describe").addEventListener("click", describe);
$("copy-path").addEventListener("click", copyPath);

const zone = $("drop-zone");
window.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
window.addEventListener("dragleave", (e) => { if (!e.relatedTarget) zone.classList.remove("dragging"); });
window.addEventListener("drop", (e) => {
  e.preventDefault();
  zone.classList.remove("dragging");
  if (e.dataTransfer.files.length) useUpload(e.dataTransfer.files[0]);
});
document.addEventListener("keydown", (e) => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
  if (e.key === "/" && !typing && !viewer.open) { e.preventDefault(); $("q").focus(); $("q").select(); }
});
window.addEventListener("popstate", () => {
  closeViewer();
  clearUpload();
  const s = stateFromUrl();
  showState(s);
  search(s, { push: false });
});

loadConfig().then(() => {
  const initial = stateFromUrl();
  showState(initial);
  search(initial, { push: false });
});
