/*
 * Inline preview of a shared file (docs/protocol.md, "Shared files"): images in an <img> from a
 * blob URL, PDFs rendered page by page with pdf.js (/vendor/pdf.min.mjs, loaded on first use)
 * to a <canvas> with previous/next page buttons, anything else as a download only.
 *
 *   import { FilePreview } from "/static/js/file-preview.js";
 *   const preview = new FilePreview(container, { labels: {...} });   // see LABEL_NAMES
 *   await preview.show({ blob, filename, contentType });
 *   preview.clear();
 *
 * The module has no strings of its own: each page passes its labels (from its i18n file), so
 * any page can import it. It builds DOM with textContent only and sets no inline style in
 * markup (sizes are set from script, which the pages' CSP allows); classes file-preview-*
 * are there for a page's own CSS.
 * Hooks for tests: the container gets data-state = "empty" | "loading" | "image" | "pdf" |
 * "download" | "error", and data-page / data-pages while a PDF is shown.
 */

const PDF_LIB = "/vendor/pdf.min.mjs";
const PDF_WORKER = "/vendor/pdf.worker.min.mjs";

/** The labels a page passes, all of them (values may hold {n}, {total}, {name}): the texts
 * come from the page's i18n file; a missing one shows its name, like ui.js t() does. */
export const LABEL_NAMES = ["loading", "previous", "next", "page", "download", "noPreview",
                            "failed", "pdfCanvas"];

const IMAGE_TYPES = new Set(["image/jpeg", "image/png", "image/webp", "image/gif"]);

/** What a preview can show for a content type: "image", "pdf" or "download". */
export function previewKind(contentType) {
  const type = String(contentType || "").split(";")[0].trim().toLowerCase();
  if (IMAGE_TYPES.has(type)) return "image";
  if (type === "application/pdf") return "pdf";
  return "download";
}

let pdfLib = null;
/** pdf.js, imported once (it is large: only pages that preview a PDF load it). */
export function loadPdfJs() {
  if (!pdfLib) {
    pdfLib = import(PDF_LIB).then((lib) => {
      lib.GlobalWorkerOptions.workerSrc = PDF_WORKER;
      return lib;
    });
    pdfLib.catch(() => { pdfLib = null; });
  }
  return pdfLib;
}

function fillText(template, values) {
  return String(template).replace(/\{(\w+)\}/g, (whole, name) => (name in values
    ? String(values[name]) : whole));
}

function el(tag, attrs, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") element.className = value;
    else if (name === "text") element.textContent = value;
    else if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) element.append(child);
  }
  return element;
}

export class FilePreview {
  /**
   * @param {HTMLElement} container  emptied and filled by the preview
   * @param {object} [options]
   * @param {object} [options.labels]   texts, see LABEL_NAMES
   * @param {number} [options.maxWidth] widest CSS width of a PDF page (default: the container's)
   */
  constructor(container, options) {
    const opts = options || {};
    this.container = container;
    this.labels = Object.fromEntries(LABEL_NAMES.map((name) => [name, name]));
    Object.assign(this.labels, opts.labels || {});
    this.maxWidth = opts.maxWidth || 0;
    this._url = null;
    this._doc = null;
    this._token = 0; // each show() outdates the work of the previous one
    this._renderTask = null;
    this.container.classList.add("file-preview");
    this.clear();
  }

  /** Show a file; resolves once the first view is on screen (or failed, shown as such). */
  async show({ blob, filename, contentType }) {
    this.clear();
    const token = ++this._token;
    const name = filename || "file";
    const type = contentType || blob.type;
    const kind = previewKind(type);
    this._url = URL.createObjectURL(blob);
    this.filename = name;
    if (kind === "image") return this._showImage(token, name);
    if (kind === "pdf") return this._showPdf(token, blob, name);
    this._state("download");
    this.container.append(el("p", { class: "file-preview-note", text: this.labels.noPreview }),
                          this._downloadLink(name));
    return undefined;
  }

  /** Remove what is shown and free its memory. */
  clear() {
    this._token += 1;
    if (this._renderTask) {
      try { this._renderTask.cancel(); } catch (err) { /* already done */ }
      this._renderTask = null;
    }
    if (this._doc) {
      this._doc.destroy().catch(() => {});
      this._doc = null;
    }
    if (this._url) URL.revokeObjectURL(this._url);
    this._url = null;
    this.page = 0;
    this.pages = 0;
    delete this.container.dataset.page;
    delete this.container.dataset.pages;
    this.container.replaceChildren();
    this._state("empty");
  }

  _state(state) {
    this.container.dataset.state = state;
  }

  _downloadLink(name) {
    return el("a", { class: "btn file-preview-download", href: this._url, download: name,
                     text: fillText(this.labels.download, { name }) });
  }

  _showImage(token, name) {
    this._state("loading");
    const img = el("img", { class: "file-preview-image", alt: name, src: this._url });
    // Sane without the page's CSS too (a page importing this module may have none for it).
    img.style.maxWidth = "100%";
    img.style.height = "auto";
    this.container.append(img, this._downloadLink(name));
    return new Promise((resolve) => {
      const done = (ok) => {
        if (token !== this._token) return resolve();
        this._state(ok ? "image" : "error");
        if (!ok) img.replaceWith(el("p", { class: "file-preview-note", text: this.labels.failed }));
        resolve();
      };
      img.addEventListener("load", () => done(true), { once: true });
      img.addEventListener("error", () => done(false), { once: true });
    });
  }

  async _showPdf(token, blob, name) {
    this._state("loading");
    const status = el("p", { class: "file-preview-note", role: "status", text: this.labels.loading });
    this.container.append(status);
    try {
      const lib = await loadPdfJs();
      const data = new Uint8Array(await blob.arrayBuffer());
      if (token !== this._token) return;
      // isEvalSupported: false keeps pdf.js within the pages' CSP (no eval for fonts).
      const doc = await lib.getDocument({
        data,
        isEvalSupported: false,
        // Served by the hall (/vendor/…): Chinese PDFs without embedded fonts need the
        // character maps, and the standard fonts keep text from falling back to nothing.
        cMapUrl: "/vendor/pdfjs-cmaps/",
        cMapPacked: true,
        standardFontDataUrl: "/vendor/pdfjs-fonts/",
      }).promise;
      if (token !== this._token) {
        doc.destroy().catch(() => {});
        return;
      }
      this._doc = doc;
      this.pages = doc.numPages;
      this.canvas = el("canvas", { class: "file-preview-canvas", role: "img" });
      this.canvas.style.maxWidth = "100%";
      this.canvas.style.height = "auto";
      this.pageLabel = el("span", { class: "file-preview-page", "aria-live": "polite" });
      this.prevButton = el("button", { type: "button", class: "btn", text: this.labels.previous,
                                       onclick: () => this.goTo(this.page - 1) });
      this.nextButton = el("button", { type: "button", class: "btn", text: this.labels.next,
                                       onclick: () => this.goTo(this.page + 1) });
      const nav = el("div", { class: "file-preview-nav" }, this.prevButton, this.pageLabel,
                     this.nextButton);
      status.remove();
      this.container.append(nav, el("div", { class: "file-preview-sheet" }, this.canvas),
                            this._downloadLink(name));
      this.container.dataset.pages = String(this.pages);
      await this._render(1, token);
    } catch (err) {
      if (token !== this._token) return;
      status.textContent = this.labels.failed;
      this._state("error");
      if (!this.container.querySelector("a")) this.container.append(this._downloadLink(name));
    }
  }

  /** Show page n (1-based) of the PDF on screen; a failure is shown, not thrown. */
  async goTo(n, token) {
    try {
      await this._render(n, token || this._token);
    } catch (err) {
      if (this._doc) this._state("error");
    }
  }

  async _render(n, current) {
    if (!this._doc || n < 1 || n > this.pages) return;
    if (this._renderTask) {
      try { this._renderTask.cancel(); } catch (err) { /* already done */ }
      this._renderTask = null;
    }
    this.page = n;
    this.container.dataset.page = String(n);
    const text = fillText(this.labels.page, { n, total: this.pages });
    this.pageLabel.textContent = text;
    this.prevButton.disabled = n <= 1;
    this.nextButton.disabled = n >= this.pages;
    this.canvas.setAttribute("aria-label", fillText(this.labels.pdfCanvas,
                                                    { n, name: this.filename }));
    const page = await this._doc.getPage(n);
    if (current !== this._token) return;
    const base = page.getViewport({ scale: 1 });
    const width = Math.max(120, this.maxWidth || this.container.clientWidth || base.width);
    const scale = Math.min(3, width / base.width);
    const ratio = window.devicePixelRatio || 1;
    const viewport = page.getViewport({ scale: scale * ratio });
    const canvas = this.canvas;
    canvas.width = Math.floor(viewport.width);
    canvas.height = Math.floor(viewport.height);
    // Only the width: the height follows the canvas's own aspect ratio (CSS height: auto),
    // also when a narrower container scales it down (max-width: 100%).
    canvas.style.width = `${Math.floor(viewport.width / ratio)}px`;
    const context = canvas.getContext("2d");
    context.fillStyle = "#ffffff"; // PDF pages are paper: transparent areas show white
    context.fillRect(0, 0, canvas.width, canvas.height);
    const task = page.render({ canvasContext: context, viewport });
    this._renderTask = task;
    try {
      await task.promise;
    } catch (err) {
      if (err && err.name === "RenderingCancelledException") return;
      throw err;
    } finally {
      if (this._renderTask === task) this._renderTask = null;
    }
    if (current === this._token) this._state("pdf");
  }
}
