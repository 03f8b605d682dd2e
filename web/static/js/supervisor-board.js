/*
 * The supervisor wallboard's live parts, drawn from `wall.update` pushes: headline tiles,
 * departments (expandable to matters), alerts, kiosks and sessions in progress.
 *
 * A wallboard stays open all day, so nothing here grows with the number of updates: every
 * row is created once per key (department, matter, kiosk, session, alert) and then updated
 * in place; text is written only when it changed; rows that go away are removed; the alert
 * history is capped. Clocks tick from one interval in supervisor.js (`tick()`), computed from
 * the last push's base values, so no timer or closure is made per update.
 */
import { t, h, formatClock, nameOf } from "/static/js/ui.js";

export const DEVICES = ["camera", "microphone", "speaker", "document_camera"];
const HEALTH_GLYPH = { ok: "✓", failed: "✗", absent: "–" };
export const ALERT_CAP = 100;
const FLASH_S = 4;

// ------------------------------------------------------------------ small DOM helpers

/** Write text only when it changed (no DOM mutation, no layout, for unchanged values). */
export function setText(element, text) {
  const value = String(text);
  if (element.textContent !== value) element.textContent = value;
}

export function setHidden(element, hidden) {
  if (element.hidden !== !!hidden) element.hidden = !!hidden;
}

export function setClass(element, name, on) {
  if (element.classList.contains(name) !== !!on) element.classList.toggle(name, !!on);
}

export function setAttr(element, name, value) {
  const text = String(value);
  if (element.getAttribute(name) !== text) element.setAttribute(name, text);
}

export function setData(element, name, value) {
  const text = String(value);
  if (element.dataset[name] !== text) element.dataset[name] = text;
}

/** A duration as m:ss, or h:mm:ss from an hour on. */
export function clockText(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return t("unknown");
  const s = Math.max(0, Math.floor(seconds));
  const hours = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return hours ? `${hours}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/** A limit like 300 s as "5 分钟" / "5 min" (seconds when not whole minutes). */
export function limitText(seconds) {
  if (!seconds && seconds !== 0) return t("unknown");
  return seconds % 60 === 0 ? t("minutes", { n: seconds / 60 }) : t("seconds", { n: seconds });
}

/** answered within SL / answered, as "87%"; "—" when nothing was answered. */
export function percentText(inSl, answered) {
  if (!answered) return t("unknown");
  return t("percent", { n: Math.round((100 * (inSl || 0)) / answered) });
}

/** HH:MM:SS of a POSIX time. */
export function clockOf(at) {
  const d = new Date(at * 1000);
  return `${formatClock(at)}:${String(d.getSeconds()).padStart(2, "0")}`;
}

/** The short, readable part of a service point name ("天平路街道 天平邻里汇 远程帮办点"). */
export function shortPointName(point) {
  if (!point || !point.name) return "";
  const parts = point.name.split(/\s+/).filter(Boolean);
  return parts.length >= 3 ? parts.slice(1, -1).join(" ") : point.name;
}

/** Server time: the hall's clock as of the last push, advanced by the local clock. */
export const clock = {
  offset: 0,
  sync(at) {
    if (typeof at === "number") this.offset = at - Date.now() / 1000;
  },
  now() {
    return Date.now() / 1000 + this.offset;
  },
};

/** A waiting time that keeps ticking between pushes: base value and the server time of it. */
function waitNow(base, at, now) {
  if (base === null || base === undefined) return null;
  return base + Math.max(0, now - at);
}

// ------------------------------------------------------------------ headline tiles

export class Tiles {
  constructor() {
    const id = (name) => document.getElementById(name);
    this.el = {
      waiting: id("tile-waiting"), oldest: id("tile-oldest"), answered: id("tile-answered"),
      inSl: id("tile-in-sl"), inSlHint: id("tile-in-sl-hint"), abandoned: id("tile-abandoned"),
      available: id("tile-clerks-available"), inSession: id("tile-clerks-in-session"),
      wrapUp: id("tile-clerks-wrap-up"), onBreak: id("tile-clerks-on-break"),
      cases: id("tile-cases"), oldestOver: id("tile-oldest-over"),
    };
    this.oldest = null; // {base, at, limit}
  }

  update(wall) {
    const e = this.el;
    let waiting = 0;
    let answered = 0;
    let inSl = 0;
    let abandoned = 0;
    let oldest = null;
    for (const d of wall.departments || []) {
      waiting += d.waiting || 0;
      answered += d.answered_today || 0;
      inSl += d.answered_in_sl_today || 0;
      abandoned += d.abandoned_today || 0;
    }
    for (const m of wall.matters || []) {
      if (m.oldest_wait_s !== null && m.oldest_wait_s !== undefined && m.waiting > 0
          && (oldest === null || m.oldest_wait_s > oldest)) oldest = m.oldest_wait_s;
    }
    if (oldest === null) {
      for (const d of wall.departments || []) {
        if (d.oldest_wait_s !== null && d.oldest_wait_s !== undefined && d.waiting > 0
            && (oldest === null || d.oldest_wait_s > oldest)) oldest = d.oldest_wait_s;
      }
    }
    setText(e.waiting, waiting);
    setText(e.answered, answered);
    setText(e.inSl, percentText(inSl, answered));
    setText(e.inSlHint, wall.service_level_s ? t("tile_in_sl_hint", { s: wall.service_level_s })
      : "");
    setText(e.abandoned, abandoned);
    const counts = { available: 0, in_session: 0, wrap_up: 0, on_break: 0 };
    for (const c of wall.clerks || []) {
      if (c.state in counts) counts[c.state] += 1;
    }
    setText(e.available, counts.available);
    setText(e.inSession, counts.in_session);
    setText(e.wrapUp, counts.wrap_up);
    setText(e.onBreak, counts.on_break);
    const cases = wall.cases || null;
    setText(e.cases, cases ? t("tile_cases_value", { open: cases.open || 0,
                                                    overdue: cases.overdue || 0 })
      : t("unknown"));
    setClass(e.cases.parentElement, "is-over", !!(cases && cases.overdue));
    this.oldest = { base: oldest, at: wall.at, limit: wall.wait_alert_s };
    this.tick(clock.now());
  }

  tick(now) {
    if (!this.oldest) return;
    const wait = waitNow(this.oldest.base, this.oldest.at, now);
    setText(this.el.oldest, wait === null ? t("unknown") : clockText(wait));
    const over = wait !== null && this.oldest.limit && wait >= this.oldest.limit;
    setClass(this.el.oldest.parentElement, "is-over", !!over);
    setHidden(this.el.oldestOver, !over);
  }
}

// ------------------------------------------------------------------ departments and matters

/** The cells of one department or matter row, updated in place. */
function waitCell() {
  const text = h("span", { class: "sv-wait-text" }, t("unknown"));
  const badge = h("span", { class: "sv-over-badge", hidden: true }, t("over_threshold"));
  const cell = h("td", { class: "num sv-wait" }, text, " ", badge);
  return { cell, text, badge };
}

export class Departments {
  /** @param {HTMLTableElement} table @param {object} catalog /api/catalog */
  constructor(table, catalog) {
    this.table = table;
    this.catalog = catalog;
    this.depts = new Map(); // department id -> row state
    this.matters = new Map(); // matter id -> row state
    this.limit = null;
    this.at = 0;
    for (const d of catalog.departments || []) this._dept(d);
    for (const m of catalog.matters || []) this._matter(m);
    // One listener for every expand button (no closure per row).
    table.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-dept-toggle]");
      if (button) this.toggle(button.dataset.deptToggle);
    });
  }

  _dept(d) {
    const toggle = h("button", { type: "button", class: "sv-expand", "aria-expanded": "false",
                                 "data-dept-toggle": d.id, "data-testid": "dept-toggle",
                                 "aria-label": t("expand_matters", { name: nameOf(d) }) },
                     h("span", { class: "sv-expand-icon", "aria-hidden": "true" }, "▸"));
    const name = h("span", { class: "sv-dept-name" }, nameOf(d));
    const waiting = h("td", { class: "num sv-strong", "data-testid": "dept-waiting" }, "0");
    const wait = waitCell();
    const pairs = {};
    const clerks = h("td", { class: "sv-clerks" });
    for (const s of CLERK_STATES) {
      pairs[s] = h("span", { class: "sv-clerk-pair", "data-clerk-state": s }, "");
      clerks.append(pairs[s], " ");
    }
    const answered = h("td", { class: "num", "data-testid": "dept-answered" }, "0");
    const sl = h("td", { class: "num" }, t("unknown"));
    const abandoned = h("td", { class: "num" }, "0");
    const row = h("tr", { class: "sv-dept-row", "data-dept-id": d.id, "data-testid": "dept-row" },
                  h("th", { scope: "row" }, toggle, " ", name), waiting, wait.cell, clerks,
                  answered, sl, abandoned);
    const body = h("tbody", { class: "sv-dept-group", "data-dept-id": d.id }, row);
    this.table.append(body);
    const state = { id: d.id, body, row, toggle, name, waiting, wait, clerks, pairs, answered,
                    sl, abandoned, base: null, count: 0, expanded: false, matterRows: [] };
    fillClerks(pairs, null);
    this.depts.set(d.id, state);
    return state;
  }

  _matter(m) {
    const dept = this.depts.get(m.department_id)
      || this._dept({ id: m.department_id, name: m.department_id });
    const waiting = h("td", { class: "num sv-strong", "data-testid": "matter-waiting" }, "0");
    const wait = waitCell();
    const clerks = h("td", { class: "sv-clerks" }, t("unknown"));
    const answered = h("td", { class: "num" }, "0");
    const sl = h("td", { class: "num" }, t("unknown"));
    const abandoned = h("td", { class: "num" }, "0");
    const name = h("span", {}, nameOf(m));
    const row = h("tr", { class: "sv-matter-row", "data-matter-id": m.id, hidden: !dept.expanded,
                          "data-testid": "matter-row" },
                  h("th", { scope: "row", class: "sv-matter-name" }, name), waiting, wait.cell,
                  clerks, answered, sl, abandoned);
    dept.body.append(row);
    dept.matterRows.push(row);
    const state = { id: m.id, row, name, waiting, wait, clerks, answered, sl, abandoned,
                    base: null, count: 0 };
    this.matters.set(m.id, state);
    return state;
  }

  toggle(deptId) {
    const dept = this.depts.get(deptId);
    if (!dept) return;
    dept.expanded = !dept.expanded;
    dept.toggle.setAttribute("aria-expanded", String(dept.expanded));
    setClass(dept.row, "is-expanded", dept.expanded);
    for (const row of dept.matterRows) setHidden(row, !dept.expanded);
  }

  update(wall) {
    this.limit = wall.wait_alert_s || null;
    this.at = wall.at;
    // A department supervisor's wall has only their departments: the catalog's others
    // would show as empty rows, so they are hidden.
    const scope = wall.scope && !wall.scope.whole_hall ? new Set(wall.scope.departments) : null;
    for (const dept of this.depts.values()) setHidden(dept.body, !!scope && !scope.has(dept.id));
    for (const d of wall.departments || []) {
      const row = this.depts.get(d.id) || this._dept(d);
      setText(row.waiting, d.waiting || 0);
      row.count = d.waiting || 0;
      row.base = d.oldest_wait_s ?? null;
      fillClerks(row.pairs, d.clerks);
      setText(row.answered, d.answered_today || 0);
      setText(row.sl, percentText(d.answered_in_sl_today, d.answered_today));
      setText(row.abandoned, d.abandoned_today || 0);
    }
    for (const m of wall.matters || []) {
      const row = this.matters.get(m.id) || this._matter(m);
      setText(row.waiting, m.waiting || 0);
      row.count = m.waiting || 0;
      row.base = m.oldest_wait_s ?? null;
      setText(row.clerks, t("on_duty", { n: m.on_duty || 0 }));
      setText(row.answered, m.answered_today || 0);
      setText(row.sl, percentText(m.answered_in_sl_today, m.answered_today));
      setText(row.abandoned, m.abandoned_today || 0);
    }
    this.tick(clock.now());
  }

  tick(now) {
    for (const row of this.depts.values()) this._tickRow(row, now);
    for (const row of this.matters.values()) this._tickRow(row, now);
  }

  _tickRow(row, now) {
    const wait = row.count > 0 ? waitNow(row.base, this.at, now) : null;
    setText(row.wait.text, wait === null ? t("unknown") : clockText(wait));
    const over = wait !== null && this.limit !== null && wait >= this.limit;
    setHidden(row.wait.badge, !over);
    setClass(row.wait.cell, "is-over", over);
    setClass(row.row, "is-over", over);
  }
}

const CLERK_STATES = ["available", "in_session", "wrap_up", "on_break"];

/** "空闲 1" "通话中 2" ... one unbreakable pair per state, wrapping between pairs. */
function fillClerks(pairs, clerks) {
  for (const s of CLERK_STATES) {
    setText(pairs[s], t(`clerks_cell_${s}`, { n: clerks ? clerks[s] || 0 : t("unknown") }));
  }
}

// ------------------------------------------------------------------ kiosks

export class Kiosks {
  /**
   * @param {HTMLElement} grid  the <ul>
   * @param {object} catalog    /api/catalog (service_points, streets)
   */
  constructor(grid, catalog) {
    this.grid = grid;
    this.cells = new Map();
    this.points = new Map((catalog.service_points || []).map((p) => [p.id, p]));
    this.problemsOnly = document.getElementById("kiosk-problems");
    this.street = document.getElementById("kiosk-street");
    this.summary = document.getElementById("kiosks-summary");
    this.none = document.getElementById("kiosks-none");
    for (const s of catalog.streets || []) {
      this.street.append(h("option", { value: s.id }, nameOf(s)));
    }
    for (const p of catalog.service_points || []) this._cell(p);
    this.problemsOnly.addEventListener("change", () => this.filter());
    this.street.addEventListener("change", () => this.filter());
    this.filter();
  }

  _cell(point) {
    const chips = {};
    const chipBox = h("span", { class: "sv-kiosk-health", hidden: true });
    for (const device of DEVICES) {
      const visible = h("span", { "aria-hidden": "true" }, "");
      const spoken = h("span", { class: "sr-only" }, "");
      const chip = h("span", { class: "sv-chip", "data-device": device }, visible, spoken);
      chipBox.append(chip);
      chips[device] = { chip, visible, spoken };
    }
    const unknown = h("span", { class: "sv-kiosk-unknown", hidden: true }, "");
    const state = h("span", { class: "sv-kiosk-state", "data-testid": "kiosk-state" },
                    t("kiosk_never"));
    const since = h("span", { class: "sv-kiosk-since", hidden: true }, "");
    const cell = h("li", { class: "sv-kiosk", "data-kiosk-id": point.id, "data-state": "never",
                           "data-problem": "false", "data-testid": "kiosk-cell",
                           "data-street": point.street_id || "" },
                   h("span", { class: "sv-kiosk-line" },
                     h("span", { class: "sv-kiosk-id" }, point.id), " ", state),
                   h("span", { class: "sv-kiosk-name", title: point.name || "" },
                     shortPointName(point)),
                   since, chipBox, unknown);
    this.grid.append(cell);
    const entry = { cell, state, since, chipBox, chips, unknown, problem: false,
                    street: point.street_id || "" };
    this.cells.set(point.id, entry);
    return entry;
  }

  update(wall) {
    let online = 0;
    let offline = 0;
    for (const k of wall.kiosks || []) {
      const entry = this.cells.get(k.id)
        || this._cell(this.points.get(k.id) || { id: k.id, name: k.name, street_id: k.street_id });
      const seen = !!(k.online || k.since || k.health);
      const state = k.online ? "online" : seen ? "offline" : "never";
      setData(entry.cell, "state", state);
      setText(entry.state, t(`kiosk_${state}`));
      setText(entry.since, k.since ? t("kiosk_since", { time: formatClock(k.since) }) : "");
      setHidden(entry.since, !k.since || state === "never");
      let failed = false;
      if (k.health) {
        for (const device of DEVICES) {
          const value = k.health[device] || "absent";
          const chip = entry.chips[device];
          setData(chip.chip, "health", value);
          setText(chip.visible, `${t(`device_short_${device}`)}${HEALTH_GLYPH[value] || "?"}`);
          setText(chip.spoken, t("device_state", { device: t(`device_${device}`),
                                                   state: t(`health_${value}`) || value }));
          if (value === "failed") failed = true;
        }
      }
      setHidden(entry.chipBox, !k.health);
      // Online without a device report yet (an offline kiosk's last report is what it is).
      const unreported = state === "online" && !k.health;
      setText(entry.unknown, unreported ? t("health_unknown") : "");
      setHidden(entry.unknown, !unreported);
      entry.problem = state === "offline" || failed;
      setData(entry.cell, "problem", entry.problem);
      if (state === "online") online += 1;
      else if (state === "offline") offline += 1;
    }
    const never = this.cells.size - online - offline;
    setText(this.summary, t("kiosks_summary", { online, offline, never }));
    this.filter();
  }

  filter() {
    const problemsOnly = this.problemsOnly.checked;
    const street = this.street.value;
    let shown = 0;
    for (const entry of this.cells.values()) {
      const visible = (!problemsOnly || entry.problem) && (!street || entry.street === street);
      setHidden(entry.cell, !visible);
      if (visible) shown += 1;
    }
    setHidden(this.none, shown > 0);
  }

  name(id) {
    const point = this.points.get(id);
    return point ? `${id} ${shortPointName(point)}` : id;
  }
}

// ------------------------------------------------------------------ sessions in progress

export class Sessions {
  /**
   * @param {object} catalog
   * @param {function} onMonitor  called with (session) when a Monitor button is pressed
   */
  constructor(catalog, onMonitor, kioskName) {
    this.rows = new Map();
    this.body = document.getElementById("session-rows");
    this.table = document.getElementById("session-table");
    this.empty = document.getElementById("sessions-empty");
    this.count = document.getElementById("sessions-count");
    this.matters = new Map((catalog.matters || []).map((m) => [m.id, m]));
    this.kioskName = kioskName;
    this.monitoring = null;
    this.body.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-session-id]");
      const row = button && this.rows.get(button.dataset.sessionId);
      if (row) onMonitor(row.session);
    });
  }

  _row(s) {
    const number = h("th", { scope: "row", class: "sv-strong" }, "");
    const matter = h("td", {}, "");
    const clerk = h("td", {}, "");
    const channel = h("td", {}, "");
    const duration = h("td", { class: "num", "data-testid": "session-duration" }, "");
    const monitors = h("td", { class: "num", "data-testid": "session-monitors" }, "0");
    const button = h("button", { type: "button", class: "btn sv-small-btn",
                                 "data-session-id": s.session_id,
                                 "data-testid": "monitor-button",
                                 id: `monitor-${s.session_id}` }, t("monitor"));
    const row = h("tr", { "data-session-id": s.session_id, "data-testid": "session-row" },
                  number, matter, clerk, channel, duration, monitors, h("td", {}, button));
    this.body.append(row);
    const entry = { row, number, matter, clerk, channel, duration, monitors, button,
                    session: s };
    this.rows.set(s.session_id, entry);
    return entry;
  }

  update(wall) {
    const live = new Set();
    for (const s of wall.sessions || []) {
      live.add(s.session_id);
      const entry = this.rows.get(s.session_id) || this._row(s);
      entry.session = s;
      setText(entry.number, s.ticket_number || s.session_id);
      setText(entry.matter, nameOf(this.matters.get(s.matter_id)) || s.matter_id);
      setText(entry.clerk, s.clerk_name || s.clerk_id || t("unknown"));
      setText(entry.channel, s.channel === "kiosk"
        ? t("channel_kiosk", { point: this.kioskName(s.service_point_id) }) : t("channel_app"));
      setText(entry.monitors, s.monitors || 0);
      setAttr(entry.button, "aria-label", t("monitor_label", { number: s.ticket_number }));
    }
    for (const [id, entry] of this.rows) {
      if (!live.has(id)) {
        entry.row.remove();
        this.rows.delete(id);
      }
    }
    setHidden(this.table, this.rows.size === 0);
    setHidden(this.empty, this.rows.size > 0);
    setText(this.count, this.rows.size ? String(this.rows.size) : "");
    this.setMonitoring(this.monitoring);
    this.tick(clock.now());
  }

  /** Mark the session being monitored (its button shows "监看中" and is disabled). */
  setMonitoring(sessionId) {
    this.monitoring = sessionId;
    for (const [id, entry] of this.rows) {
      const on = id === sessionId;
      setText(entry.button, on ? t("monitoring_now") : t("monitor"));
      if (entry.button.disabled !== on) entry.button.disabled = on;
    }
  }

  get(sessionId) {
    const entry = this.rows.get(sessionId);
    return entry ? entry.session : null;
  }

  button(sessionId) {
    const entry = this.rows.get(sessionId);
    return entry ? entry.button : null;
  }

  tick(now) {
    for (const entry of this.rows.values()) {
      const started = entry.session.started_at;
      setText(entry.duration, started ? clockText(now - started) : t("unknown"));
    }
  }
}

// ------------------------------------------------------------------ alerts

/** The identity of an alert: the same condition keeps one row while it lasts. */
export function alertKey(alert) {
  switch (alert.kind) {
    case "oldest_wait": return `oldest_wait:${alert.matter_id}`;
    case "kiosk_offline": return `kiosk_offline:${alert.kiosk_id}`;
    case "kiosk_health": return `kiosk_health:${alert.kiosk_id}`;
    case "wrapup_overdue": return `wrapup_overdue:${alert.clerk_id}`;
    case "case_escalated": return `case_escalated:${alert.case_id}:${alert.deadline}`;
    default: return `${alert.kind}:${JSON.stringify(alert)}`;
  }
}

export class Alerts {
  /** @param {function} describe  (alert) → text */
  constructor(describe) {
    this.list = document.getElementById("alert-list");
    this.empty = document.getElementById("alerts-empty");
    this.activeCount = document.getElementById("alerts-active");
    this.announcer = document.getElementById("alert-announcer");
    this.describe = describe;
    this.items = []; // newest first, mirrors the list
    this.active = new Map(); // key -> item, for the server's current alerts
    this.localSeen = new Set(); // keys of one-off alerts (case escalations) already shown
    this._announceTimer = null;
  }

  /** The server's current alerts (`wall.alerts`): new ones appear, gone ones are cleared. */
  update(alerts, now) {
    const current = new Set();
    const fresh = [];
    for (const alert of alerts || []) {
      const key = alertKey(alert);
      if (current.has(key)) continue;
      current.add(key);
      const text = this.describe(alert);
      const item = this.active.get(key);
      if (item) {
        setText(item.text, text);
      } else {
        this.active.set(key, this._add(alert, key, text, now, true));
        fresh.push(text);
      }
    }
    for (const [key, item] of this.active) {
      if (!current.has(key)) {
        this.active.delete(key);
        item.live = false;
        setClass(item.li, "is-cleared", true);
        setData(item.li, "active", "false");
        setText(item.status, t("alert_cleared", { time: formatClock(now) }));
      }
    }
    this._after(fresh);
  }

  /** A one-off alert raised by an event (a case escalated); shown once per key. */
  raise(alert, now) {
    const key = alertKey(alert);
    if (this.localSeen.has(key)) return;
    this.localSeen.add(key);
    if (this.localSeen.size > 4 * ALERT_CAP) {
      this.localSeen = new Set([...this.localSeen].slice(-2 * ALERT_CAP));
    }
    const text = this.describe(alert);
    this._add(alert, key, text, now, false);
    this._after([text]);
  }

  _add(alert, key, text, now, live) {
    const time = h("time", { class: "sv-alert-time", datetime: new Date(now * 1000).toISOString() },
                   formatClock(now));
    const kind = h("span", { class: "sv-alert-kind" }, t(`alert_kind_${alert.kind}`));
    const textEl = h("span", { class: "sv-alert-text" }, text);
    const status = h("span", { class: "sv-alert-status" }, live ? t("alert_active") : "");
    const li = h("li", { class: "sv-alert sv-flash", "data-kind": alert.kind,
                         "data-key": key, "data-active": String(live),
                         "data-testid": "alert-item" },
                 time, kind, textEl, status);
    this.list.prepend(li);
    const item = { key, li, text: textEl, status, live, flashUntil: now + FLASH_S };
    this.items.unshift(item);
    this._cap();
    return item;
  }

  _cap() {
    while (this.items.length > ALERT_CAP) {
      // Drop the oldest cleared (or one-off) alert; only if none, the oldest active one.
      let index = -1;
      for (let i = this.items.length - 1; i >= 0; i -= 1) {
        if (!this.items[i].live) { index = i; break; }
      }
      if (index < 0) index = this.items.length - 1;
      const [item] = this.items.splice(index, 1);
      item.li.remove();
      if (this.active.get(item.key) === item) this.active.delete(item.key);
    }
  }

  _after(fresh) {
    setHidden(this.empty, this.items.length > 0);
    setText(this.activeCount, this.active.size ? t("alerts_active", { n: this.active.size }) : "");
    if (fresh.length) this._announce(t("alert_announce", { text: fresh.join("；") }));
  }

  _announce(text) {
    // Cleared first, then set a moment later: announced even when the text repeats.
    this.announcer.textContent = "";
    clearTimeout(this._announceTimer);
    this._announceTimer = setTimeout(() => { this.announcer.textContent = text; }, 60);
  }

  /** End the flash of alerts that are no longer new. */
  tick(now) {
    for (const item of this.items) {
      if (item.flashUntil && now >= item.flashUntil) {
        item.flashUntil = 0;
        item.li.classList.remove("sv-flash");
      }
    }
  }

  get size() {
    return this.items.length;
  }
}
