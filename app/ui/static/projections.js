import { api, el, time, whoami, showBanner } from "./common.js";

function stateBadge(state) {
  return el("span", { class: `badge p-${state}` }, state);
}

async function verify(name, button) {
  const panel = document.getElementById("verify-panel");
  const summary = document.getElementById("verify-summary");
  const table = document.getElementById("differences");
  panel.hidden = false;
  button.disabled = true;
  summary.className = "";
  summary.textContent = `Verifying ${name}…`;
  try {
    const r = await api(`/v1/admin/projections/${encodeURIComponent(name)}/verify`, { method: "POST" });
    summary.className = r.ok ? "result ok" : "result error";
    summary.textContent = r.ok
      ? `${name}: no drift. ${r.checked} images checked against ${r.events} events.`
      : `${name}: ${r.differences.length} image(s) differ from the log (${r.checked} checked, ${r.events} events).`;
    const rows = [];
    for (const d of r.differences) {
      for (const [column, diff] of Object.entries(d.columns || {})) {
        rows.push(el("tr", {}, el("th", { scope: "row" }, d.img_name), el("td", {}, column),
          el("td", {}, JSON.stringify(diff.expected)), el("td", {}, JSON.stringify(diff.actual))));
      }
    }
    table.querySelector("tbody").replaceChildren(...rows);
    table.hidden = rows.length === 0;
  } catch (error) {
    summary.className = "result error";
    summary.textContent = `Refused: ${error.message}`;
  } finally {
    button.disabled = false;
  }
}

async function main() {
  const me = await whoami();
  if (!me) return;
  try {
    const list = await api("/v1/admin/projections");
    const rows = list.items.map((p) => {
      const button = el("button", { type: "button" }, "Verify");
      button.setAttribute("aria-label", `Verify ${p.name}`);
      button.addEventListener("click", () => verify(p.name, button));
      return el("tr", {}, el("th", { scope: "row" }, p.name), el("td", {}, stateBadge(p.state)),
        el("td", { class: "num" }, p.version), el("td", { class: "num" }, p.expected_version),
        el("td", { class: "num" }, p.rows.toLocaleString()), el("td", { class: "num" }, p.last_position),
        el("td", {}, time(p.built_at)), el("td", {}, button));
    });
    document.querySelector("#projections tbody").replaceChildren(...rows);
  } catch (error) {
    showBanner(error.message);
  }
}

main();
