import {
  api, authHeaders, el, badge, setBadge, duration, time, videoPath, whoami, may, getKey,
  followEvents, showBanner, ApiError,
} from "./common.js";

const root = document.getElementById("image-root");
const NAME = root.dataset.imgName;
const BASE = videoPath(NAME);

let me = null;
let status = null;
let videoKey = null;

function fact(label, value) {
  return el("div", {}, el("dt", {}, label), el("dd", {}, value ?? "–"));
}

function facts(v) {
  const list = [
    fact("Status", badge(v.video_status)),
    fact("Source type", v.source_type),
    fact("Has video", v.has_video ? "yes" : "no"),
    fact("Generation", v.generation),
    fact("Attempts", v.attempts),
  ];
  if (v.progress !== null) list.push(fact("Progress", `${Math.round(v.progress * 100)} %`));
  if (v.cancel_requested) list.push(fact("Cancel requested", "yes"));
  if (v.error) list.push(fact("Error", el("span", { class: "error-text" }, `${v.error.code}: ${v.error.message}`)));
  if (v.prompt) list.push(fact("Prompt", v.prompt));
  if (v.not_before) list.push(fact("Due at", time(v.not_before)));
  list.push(
    fact("Queued for", duration(v.queued_seconds)),
    fact("Generated in", duration(v.generation_seconds)),
    fact("Requested", time(v.requested_at)),
    fact("Started", time(v.started_at)),
    fact("Completed", time(v.completed_at)),
    fact("Updated", time(v.updated_at)),
    fact("Version", v.version),
  );
  return list;
}

async function showVideo(v) {
  const player = document.getElementById("player");
  const none = document.getElementById("no-video");
  if (!v.has_video) {
    player.hidden = true;
    none.hidden = false;
    videoKey = null;
    return;
  }
  const key = `${v.video_filename}@${v.completed_at}`;
  if (key === videoKey) return;
  videoKey = key;
  none.hidden = true;
  player.hidden = false;
  if (!getKey()) {
    player.src = `${v.video_url}?v=${encodeURIComponent(v.completed_at || "")}`;
    return;
  }
  // A <video> cannot send the key's header: fetch the file with it instead.
  const response = await fetch(v.video_url, { headers: authHeaders() });
  if (!response.ok) {
    showBanner(`video: ${response.status} ${response.statusText}`);
    return;
  }
  const old = player.src;
  player.src = URL.createObjectURL(await response.blob());
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
}

async function loadStatus() {
  status = await api(BASE);
  setBadge(document.getElementById("status-badge"), status.video_status);
  document.getElementById("status-facts").replaceChildren(...facts(status));
  const slider = document.getElementById("version");
  const atEnd = Number(slider.value) >= Number(slider.max);
  slider.max = String(Math.max(1, status.version));
  slider.disabled = status.version === 0;
  if (atEnd) slider.value = slider.max;
  await showVideo(status);
  if (atEnd) await loadAsOf();
}

async function loadTimeline() {
  const items = [];
  let cursor = null;
  do {
    const q = new URLSearchParams({ limit: "1000" });
    if (cursor) q.set("cursor", cursor);
    const page = await api(`${BASE}/history?${q}`);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  const now = Date.now();
  const rows = items.map((t, i) => {
    const start = Date.parse(t.occurred_at);
    const end = i + 1 < items.length ? Date.parse(items[i + 1].occurred_at) : now;
    const ongoing = i + 1 === items.length;
    const error = t.data && t.data.error ? `${t.data.error.code}: ${t.data.error.message}` : "";
    const attempt = t.data && t.data.attempt !== undefined ? t.data.attempt : "";
    return el("tr", { dataset: { version: t.version, event: t.event_type } },
      el("td", { class: "num", "data-label": "Version" }, t.version),
      el("td", { "data-label": "Time" }, time(t.occurred_at)),
      el("td", { "data-label": "Event" }, t.event_type),
      el("td", { class: "transition", "data-label": "From → to" }, badge(t.from_status), " → ", badge(t.to_status)),
      el("td", { "data-label": "Actor" }, t.actor),
      el("td", { "data-label": "Reason" }, t.reason || ""),
      el("td", { class: "num", "data-label": "Attempt" }, attempt),
      el("td", { class: "error-text", "data-label": "Error" }, error),
      el("td", { class: "num", "data-label": "Time in state", title: ongoing ? "still in this state" : "" },
        `${duration((end - start) / 1000)}${ongoing ? " (now)" : ""}`));
  });
  document.querySelector("#timeline tbody").replaceChildren(...rows);
  document.getElementById("timeline-empty").hidden = rows.length > 0;
  markVersion();
}

function markVersion() {
  const v = document.getElementById("version").value;
  for (const tr of document.querySelectorAll("#timeline tbody tr")) {
    tr.classList.toggle("current", tr.dataset.version === v);
  }
}

async function loadAsOf() {
  const slider = document.getElementById("version");
  const version = Number(slider.value);
  document.getElementById("version-out").textContent =
    status && status.version ? `${version} of ${status.version}` : "–";
  markVersion();
  if (!status || status.version === 0) {
    document.getElementById("asof-facts").replaceChildren();
    return;
  }
  const v = await api(`${BASE}?version=${version}`);
  document.getElementById("asof-facts").replaceChildren(
    fact("Status", badge(v.video_status)),
    fact("Has video", v.has_video ? "yes" : "no"),
    fact("Generation", v.generation),
    fact("Attempts", v.attempts),
    fact("Error", v.error ? `${v.error.code}: ${v.error.message}` : "none"),
    fact("Updated", time(v.updated_at)));
}

const ACTIONS = {
  cancel: { label: "Cancel", verb: "Cancel the video", call: (reason) => api(`${BASE}/cancel`, { method: "POST", body: { reason } }) },
  retry: { label: "Retry", verb: "Retry the video", call: (reason) => api(`${BASE}/retry`, { method: "POST", body: { reason } }) },
  regenerate: {
    label: "Regenerate",
    verb: "Generate a new video",
    noReason: true,
    call: () => {
      if (!status.source_type) {
        throw new Error("no source type is known for this image: request its first video through the API");
      }
      return api("/v1/videos", {
        method: "POST",
        body: { img_name: NAME, source_type: status.source_type, prompt: status.prompt, regenerate: true },
      });
    },
  },
  delete: {
    label: "Delete",
    danger: true,
    verb: "Delete the video",
    call: (reason) => api(`${BASE}${reason ? `?reason=${encodeURIComponent(reason)}` : ""}`, { method: "DELETE" }),
  },
};

function confirmAction(action) {
  const dialog = document.getElementById("confirm");
  const reason = document.getElementById("confirm-reason");
  document.getElementById("confirm-title").textContent = `${ACTIONS[action].verb}?`;
  document.getElementById("confirm-text").textContent =
    `${ACTIONS[action].verb} of “${NAME}”. The API records who did it and why.`;
  reason.value = "";
  reason.parentElement.hidden = !!ACTIONS[action].noReason;
  dialog.returnValue = "";
  // Back is no submit button, so Enter in the reason field confirms; Escape backs out.
  document.getElementById("confirm-back").onclick = () => dialog.close("");
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok" ? reason.value.trim() : null), { once: true });
  });
}

async function act(action) {
  const result = document.getElementById("action-result");
  const reason = await confirmAction(action);
  if (reason === null) return;
  try {
    const v = await ACTIONS[action].call(reason || undefined);
    result.className = "result ok";
    result.textContent = `${action}: now ${v.video_status}.`;
  } catch (error) {
    result.className = "result error";
    result.textContent = error instanceof ApiError ? `Refused: ${error.message}` : error.message;
  }
  await refresh();
}

// Reloads run one at a time, so a slow older answer never overwrites a newer one.
let chain = Promise.resolve();
function serially(task) {
  chain = chain.then(task).catch((error) => showBanner(error.message));
  return chain;
}

function refresh() {
  return serially(async () => {
    await loadStatus();
    await loadTimeline();
  });
}

async function main() {
  me = await whoami();
  if (!me) return;
  if (may(me, "write")) {
    // Only a key that may write gets the buttons at all; the API decides the rest.
    const actions = document.getElementById("actions");
    for (const [action, spec] of Object.entries(ACTIONS)) {
      const button = el("button", { type: "button", class: spec.danger ? "danger" : null }, spec.label);
      button.addEventListener("click", () => act(action));
      actions.append(button);
    }
    actions.hidden = false;
  }
  let timer = null;
  document.getElementById("version").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => serially(loadAsOf), 120);
  });
  await refresh();
  // Follow this image's events live: every transition reloads the page's data.
  // Without a cursor the stream first replays this image's few events (an
  // indexed read), which costs one extra reload and nothing else.
  let soon = null;
  followEvents(`/v1/events/stream?${new URLSearchParams({ img_name: NAME })}`, {
    signal: new AbortController().signal,
    onState: () => {},
    onEvent: () => {
      clearTimeout(soon);
      soon = setTimeout(refresh, 150);
    },
  });
  // Progress comes from heartbeats, not events: poll while processing.
  setInterval(() => { if (status && status.video_status === "processing") serially(loadStatus); }, 2000);
}

main();
