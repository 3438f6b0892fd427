import { api, el, badge, duration, imagePage, shortTime, whoami, followEvents, showBanner } from "./common.js";

const LIVE_ROWS = 25;
const STATUSES = ["pending", "processing", "completed", "failed", "cancelled"];

// One stats read at a time, so an older answer never lands after a newer one.
let inFlight = null;
let again = false;
function refreshStats() {
  if (inFlight) {
    again = true;
    return inFlight;
  }
  inFlight = readStats().finally(() => {
    inFlight = null;
    if (again) {
      again = false;
      refreshStats().catch(() => {});
    }
  });
  return inFlight;
}

async function readStats() {
  const stats = await api("/v1/stats");
  for (const [status, n] of Object.entries(stats.by_status)) {
    const node = document.querySelector(`[data-count="${status}"]`);
    if (node) node.textContent = n.toLocaleString();
  }
  document.getElementById("oldest-pending").textContent = duration(stats.oldest_pending_age_seconds);
  document.getElementById("workers-busy").textContent =
    `${stats.processing.toLocaleString()} processing`;
  document.getElementById("due").textContent =
    `${stats.due.toLocaleString()} of ${stats.queue_depth.toLocaleString()}`;
  document.getElementById("total").textContent = stats.total.toLocaleString();
  // /readyz needs no key: the database answers and every projection is current.
  const ready = await fetch("/readyz", { cache: "no-store" });
  const readyText = ready.ok ? "healthy" : `not ready: ${(await ready.json()).detail}`;
  const readyNode = document.getElementById("ready");
  readyNode.replaceChildren(el("span", { class: `badge ${ready.ok ? "p-ok" : "p-stale"}` }, readyText));
  const rows = Object.entries(stats.by_source_type)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([source, counts]) => {
      const total = Object.values(counts).reduce((a, b) => a + b, 0);
      const link = el("a", { href: `/ui/videos?source_type=${encodeURIComponent(source)}` }, source);
      return el("tr", {}, el("th", { scope: "row" }, link), el("td", { class: "num" }, total),
        ...STATUSES.map((s) => el("td", { class: "num" }, counts[s] || 0)));
    });
  document.querySelector("#sources tbody").replaceChildren(...rows);
  document.querySelector("#generators tbody").replaceChildren(...generatorRows(stats));
}

function generatorRows(stats) {
  const names = new Set([...Object.keys(stats.by_generator), ...Object.keys(stats.queue_by_generator)]);
  return [...names].sort((a, b) => a.localeCompare(b)).map((name) => {
    const counts = stats.by_generator[name] || {};
    const queue = stats.queue_by_generator[name] || { due: 0, depth: 0, oldest_pending_age_seconds: null };
    const codes = Object.entries(stats.failures_by_generator[name] || {})
      .sort(([, a], [, b]) => b - a)
      .map(([code, n]) => `${code} ${n.toLocaleString()}`)
      .join(", ");
    return el("tr", { dataset: { generator: name } },
      el("th", { scope: "row" }, name),
      el("td", { class: "num" }, queue.due.toLocaleString()),
      el("td", { class: "num" }, queue.depth.toLocaleString()),
      el("td", { class: "num" }, duration(queue.oldest_pending_age_seconds)),
      el("td", { class: "num" }, (counts.processing || 0).toLocaleString()),
      el("td", { class: "num" }, (counts.completed || 0).toLocaleString()),
      el("td", { class: "num" }, (counts.failed || 0).toLocaleString()),
      el("td", {}, codes || "–"));
  });
}

function liveRow(event) {
  return el("tr", { dataset: { img: event.img_name, to: event.to_status } },
    el("td", {}, shortTime(event.occurred_at)),
    el("td", {}, el("a", { href: imagePage(event.img_name) }, event.img_name)),
    el("td", { class: "transition" }, badge(event.from_status), " → ", badge(event.to_status)),
    el("td", {}, event.event_type),
    el("td", {}, event.actor));
}

function addLive(event) {
  const body = document.querySelector("#live tbody");
  body.prepend(liveRow(event));
  while (body.rows.length > LIVE_ROWS) body.deleteRow(body.rows.length - 1);
  document.getElementById("live-empty").hidden = true;
}

let pending = null;
function statsSoon() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; refreshStats().catch(() => {}); }, 500);
}

async function main() {
  const me = await whoami();
  if (!me) return;
  try {
    await refreshStats();
  } catch (error) {
    showBanner(error.message);
    return;
  }
  setInterval(() => refreshStats().catch(() => {}), 5000);
  const tail = await api(`/v1/events?tail=true&limit=${LIVE_ROWS}`);
  tail.items.forEach(addLive);
  document.getElementById("live-empty").hidden = tail.items.length > 0;
  const url = tail.next_cursor
    ? `/v1/events/stream?after=${encodeURIComponent(tail.next_cursor)}`
    : "/v1/events/stream";
  const state = document.getElementById("live-state");
  followEvents(url, {
    signal: new AbortController().signal,
    onState: (text) => {
      state.textContent = text;
      state.dataset.state = text === "live" ? "live" : "down";
    },
    onEvent: (message) => {
      addLive(JSON.parse(message.data));
      statsSoon();
    },
  });
}

main();
