// The xmr page: one search box over /api/search. The whole query lives in the address
// bar (?q=...&target=...&k=...), so reload, back and a shared link all work; an uploaded
// image cannot travel in a link, so a query by upload is the one thing a reload loses.
"use strict";

const $ = (id) => document.getElementById(id);
const FIELDS = ["q", "like", "target", "k", "rerank", "under", "after", "before", "ext", "min_score", "dedup", "view"];
const FILTERS = ["under", "after", "before", "ext", "min_score"];
const THUMB = 384;
let upload = null; // File chosen or dropped: an image query
let likeId = null; // "more like this": an indexed image's id as the query
let current = null; // the hit shown in the viewer
let busy = 0; // requests in flight, newest wins

// -- the query in the address bar --------------------------------------------------
function stateFromUrl() {
  const p = new URLSearchParams(location.search);
  const s = {};
  for (const f of FIELDS) if (p.has(f)) s[f] = p.get(f);
  return s;
}

function stateFromControls() {
  const s = { target: document.querySelector(".segmented .active").dataset.target };
  const q = $("q").value.trim();
  if (q) s.q = q;
  if (!upload && likeId && (!q || /^[+-]\s/.test(q))) s.like = likeId;
  if (!$("rerank").checked) s.rerank = "false";
  if ($("dedup").checked) s.dedup = "0.95";
  for (const f of FILTERS) if ($(f).value.trim()) s[f] = $(f).value.trim();
  if ($("k").value && $("k").value !== "40") s.k = $("k").value;
  return s;
}

function showState(s) {
  $("q").value = s.q || "";
  likeId = s.q ? null : s.like || null;
  setTarget(s.target || "images");
  $("rerank").checked = s.rerank !== "false";
  $("dedup").checked = Boolean(s.dedup);
  for (const f of FILTERS) $(f).value = s[f] || "";
  $("k").value = s.k || "40";
  if (FILTERS.some((f) => s[f]) || s.dedup) $("filters").hidden = false;
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
  $("duplicate-groups").replaceChildren();
  if (!s.q && !s.like && !upload) return showWelcome();
  if (push && !upload) history.pushState(s, "", urlFor(s));
  const mine = ++busy;
  const started = performance.now();
  setStatus("Searching…");
  const params = new URLSearchParams();
  params.set("k", s.k || "40");
  params.set("target", s.target || "images");
  params.set("rerank", s.rerank === "false" ? "false" : "true");
  for (const f of [...FILTERS, "dedup"]) if (s[f]) params.set(f, s[f]);
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
  if (mine !== busy) return; // a newer search replaced this one
  if (!response.ok) return setStatus(answer.error || response.statusText, true);
  render(answer, s, performance.now() - started);
}

function render(answer, s, roundTrip) {
  $("welcome").hidden = true;
  const results = answer.results;
  const what = (s.target || "images") === "texts" ? "texts" : "images";
  let label = `${results.length} ${what}`;
  if (s.like || upload) label += ` like ${s.like ? "image " + s.like : upload.name || "the image"}`;
  if (s.q) label += `${s.like || upload ? " " : ""}${s.q.startsWith("+") || s.q.startsWith("-") ? "" : " for "}“${s.q}”`;
  setStatus(results.length ? label : "Nothing found. " + (answer.notices[0] || ""));
  $("notices").replaceChildren(...answer.notices.map((n) => el("div", { className: "notice", textContent: n })));
  const grid = $("grid");
  const texts = $("text-results");
  grid.replaceChildren();
  texts.replaceChildren();
  for (const hit of results) {
    if (hit.kind === "image") grid.append(tile(hit));
    else texts.append(textCard(hit));
  }
  const t = answer.timings_ms;
  $("timings").textContent =
    `${results.length} results · ${answer.reranked ? "re-ranked by " + (answer.reranker || "the re-ranker") : "stage 1 only"} · encode ${t.encode} ms · ` +
    `stage 1 ${t.stage1} ms · re-rank ${t.rerank} ms · engine ${t.total} ms · round trip ${Math.round(roundTrip)} ms`;
}

function tile(hit) {
  const name = hit.path.split("/").pop();
  const button = el("button", { className: "tile", type: "button", title: `${name}\nscore ${hit.score.toFixed(4)}` });
  button.dataset.id = hit.id;
  const img = el("img", { alt: name, loading: "lazy", decoding: "async" });
  img.addEventListener("load", () => img.classList.add("loaded"));
  img.src = `/api/images/${hit.id}/thumbnail?size=${THUMB}`;
  const meta = el("div", { className: "meta" });
  meta.append(el("span", { className: "name", textContent: name }), el("span", { textContent: hit.score.toFixed(3) }));
  button.append(img, el("span", { className: "rank", textContent: hit.rank }), meta);
  if (hit.duplicates && hit.duplicates.length) {
    button.append(el("span", { className: "folded", textContent: `+${hit.duplicates.length}`, title: "near-duplicates folded into this one" }));
  }
  button.addEventListener("click", () => openViewer(hit));
  return button;
}

function textCard(hit) {
  const card = el("article", { className: "text-card" });
  card.append(
    el("span", { className: "rank", textContent: hit.rank }),
    el("span", { className: "text", textContent: hit.text }),
    el("span", { className: "score", textContent: hit.score.toFixed(3) }),
    el("span", { className: "source", textContent: hit.source || "" }),
  );
  return card;
}

// -- one image: more like this, describe ------------------------------------------
function openViewer(hit) {
  current = hit;
  $("viewer-img").src = `/api/images/${hit.id}`;
  $("viewer-img").alt = hit.path;
  $("viewer-path").textContent = hit.path;
  $("viewer-score").textContent = `rank ${hit.rank} · score ${hit.score.toFixed(4)} · stage 1 ${hit.stage1_score.toFixed(4)} · id ${hit.id}`;
  $("open-original").href = `/api/images/${hit.id}`;
  $("descriptions").replaceChildren();
  $("viewer").hidden = false;
  $("more-like-this").focus();
}

function closeViewer() {
  $("viewer").hidden = true;
  $("viewer-img").removeAttribute("src");
}

async function describe() {
  const list = $("descriptions");
  list.replaceChildren(el("li", { className: "muted", textContent: "Reading the image…" }));
  const params = new URLSearchParams({ like: current.id, target: "texts", k: "5", rerank: String($("rerank").checked) });
  const response = await fetch("/api/search?" + params);
  const answer = await response.json().catch(() => ({ error: "unreadable answer" }));
  if (!response.ok) return list.replaceChildren(el("li", { textContent: answer.error }));
  if (!answer.results.length) {
    return list.replaceChildren(el("li", { className: "muted", textContent: answer.notices[0] || "No texts in this index." }));
  }
  list.replaceChildren(...answer.results.map((hit) => {
    const item = el("li", { textContent: hit.text });
    item.append(el("span", { className: "score", textContent: hit.score.toFixed(3) }));
    return item;
  }));
}

function moreLikeThis() {
  likeId = String(current.id);
  closeViewer();
  clearUpload();
  $("q").value = "";
  setTarget("images");
  search(stateFromControls());
}

// -- near-duplicates: groups to review ------------------------------------------
async function showDuplicates(s, push) {
  if (push) history.pushState(s, "", urlFor({ view: "duplicates", under: s.under }));
  $("welcome").hidden = true;
  $("grid").replaceChildren();
  $("text-results").replaceChildren();
  $("notices").replaceChildren();
  $("timings").textContent = "";
  setStatus("Looking for near-duplicates…");
  const params = new URLSearchParams();
  if (s.under) params.set("under", s.under);
  const started = performance.now();
  const response = await fetch("/api/duplicates?" + params);
  const data = await response.json().catch(() => ({ error: "unreadable answer" }));
  if (!response.ok) return setStatus(data.error, true);
  const extra = data.groups.reduce((n, g) => n + g.count - 1, 0);
  setStatus(data.groups.length
    ? `${data.groups.length} groups of near-duplicates: ${extra} images beyond one of each`
    : "No near-duplicates found.");
  $("duplicate-groups").replaceChildren(...data.groups.map((group, i) => {
    const box = el("section", { className: "dup-group" });
    box.append(el("h3", { textContent: `Group ${i + 1} · ${group.count} images` }));
    const grid = el("div", { className: "grid" });
    for (const item of group.items) {
      const figure = el("figure", { className: "dup-item" });
      figure.style.margin = "0";
      const hit = { id: item.id, path: item.path, rank: "", score: 1, stage1_score: 1 };
      const t = tile(hit);
      t.querySelector(".rank").remove();
      figure.append(t, el("figcaption", { textContent: `${item.width}×${item.height} · ${Math.round(item.bytes / 1024)} KiB · ${item.path}` }));
      grid.append(figure);
    }
    box.append(grid);
    return box;
  }));
  $("timings").textContent = `${data.groups.length} groups · ${Math.round(performance.now() - started)} ms`;
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
  $("q").placeholder = "Describe what you are looking for…  (press / to focus)";
}

// -- the welcome screen ----------------------------------------------------------
async function showWelcome() {
  $("grid").replaceChildren();
  $("text-results").replaceChildren();
  $("notices").replaceChildren();
  $("timings").textContent = "";
  setStatus("");
  $("welcome").hidden = false;
  try {
    const response = await fetch("/api/examples");
    if (!response.ok) throw new Error((await response.json()).error);
    const data = await response.json();
    $("index-summary").textContent = `${data.images} images and ${data.texts} texts indexed with ${data.model}.`;
    $("examples").replaceChildren(...data.examples.map((text) => {
      const b = el("button", { className: "example", type: "button", textContent: text });
      b.addEventListener("click", () => { $("q").value = text; submit(); });
      return b;
    }));
  } catch (err) {
    $("index-summary").textContent = "The index cannot be read: " + err.message;
  }
}

// -- small helpers ---------------------------------------------------------------
function el(tag, props) { return Object.assign(document.createElement(tag), props || {}); }

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function setTarget(target) {
  for (const b of document.querySelectorAll(".segmented button")) {
    const on = b.dataset.target === target;
    b.classList.toggle("active", on);
    b.setAttribute("aria-checked", String(on));
  }
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
$("image-input").addEventListener("change", (e) => useUpload(e.target.files[0]));
$("image-chip-clear").addEventListener("click", () => { clearUpload(); showWelcome(); $("q").focus(); });
$("rerank").addEventListener("change", () => search(stateFromControls()));
$("filters-toggle").addEventListener("click", () => { $("filters").hidden = !$("filters").hidden; });
$("filters-clear").addEventListener("click", () => {
  for (const f of FILTERS) $(f).value = "";
  $("dedup").checked = false;
  search(stateFromControls());
});
for (const f of [...FILTERS, "k", "dedup"]) {
  $(f).addEventListener("change", () => search(stateFromControls()));
}
$("duplicates-link").addEventListener("click", () => search({ view: "duplicates", under: $("under").value.trim() }));
for (const b of document.querySelectorAll(".segmented button")) {
  b.addEventListener("click", () => {
    setTarget(b.dataset.target);
    search(stateFromControls());
  });
}
$("viewer-close").addEventListener("click", closeViewer);
$("viewer").addEventListener("click", (e) => { if (e.target === $("viewer")) closeViewer(); });
$("more-like-this").addEventListener("click", moreLikeThis);
$("describe").addEventListener("click", describe);

const zone = $("drop-zone");
window.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
window.addEventListener("dragleave", (e) => { if (!e.relatedTarget) zone.classList.remove("dragging"); });
window.addEventListener("drop", (e) => {
  e.preventDefault();
  zone.classList.remove("dragging");
  if (e.dataTransfer.files.length) useUpload(e.dataTransfer.files[0]);
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && !$("viewer").hidden) return closeViewer();
  const typing = ["INPUT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (e.key === "/" && !typing) { e.preventDefault(); $("q").focus(); $("q").select(); }
});
window.addEventListener("popstate", () => {
  clearUpload();
  const s = stateFromUrl();
  showState(s);
  search(s, { push: false });
});

const initial = stateFromUrl();
showState(initial);
search(initial, { push: false });
