/*
 * Wrap-up in the clerk console: the outcome code of the ticket (rooms/outcomes.py: the codes
 * a clerk may choose), a reason where the code needs one, the wrap-up timer counting down to
 * the clerk's `wrapup_deadline` (server time), "extend" (+60 s, `wrapup.extend`), the overdue
 * warning (`wrapup.overdue`) and "finish" (`wrapup.finish {outcome, reason}`). The form cannot
 * be sent without an outcome (after a transfer the hall has recorded "transferred" already).
 */
import { $, announce, formatDuration, h, showError, t, errorText } from "/static/js/ui.js";
import { matterName } from "/static/js/clerk-common.js";

const OUTCOMES = [
  "resolved",
  "pre_review_passed",
  "pre_review_corrections",
  "referred_offline",
  "callback_no_answer",
  "technical_problem",
  "unresolved",
];
const REASON_REQUIRED = new Set(["referred_offline", "unresolved"]);
const EXTEND_S = 60;

export class WrapupDesk {
  constructor(ctx) {
    this.ctx = ctx;
    this.ticketId = null;
    this.deadline = null;
    this.overdue = false;
    this.transferred = false;
    this.busy = false;
    this.el = {
      ticket: $("#wrapup-ticket"),
      timer: $("#wrapup-timer"),
      extend: $("#wrapup-extend"),
      overdue: $("#wrapup-overdue"),
      transferred: $("#wrapup-transferred"),
      form: $("#wrapup-form"),
      list: $("#outcome-list"),
      reason: $("#wrapup-reason"),
      reasonLabel: $("#wrapup-reason-label"),
      error: $("#wrapup-error"),
      finish: $("#wrapup-finish"),
    };
    this.radios = new Map();
    for (const code of OUTCOMES) {
      const id = `outcome-${code}`;
      const radio = h("input", { type: "radio", name: "outcome", value: code, id,
                                 "data-testid": id, "aria-describedby": `${id}-hint` });
      const row = h("div", { class: "outcome", dataset: { outcome: code } }, radio,
        h("label", { for: id },
          h("span", { class: "outcome-name" }, t(`outcome_${code}`)),
          h("span", { class: "outcome-hint", id: `${id}-hint` }, t(`outcome_${code}_hint`))));
      this.radios.set(code, { radio, row });
      this.el.list.append(row);
    }
    this.el.form.addEventListener("change", () => this.validate());
    this.el.reason.addEventListener("input", () => this.validate());
    this.el.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.finish();
    });
    this.el.extend.addEventListener("click", () => this.extend());
  }

  reset() {
    this.ticketId = null;
    this.deadline = null;
    this.overdue = false;
    for (const { radio } of this.radios.values()) radio.checked = false;
    this.el.reason.value = "";
    this.el.error.textContent = "";
  }

  /** Show the form for the clerk's current wrap-up (kept as it is while the ticket is the same). */
  show({ clerk, ticket, transferred }) {
    if (!clerk) return;
    if (clerk.ticket_id !== this.ticketId) {
      this.reset();
      this.ticketId = clerk.ticket_id;
    }
    this.deadline = clerk.wrapup_deadline || null;
    this.setOverdue(!!clerk.wrapup_overdue);
    this.transferred = !!transferred;
    const tk = ticket && ticket.id === clerk.ticket_id ? ticket : null;
    this.el.ticket.textContent = tk
      ? t("wrapup_ticket", { number: tk.number || "", matter: matterName(this.ctx.catalog, tk.matter_id) })
      : "";
    this.radios.get("callback_no_answer").row.hidden = !(tk && tk.callback);
    this.el.transferred.hidden = !this.transferred;
    this.validate();
    this.tick();
  }

  setOverdue(overdue) {
    this.overdue = overdue;
    this.el.overdue.hidden = !overdue;
  }

  _outcome() {
    const checked = this.el.form.querySelector('input[name="outcome"]:checked');
    return checked ? checked.value : null;
  }

  validate() {
    const outcome = this._outcome();
    const needReason = REASON_REQUIRED.has(outcome);
    this.el.reasonLabel.textContent = needReason ? t("outcome_reason_required")
      : t("outcome_reason");
    this.el.reason.required = needReason;
    this.el.reason.setAttribute("aria-required", needReason ? "true" : "false");
    const ok = (outcome || this.transferred) && !(needReason && !this.el.reason.value.trim());
    this.el.finish.disabled = !ok || this.busy;
    return !!ok;
  }

  tick() {
    if (!this.ticketId) return;
    if (!this.deadline) {
      this.el.timer.textContent = t("unknown");
      return;
    }
    const left = this.deadline - this.ctx.serverNow();
    this.el.timer.textContent = left > 0 ? formatDuration(left) : t("wrapup_time_up");
    this.el.timer.classList.toggle("late", left <= 10);
  }

  async finish() {
    const client = this.ctx.client;
    if (!client || !this.validate()) return;
    const outcome = this._outcome();
    const payload = {};
    if (outcome) payload.outcome = outcome;
    const reason = this.el.reason.value.trim();
    if (reason) payload.reason = reason;
    this.busy = true;
    this.el.finish.disabled = true;
    this.el.error.textContent = "";
    try {
      const ack = await client.request("wrapup.finish", payload);
      announce(t("wrapup_done"));
      this.reset();
      this.ctx.onClerk(ack.clerk);
    } catch (err) {
      this.el.error.textContent = errorText(err);
    } finally {
      this.busy = false;
      this.validate();
    }
  }

  async extend() {
    const client = this.ctx.client;
    if (!client) return;
    try {
      const ack = await client.request("wrapup.extend", { seconds: EXTEND_S });
      this.ctx.onClerk(ack.clerk);
      announce(t("wrapup_extended", { n: EXTEND_S }));
    } catch (err) {
      showError(err);
    }
  }
}
