import { api, el, time, whoami, showBanner } from "./common.js";

let selected = null;

function stateBadge(state) {
  return el("span", { class: `badge ${state === "enabled" ? "p-ok" : "p-stale"}` }, state);
}

function deliveryBadge(status) {
  const kind = { succeeded: "p-ok", failed: "p-stale", pending: "p-rebuilding" }[status] || "";
  return el("span", { class: `badge ${kind}` }, status);
}

async function replayOne(delivery, button) {
  button.disabled = true;
  try {
    await api(`/v1/webhooks/deliveries/${delivery.id}/replay`, { method: "POST" });
    await showDeliveries(selected);
  } catch (error) {
    showBanner(error.message);
    button.disabled = false;
  }
}

async function showDeliveries(endpoint) {
  selected = endpoint;
  const panel = document.getElementById("deliveries-panel");
  panel.hidden = false;
  document.getElementById("h-deliveries").textContent = `Deliveries to ${endpoint.url}`;
  const page = await api(`/v1/webhooks/endpoints/${encodeURIComponent(endpoint.id)}/deliveries?limit=100`);
  const rows = page.items.map((d) => {
    const button = el("button", { type: "button" }, "Replay");
    button.setAttribute("aria-label", `Replay delivery ${d.id}`);
    button.addEventListener("click", () => replayOne(d, button));
    const answer = d.last_status_code ? String(d.last_status_code) : (d.last_error || "–");
    return el("tr", { dataset: { delivery: d.id, status: d.status } },
      el("td", {}, d.event_type), el("td", {}, d.img_name || "–"), el("td", {}, deliveryBadge(d.status)),
      el("td", { class: "num" }, d.attempts), el("td", {}, answer),
      el("td", { class: "num" }, d.last_latency_ms === null ? "–" : `${Math.round(d.last_latency_ms)} ms`),
      el("td", {}, time(d.next_attempt_at)), el("td", {}, time(d.created_at)), el("td", {}, button));
  });
  document.querySelector("#deliveries tbody").replaceChildren(...rows);
}

async function replayFailed() {
  if (!selected) return;
  const result = document.getElementById("replay-result");
  try {
    const r = await api(`/v1/webhooks/endpoints/${encodeURIComponent(selected.id)}/replay`, {
      method: "POST",
      body: { status: "failed" },
    });
    result.textContent = `${r.replayed} failed delivery(ies) pending again.`;
    await showDeliveries(selected);
  } catch (error) {
    result.textContent = `Refused: ${error.message}`;
  }
}

async function main() {
  const me = await whoami();
  if (!me) return;
  document.getElementById("replay-failed").addEventListener("click", replayFailed);
  try {
    const list = await api("/v1/webhooks/endpoints?limit=500");
    const rows = list.items.map((e) => {
      const link = el("a", { href: "#", dataset: { endpoint: e.id } }, e.id);
      link.addEventListener("click", (event) => {
        event.preventDefault();
        showDeliveries(e).catch((error) => showBanner(error.message));
      });
      const state = e.disabled_reason ? [stateBadge(e.state), ` ${e.disabled_reason}`] : [stateBadge(e.state)];
      return el("tr", { dataset: { endpoint: e.id } }, el("th", { scope: "row" }, link), el("td", {}, e.url),
        el("td", {}, ...state), el("td", {}, (e.event_types || ["all"]).join(", ")),
        el("td", {}, (e.source_types || ["all"]).join(", ")), el("td", {}, time(e.created_at)));
    });
    document.querySelector("#endpoints tbody").replaceChildren(...rows);
    document.getElementById("endpoints-empty").hidden = rows.length > 0;
    if (list.items.length === 1) await showDeliveries(list.items[0]);
  } catch (error) {
    showBanner(error.message);
  }
}

main();
