/*
 * 办不成事 (unresolved-matter) cases on the supervisor wallboard: the open cases from
 * `case.list` (overdue first, as the hall orders them), refreshed every 30 s and when a case
 * escalates, with the supervisor's actions (`case.act`): assign to a department or a clerk,
 * start, resolve (a note is required).
 *
 * Rows are keyed by case id and updated in place, so a note being typed survives a refresh;
 * one listener on the list handles every row's forms and buttons.
 */
import { t, h, formatClock, nameOf, showError, errorText, toast, announce } from "/static/js/ui.js";
import {
  setText, setHidden, setClass, setData, setAttr, clockOf,
} from "/static/js/supervisor-board.js";

const EXCERPT = 90;
// What a supervisor may do in each state (rooms/cases.py TRANSITIONS).
const ACTIONS = {
  open: ["assign"],
  assigned: ["assign", "start"],
  in_progress: ["assign", "resolve"],
  reopened: ["assign", "start"],
  resolved: [],
  closed: [],
};

function deadlineText(deadline) {
  if (!deadline) return t("case_no_deadline");
  const d = new Date(deadline * 1000);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  const date = `${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
  return t("case_deadline", { time: sameDay ? formatClock(deadline) : `${date} ${formatClock(deadline)}` });
}

function excerpt(text) {
  const value = String(text || "").replace(/\s+/g, " ").trim();
  return value.length > EXCERPT ? `${value.slice(0, EXCERPT)}…` : value;
}

export class Cases {
  /** @param {object} catalog  /api/catalog; `attach(client)` gives the connected HallClient. */
  constructor(catalog) {
    this.client = null;
    this.catalog = catalog;
    this.list = document.getElementById("case-list");
    this.empty = document.getElementById("cases-empty");
    this.count = document.getElementById("cases-count");
    this.updated = document.getElementById("cases-updated");
    this.refreshButton = document.getElementById("cases-refresh");
    this.matters = new Map((catalog.matters || []).map((m) => [m.id, m]));
    this.rows = new Map(); // case id -> row
    this.clerks = []; // [{id, name}] for the assign choice
    this._clerkKey = "";
    this._loading = false;
    this.list.addEventListener("submit", (event) => this._onSubmit(event));
    this.list.addEventListener("click", (event) => this._onClick(event));
    this.refreshButton.addEventListener("click", () => this.refresh(true));
  }

  attach(client) {
    this.client = client;
  }

  /** Fetch the open cases (case.list); `loud`: show an error toast on failure. */
  async refresh(loud) {
    if (!this.client || this._loading) return;
    this._loading = true;
    try {
      const ack = await this.client.request("case.list", {});
      this.render(ack.cases || []);
      setText(this.updated, t("cases_updated", { time: clockOf(Date.now() / 1000) }));
    } catch (err) {
      if (loud !== false) showError(err);
    } finally {
      this._loading = false;
    }
  }

  render(cases) {
    const focused = document.activeElement; // a note being typed keeps its focus on a move
    const seen = new Set();
    let index = 0;
    // Overdue first (the hall sends them so; a stable sort keeps its order otherwise).
    const ordered = [...cases].sort((a, b) => Number(!!b.overdue) - Number(!!a.overdue));
    for (const c of ordered) {
      if (seen.has(c.id)) continue;
      seen.add(c.id);
      const row = this.rows.get(c.id) || this._row(c);
      this._fill(row, c);
      // Keep the hall's order (overdue first) while moving as few nodes as possible.
      const at = this.list.children[index];
      if (at !== row.li) this.list.insertBefore(row.li, at || null);
      index += 1;
    }
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.li.remove();
        this.rows.delete(id);
      }
    }
    if (focused && focused !== document.activeElement && this.list.contains(focused)) {
      focused.focus({ preventScroll: true });
    }
    setHidden(this.empty, this.rows.size > 0);
    setText(this.count, this.rows.size ? String(this.rows.size) : "");
  }

  /** One case changed (an action's ack): update its row in place. */
  upsert(c) {
    const row = this.rows.get(c.id);
    if (row) this._fill(row, c);
  }

  /** The clerks offered as assignees (from the wall); options are rebuilt only on change. */
  setClerks(clerks) {
    const list = (clerks || []).map((c) => ({ id: c.id, name: c.name || c.id }));
    const key = list.map((c) => `${c.id}\u0000${c.name}`).join("\u0001");
    if (key === this._clerkKey) return;
    this._clerkKey = key;
    this.clerks = list;
    for (const row of this.rows.values()) this._fillClerks(row.clerkGroup);
  }

  _fillClerks(group) {
    const keep = new Map([...group.children].map((o) => [o.value, o]));
    const wanted = this.clerks.map((c) => {
      const option = keep.get(`clerk:${c.id}`) || h("option", { value: `clerk:${c.id}` });
      setText(option, `${c.name}（${c.id}）`);
      return option;
    });
    group.replaceChildren(...wanted);
    group.hidden = wanted.length === 0;
  }

  _row(c) {
    const number = h("span", { class: "sv-case-number", "data-testid": "case-number" }, "");
    const overdue = h("span", { class: "sv-case-badge sv-case-overdue", hidden: true },
                      t("case_overdue"));
    const escalated = h("span", { class: "sv-case-badge", hidden: true }, t("case_escalated"));
    const state = h("span", { class: "sv-case-state", "data-testid": "case-state" }, "");
    const matter = h("span", { class: "sv-case-matter" }, "");
    const deadline = h("span", { class: "sv-case-deadline" }, "");
    const source = h("span", { class: "sv-case-source" }, "");
    const description = h("p", { class: "sv-case-desc" }, "");

    const selectId = `case-assign-${c.id}`;
    const deptGroup = h("optgroup", { label: t("case_assign_departments") },
                        (this.catalog.departments || []).map(
                          (d) => h("option", { value: `dept:${d.id}` }, nameOf(d))));
    const clerkGroup = h("optgroup", { label: t("case_assign_clerks") });
    this._fillClerks(clerkGroup);
    const select = h("select", { id: selectId, name: "to", "data-testid": "case-assign-to" },
                     h("option", { value: "" }, t("case_assign_pick")), deptGroup, clerkGroup);
    const assign = h("form", { class: "sv-case-form", "data-case-action": "assign",
                               "data-case-id": c.id, "data-testid": "case-assign-form" },
                     h("label", { for: selectId }, t("case_assign_to")), select,
                     h("button", { type: "submit", class: "btn sv-small-btn",
                                   "data-testid": "case-assign" }, t("case_assign")));
    const start = h("button", { type: "button", class: "btn sv-small-btn",
                                "data-case-action": "start", "data-case-id": c.id,
                                "data-testid": "case-start" }, t("case_start"));
    const noteId = `case-note-${c.id}`;
    const note = h("input", { id: noteId, type: "text", name: "note", maxlength: "500",
                              autocomplete: "off", "data-testid": "case-note" });
    const resolve = h("form", { class: "sv-case-form", "data-case-action": "resolve",
                                "data-case-id": c.id, "data-testid": "case-resolve-form" },
                      h("label", { for: noteId }, t("case_note")), note,
                      h("button", { type: "submit", class: "btn sv-small-btn",
                                    "data-testid": "case-resolve" }, t("case_resolve")));
    const error = h("p", { class: "sv-form-error", role: "alert",
                           "data-testid": "case-error" }, "");
    const actions = h("div", { class: "sv-case-actions", role: "group" }, assign, start, resolve,
                      error);
    const li = h("li", { class: "sv-case", "data-case-id": c.id, "data-testid": "case-item" },
                 h("div", { class: "sv-case-head" }, number, overdue, escalated, state),
                 h("div", { class: "sv-case-meta" }, matter, " · ", source, " · ", deadline),
                 description, actions);
    const row = { li, number, overdue, escalated, state, matter, deadline, source, description,
                  actions, assign, start, resolve, select, note, error, clerkGroup, c };
    this.rows.set(c.id, row);
    return row;
  }

  _fill(row, c) {
    row.c = c;
    setText(row.number, c.number || c.id);
    setHidden(row.overdue, !c.overdue);
    setHidden(row.escalated, !c.escalated || !!c.overdue);
    setClass(row.li, "is-overdue", !!c.overdue);
    setData(row.li, "state", c.state);
    setText(row.state, t(`case_state_${c.state}`));
    setText(row.matter, nameOf(this.matters.get(c.matter_id)));
    setText(row.source, t(`case_source_${c.source}`));
    setText(row.deadline, deadlineText(c.deadline));
    setText(row.description, excerpt(c.description));
    setAttr(row.description, "title", c.description || "");
    const allowed = ACTIONS[c.state] || [];
    setHidden(row.assign, !allowed.includes("assign"));
    setHidden(row.start, !allowed.includes("start"));
    setHidden(row.resolve, !allowed.includes("resolve"));
    setHidden(row.actions, allowed.length === 0);
    setAttr(row.actions, "aria-label", t("case_actions", { number: c.number || c.id }));
  }

  _onSubmit(event) {
    const form = event.target.closest("form[data-case-action]");
    if (!form) return;
    event.preventDefault();
    const row = this.rows.get(form.dataset.caseId);
    if (!row) return;
    if (form.dataset.caseAction === "assign") {
      const value = row.select.value;
      if (!value) {
        setText(row.error, t("case_pick_required"));
        row.select.focus();
        return;
      }
      this._act(row, { action: "assign", to: value.slice(value.indexOf(":") + 1) });
    } else {
      const note = row.note.value.trim();
      if (!note) {
        setText(row.error, t("case_note_required"));
        row.note.focus();
        return;
      }
      this._act(row, { action: "resolve", note });
    }
  }

  _onClick(event) {
    const button = event.target.closest("button[data-case-action='start']");
    if (!button) return;
    const row = this.rows.get(button.dataset.caseId);
    if (row) this._act(row, { action: "start" });
  }

  async _act(row, payload) {
    setText(row.error, "");
    const buttons = row.actions.querySelectorAll("button");
    for (const b of buttons) b.disabled = true;
    try {
      const ack = await this.client.request("case.act", { case_id: row.c.id, ...payload });
      const c = ack.case;
      if (payload.action === "resolve") row.note.value = "";
      if (payload.action === "assign") row.select.value = "";
      const text = t("case_done", { number: c.number || c.id, state: t(`case_state_${c.state}`) });
      toast(text);
      announce(text);
      this.upsert(c);
      this.refresh(false);
    } catch (err) {
      showError(err);
      setText(row.error, errorText(err));
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  }
}
