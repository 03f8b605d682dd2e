/*
 * The supervisor wallboard (/supervisor): log-in, then every queue, clerk, kiosk, session and
 * 办不成事 case of the hall live, from `wall.update` pushes (docs/protocol.md).
 *
 *   - Log-in: POST /api/auth/login; only a supervisor account is accepted here (a clerk's
 *     token is never used to connect: a clerk's connection would log the clerk in). The token
 *     lives in sessionStorage and is renewed with `auth.refresh` before it expires.
 *   - Board: supervisor-board.js (tiles, departments, alerts, kiosks, sessions), updated in
 *     place; supervisor-cases.js (cases); supervisor-monitor.js (silent monitoring).
 *   - One setInterval drives every clock, the case refresh (30 s) and the token renewal.
 *
 * For tests: `window.hallClient` (the HallClient) and `window.wallStats()`.
 */
import { HallClient } from "/static/js/hall-client.js";
import {
  t, loadCatalog, bindConnectionStatus, showError, nameOf, formatClock, logIn,
  loginErrorText,
} from "/static/js/ui.js";
import {
  Tiles, Departments, Kiosks, Sessions, Alerts, clock, clockOf, clockText, limitText, setText,
  setHidden,
} from "/static/js/supervisor-board.js";
import { Cases } from "/static/js/supervisor-cases.js";
import { MonitorPanel } from "/static/js/supervisor-monitor.js";

const AUTH_KEY = "hall.supervisor.auth";
const REFRESH_MARGIN_S = 120; // renew the token this long before it expires (at most a
// quarter of its lifetime: a short-lived token is renewed when three quarters have passed)
const CASES_EVERY_S = 30;

const el = {};
const state = {
  auth: null, // {token, expires_at, name, role}
  client: null,
  updates: 0,
  gotWall: false,
  refreshing: false,
  casesAt: 0,
  limit: null,
  clerkNames: new Map(),
};
let board = null; // {tiles, departments, kiosks, sessions, alerts, cases, monitor, matters}

// ------------------------------------------------------------------ the token

function readAuth() {
  try {
    const auth = JSON.parse(sessionStorage.getItem(AUTH_KEY) || "null");
    if (auth && auth.token && auth.role === "supervisor"
        && auth.expires_at > Date.now() / 1000 + 1) return auth;
  } catch (err) {
    // unreadable: log in again
  }
  sessionStorage.removeItem(AUTH_KEY);
  return null;
}

function saveAuth(auth) {
  state.auth = auth;
  sessionStorage.setItem(AUTH_KEY, JSON.stringify(auth));
}

function clearAuth() {
  state.auth = null;
  sessionStorage.removeItem(AUTH_KEY);
}

async function renewToken() {
  const client = state.client;
  const auth = state.auth;
  if (!client || !auth || !client.connected || state.refreshing) return;
  const lifetime = auth.expires_at - (auth.obtained_at || auth.expires_at - 4 * REFRESH_MARGIN_S);
  if (clock.now() < auth.expires_at - Math.min(REFRESH_MARGIN_S, lifetime / 4)) return;
  state.refreshing = true;
  try {
    const ack = await client.call("auth.refresh", {});
    if (ack.ok && state.auth === auth) {
      saveAuth({ ...auth, token: ack.token, expires_at: ack.expires_at,
                 obtained_at: clock.now() });
    }
  } catch (err) {
    // Not connected right now: the next tick tries again (the token is still valid).
  } finally {
    state.refreshing = false;
  }
}

// ------------------------------------------------------------------ log-in

function showLogin(message) {
  setHidden(el.board, true);
  setHidden(el.loginPanel, false);
  setHidden(el.logout, true);
  setHidden(el.whoami, true);
  setHidden(el.updated, true);
  setText(el.loginError, message || "");
  el.username.focus();
}

async function onLogin(event) {
  event.preventDefault();
  const username = el.username.value.trim();
  const password = el.password.value;
  if (!username || !password) {
    setText(el.loginError, t("login_missing"));
    (username ? el.password : el.username).focus();
    return;
  }
  setText(el.loginError, "");
  el.submit.disabled = true;
  try {
    let data;
    try {
      data = await logIn(username, password);
    } catch (err) {
      setText(el.loginError, loginErrorText(err));
      el.password.select();
      return;
    }
    if (data.role !== "supervisor") {
      // Never connect with it: a clerk's connection would put the clerk on duty.
      setText(el.loginError, t("not_supervisor"));
      el.password.value = "";
      el.username.select();
      return;
    }
    el.password.value = "";
    saveAuth({ token: data.token, expires_at: data.expires_at, obtained_at: Date.now() / 1000,
               name: data.name || username, role: data.role });
    start();
  } finally {
    el.submit.disabled = false;
  }
}

async function logout() {
  const client = state.client;
  if (board.monitor.sessionId) await board.monitor.leave();
  clearAuth();
  if (client) client.close();
  // A fresh page: nothing of this supervisor's board stays behind.
  window.location.reload();
}

function expired(message) {
  const client = state.client;
  state.client = null;
  window.hallClient = null;
  clearAuth();
  if (client) client.close();
  showLogin(message);
}

// ------------------------------------------------------------------ the connection

function start() {
  const auth = state.auth;
  setHidden(el.loginPanel, true);
  setHidden(el.board, false);
  setHidden(el.logout, false);
  setText(el.whoami, t("signed_in_as", { name: auth.name || "" }));
  setHidden(el.whoami, false);
  const client = new HallClient({
    credentials: () => ({ token: state.auth ? state.auth.token : "" }),
    withMedia: false,
  });
  state.client = client;
  window.hallClient = client;
  bindConnectionStatus(client);
  let wasOnline = false;
  client.on("link", ({ state: link }) => {
    if (link === "online") wasOnline = true;
    setHidden(el.stale, !wasOnline || link === "online" || link === "connecting");
  });
  client.on("welcome", (welcome) => onWelcome(client, welcome));
  client.on("wall.update", (payload) => {
    if (payload && payload.wall) onWall(payload.wall);
  });
  client.on("case.escalated", (payload) => {
    const c = payload && payload.case;
    if (!c) return;
    board.alerts.raise({ kind: "case_escalated", case_id: c.id, deadline: c.deadline,
                         number: c.number, matter_id: c.matter_id }, clock.now());
    board.cases.refresh(false);
  });
  client.on("connect_failed", ({ code }) => {
    if (state.client === client && (code === "unauthenticated" || code === "forbidden")) {
      expired(t("session_expired"));
    }
  });
  board.monitor.attach(client);
  board.cases.attach(client);
  document.getElementById("main").focus({ preventScroll: true });
  client.connect().catch((err) => {
    if (state.client !== client) return;
    if (err && (err.code === "unauthenticated" || err.code === "forbidden")) {
      expired(t("session_expired"));
    } else {
      showError(err);
    }
  });
}

async function onWelcome(client, welcome) {
  if (welcome.role !== "supervisor") {
    expired(t("not_supervisor"));
    return;
  }
  if (welcome.name) setText(el.whoami, t("signed_in_as", { name: welcome.name }));
  // A wall.update follows every welcome; the snapshot is the fallback if none came yet.
  if (!state.gotWall) {
    try {
      const ack = await client.call("wall.snapshot", {});
      if (ack.ok && ack.snapshot && !state.gotWall && state.client === client) {
        onWall(ack.snapshot);
      }
    } catch (err) {
      // Disconnected again meanwhile: the next welcome brings the wall.
    }
  }
  state.casesAt = clock.now();
  board.cases.refresh(false);
}

/** A wall with every list present (an empty list rather than a missing one). */
function normalize(wall) {
  const w = { ...wall };
  if (typeof w.at !== "number") w.at = Date.now() / 1000;
  for (const key of ["departments", "matters", "clerks", "kiosks", "sessions", "alerts"]) {
    if (!Array.isArray(w[key])) w[key] = [];
  }
  return w;
}

function onWall(raw) {
  const wall = normalize(raw);
  state.updates += 1;
  state.gotWall = true;
  state.limit = wall.wait_alert_s || null;
  clock.sync(wall.at);
  state.clerkNames.clear();
  for (const c of wall.clerks) state.clerkNames.set(c.id, c.name || c.id);
  board.tiles.update(wall);
  board.departments.update(wall);
  board.kiosks.update(wall);
  board.sessions.update(wall);
  board.alerts.update(wall.alerts, wall.at);
  board.cases.setClerks(wall.clerks);
  setText(el.updated, t("updated_at", { time: clockOf(wall.at) }));
  setHidden(el.updated, false);
  setHidden(el.waiting, true);
}

// ------------------------------------------------------------------ alert texts

function describe(alert) {
  switch (alert.kind) {
    case "oldest_wait":
      return t("alert_oldest_wait", { matter: nameOf(board.matters.get(alert.matter_id)),
                                      wait: clockText(alert.wait_s),
                                      limit: limitText(state.limit) });
    case "kiosk_offline":
      return t("alert_kiosk_offline", {
        kiosk: board.kiosks.name(alert.kiosk_id),
        time: alert.since ? formatClock(alert.since) : t("unknown"),
      });
    case "kiosk_health":
      return t("alert_kiosk_health", {
        kiosk: board.kiosks.name(alert.kiosk_id),
        devices: (alert.failed || []).map((d) => t(`device_${d}`)).join("、"),
      });
    case "wrapup_overdue":
      return t("alert_wrapup_overdue", {
        clerk: state.clerkNames.get(alert.clerk_id) || alert.clerk_id,
      });
    case "case_escalated":
      return t("alert_case_escalated", { number: alert.number || alert.case_id,
                                         matter: nameOf(board.matters.get(alert.matter_id)) });
    default:
      return alert.kind;
  }
}

// ------------------------------------------------------------------ the one ticker

function tick() {
  const now = clock.now();
  board.tiles.tick(now);
  board.departments.tick(now);
  board.sessions.tick(now);
  board.monitor.tick(now);
  board.alerts.tick(now);
  if (state.client && state.client.connected) {
    if (now - state.casesAt >= CASES_EVERY_S) {
      state.casesAt = now;
      board.cases.refresh(false);
    }
    renewToken();
  }
}

// ------------------------------------------------------------------ start-up

async function main() {
  for (const [key, id] of Object.entries({
    loginPanel: "login-panel", form: "login-form", username: "login-username",
    password: "login-password", submit: "login-submit", loginError: "login-error",
    board: "wall", stale: "board-stale", waiting: "board-waiting", updated: "board-updated",
    whoami: "whoami", logout: "logout",
  })) el[key] = document.getElementById(id);
  el.form.addEventListener("submit", onLogin);
  el.logout.addEventListener("click", () => logout());

  let catalog;
  try {
    catalog = await loadCatalog();
  } catch (err) {
    showError(err);
    catalog = { departments: [], matters: [], streets: [], service_points: [] };
  }
  const kiosks = new Kiosks(document.getElementById("kiosk-grid"), catalog);
  const sessions = new Sessions(catalog, (session) => board.monitor.open(session),
                                (id) => kiosks.name(id));
  board = {
    matters: new Map((catalog.matters || []).map((m) => [m.id, m])),
    tiles: new Tiles(),
    departments: new Departments(document.getElementById("dept-table"), catalog),
    kiosks,
    sessions,
    alerts: new Alerts(describe),
    cases: new Cases(catalog),
    monitor: new MonitorPanel(sessions),
  };
  window.wallStats = () => ({
    updates: state.updates,
    domNodes: document.getElementsByTagName("*").length,
    alerts: board.alerts.size,
  });
  setInterval(tick, 1000);

  state.auth = readAuth();
  if (state.auth) start();
  else showLogin("");
}

main();
