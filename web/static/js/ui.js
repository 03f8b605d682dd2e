/*
 * Small helpers every page shares: its strings and settings (rendered by server/pages.py into
 * <script type="application/json"> elements), element building, announcements, toasts,
 * the connection badge, HTTP calls with the hall's error shape, and the chat panel.
 * No framework: the pages are small and must run on old kiosk browsers for months.
 */
import { HallError } from "/static/js/hall-client.js";

function readJson(id) {
  const element = document.getElementById(id);
  return element ? JSON.parse(element.textContent) : {};
}

/** The page's settings: {page, lang, demo, hall_name, ...page specific}. */
export const config = readJson("hall-config");
/** The page's strings in the chosen language. */
export const strings = readJson("hall-strings");

/** A string by key, with {name} placeholders filled in. A missing key shows the key. */
export function t(key, values) {
  let text = Object.prototype.hasOwnProperty.call(strings, key) ? strings[key] : key;
  if (values) {
    text = text.replace(/\{(\w+)\}/g, (whole, name) => (name in values ? String(values[name])
      : whole));
  }
  return text;
}

export function $(selector, root) {
  return (root || document).querySelector(selector);
}

export function $$(selector, root) {
  return [...(root || document).querySelectorAll(selector)];
}

/**
 * Build an element: h("button", {class: "big", onclick: fn, "aria-label": "..."}, "text", child).
 * Attributes starting with "on" become listeners; `text` sets textContent; `dataset` an object;
 * false/null/undefined attributes and children are skipped. Text is never parsed as HTML.
 */
export function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "text") {
      element.textContent = value;
    } else if (name === "class") {
      element.className = value;
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else if (value === true) {
      element.setAttribute(name, "");
    } else {
      element.setAttribute(name, String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** Replace an element's children. */
export function fill(element, ...children) {
  element.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined
    && c !== false));
  return element;
}

/** Say something to screen readers (polite). */
export function announce(text) {
  const box = document.getElementById("announcer");
  if (!box) return;
  box.textContent = "";
  // A change after a tick is announced even when the text repeats.
  setTimeout(() => { box.textContent = text; }, 50);
}

/** A short message at the bottom of the screen; errors stay longer. */
export function toast(text, kind) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const item = h("div", { class: `toast toast-${kind || "info"}` }, text);
  box.append(item);
  while (box.children.length > 3) box.firstElementChild.remove();
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}

/** The text to show for an error from the hall (HallError) or anything else. */
export function errorText(error) {
  if (error instanceof HallError) {
    const key = `error_${error.code}`;
    if (Object.prototype.hasOwnProperty.call(strings, key)) {
      return t(key, { message: error.message, ...error.details });
    }
    if (error.code === "timeout") return t("error_timeout");
    return t("error_generic", { message: error.message });
  }
  return t("error_generic", { message: String(error && error.message ? error.message : error) });
}

export function showError(error) {
  toast(errorText(error), "error");
}

/** Keep the header's connection badge in step with the client ("link" events). */
export function bindConnectionStatus(client) {
  const badge = document.getElementById("conn-status");
  if (!badge) return;
  client.on("link", ({ state }) => {
    badge.hidden = false;
    badge.dataset.state = state;
    badge.textContent = t(`conn_${state}`);
  });
}

/** Whole minutes for a wait, "about N min" (at least 1); unknown → "—". */
export function formatWait(seconds) {
  if (seconds === null || seconds === undefined) return t("unknown");
  return t("about_minutes", { n: Math.max(1, Math.round(seconds / 60)) });
}

/** m:ss for a duration in seconds (queues, countdowns). */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return t("unknown");
  const s = Math.max(0, Math.floor(seconds));
  const m = Math.floor(s / 60);
  return `${m}:${String(s % 60).padStart(2, "0")}`;
}

/** HH:MM of a POSIX time, in the browser's time zone. */
export function formatClock(at) {
  const d = new Date(at * 1000);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

/** The name of a catalog item in the page's language (name / name_en). */
export function nameOf(item) {
  if (!item) return t("unknown");
  return config.lang === "en" && item.name_en ? item.name_en : item.name;
}

/**
 * JSON over HTTP with the hall's error shape: resolves with the body of a 2xx answer, throws
 * HallError(code, message) otherwise. `token`: sent as `Authorization: Bearer`.
 */
export async function api(path, options) {
  const opts = options || {};
  const headers = Object.assign({}, opts.headers || {});
  if (opts.token) headers.Authorization = `Bearer ${opts.token}`;
  let body = opts.body;
  if (body !== undefined && !(body instanceof FormData) && !(body instanceof Blob)) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method: opts.method || (body ? "POST" : "GET"), headers,
                                   body, credentials: "same-origin" });
  } catch (err) {
    throw new HallError("network", String(err));
  }
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const error = (data && data.error) || {};
    const code = error.code || (typeof data?.code === "string" ? data.code : `http_${response.status}`);
    throw new HallError(code, error.message || response.statusText, error);
  }
  return data;
}

/**
 * Clerk or supervisor log-in (POST /api/auth/login): resolves with {token, role, expires_at,
 * name}; throws HallError ("unauthenticated", "too_many_attempts" with retry_after_s, or
 * another code). `loginErrorText` says it in the page's language.
 */
export async function logIn(username, password) {
  try {
    return await api("/api/auth/login", { body: { username, password } });
  } catch (err) {
    if (err instanceof HallError && err.code === "http_429") {
      throw new HallError("too_many_attempts", err.message, { retry_after_s: 60 });
    }
    throw err;
  }
}

export function loginErrorText(error) {
  if (error instanceof HallError && error.code === "too_many_attempts") {
    return t("too_many_attempts", { n: Math.ceil(Number(error.details.retry_after_s || 60)) });
  }
  if (error instanceof HallError && (error.code === "unauthenticated"
      || error.code === "http_401")) {
    return t("login_failed");
  }
  return errorText(error);
}

/** The public catalog (departments, matters with materials, service points), fetched once. */
let catalogPromise = null;
export function loadCatalog() {
  if (!catalogPromise) catalogPromise = api("/api/catalog");
  return catalogPromise;
}

/** The shared files of a ticket, and uploads to it (docs/protocol.md, "Shared files"). */
export const files = {
  list(ticketId, token) {
    return api(`/api/tickets/${encodeURIComponent(ticketId)}/files`, { token })
      .then((data) => data.files);
  },
  async upload(ticketId, token, blob, filename, kind) {
    const form = new FormData();
    form.append("file", blob, filename);
    const query = kind ? `?kind=${encodeURIComponent(kind)}` : "";
    const data = await api(`/api/tickets/${encodeURIComponent(ticketId)}/files${query}`,
                           { token, body: form, method: "POST" });
    return data.file;
  },
  /** The file's bytes as a Blob (for a preview: URL.createObjectURL). */
  async blob(ticketId, fileId, token) {
    const response = await fetch(
      `/api/tickets/${encodeURIComponent(ticketId)}/files/${encodeURIComponent(fileId)}`,
      { headers: { Authorization: `Bearer ${token}` } });
    if (!response.ok) throw new HallError(`http_${response.status}`, response.statusText);
    return response.blob();
  },
};

/**
 * The session's text chat: a log (role="log", polite) and a form. `client` sends chat.send;
 * messages arrive as chat.message and are also in the session view (`session.chat`).
 * Returns {reset(session), element}.
 */
export function chatPanel(client, options) {
  const opts = options || {};
  // The live region is a wrapper: role="log" on the <ol> itself would strip its items of
  // their list meaning (axe "listitem").
  const list = h("ol", { class: "chat-log" });
  const log = h("div", { class: "chat-log-wrap", role: "log", "aria-live": "polite",
                         "aria-label": t("chat") }, list);
  const input = h("input", { type: "text", maxlength: "1000", class: "chat-input",
                             "aria-label": t("chat_placeholder"),
                             placeholder: t("chat_placeholder"), autocomplete: "off" });
  const form = h("form", { class: "chat-form" }, input,
                 h("button", { type: "submit", class: "btn" }, t("send")));
  const element = h("section", { class: "chat", "aria-label": t("chat") },
                    opts.heading === false ? null : h("h2", { class: "panel-title" }, t("chat")),
                    log, form);
  const seen = new Set();
  let sessionId = null;

  function add(message) {
    if (!message || seen.has(message.id)) return;
    seen.add(message.id);
    const mine = message.from_role === client.role;
    list.append(h("li", { class: mine ? "chat-mine" : "chat-theirs" },
                  h("span", { class: "chat-who" }, message.name || message.from_role),
                  h("span", { class: "chat-text" }, message.text),
                  h("time", { class: "chat-time" }, formatClock(message.at))));
    list.scrollTop = list.scrollHeight;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || !sessionId) return;
    try {
      const ack = await client.request("chat.send", { session_id: sessionId, text });
      input.value = "";
      add(ack.message);
    } catch (err) {
      showError(err);
    }
  });
  client.on("chat.message", ({ session_id: id, message }) => {
    if (id === sessionId) add(message);
  });

  return {
    element,
    reset(session) {
      sessionId = session ? session.id : null;
      seen.clear();
      list.replaceChildren();
      for (const message of (session && session.chat) || []) add(message);
    },
  };
}
