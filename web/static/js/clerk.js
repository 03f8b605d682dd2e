/*
 * The clerk console (/clerk): log in, the clerk's state (available / break / ...), the queues
 * of their matters, offers (accept / decline with a live countdown), the session (media, files,
 * pre-review checklist, chat, notes, transfer: clerk-session.js) and wrap-up (clerk-wrapup.js).
 *
 * Protocol: docs/protocol.md. The hall token lives in sessionStorage only (this tab), is
 * renewed with `auth.refresh` before it expires, and a reload reconnects with it: the welcome
 * carries the clerk's ticket and session; the clerk's own state comes with `clerk.state`
 * (or `welcome.clerk`), and the last one seen is kept in sessionStorage for a reload.
 *
 * For tests and the lead's cross-page test: `window.hallClient` is the HallClient;
 * `window.clerkConsole.snapshot()` returns what the console believes.
 */
import { HallClient, HallError } from "/static/js/hall-client.js";
import {
  $, announce, bindConnectionStatus, errorText, fill, formatDuration, h, loadCatalog, logIn,
  loginErrorText, nameOf, showError, t, toast,
} from "/static/js/ui.js";
import { callbackText, matterName, store, ticketTags } from "/static/js/clerk-common.js";
import { SessionDesk } from "/static/js/clerk-session.js";
import { WrapupDesk } from "/static/js/clerk-wrapup.js";

const REFRESH_LEAD_S = 120; // renew the hall token this long before it expires
const TICK_MS = 500;
const HELD_STATES = new Set(["offered", "in_session", "wrap_up"]);

const el = {
  loginView: $("#login-view"),
  loginForm: $("#login-form"),
  username: $("#login-username"),
  password: $("#login-password"),
  loginError: $("#login-error"),
  loginSubmit: $("#login-submit"),
  console: $("#console"),
  name: $("#clerk-name"),
  state: $("#clerk-state"),
  pendingBreak: $("#pending-break"),
  available: $("#btn-available"),
  breakButton: $("#btn-break"),
  logout: $("#btn-logout"),
  banner: $("#console-banner"),
  queueRows: $("#queue-rows"),
  queuesEmpty: $("#queues-empty"),
  idleView: $("#idle-view"),
  idleHeading: $("#idle-heading"),
  idleHint: $("#idle-hint"),
  offerNotice: $("#offer-notice"),
  offerCard: $("#offer-card"),
  offerNumber: $("#offer-number"),
  offerMatter: $("#offer-matter"),
  offerTags: $("#offer-tags"),
  offerWaited: $("#offer-waited"),
  offerTransfers: $("#offer-transfers"),
  offerCallback: $("#offer-callback"),
  offerCountdown: $("#offer-countdown"),
  offerBar: $("#offer-bar"),
  accept: $("#offer-accept"),
  decline: $("#offer-decline"),
  sessionView: $("#session-view"),
  sessionSide: $("#session-side"),
  wrapupView: $("#wrapup-view"),
  breakDialog: $("#break-dialog"),
  breakForm: $("#break-form"),
  breakReason: $("#break-reason"),
  breakText: $("#break-text"),
  breakTextLabel: $("#break-text-label"),
  breakError: $("#break-error"),
  breakCancel: $("#break-cancel"),
  confirmDialog: $("#confirm-dialog"),
  confirmText: $("#confirm-text"),
  confirmOk: $("#confirm-ok"),
  confirmCancel: $("#confirm-cancel"),
};

// ---------------------------------------------------------------------------- state

let auth = null; // {token, expires_at, name, username}
let client = null;
let me = null; // the clerk's id (from the welcome's participant)
let clerk = null; // the latest clerk object (docs/protocol.md "Objects")
let ticket = null; // the ticket offered to / held by the clerk
let offer = null; // the offer.new payload + local timing
let session = null; // the session view while in session
let queues = [];
let queuesAt = 0; // performance.now() of the last queues.update
let queuesSeen = false;
let clock = { offset: 0, known: false }; // server time - local time, seconds
let refreshTimer = null;
let tickTimer = null;
let view = null;
let transferred = null; // ticket id handed over by a transfer (wrap-up needs no outcome)
let withdrawnNotice = null;
let chimes = 0;

function serverNow() {
  return Date.now() / 1000 + clock.offset;
}

// ---------------------------------------------------------------------------- sound

let audio = null;

/** Create / resume the AudioContext inside a user gesture so later chimes can play. */
function unlockAudio() {
  try {
    if (!audio) audio = new AudioContext();
    if (audio.state === "suspended") audio.resume().catch(() => {});
  } catch (err) {
    audio = null;
  }
}

/** A short two-tone chime (WebAudio; nothing to download). */
function chime() {
  chimes += 1;
  try {
    unlockAudio();
    if (!audio) return;
    const start = audio.currentTime + 0.02;
    [[880, 0], [1320, 0.18]].forEach(([frequency, offset]) => {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = "sine";
      osc.frequency.value = frequency;
      gain.gain.setValueAtTime(0.0001, start + offset);
      gain.gain.exponentialRampToValueAtTime(0.25, start + offset + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, start + offset + 0.3);
      osc.connect(gain).connect(audio.destination);
      osc.start(start + offset);
      osc.stop(start + offset + 0.32);
    });
  } catch (err) {
    /* no audio output: the card and the announcement still tell */
  }
}

// ---------------------------------------------------------------------------- dialogs

/** A modal yes/no question; resolves true for OK. Focus starts on Cancel. */
function confirmDialog(text, okLabel) {
  const dialog = el.confirmDialog;
  el.confirmText.textContent = text;
  el.confirmOk.textContent = okLabel || t("confirm");
  return new Promise((resolve) => {
    const finish = (answer) => {
      el.confirmOk.removeEventListener("click", onOk);
      el.confirmCancel.removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const onOk = () => finish(true);
    const onCancel = (event) => {
      if (event) event.preventDefault();
      finish(false);
    };
    el.confirmOk.addEventListener("click", onOk);
    el.confirmCancel.addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    el.confirmCancel.focus();
  });
}

// ---------------------------------------------------------------------------- desks

const ctx = {
  get client() { return client; },
  get catalog() { return catalog; },
  get me() { return me; },
  token: () => (auth ? auth.token : null),
  serverNow,
  confirm: confirmDialog,
  onClerk: (c) => applyClerk(c),
  onTicket: (tk) => onTicket(tk),
  currentTicket: () => ticket,
};

let catalog = null;
const sessionDesk = new SessionDesk(ctx);
const wrapupDesk = new WrapupDesk(ctx);

// ---------------------------------------------------------------------------- login

function showLogin(message) {
  el.console.hidden = true;
  el.loginView.hidden = false;
  el.loginError.textContent = message || "";
  el.loginSubmit.disabled = false;
  (el.username.value ? el.password : el.username).focus();
}

function loginFailed(text) {
  el.loginError.textContent = text;
  el.password.select();
  el.password.focus();
}

el.loginForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  unlockAudio();
  const username = el.username.value.trim();
  const password = el.password.value;
  if (!username || !password) {
    loginFailed(t("login_missing"));
    if (!username) el.username.focus();
    return;
  }
  el.loginSubmit.disabled = true;
  el.loginError.textContent = "";
  try {
    let data;
    try {
      data = await logIn(username, password);
    } catch (err) {
      loginFailed(loginErrorText(err));
      return;
    }
    if (data.role !== "clerk") {
      loginFailed(t("not_clerk"));
      return;
    }
    el.password.value = "";
    auth = { token: data.token, expires_at: data.expires_at, name: data.name || username,
             username };
    store.set("auth", auth);
    await startConsole();
  } finally {
    el.loginSubmit.disabled = false;
  }
});

// ---------------------------------------------------------------------------- token renewal

function scheduleRefresh(delayS) {
  clearTimeout(refreshTimer);
  if (!auth) return;
  let delay = delayS;
  if (delay === undefined) {
    const remaining = auth.expires_at - Date.now() / 1000;
    delay = Math.max(1, remaining - Math.min(REFRESH_LEAD_S, remaining / 3));
  }
  refreshTimer = setTimeout(refreshToken, delay * 1000);
}

async function refreshToken() {
  if (!auth || !client) return;
  if (!client.connected) {
    scheduleRefresh(5);
    return;
  }
  const ack = await client.call("auth.refresh", {});
  if (!auth) return;
  if (ack && ack.ok) {
    auth = Object.assign({}, auth, { token: ack.token, expires_at: ack.expires_at });
    store.set("auth", auth);
    scheduleRefresh();
  } else {
    scheduleRefresh(Math.max(1, Math.min(10, (auth.expires_at - Date.now() / 1000) / 2)));
  }
}

// ---------------------------------------------------------------------------- console

async function startConsole() {
  el.loginView.hidden = true;
  el.console.hidden = false;
  el.name.textContent = auth.name || auth.username;
  el.banner.hidden = true;
  clerk = null;
  ticket = null;
  offer = null;
  session = null;
  queues = [];
  queuesSeen = false;
  view = null;
  const saved = store.get("state");
  if (saved && saved.clock) clock = saved.clock;
  transferred = saved ? saved.transferred || null : null;
  render();
  renderQueues();
  try {
    catalog = await loadCatalog();
  } catch (err) {
    catalog = null; // names fall back to ids; transfer by matter needs it
  }
  const hall = new HallClient({
    credentials: () => ({ token: auth ? auth.token : "" }),
    localVideo: $("#local-video"),
    remoteVideo: $("#remote-video"),
    remoteScreen: $("#remote-screen"),
  });
  client = hall;
  window.hallClient = hall;
  bindConnectionStatus(hall);
  wire(hall);
  sessionDesk.attach(hall);
  scheduleRefresh();
  clearInterval(tickTimer);
  tickTimer = setInterval(tick, TICK_MS);
  try {
    await hall.connect();
  } catch (err) {
    if (client !== hall) return;
    if (err instanceof HallError && (err.code === "unauthenticated" || err.code === "forbidden")) {
      endConsole(t("session_expired"));
    } else if (err instanceof HallError && err.code === "too_many_attempts") {
      endConsole(t("too_many_attempts", { n: Math.ceil(err.details.retry_after_s || 60) }));
    } else {
      showBanner(errorText(err));
    }
  }
}

/** Back to the login form: close the connection and forget this tab's state. */
function endConsole(message) {
  clearTimeout(refreshTimer);
  clearInterval(tickTimer);
  const old = client;
  client = null;
  window.hallClient = null;
  if (old) old.close();
  const badge = document.getElementById("conn-status");
  if (badge) badge.hidden = true; // no connection is expected on the login form
  auth = null;
  me = null;
  clerk = null;
  ticket = null;
  offer = null;
  session = null;
  transferred = null;
  queues = [];
  store.clear();
  sessionDesk.reset();
  wrapupDesk.reset();
  showLogin(message);
}

function showBanner(text) {
  el.banner.textContent = text;
  el.banner.hidden = !text;
}

function wire(hall) {
  const mine = (fn) => (payload) => {
    if (client === hall) fn(payload || {});
  };
  hall.on("welcome", mine(onWelcome));
  hall.on("clerk.state", mine(({ clerk: c }) => applyClerk(c)));
  hall.on("queues.update", mine(({ queues: list }) => {
    queues = Array.isArray(list) ? list : [];
    queuesAt = performance.now();
    queuesSeen = true;
    renderQueues();
  }));
  hall.on("offer.new", mine(onOffer));
  hall.on("offer.withdrawn", mine(onWithdrawn));
  hall.on("ticket.update", mine(({ ticket: tk }) => onTicket(tk)));
  hall.on("session.started", mine(({ session: s }) => onSessionStarted(s)));
  hall.on("session.ended", mine(onSessionEnded));
  hall.on("wrapup.overdue", mine(() => {
    if (clerk) clerk = Object.assign({}, clerk, { wrapup_overdue: true });
    wrapupDesk.setOverdue(true);
    announce(t("wrapup_overdue"));
  }));
  hall.on("link", mine(({ state }) => {
    if (state === "replaced") showBanner(t("replaced_banner"));
    else if (state === "online") showBanner("");
  }));
  hall.on("connect_failed", mine(({ code }) => {
    if (code === "unauthenticated" || code === "forbidden") endConsole(t("session_expired"));
  }));
}

function saveState() {
  store.set("state", { clerk, clock, transferred });
}

// ---------------------------------------------------------------------------- server events

function onWelcome(welcome) {
  showBanner("");
  me = String(welcome.participant || "").replace(/^clerk:/, "") || (auth && auth.username);
  if (welcome.name) el.name.textContent = welcome.name;
  if (welcome.resumed) return; // the replay that follows brings what was missed
  const saved = store.get("state") || {};
  ticket = welcome.ticket || null;
  clerk = welcome.clerk || deriveClerk(ticket, saved.clerk || null);
  offer = null;
  if (ticket && ticket.state === "offered" && ticket.clerk_id === me) {
    // Reloaded during an offer: its countdown is not in the welcome, accept/decline still are.
    offer = {
      ticket_id: ticket.id, number: ticket.number, matter_id: ticket.matter_id,
      kind: ticket.kind, priority: ticket.priority, callback: ticket.callback,
      transfers: ticket.transfers, wait_s: Math.max(0, serverNow() - ticket.joined_at),
      arrivedAt: performance.now(), localDeadline: null,
    };
  }
  if (welcome.session) {
    onSessionStarted(welcome.session);
  } else if (session) {
    sessionDesk.close();
    session = null;
  }
  saveState();
  render();
}

/** The clerk's state after a reload when the welcome does not carry it: from the ticket the
 * hall says they hold, else what this tab saw last (a break survives a reload). */
function deriveClerk(tk, saved) {
  const base = {
    id: me, name: auth ? auth.name : "", state: "available", break_reason: null,
    ticket_id: null, missed_in_row: 0, wrapup_deadline: null, wrapup_overdue: false,
    pending_break: saved ? saved.pending_break || null : null,
  };
  if (tk) {
    const same = saved && saved.ticket_id === tk.id ? saved : {};
    if (tk.clerk_id === me && HELD_STATES.has(tk.state)) {
      return Object.assign(base, same, { state: tk.state, ticket_id: tk.id });
    }
    // The ticket moved on (a transfer) while the clerk still wraps up their part of it.
    transferred = tk.id;
    return Object.assign(base, same, { state: "wrap_up", ticket_id: tk.id });
  }
  if (saved && saved.state === "on_break") {
    return Object.assign(base, { state: "on_break", break_reason: saved.break_reason });
  }
  base.pending_break = null;
  return base;
}

function applyClerk(c) {
  if (!c) return;
  clerk = c;
  if (!c.ticket_id) {
    offer = null;
    ticket = null;
    transferred = null;
  } else if (offer && offer.ticket_id !== c.ticket_id) {
    offer = null;
  }
  if (c.state !== "wrap_up") wrapupDesk.setOverdue(false);
  saveState();
  render();
}

function onOffer(payload) {
  const now = performance.now();
  // The deadline is in server time: learn the offset from timeout_s rather than trusting the
  // local clock. offset = server - local - latency, so the largest sample is the best one.
  const sample = payload.deadline - payload.timeout_s - Date.now() / 1000;
  if (!clock.known || sample > clock.offset || Math.abs(sample - clock.offset) > 60) {
    clock = { offset: sample, known: true };
  }
  const remaining = Math.max(0, Math.min(payload.timeout_s, payload.deadline - serverNow()));
  offer = Object.assign({}, payload, { arrivedAt: now, localDeadline: now + remaining * 1000 });
  const base = ticket && ticket.id === payload.ticket_id ? ticket : {};
  ticket = Object.assign({}, base, {
    id: payload.ticket_id, number: payload.number, matter_id: payload.matter_id,
    kind: payload.kind, priority: payload.priority, callback: payload.callback,
    transfers: payload.transfers, state: "offered", clerk_id: me,
  });
  if (!clerk || clerk.state !== "offered") {
    clerk = Object.assign({}, clerk || {}, { state: "offered", ticket_id: payload.ticket_id });
  }
  withdrawnNotice = null;
  saveState();
  render();
  chime();
  announce(t("offer_announce", { number: payload.number,
                                 matter: matterName(catalog, payload.matter_id) }));
  const active = document.activeElement;
  const typing = active && (active.matches("input, textarea, select, [contenteditable]")
    || active.closest("dialog"));
  if (!typing) el.offerCard.focus();
}

function onWithdrawn({ ticket_id: ticketId, reason }) {
  const number = offer && offer.ticket_id === ticketId ? offer.number
    : (ticket && ticket.id === ticketId ? ticket.number : "");
  if (offer && offer.ticket_id === ticketId) offer = null;
  if (ticket && ticket.id === ticketId && ticket.state === "offered") ticket = null;
  if (reason !== "declined") {
    withdrawnNotice = t("offer_withdrawn", { number, reason: t(`withdrawn_${reason}`) });
    announce(withdrawnNotice);
  }
  if (clerk && clerk.state === "offered" && clerk.ticket_id === ticketId) {
    clerk = Object.assign({}, clerk, { state: "available", ticket_id: null });
  }
  render();
}

function onTicket(tk) {
  if (!tk) return;
  const held = (ticket && ticket.id === tk.id) || (clerk && clerk.ticket_id === tk.id);
  if (!held) return;
  ticket = Object.assign({}, ticket || {}, tk);
  if (tk.state === "transferred" || (tk.clerk_id && tk.clerk_id !== me
      && clerk && clerk.ticket_id === tk.id)) {
    transferred = tk.id;
    saveState();
  }
  sessionDesk.updateTicket(ticket);
  render();
}

function onSessionStarted(s) {
  if (!s) return;
  session = s;
  if (!ticket || ticket.id !== s.ticket_id) {
    ticket = Object.assign({}, ticket && ticket.id === s.ticket_id ? ticket : {}, {
      id: s.ticket_id, matter_id: s.matter_id,
    });
  }
  offer = null;
  if (clerk && clerk.state === "offered") {
    clerk = Object.assign({}, clerk, { state: "in_session", ticket_id: s.ticket_id });
  }
  sessionDesk.open(s, ticket);
  render();
}

function onSessionEnded({ session_id: sessionId, reason }) {
  if (!session || session.id !== sessionId) return;
  session = null;
  if (reason === "transfer") {
    transferred = sessionId;
    saveState();
  }
  sessionDesk.close(reason);
  if (reason === "resident" || reason === "resident_lost") {
    const text = t(`ended_${reason}`);
    announce(text);
    toast(text);
  }
  render();
}

// ---------------------------------------------------------------------------- actions

el.offerCard.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && event.target === el.offerCard && !event.repeat) {
    event.preventDefault();
    acceptOffer();
  }
});
el.accept.addEventListener("click", () => acceptOffer());
el.decline.addEventListener("click", () => declineOffer());

async function acceptOffer() {
  const current = offer;
  if (!client || !current || el.accept.disabled) return;
  el.accept.disabled = true;
  el.decline.disabled = true;
  try {
    const ack = await client.request("offer.accept", { ticket_id: current.ticket_id });
    ticket = Object.assign({}, ticket || {}, ack.ticket);
    clerk = Object.assign({}, clerk || {}, { state: "in_session", ticket_id: ack.ticket.id });
    onSessionStarted(ack.session);
  } catch (err) {
    showError(err);
    // The offer is over (invalid_state), or the ticket is no longer this clerk's at all
    // (not_found: e.g. the resident left and the offer was withdrawn meanwhile).
    if (err instanceof HallError && ["invalid_state", "not_found", "forbidden"].includes(err.code)) {
      if (offer === current) offer = null;
      render();
    }
  } finally {
    el.accept.disabled = false;
    el.decline.disabled = false;
  }
}

async function declineOffer() {
  const current = offer;
  if (!client || !current || el.decline.disabled) return;
  el.accept.disabled = true;
  el.decline.disabled = true;
  try {
    await client.request("offer.decline", { ticket_id: current.ticket_id });
    if (offer === current) offer = null;
    announce(t("offer_declined", { number: current.number }));
    render();
  } catch (err) {
    showError(err);
  } finally {
    el.accept.disabled = false;
    el.decline.disabled = false;
  }
}

el.available.addEventListener("click", async () => {
  if (!client) return;
  try {
    const ack = await client.request("clerk.available", {});
    applyClerk(ack.clerk);
    announce(t(`state_${ack.clerk.state}`));
  } catch (err) {
    showError(err);
  }
});

el.breakButton.addEventListener("click", () => {
  el.breakError.textContent = "";
  el.breakText.value = "";
  el.breakReason.value = "rest";
  syncBreakForm();
  el.breakDialog.showModal();
  el.breakReason.focus();
});
el.breakReason.addEventListener("change", syncBreakForm);
el.breakCancel.addEventListener("click", () => el.breakDialog.close());

function syncBreakForm() {
  const other = el.breakReason.value === "other";
  el.breakTextLabel.textContent = other ? t("break_text_required") : t("break_text");
  el.breakText.required = other;
  el.breakText.setAttribute("aria-required", other ? "true" : "false");
}

el.breakForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!client) return;
  const choice = el.breakReason.value;
  const label = el.breakReason.selectedOptions[0].textContent.trim();
  const detail = el.breakText.value.trim();
  if (choice === "other" && !detail) {
    el.breakError.textContent = t("break_text_missing");
    el.breakText.focus();
    return;
  }
  const reason = (choice === "other" ? detail
    : (detail ? t("break_reason_detail", { label, detail }) : label)).slice(0, 100);
  try {
    const ack = await client.request("clerk.break", { reason });
    el.breakDialog.close();
    applyClerk(ack.clerk);
    announce(ack.clerk.pending_break ? t("break_pending", { reason })
      : t("state_on_break_reason", { reason }));
  } catch (err) {
    el.breakError.textContent = errorText(err);
  }
});

el.logout.addEventListener("click", async () => {
  if (!client) {
    endConsole();
    return;
  }
  try {
    await client.request("clerk.logout", {});
  } catch (err) {
    if (!(err instanceof HallError && err.code === "timeout") && client && client.connected) {
      showError(err);
      return;
    }
  }
  endConsole();
  toast(t("logged_out"));
});

// ---------------------------------------------------------------------------- rendering

function viewFor(state) {
  if (state === "offered") return "offer";
  if (state === "in_session") return "session";
  if (state === "wrap_up") return "wrapup";
  return "idle";
}

function render() {
  const state = clerk ? clerk.state : "connecting";
  renderStatus(state);
  const next = clerk ? viewFor(state) : "idle";
  el.console.dataset.view = next;
  el.idleView.hidden = next !== "idle";
  el.offerCard.hidden = next !== "offer";
  el.sessionView.hidden = next !== "session";
  el.sessionSide.hidden = next !== "session";
  el.wrapupView.hidden = next !== "wrapup";
  if (next === "idle") renderIdle(state);
  if (next === "offer") renderOffer();
  if (next === "wrapup") {
    wrapupDesk.show({ clerk, ticket, transferred: !!transferred && clerk.ticket_id === transferred });
  }
  if (next !== view) {
    const previous = view;
    view = next;
    if (previous !== null) moveFocus(next);
  }
  tick();
}

function moveFocus(next) {
  const active = document.activeElement;
  const lost = !active || active === document.body || active.closest("[hidden]");
  if (next === "offer") return; // onOffer focuses the card unless the clerk is typing
  if (!lost) return;
  const target = next === "session" ? $("#session-heading")
    : next === "wrapup" ? $("#wrapup-heading") : el.idleHeading;
  target.setAttribute("tabindex", "-1");
  target.focus();
}

function renderStatus(state) {
  el.state.dataset.state = state;
  let text = t(`state_${state}`);
  if (state === "on_break" && clerk && clerk.break_reason) {
    text = t("state_on_break_reason", { reason: breakReasonText(clerk.break_reason) });
  }
  el.state.textContent = text;
  const pending = clerk && clerk.pending_break;
  el.pendingBreak.hidden = !pending;
  el.pendingBreak.textContent = pending ? t("break_pending", { reason: pending }) : "";
  el.available.disabled = !client || !(state === "on_break" || pending);
  el.available.textContent = pending && state !== "on_break" ? t("cancel_pending_break")
    : t("go_available");
  el.breakButton.disabled = !client || !["available", "offered", "in_session", "wrap_up"]
    .includes(state) || !!pending;
  el.logout.disabled = !!clerk && HELD_STATES.has(state);
  el.logout.title = el.logout.disabled ? t("logout_blocked") : "";
}

function breakReasonText(reason) {
  return reason === "missed_offers" ? t("break_missed_offers") : reason;
}

function renderIdle(state) {
  if (state === "on_break") {
    el.idleHeading.textContent = t("idle_break_heading");
    el.idleHint.textContent = t("idle_break_hint");
  } else if (state === "connecting") {
    el.idleHeading.textContent = t("idle_connecting");
    el.idleHint.textContent = "";
  } else {
    el.idleHeading.textContent = t("idle_heading");
    el.idleHint.textContent = t("idle_hint");
  }
  el.offerNotice.hidden = !withdrawnNotice;
  el.offerNotice.textContent = withdrawnNotice || "";
}

function renderOffer() {
  const o = offer || (ticket && ticket.state === "offered" ? ticket : null);
  if (!o) {
    el.offerNumber.textContent = "";
    el.offerMatter.textContent = t("offer_arriving");
    fill(el.offerTags);
    return;
  }
  el.offerNumber.textContent = o.number || "";
  el.offerMatter.textContent = matterName(catalog, o.matter_id);
  fill(el.offerTags, ticketTags(o));
  el.offerTransfers.textContent = String(o.transfers || 0);
  const callback = callbackText(o);
  el.offerCallback.hidden = !callback;
  el.offerCallback.textContent = callback;
  el.offerCard.dataset.ticketId = o.ticket_id || o.id || "";
}

function renderQueues() {
  const rows = [...queues].sort((a, b) => Number(!!b.primary) - Number(!!a.primary));
  fill(el.queueRows, rows.map((q) => h("tr", {
    class: q.waiting > 0 ? "queue-row has-waiting" : "queue-row",
    dataset: { matterId: q.matter_id },
  },
  h("th", { scope: "row", class: "queue-matter" },
    h("span", { class: "queue-name" }, nameOf(q)),
    h("span", { class: `skill skill-${q.primary ? "primary" : "secondary"}`,
                title: t(q.primary ? "skill_primary_long" : "skill_secondary_long") },
      t(q.primary ? "skill_primary" : "skill_secondary"))),
  h("td", { class: "num", dataset: { col: "waiting" } }, String(q.waiting ?? 0)),
  h("td", { class: "num", dataset: { col: "oldest" } }, oldestText(q)),
  h("td", { class: "num col-duty", dataset: { col: "on-duty" } }, String(q.on_duty ?? 0)))));
  el.queuesEmpty.hidden = rows.length > 0;
  el.queuesEmpty.textContent = queuesSeen ? t("queues_none") : t("queues_loading");
}

function oldestText(q) {
  if (!q.waiting || q.oldest_wait_s === null || q.oldest_wait_s === undefined) return t("unknown");
  return formatDuration(q.oldest_wait_s + (performance.now() - queuesAt) / 1000);
}

function tick() {
  // Queue waits tick locally from the last push.
  const cells = el.queueRows.querySelectorAll("tr");
  const byId = new Map(queues.map((q) => [q.matter_id, q]));
  cells.forEach((row) => {
    const q = byId.get(row.dataset.matterId);
    const cell = row.querySelector('[data-col="oldest"]');
    if (q && cell) cell.textContent = oldestText(q);
  });
  if (offer && !el.offerCard.hidden) {
    const now = performance.now();
    el.offerWaited.textContent = formatDuration((offer.wait_s || 0) + (now - offer.arrivedAt) / 1000);
    if (offer.localDeadline) {
      const left = Math.max(0, (offer.localDeadline - now) / 1000);
      const total = Math.max(1, offer.timeout_s || 1);
      el.offerCountdown.textContent = t("seconds", { n: Math.ceil(left) });
      el.offerBar.style.width = `${Math.min(100, (left / total) * 100)}%`;
      el.offerCard.classList.toggle("urgent", left <= 5);
    } else {
      el.offerCountdown.textContent = t("unknown");
      el.offerBar.style.width = "0%";
    }
  }
  sessionDesk.tick();
  wrapupDesk.tick();
}

// ---------------------------------------------------------------------------- start

window.clerkConsole = {
  snapshot: () => ({ clerk, ticket, offer, session: session ? session.id : null, view,
                     queues, clock, transferred, chimes }),
};

// After a reload the page has had no click yet: the first one lets the chime play again.
document.addEventListener("pointerdown", unlockAudio, { once: true });
document.addEventListener("keydown", unlockAudio, { once: true });

(function boot() {
  const saved = store.get("auth");
  if (saved && saved.token && saved.expires_at > Date.now() / 1000 + 5) {
    auth = saved;
    startConsole();
  } else {
    store.clear();
    showLogin("");
  }
})();
