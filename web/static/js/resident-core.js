/*
 * What the two resident faces share (/app in 随申办 and /kiosk/<point>): the ticket's life
 * (take, position, "you are next", leave, callback), the session (call view state, checklist,
 * files, reconnecting), and what comes after (pre-review result, rating, 办不成事 report).
 *
 *   const flow = new ResidentFlow({ client, token: () => bearer });
 *   flow.subscribe((what) => render());   // "state", "position", "next", "files", ...
 *   await flow.take({ matter_id, kind, priority, when_unstaffed, callback_contact });
 *
 * The pages own their DOM; the builders below (checklist, files, result, rating, case form,
 * confirmation dialog, call controls) make the parts both pages show, sized by their CSS.
 * Every visible string comes from the page's strings (t()).
 */
import { HallError } from "/static/js/hall-client.js";
import {
  $, announce, errorText, files as fileApi, formatClock, h, nameOf, showError, t, toast,
} from "/static/js/ui.js";

/** Ticket states that are in a queue (waiting for a clerk). */
export const QUEUED = new Set(["waiting", "transferred", "offered"]);
/** Ticket states after which the resident sees the "after the call" screen. */
export const SERVED = new Set(["in_session", "wrap_up", "done"]);
/** Refusals of ticket.take that the pages explain with a choice or a specific text. */
export const TAKE_REFUSALS = new Set(["out_of_hours", "queue_full", "no_clerk_on_duty",
  "matter_not_served", "ticket_active"]);

/**
 * The resident's side of the hall: one ticket at a time, its session and its aftermath.
 * Listeners get a word saying what changed: "state" (phase may have changed), "position",
 * "next", "session", "peer", "prereview", "result", "files", "case", "ended", "welcome".
 */
export class ResidentFlow {
  /**
   * @param {object} options
   * @param {import("/static/js/hall-client.js").HallClient} options.client
   * @param {function(): string} options.token   the bearer for the file routes
   * @param {Storage} [options.storage]  keeps the aftermath (result, rating) over a reload
   */
  constructor(options) {
    this.client = options.client;
    this.token = options.token;
    this.storage = options.storage || null;
    this.listeners = new Set();
    this.forgotten = loadForgotten();
    this._reset();
    this._restore();
    const c = this.client;
    c.on("welcome", (w) => this._onWelcome(w));
    c.on("ticket.update", ({ ticket }) => this._onTicket(ticket));
    c.on("ticket.position", (p) => this._onPosition(p));
    c.on("ticket.next", ({ ticket_id: id }) => {
      if (!this.ticket || id !== this.ticket.id) return;
      this.isNext = true;
      this._emit("next");
    });
    c.on("session.started", ({ session }) => {
      if (this.forgotten.includes(session.ticket_id)) return;
      this.session = session;
      this.peerReconnecting = false;
      this.isNext = false;
      this.prereview = null; // a new session (first, or after a transfer): a new checklist
      this.result = null;
      if (this.ticket && this.ticket.id === session.ticket_id) {
        this.ticket = Object.assign({}, this.ticket, { state: "in_session" });
      }
      this.served = { ticketId: session.ticket_id, matterId: session.matter_id,
                      number: this.ticket ? this.ticket.number : "" };
      this._save();
      this._emit("state");
      this.refreshFiles();
    });
    c.on("session.ended", ({ session_id: id, reason }) => {
      if (!this.session || this.session.id !== id) return;
      this.session = null;
      this.peerReconnecting = false;
      if (this.ticket && this.ticket.id === id) {
        // Back to a queue (transfer, lost clerk) or on to wrap-up: ticket.update follows;
        // say it now so the page does not show "after" in between.
        const state = reason === "transfer" ? "transferred"
          : reason === "clerk_lost" ? "waiting" : "wrap_up";
        this.ticket = Object.assign({}, this.ticket, { state });
      }
      this._emit("ended", { reason });
      this._emit("state");
    });
    c.on("session.peer", ({ session_id: id, state }) => {
      if (!this.session || this.session.id !== id) return;
      this.peerReconnecting = state === "reconnecting";
      this._emit("peer", { state });
    });
    c.on("prereview.update", ({ session_id: id, prereview }) => {
      if (!this._mine(id)) return;
      this.prereview = prereview;
      this._save();
      this._emit("prereview");
    });
    c.on("prereview.result", (result) => {
      if (!this._mine(result.session_id)) return;
      this.result = result;
      this._save();
      this._emit("result");
    });
    c.on("file.added", ({ ticket_id: id, file }) => {
      if (!this._mine(id)) return;
      this.files.set(file.id, file);
      this._emit("files", { added: file });
    });
    c.on("file.removed", ({ ticket_id: id, file_id: fileId }) => {
      if (!this._mine(id) || !this.files.delete(fileId)) return;
      this._emit("files", { removed: fileId });
    });
    c.on("case.update", ({ case: item }) => {
      this.cases.set(item.id, item);
      this._emit("case", { case: item });
    });
  }

  /** Forget the current resident entirely (kiosk wipe, "take another ticket"): late news
   * about their tickets is ignored from now on, also after a reload. */
  clear() {
    this._forget(this.ticket && this.ticket.id);
    this._forget(this.served && this.served.ticketId);
    this._reset();
    if (this.storage) this.storage.removeItem(STORE_KEY);
    this._emit("state");
  }

  /** Ignore news about this ticket from now on (null: just save the list). */
  _forget(ticketId) {
    if (ticketId && this.forgotten.includes(ticketId)) return;
    if (ticketId) this.forgotten.push(ticketId);
    this.forgotten.splice(0, Math.max(0, this.forgotten.length - 20));
    try {
      sessionStorage.setItem(FORGOTTEN_KEY, JSON.stringify(this.forgotten));
    } catch {
      // private mode: in memory only
    }
  }

  _reset() {
    this.ticket = null;
    this.position = null; // {position, eta_s, staffed}
    this.positionKey = null; // ticket id + matter: a position never increases within it
    this.isNext = false;
    this.session = null;
    this.peerReconnecting = false;
    this.prereview = null;
    this.result = null;
    this.served = null; // {ticketId, matterId, number} of the ticket that reached a clerk
    this.rated = null; // the score given
    this.files = new Map();
    this.cases = new Map();
    this.filed = null; // the case filed from the aftermath
  }

  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  _emit(what, details) {
    for (const listener of this.listeners) {
      try {
        listener(what, details || {});
      } catch (err) {
        console.error("resident view failed", err); // eslint-disable-line no-console
      }
    }
  }

  /** "none" (pick a matter), "waiting", "call" or "after". */
  get phase() {
    if (this.session) return "call";
    if (this.ticket && QUEUED.has(this.ticket.state)) return "waiting";
    if (this.ticket && SERVED.has(this.ticket.state)) return "after";
    if (!this.ticket && this.served) return "after";
    return "none";
  }

  /** The ticket the aftermath is about (rating, report, result). */
  get afterTicketId() {
    return this.served ? this.served.ticketId : this.ticket && this.ticket.id;
  }

  get matterId() {
    if (this.ticket) return this.ticket.matter_id;
    return this.served ? this.served.matterId : null;
  }

  _mine(ticketOrSessionId) {
    return !!ticketOrSessionId && (
      (this.ticket && this.ticket.id === ticketOrSessionId)
      || (this.served && this.served.ticketId === ticketOrSessionId));
  }

  // ---------------------------------------------------------------- server events

  _onWelcome(welcome) {
    const previous = this.ticket;
    const forgotten = welcome.ticket && this.forgotten.includes(welcome.ticket.id);
    this.session = forgotten ? null : welcome.session || null;
    if (welcome.ticket && !forgotten) {
      this._setTicket(welcome.ticket);
    } else if (previous && (previous.state === "wrap_up" || previous.state === "in_session")) {
      // Finished while we were away (the hall forgets a finished ticket).
      this.ticket = Object.assign({}, previous, { state: "done" });
    } else if (previous) {
      this.ticket = null; // a queued ticket lost while away (or left elsewhere)
    }
    if (this.session) {
      this.served = { ticketId: this.session.ticket_id, matterId: this.session.matter_id,
                      number: this.ticket ? this.ticket.number : "" };
    }
    this._save();
    this._emit("welcome", { welcome });
    this._emit("state");
    if (this.ticket && QUEUED.has(this.ticket.state)) this.refreshPosition();
    if (this.ticket && !FINAL.has(this.ticket.state)) this.refreshFiles();
  }

  _onTicket(ticket) {
    if (this.forgotten.includes(ticket.id)) return;
    if (this.ticket && ticket.id !== this.ticket.id && this.served
        && ticket.id !== this.served.ticketId) {
      return; // an old ticket's late update
    }
    const before = this.ticket;
    this._setTicket(ticket);
    if (FINAL.has(ticket.state) && ticket.state !== "done") {
      // Left, lost or timed out before reaching a clerk (or after a transfer).
      const reached = this.served && this.served.ticketId === ticket.id;
      if (!reached) {
        this.ticket = null;
        this._emit("gone", { ticket, before });
      }
    }
    if (ticket.rating) this.rated = ticket.rating;
    this._save();
    this._emit("state");
  }

  _setTicket(ticket) {
    const key = `${ticket.id}/${ticket.matter_id}`;
    if (key !== this.positionKey) {
      this.positionKey = key;
      this.position = null;
      this.isNext = false;
    }
    this.ticket = ticket;
    if (typeof ticket.position === "number" && QUEUED.has(ticket.state)) {
      this._applyPosition({ position: ticket.position });
    }
    if (ticket.rating) this.rated = ticket.rating;
    if (SERVED.has(ticket.state) && ticket.state !== "in_session" && !this.served) {
      this.served = { ticketId: ticket.id, matterId: ticket.matter_id, number: ticket.number };
    }
  }

  _onPosition(info) {
    if (!this.ticket || info.ticket_id !== this.ticket.id) return;
    this._applyPosition(info);
    this._emit("position");
  }

  /** A position never increases for the same ticket in the same queue. */
  _applyPosition(info) {
    const old = this.position || {};
    const position = typeof info.position === "number"
      ? (typeof old.position === "number" ? Math.min(old.position, info.position)
        : info.position)
      : old.position;
    this.position = {
      position,
      eta_s: "eta_s" in info ? info.eta_s : old.eta_s,
      staffed: "staffed" in info ? info.staffed : old.staffed,
    };
  }

  async refreshPosition() {
    if (!this.ticket || !QUEUED.has(this.ticket.state)) return;
    const ack = await this.client.call("ticket.position", { ticket_id: this.ticket.id });
    if (ack.ok && ack.position) this._onPosition(ack.position);
  }

  async refreshFiles() {
    const id = this.ticket ? this.ticket.id : this.afterTicketId;
    if (!id) return;
    try {
      const list = await fileApi.list(id, this.token());
      if (!this._mine(id)) return;
      for (const file of list) this.files.set(file.id, file);
      this._emit("files", {});
    } catch (err) {
      // The list is a convenience; uploads still work. Say nothing on a stale ticket.
      if (this._mine(id)) console.warn("files", err); // eslint-disable-line no-console
    }
  }

  // ---------------------------------------------------------------- actions

  /** ticket.take; throws HallError (the page explains TAKE_REFUSALS). */
  async take(request) {
    const payload = { matter_id: request.matter_id };
    for (const key of ["kind", "priority", "when_unstaffed", "callback_contact"]) {
      if (request[key]) payload[key] = request[key];
    }
    const ack = await this.client.request("ticket.take", payload);
    // Forget the previous resident's tickets, not this one: its first ticket.update may
    // have come before the ack (then it is the newer view).
    const id = ack.ticket.id;
    const pushed = this.ticket && this.ticket.id === id ? this.ticket : null;
    if (this.ticket && this.ticket.id !== id) this._forget(this.ticket.id);
    if (this.served && this.served.ticketId !== id) this._forget(this.served.ticketId);
    const position = pushed ? this.position : null;
    this._reset();
    if (this.storage) this.storage.removeItem(STORE_KEY);
    this._setTicket(pushed || ack.ticket);
    if (position) this.position = position;
    this._save();
    this._emit("state");
    this.refreshPosition();
    return ack.ticket;
  }

  async leave() {
    if (!this.ticket) return null;
    const id = this.ticket.id;
    this._forget(id); // its "abandoned" update may come before the ack: not news
    let ack;
    try {
      ack = await this.client.request("ticket.leave", { ticket_id: id });
    } catch (err) {
      this.forgotten = this.forgotten.filter((x) => x !== id);
      this._forget(null);
      throw err;
    }
    this.ticket = null;
    this.served = null;
    this._save();
    this._emit("state");
    return ack.ticket;
  }

  async askCallback(contact) {
    const ack = await this.client.request("ticket.callback", {
      ticket_id: this.ticket.id, contact,
    });
    this._onTicket(ack.ticket);
    return ack.ticket;
  }

  async endSession() {
    if (!this.session) return null;
    const ack = await this.client.request("session.end", { session_id: this.session.id });
    return ack.ticket;
  }

  async rate(score, comment) {
    const payload = { ticket_id: this.afterTicketId, score };
    if (comment) payload.comment = comment;
    const ack = await this.client.request("session.rate", payload);
    this.rated = score;
    this._save();
    return ack.ticket;
  }

  /** case.file about the matter served (or `options.matterId`), with the ticket unless
   * `options.withTicket` is false. */
  async fileCase(description, options) {
    const opts = options || {};
    const payload = { matter_id: opts.matterId || this.matterId, description };
    if (opts.withTicket !== false && this.afterTicketId) payload.ticket_id = this.afterTicketId;
    const ack = await this.client.request("case.file", payload);
    this.filed = ack.case;
    this.cases.set(ack.case.id, ack.case);
    this._save();
    this._emit("case", { case: ack.case });
    return ack.case;
  }

  async myCases() {
    const ack = await this.client.request("case.mine", {});
    for (const item of ack.cases) this.cases.set(item.id, item);
    return ack.cases;
  }

  async upload(file) {
    const id = this.ticket ? this.ticket.id : null;
    if (!id) throw new HallError("invalid_state", "no ticket");
    const stored = await fileApi.upload(id, this.token(), file, file.name || "file");
    if (this._mine(id)) {
      this.files.set(stored.id, stored);
      this._emit("files", { added: stored });
    }
    return stored;
  }

  // ---------------------------------------------------------------- the aftermath over a reload

  _save() {
    if (!this.storage) return;
    if (!this.served) {
      this.storage.removeItem(STORE_KEY);
      return;
    }
    this.storage.setItem(STORE_KEY, JSON.stringify({
      served: this.served, result: this.result, prereview: this.prereview, rated: this.rated,
      filed: this.filed,
    }));
  }

  _restore() {
    if (!this.storage) return;
    try {
      const saved = JSON.parse(this.storage.getItem(STORE_KEY) || "null");
      if (!saved || !saved.served) return;
      this.served = saved.served;
      this.result = saved.result || null;
      this.prereview = saved.prereview || null;
      this.rated = saved.rated || null;
      this.filed = saved.filed || null;
    } catch {
      this.storage.removeItem(STORE_KEY);
    }
  }
}

const STORE_KEY = "hall.resident.after";
const FORGOTTEN_KEY = "hall.resident.forgotten";
const FINAL = new Set(["done", "abandoned", "timed_out"]);

function loadForgotten() {
  try {
    const list = JSON.parse(sessionStorage.getItem(FORGOTTEN_KEY) || "[]");
    return Array.isArray(list) ? list : [];
  } catch {
    return [];
  }
}

// ------------------------------------------------------------------ text helpers

/** "about N min" / "a few minutes"... for an ETA in seconds. */
export function etaText(seconds) {
  if (seconds === null || seconds === undefined) return t("eta_unknown");
  if (seconds < 60) return t("eta_soon");
  return t("eta_minutes", { n: Math.max(1, Math.round(seconds / 60)) });
}

/** The explanation of a ticket.take refusal, with the next opening for out_of_hours. */
export function refusalText(error) {
  if (!(error instanceof HallError)) return errorText(error);
  if (error.code === "out_of_hours") {
    const match = /(\d{4}-\d{2}-\d{2} \d{2}:\d{2})/.exec(error.message || "");
    return match ? t("refused_out_of_hours_next", { when: match[1] }) : t("refused_out_of_hours");
  }
  if (TAKE_REFUSALS.has(error.code)) return t(`refused_${error.code}`);
  return errorText(error);
}

/** A file size for people. */
export function sizeText(bytes) {
  if (bytes < 1024) return t("size_bytes", { n: bytes });
  if (bytes < 1024 * 1024) return t("size_kb", { n: Math.round(bytes / 1024) });
  return t("size_mb", { n: (bytes / 1024 / 1024).toFixed(1) });
}

export function markText(mark) {
  return t(`mark_${mark}`);
}

export function caseStateText(state) {
  return t(`case_state_${state}`);
}

export function resultText(result) {
  return t(`result_${result}`);
}

/** The catalog's matter by id (or null), and its department. */
export function matterById(catalog, id) {
  return (catalog && catalog.matters.find((m) => m.id === id)) || null;
}

// ------------------------------------------------------------------ alerts

let audioContext = null;

/** A short two-tone beep through WebAudio; false where audio is unavailable. */
export function beep(options) {
  const opts = Object.assign({ frequency: 880, seconds: 0.18, times: 2 }, options || {});
  try {
    const Context = globalThis.AudioContext || globalThis.webkitAudioContext;
    if (!Context) return false;
    if (!audioContext) audioContext = new Context();
    if (audioContext.state === "suspended") audioContext.resume().catch(() => {});
    const start = audioContext.currentTime + 0.02;
    for (let i = 0; i < opts.times; i += 1) {
      const oscillator = audioContext.createOscillator();
      const gain = audioContext.createGain();
      oscillator.frequency.value = opts.frequency + i * 220;
      gain.gain.setValueAtTime(0.0001, start + i * 0.3);
      gain.gain.exponentialRampToValueAtTime(0.3, start + i * 0.3 + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, start + i * 0.3 + opts.seconds);
      oscillator.connect(gain).connect(audioContext.destination);
      oscillator.start(start + i * 0.3);
      oscillator.stop(start + i * 0.3 + opts.seconds + 0.05);
    }
    return true;
  } catch {
    return false;
  }
}

/** The WebAudio context beep() uses (the kiosk's speaker check reuses it). */
export function sharedAudioContext() {
  const Context = globalThis.AudioContext || globalThis.webkitAudioContext;
  if (!audioContext && Context) audioContext = new Context();
  return audioContext;
}

export function vibrate(pattern) {
  try {
    if (typeof navigator.vibrate === "function") navigator.vibrate(pattern);
  } catch {
    // not supported: the banner and the sound remain
  }
}

/** "You are next": sound, vibration, the page's banner (shown by the caller), announce(). */
export function alertNext() {
  beep({ times: 3 });
  vibrate([300, 150, 300]);
  announce(t("you_are_next"));
}

// ------------------------------------------------------------------ waiting and call screens

/**
 * The waiting card both faces share (#w-number, #w-matter, #w-position, #w-eta, #w-next,
 * #w-status): the ticket, its live position and ETA, and the state it is in. Returns the
 * ticket, or null if there is none yet.
 */
export function renderWaitingCard(flow, matterName) {
  const ticket = flow.ticket;
  if (!ticket) return null;
  $("#w-number").textContent = ticket.number;
  $("#w-matter").textContent = matterName(ticket.matter_id);
  const position = flow.position || {};
  $("#w-position").textContent = typeof position.position === "number"
    ? t("position_value", { n: position.position }) : t("unknown");
  $("#w-eta").textContent = etaText(position.eta_s);
  $("#w-next").hidden = !(flow.isNext || ticket.state === "offered");
  let status = "";
  if (ticket.state === "offered") status = t("status_offered");
  else if (position.staffed === false) status = t("status_unstaffed");
  else if (ticket.state === "transferred") status = t("status_transferred");
  if (ticket.callback) status = [status, t("status_callback")].filter(Boolean).join(" ");
  $("#w-status").textContent = status;
  return ticket;
}

/** The call screen's banner (#call-reconnecting): our own link is down, or the peer's. */
export function syncReconnectingBanner(client, flow) {
  const away = client.linkState && client.linkState !== "online";
  $("#call-reconnecting").hidden = !(away || flow.peerReconnecting);
  $("#call-reconnecting").textContent = away ? t("reconnecting") : t("peer_reconnecting");
}

// ------------------------------------------------------------------ dialogs

/**
 * A modal confirmation (<dialog>): resolves true for confirm, false otherwise. The pages
 * never use window.confirm (kiosk browsers may block it; it is not styleable for the elderly).
 */
export function confirmDialog(text, options) {
  const opts = options || {};
  return new Promise((resolve) => {
    const yes = h("button", { type: "button", class: `btn ${opts.danger ? "btn-danger" : "btn-primary"}` },
                  opts.confirm || t("confirm"));
    const no = h("button", { type: "button", class: "btn" }, opts.cancel || t("cancel"));
    const textId = `dlg-${Math.random().toString(36).slice(2)}`;
    const dialog = h("dialog", { class: "confirm-dialog", "aria-labelledby": textId },
                     h("p", { id: textId, class: "confirm-text" }, text),
                     h("div", { class: "confirm-actions" }, no, yes));
    let answered = false;
    const finish = (value) => {
      if (answered) return;
      answered = true;
      dialog.close();
      dialog.remove();
      resolve(value);
    };
    yes.addEventListener("click", () => finish(true));
    no.addEventListener("click", () => finish(false));
    dialog.addEventListener("cancel", () => finish(false));
    document.body.append(dialog);
    dialog.showModal();
    no.focus();
  });
}

/** Close every open confirmation (a kiosk wipe). */
export function closeDialogs() {
  for (const dialog of document.querySelectorAll("dialog.confirm-dialog")) {
    dialog.dispatchEvent(new Event("cancel"));
  }
}

// ------------------------------------------------------------------ views

/** The clerk's material checklist as it is marked: one row per material with its mark. */
export function checklistView(prereview) {
  if (!prereview || !prereview.items || !prereview.items.length) {
    return h("p", { class: "muted" }, t("checklist_empty"));
  }
  const done = prereview.items.filter((i) => i.mark !== "pending").length;
  return h("div", { class: "checklist" },
           h("p", { class: "checklist-progress" },
             t("checklist_progress", { done, total: prereview.items.length })),
           h("ul", { class: "checklist-items" }, prereview.items.map((item) => h(
             "li", { class: `checklist-item mark-${item.mark}`, dataset: { material: item.material_id } },
             h("span", { class: "checklist-name" }, item.name,
               item.required ? null : h("span", { class: "tag-optional" }, t("optional"))),
             h("span", { class: "checklist-mark" }, markText(item.mark)),
             item.note ? h("span", { class: "checklist-note" }, item.note) : null,
           ))));
}

/**
 * The shared files of a ticket: mine and the clerk's, newest last, each with a "view"
 * button (images and PDFs open in a viewer dialog from a blob: URL; the hall serves files
 * as attachments, never inline).
 */
export function filesView(flow, options) {
  const opts = options || {};
  const list = [...flow.files.values()].sort((a, b) => a.uploaded_at - b.uploaded_at);
  if (!list.length) return h("p", { class: "muted files-empty" }, t("no_files"));
  const me = flow.client.participant;
  return h("ul", { class: "file-list" }, list.map((file) => {
    const mine = file.uploaded_by === me;
    const ticketId = flow.afterTicketId || (flow.ticket && flow.ticket.id);
    const view = h("button", { type: "button", class: "btn file-open",
                               "aria-label": t("file_view_named", { name: file.filename }) },
                   t("file_view"));
    view.addEventListener("click", () => openFile(flow, ticketId, file));
    return h("li", { class: `file-item ${mine ? "file-mine" : "file-theirs"}`,
                     dataset: { fileId: file.id } },
             h("span", { class: "file-name" }, file.filename),
             h("span", { class: "file-meta" },
               `${mine ? t("file_from_me") : t("file_from_clerk")} · ${sizeText(file.size)} · `
               + formatClock(file.uploaded_at)),
             opts.noView ? null : view);
  }));
}

async function openFile(flow, ticketId, file) {
  try {
    const blob = await fileApi.blob(ticketId, file.id, flow.token());
    const url = URL.createObjectURL(new Blob([blob], { type: file.content_type }));
    const close = h("button", { type: "button", class: "btn btn-primary" }, t("close"));
    const body = file.content_type.startsWith("image/") && file.content_type !== "image/heic"
      ? h("img", { class: "file-preview", src: url, alt: file.filename })
      : file.content_type === "application/pdf"
        ? h("iframe", { class: "file-preview file-pdf", src: url, title: file.filename })
        : h("a", { href: url, download: file.filename, class: "btn" }, t("file_download"));
    const dialog = h("dialog", { class: "file-dialog", "aria-label": file.filename },
                     h("p", { class: "file-dialog-name" }, file.filename), body,
                     h("div", { class: "confirm-actions" }, close));
    const done = () => {
      dialog.close();
      dialog.remove();
      URL.revokeObjectURL(url);
    };
    close.addEventListener("click", done);
    dialog.addEventListener("cancel", done);
    document.body.append(dialog);
    dialog.showModal();
  } catch (err) {
    showError(err);
  }
}

/** Close every open file viewer (a kiosk wipe). */
export function closeFileViewers() {
  for (const dialog of document.querySelectorAll("dialog.file-dialog")) {
    dialog.dispatchEvent(new Event("cancel"));
  }
}

/** The pre-review result: in words, the corrections, and the correction list's link. */
export function resultView(result, options) {
  const opts = options || {};
  const corrections = result.corrections || [];
  return h("div", { class: `result result-${result.result}` },
           h("p", { class: "result-text" }, resultText(result.result)),
           corrections.length ? h("h3", { class: "result-sub" }, t("corrections_title")) : null,
           corrections.length ? h("ol", { class: "corrections" }, corrections.map((c) => h(
             "li", {},
             h("span", { class: "correction-name" }, c.name),
             h("span", { class: "correction-action" }, t(`correction_${c.action}`)),
             c.text ? h("span", { class: "correction-text", lang: "zh-CN" }, c.text) : null,
           ))) : null,
           result.url && opts.link !== false
             ? h("p", {}, h("a", { class: "btn result-link", href: result.url, target: "_blank",
                                   rel: "noopener" }, t("corrections_link")))
             : null);
}

/**
 * Rating 1–5 (radio buttons drawn as stars) and an optional comment; sends session.rate once.
 * `onRated(score)` after success.
 */
export function ratingForm(flow, options) {
  const opts = options || {};
  if (flow.rated) {
    return h("p", { class: "rated", role: "status" }, t("rated_thanks", { n: flow.rated }));
  }
  const name = `score-${Math.random().toString(36).slice(2)}`;
  const stars = [1, 2, 3, 4, 5].map((n) => h(
    "label", { class: "star" },
    h("input", { type: "radio", name, value: String(n), class: "star-input" }),
    h("span", { class: "star-glyph", "aria-hidden": "true" }, "★"),
    h("span", { class: "sr-only" }, t("stars", { n })),
  ));
  const commentId = `${name}-comment`;
  const comment = opts.comment === false ? null
    : h("textarea", { id: commentId, maxlength: "500", rows: "2", class: "rating-comment" });
  const submit = h("button", { type: "submit", class: "btn btn-primary" }, t("rate_submit"));
  const form = h("form", { class: "rating-form" },
                 h("fieldset", { class: "stars" }, h("legend", {}, t("rate_legend")), stars),
                 comment ? h("label", { for: commentId, class: "field-label" }, t("rate_comment"))
                   : null,
                 comment, submit);
  const paint = () => {
    const chosen = Number((form.querySelector("input.star-input:checked") || {}).value || 0);
    form.querySelectorAll(".star").forEach((label, i) => label.classList.toggle("on", i < chosen));
  };
  form.addEventListener("change", paint);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = form.querySelector("input.star-input:checked");
    if (!chosen) {
      toast(t("rate_pick"), "error");
      return;
    }
    submit.disabled = true;
    try {
      await flow.rate(Number(chosen.value), comment ? comment.value.trim() : "");
      announce(t("rated_thanks", { n: chosen.value }));
      form.replaceWith(h("p", { class: "rated", role: "status" },
                         t("rated_thanks", { n: chosen.value })));
      if (opts.onRated) opts.onRated(Number(chosen.value));
    } catch (err) {
      submit.disabled = false;
      showError(err);
    }
  });
  return form;
}

/**
 * The 办不成事 report: optional preset reasons (buttons, for the kiosk) and a description;
 * `onFiled(case)` after the hall acknowledged it.
 */
export function caseForm(flow, options) {
  const opts = options || {};
  const id = `case-${Math.random().toString(36).slice(2)}`;
  const text = h("textarea", { id, maxlength: "1000", rows: opts.rows || 3, class: "case-text" });
  const presets = (opts.presets || []).map((key) => {
    const button = h("button", { type: "button", class: "btn case-preset", "aria-pressed": "false" },
                     t(key));
    button.addEventListener("click", () => {
      const on = button.getAttribute("aria-pressed") !== "true";
      button.setAttribute("aria-pressed", on ? "true" : "false");
    });
    return button;
  });
  const submit = h("button", { type: "submit", class: "btn btn-primary" }, t("case_submit"));
  const form = h("form", { class: "case-form" },
                 presets.length ? h("div", { class: "case-presets", role: "group",
                                            "aria-label": t("case_presets") }, presets) : null,
                 h("label", { for: id, class: "field-label" }, t("case_description")),
                 text, submit);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = presets.filter((b) => b.getAttribute("aria-pressed") === "true")
      .map((b) => b.textContent);
    const description = [...chosen, text.value.trim()].filter(Boolean).join("；");
    if (!description) {
      toast(t("case_empty"), "error");
      text.focus();
      return;
    }
    submit.disabled = true;
    try {
      const filed = await flow.fileCase(description, { withTicket: opts.withTicket,
                                                       matterId: opts.matterId });
      announce(t("case_filed", { number: filed.number }));
      if (opts.onFiled) opts.onFiled(filed);
    } catch (err) {
      submit.disabled = false;
      showError(err);
    }
  });
  return form;
}

/** A list of the resident's own 办不成事 reports with their state. */
export function casesView(cases, catalog) {
  if (!cases.length) return h("p", { class: "muted" }, t("cases_none"));
  const sorted = [...cases].sort((a, b) => b.created_at - a.created_at);
  return h("ul", { class: "case-list" }, sorted.map((item) => h(
    "li", { class: `case-item case-${item.state}`, dataset: { caseId: item.id } },
    h("span", { class: "case-number" }, item.number),
    h("span", { class: "case-matter" }, nameOf(matterById(catalog, item.matter_id))),
    h("span", { class: "case-state" }, caseStateText(item.state)),
    h("span", { class: "case-when" }, t("case_filed_at", { when: dateText(item.created_at) })),
    item.overdue ? h("span", { class: "case-overdue" }, t("case_overdue")) : null,
  )));
}

function dateText(at) {
  const d = new Date(at * 1000);
  return `${d.getMonth() + 1}/${d.getDate()} ${formatClock(at)}`;
}

/**
 * The call's buttons: mute, camera, switch camera, share (screen or a given stream), end.
 * `which` picks the buttons; returns {element, sync()} (sync refreshes pressed states).
 */
export function callControls(flow, options) {
  const opts = options || {};
  const client = flow.client;
  const which = new Set(opts.buttons || ["mic", "camera", "switch", "share", "end"]);
  let micOn = true;
  let cameraOn = true;
  const buttons = [];

  const mic = h("button", { type: "button", class: "btn call-btn call-mic", "aria-pressed": "false" },
                t("mic_on"));
  mic.addEventListener("click", () => {
    micOn = !micOn;
    client.setMicEnabled(micOn);
    sync();
    announce(micOn ? t("mic_on") : t("mic_off"));
  });
  if (which.has("mic")) buttons.push(mic);

  const camera = h("button", { type: "button", class: "btn call-btn call-camera",
                               "aria-pressed": "false" }, t("camera_on"));
  camera.addEventListener("click", () => {
    cameraOn = !cameraOn;
    client.setCameraEnabled(cameraOn);
    sync();
    announce(cameraOn ? t("camera_on") : t("camera_off"));
  });
  if (which.has("camera")) buttons.push(camera);

  const switcher = h("button", { type: "button", class: "btn call-btn call-switch", hidden: true },
                     t("switch_camera"));
  switcher.addEventListener("click", async () => {
    try {
      const label = await client.switchCamera();
      toast(label ? t("camera_switched", { name: label }) : t("camera_only_one"));
    } catch (err) {
      showError(err);
    }
  });
  if (which.has("switch")) {
    buttons.push(switcher);
    if (navigator.mediaDevices && navigator.mediaDevices.enumerateDevices) {
      navigator.mediaDevices.enumerateDevices().then((devices) => {
        switcher.hidden = devices.filter((d) => d.kind === "videoinput").length < 2;
      }).catch(() => {});
    }
  }

  const share = h("button", { type: "button", class: "btn call-btn call-share", "aria-pressed": "false" },
                  opts.shareLabel || t("share_screen"));
  const canShare = opts.shareStream ? true : !!(navigator.mediaDevices
    && typeof navigator.mediaDevices.getDisplayMedia === "function");
  share.hidden = !canShare;
  share.addEventListener("click", async () => {
    try {
      if (client.screen) {
        await client.stopScreenShare();
      } else {
        const stream = opts.shareStream ? await opts.shareStream() : undefined;
        if (opts.shareStream && !stream) return;
        await client.shareScreen(stream);
      }
    } catch (err) {
      if (err && err.name === "NotAllowedError") return; // the resident cancelled the picker
      showError(err);
    }
  });
  client.on("screen", () => sync());
  if (which.has("share")) buttons.push(share);

  const end = h("button", { type: "button", class: "btn btn-danger call-btn call-end" }, t("end_call"));
  end.addEventListener("click", async () => {
    if (!(await confirmDialog(t("end_call_confirm"), { confirm: t("end_call"), danger: true }))) {
      return;
    }
    try {
      await flow.endSession();
    } catch (err) {
      showError(err);
    }
  });
  if (which.has("end")) buttons.push(end);

  function sync() {
    mic.textContent = micOn ? t("mic_on") : t("mic_off");
    mic.setAttribute("aria-pressed", micOn ? "false" : "true");
    camera.textContent = cameraOn ? t("camera_on") : t("camera_off");
    camera.setAttribute("aria-pressed", cameraOn ? "false" : "true");
    const sharing = !!client.screen;
    share.textContent = sharing ? (opts.stopShareLabel || t("stop_share"))
      : (opts.shareLabel || t("share_screen"));
    share.setAttribute("aria-pressed", sharing ? "true" : "false");
  }

  function reset() {
    micOn = true;
    cameraOn = true;
    sync();
  }

  sync();
  return { element: h("div", { class: "call-controls", role: "group", "aria-label": t("call_controls") },
                      buttons), sync, reset, share };
}

/**
 * Keep a video element playing; when autoplay with sound is refused (a reload without a
 * tap), play it muted and show `unmute` (a button the page owns) until the resident taps.
 */
export function keepPlaying(video, unmute) {
  const tryPlay = () => {
    if (!video.srcObject) {
      unmute.hidden = true;
      return;
    }
    video.play().then(() => {
      if (!video.muted) unmute.hidden = true;
    }).catch((err) => {
      if (err && err.name === "NotAllowedError") {
        video.muted = true;
        unmute.hidden = false;
        video.play().catch(() => {});
      }
    });
  };
  unmute.addEventListener("click", () => {
    video.muted = false;
    unmute.hidden = true;
    tryPlay();
  });
  video.addEventListener("loadedmetadata", tryPlay);
  return tryPlay;
}
