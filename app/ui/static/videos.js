import { api, el, badge, imagePage, time, whoami, showBanner } from "./common.js";

const PAGE_SIZE = 25;
const form = document.getElementById("filters");
const FIELDS = ["status", "source_type", "name_prefix"];

function filtersFromUrl() {
  const params = new URLSearchParams(location.search);
  for (const name of FIELDS) form.elements[name].value = params.get(name) || "";
  return params;
}

// Cursors of the pages before this one, so that "Previous" can go back.
let history_ = [];
let current = null;
let next = null;

function row(v) {
  const error = v.error ? `${v.error.code}: ${v.error.message}` : "";
  return el("tr", {},
    el("th", { scope: "row" }, el("a", { href: imagePage(v.img_name) }, v.img_name)),
    el("td", {}, badge(v.video_status)),
    el("td", {}, v.source_type || "–"),
    el("td", { class: "num" }, v.generation),
    el("td", { class: "num" }, v.attempts),
    el("td", { class: "error-cell", title: error }, error),
    el("td", {}, time(v.updated_at)));
}

// Only the newest load may fill the table: an older answer arriving late
// (say, the unfiltered first page) must not overwrite a filtered one.
let loads = 0;

async function load(cursor) {
  const mine = ++loads;
  const table = document.getElementById("videos");
  table.setAttribute("aria-busy", "true");
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  for (const name of FIELDS) {
    const value = form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  if (cursor) params.set("cursor", cursor);
  try {
    const page = await api(`/v1/videos?${params}`);
    if (mine !== loads) return;
    document.querySelector("#videos tbody").replaceChildren(...page.items.map(row));
    document.getElementById("videos-empty").hidden = page.items.length > 0;
    current = cursor;
    next = page.next_cursor;
    document.getElementById("next-page").disabled = !next;
    document.getElementById("prev-page").disabled = history_.length === 0;
    document.getElementById("first-page").disabled = history_.length === 0;
    document.getElementById("page-no").textContent = `Page ${history_.length + 1}`;
    document.getElementById("banner").hidden = true;
  } catch (error) {
    showBanner(error.message);
  } finally {
    if (mine === loads) table.setAttribute("aria-busy", "false");
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const params = new URLSearchParams();
  for (const name of FIELDS) {
    const value = form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  history.replaceState(null, "", `?${params}`);
  history_ = [];
  load(null);
});
document.getElementById("next-page").addEventListener("click", () => {
  history_.push(current);
  load(next);
});
document.getElementById("prev-page").addEventListener("click", () => load(history_.pop() ?? null));
document.getElementById("first-page").addEventListener("click", () => {
  history_ = [];
  load(null);
});

filtersFromUrl();
whoami().then((me) => { if (me) load(null); });
