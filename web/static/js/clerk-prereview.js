/*
 * Pre-review (材料预审) in the clerk console: the matter's material checklist
 * (`prereview.start`), a mark per material (`prereview.mark`: received / acceptable /
 * needs correction with a note / missing / pending), linking the selected shared files and
 * snapshots to a material, and `prereview.finish` with the result and the corrections.
 * The review object: rooms/prereview.py (PreReview.to_dict): {items: [{material_id, name,
 * required, mark, note, file_ids}], result, ...}.
 */
import { $, announce, fill, h, showError, t } from "/static/js/ui.js";
import { materialName, store } from "/static/js/clerk-common.js";

const MARKS = ["received", "acceptable", "needs_correction", "missing", "pending"];
const UNJUDGED = new Set(["pending", "received"]);

export class PreReviewPanel {
  /**
   * @param {object} options
   * @param {object} options.ctx           the console's context (client, catalog...)
   * @param {function} options.selectedFiles  ids of the files selected in the file list
   * @param {function} options.fileName      a file's name by id
   */
  constructor(options) {
    this.ctx = options.ctx;
    this.selectedFiles = options.selectedFiles;
    this.fileName = options.fileName;
    this.sessionId = null;
    this.matterId = null;
    this.review = null;
    this.result = null; // {result, corrections, url} once finished
    this.rows = new Map(); // material id -> {li, buttons, note, error, files, link, badge}
    this.el = {
      start: $("#prereview-start"),
      intro: $("#prereview-intro"),
      list: $("#prereview-list"),
      blocking: $("#prereview-blocking"),
      finish: $("#prereview-finish"),
      result: $("#prereview-result"),
    };
    this.el.start.addEventListener("click", () => this.start(false));
    this.el.finish.addEventListener("click", () => this.finish());
  }

  open(session, ticket) {
    this.sessionId = session.id;
    this.matterId = (ticket && ticket.matter_id) || session.matter_id;
    this.review = null;
    this.result = null;
    this.rows = new Map();
    fill(this.el.list);
    const saved = store.get("prereview");
    if (saved && saved.sessionId === session.id) {
      this.review = saved.review || null;
      this.result = saved.result || null;
      if (this.review && !this.result) this.start(true); // the review under way, fresh
    }
    this.render();
  }

  close() {
    this.sessionId = null;
  }

  _save() {
    store.set("prereview", { sessionId: this.sessionId, review: this.review, result: this.result });
  }

  _client() {
    return this.ctx.client;
  }

  async start(silent) {
    const client = this._client();
    if (!client || !this.sessionId) return;
    const sessionId = this.sessionId;
    try {
      const ack = await client.request("prereview.start", { session_id: sessionId });
      if (sessionId !== this.sessionId) return;
      this.review = ack.prereview;
      this._save();
      this.render();
      if (!silent) {
        announce(t("prereview_started"));
        const first = this.el.list.querySelector("button");
        if (first) first.focus();
      }
    } catch (err) {
      if (!silent) showError(err);
    }
  }

  _item(materialId) {
    return ((this.review && this.review.items) || []).find((i) => i.material_id === materialId);
  }

  async mark(materialId, mark, fileIds) {
    const client = this._client();
    const item = this._item(materialId);
    const row = this.rows.get(materialId);
    if (!client || !item || !row || this.result) return;
    const note = row.note.value.trim();
    row.error.hidden = true;
    if (mark === "needs_correction" && !note) {
      row.error.textContent = t("prereview_note_required");
      row.error.hidden = false;
      row.note.setAttribute("aria-invalid", "true");
      row.note.focus();
      return;
    }
    row.note.removeAttribute("aria-invalid");
    const payload = { session_id: this.sessionId, material_id: materialId, mark };
    if (note) payload.note = note;
    if (fileIds) payload.file_ids = fileIds;
    const sessionId = this.sessionId;
    try {
      const ack = await client.request("prereview.mark", payload);
      if (sessionId !== this.sessionId) return;
      this.review = ack.prereview;
      this._save();
      this.render();
      const name = this._name(item);
      announce(fileIds ? t("prereview_linked", { name, n: fileIds.length })
        : t("prereview_marked", { name, mark: t(`mark_${mark}`) }));
    } catch (err) {
      showError(err);
    }
  }

  async finish() {
    const client = this._client();
    if (!client || !this.review || this.result) return;
    const sessionId = this.sessionId;
    this.el.finish.disabled = true;
    try {
      const ack = await client.request("prereview.finish", { session_id: sessionId });
      if (sessionId !== this.sessionId) return;
      this.review = ack.prereview;
      this.result = { result: ack.result, corrections: ack.corrections || [], url: ack.url };
      this._save();
      this.render();
      announce(t("prereview_finished", { result: t(`result_${ack.result}`) }));
      this.el.result.setAttribute("tabindex", "-1");
      this.el.result.focus();
    } catch (err) {
      showError(err);
      this.render();
    }
  }

  /** The file selection changed: the "link" buttons follow it. */
  selectionChanged() {
    const n = this.selectedFiles().length;
    for (const row of this.rows.values()) {
      row.link.disabled = !!this.result || n === 0;
      row.link.textContent = t("prereview_link", { n });
    }
  }

  _name(item) {
    return materialName(this.ctx.catalog, this.matterId, item.material_id, item.name);
  }

  _buildRow(item) {
    const name = this._name(item);
    const id = `pr-${item.material_id}`;
    const badge = h("span", { class: "mark-badge" });
    const buttons = MARKS.map((mark) => h("button", {
      type: "button", class: `btn btn-mark mark-${mark}`, dataset: { mark },
      "aria-pressed": "false", onclick: () => this.mark(item.material_id, mark),
    }, t(`mark_${mark}`)));
    const note = h("input", {
      type: "text", id: `${id}-note`, class: "check-note-input", maxlength: "300",
      placeholder: t("prereview_note_placeholder"), autocomplete: "off",
      "aria-describedby": `${id}-error`,
    });
    const error = h("p", { class: "form-error small", id: `${id}-error`, hidden: true });
    const files = h("span", { class: "check-files muted small" });
    const link = h("button", {
      type: "button", class: "btn btn-small btn-link-files",
      onclick: () => {
        const current = this._item(item.material_id);
        const ids = this.selectedFiles();
        if (current && ids.length) this.mark(item.material_id, current.mark, ids);
      },
    }, t("prereview_link", { n: 0 }));
    const li = h("li", { class: "check-item", dataset: { materialId: item.material_id } },
      h("div", { class: "check-head" },
        h("span", { class: "check-name", id: `${id}-name` }, name),
        h("span", { class: `tag ${item.required ? "tag-required" : "tag-optional"}` },
          t(item.required ? "material_required" : "material_optional")),
        badge),
      h("div", { class: "mark-buttons", role: "group", "aria-labelledby": `${id}-name` }, buttons),
      h("div", { class: "check-note" },
        h("label", { class: "sr-only", for: `${id}-note` }, t("prereview_note_label", { name })),
        note),
      error,
      h("div", { class: "check-files-row" }, files, link));
    return { li, buttons, note, error, files, link, badge };
  }

  render() {
    const review = this.review;
    const finished = !!this.result;
    this.el.start.hidden = !!review || !this.sessionId;
    this.el.intro.hidden = !!review;
    if (!review) {
      fill(this.el.list);
      this.rows = new Map();
      this.el.blocking.hidden = true;
      this.el.finish.hidden = true;
      this.el.result.hidden = true;
      return;
    }
    const items = review.items || [];
    if ([...this.rows.keys()].join("|") !== items.map((i) => i.material_id).join("|")) {
      this.rows = new Map(items.map((item) => [item.material_id, this._buildRow(item)]));
      fill(this.el.list, [...this.rows.values()].map((row) => row.li));
    }
    for (const item of items) {
      const row = this.rows.get(item.material_id);
      row.li.dataset.mark = item.mark;
      row.badge.textContent = t(`mark_${item.mark}`);
      row.badge.className = `mark-badge mark-badge-${item.mark}`;
      for (const button of row.buttons) {
        button.setAttribute("aria-pressed", button.dataset.mark === item.mark ? "true" : "false");
        button.disabled = finished;
      }
      if (document.activeElement !== row.note) row.note.value = item.note || "";
      row.note.disabled = finished;
      const linked = item.file_ids || [];
      row.files.textContent = linked.length
        ? t("prereview_files", { names: linked.map((id) => this.fileName(id)).join("、") }) : "";
    }
    this.selectionChanged();
    const blocking = items.filter((i) => i.required && UNJUDGED.has(i.mark));
    this.el.blocking.hidden = finished || blocking.length === 0;
    this.el.blocking.textContent = t("prereview_blocking", { n: blocking.length });
    this.el.finish.hidden = finished;
    this.el.finish.disabled = blocking.length > 0;
    this._renderResult();
  }

  _renderResult() {
    const box = this.el.result;
    if (!this.result) {
      box.hidden = true;
      fill(box);
      return;
    }
    const { result, corrections, url } = this.result;
    const notes = new Map(((this.review && this.review.items) || [])
      .map((i) => [i.material_id, i.note]));
    box.hidden = false;
    box.dataset.result = result;
    fill(box,
      h("h4", { class: `result-title result-${result}` },
        t("prereview_result", { result: t(`result_${result}`) })),
      corrections.length ? h("ul", { class: "corrections" }, corrections.map((c) => {
        const note = notes.get(c.material_id);
        const name = materialName(this.ctx.catalog, this.matterId, c.material_id, c.name);
        return h("li", { dataset: { materialId: c.material_id, action: c.action } },
          h("strong", {}, t(`correction_${c.action}`)), " ", name, note ? `（${note}）` : "");
      })) : h("p", { class: "muted" }, t("prereview_no_corrections")),
      url ? h("a", { href: url, target: "_blank", rel: "noopener", class: "correction-link" },
        t("prereview_print")) : null);
  }
}
