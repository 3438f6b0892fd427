// Shared by every dashboard page: the key, calls to the JSON API, the header,
// formatting, and a Server-Sent Events reader that can send the key.
const KEY = "vidledger.apiKey";

export function getKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export function authHeaders() {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** An API refusal, carrying the problem JSON's detail and code. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code || null;
  }
}

async function problemOf(response) {
  try {
    return await response.json();
  } catch {
    return { detail: `${response.status} ${response.statusText}` };
  }
}

/** Call the API with the key; JSON in, JSON out; an ApiError when refused. */
export async function api(path, { method = "GET", body, signal, quiet = false } = {}) {
  const headers = { Accept: "application/json", ...authHeaders() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    signal,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    const error = new ApiError(response.status, await problemOf(response));
    if (response.status === 401 && !quiet) showBanner(error.message, true);
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

export function videoPath(name) {
  return `/v1/videos/${encodeURIComponent(name)}`;
}

export function imagePage(name) {
  return `/ui/videos/${encodeURIComponent(name)}`;
}

export function showBanner(message, signIn = false) {
  const banner = document.getElementById("banner");
  banner.replaceChildren(document.createTextNode(message));
  if (signIn) {
    const link = el("a", { href: "/ui/signin" }, "Sign in");
    banner.append(" ", link);
  }
  banner.hidden = false;
}

/** document.createElement with attributes and children (text is never parsed as HTML). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function badge(status) {
  return el("span", { class: `badge s-${status}` }, status);
}

export function setBadge(node, status) {
  node.className = `badge s-${status}`;
  node.textContent = status;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, seconds);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
}

const pad = (n) => String(n).padStart(2, "0");

/** Local time as 2026-11-30 05:36:27 (the ISO UTC instant in the tooltip). */
export function time(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  return el("time", { datetime: iso, title: iso }, `${day} ${clock(d)}`);
}

export function shortTime(iso) {
  return el("time", { datetime: iso, title: iso }, clock(new Date(iso)));
}

function clock(d) {
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Who is signed in: GET /v1/me. Fills the header; null when the key is refused. */
export async function whoami({ quiet = false } = {}) {
  const label = document.getElementById("who-label");
  const signIn = document.getElementById("signin-link");
  const signOut = document.getElementById("signout");
  signOut.onclick = () => {
    setKey(null);
    location.href = "/ui/signin";
  };
  try {
    const me = await api("/v1/me", { quiet });
    label.textContent = me.open ? "open mode (no keys)" : `${me.name} · ${me.role}`;
    signIn.hidden = true;
    signOut.hidden = !getKey();
    return me;
  } catch (error) {
    label.textContent = getKey() ? "key refused" : "not signed in";
    signIn.hidden = false;
    signOut.hidden = !getKey();
    return null;
  }
}

export function may(me, permission) {
  return !!me && me.permissions.includes(permission);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Follow an SSE endpoint with fetch(), so that the key goes in a header
 * (EventSource cannot send one). Reconnects with Last-Event-ID, so nothing
 * is missed or repeated. `onEvent({id, event, data})`; `onState(text)`.
 */
export async function followEvents(url, { onEvent, onState, signal }) {
  let lastId = null;
  while (!signal.aborted) {
    try {
      const headers = { Accept: "text/event-stream", ...authHeaders() };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await fetch(url, { headers, signal, cache: "no-store" });
      if (!response.ok) {
        const error = new ApiError(response.status, await problemOf(response));
        onState(`stopped: ${error.message}`);
        if (response.status < 500) return; // a refusal will not fix itself
        throw error;
      }
      onState("live");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let match;
        while ((match = /\r\n\r\n|\n\n|\r\r/.exec(buffer)) !== null) {
          const block = buffer.slice(0, match.index);
          buffer = buffer.slice(match.index + match[0].length);
          const message = parseBlock(block);
          if (message.id !== null) lastId = message.id;
          if (message.data !== null) onEvent(message);
        }
      }
    } catch (error) {
      if (signal.aborted) return;
    }
    onState("reconnecting…");
    await sleep(2000);
  }
}

function parseBlock(block) {
  const message = { id: null, event: "message", data: null };
  for (const line of block.split(/\r\n|\n|\r/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") message.id = value;
    else if (field === "event") message.event = value;
    else if (field === "data") message.data = message.data === null ? value : `${message.data}\n${value}`;
  }
  return message;
}
