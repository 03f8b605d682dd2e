/*
 * The clerk console's session: the resident's video (and screen share / document camera),
 * own preview, microphone / camera / screen share, snapshots, shared files with inline
 * preview, the pre-review checklist (clerk-prereview.js), chat, notes, transfer and end.
 * Media itself is HallClient's (hall-client.js): this module shows it and drives the controls.
 */
import { HallError } from "/static/js/hall-client.js";
import {
  $, announce, chatPanel, files, fill, formatClock, formatDuration, h, nameOf, showError, t,
  toast,
} from "/static/js/ui.js";
import {
  callbackText, displayName, formatSize, matterName, stamp, ticketTags,
} from "/static/js/clerk-common.js";
import { FilePreview } from "/static/js/file-preview.js";
import { PreReviewPanel } from "/static/js/clerk-prereview.js";

export class SessionDesk {
  constructor(ctx) {
    this.ctx = ctx;
    this.session = null;
    this.ticket = null;
    this.files = new Map(); // id -> file
    this.selected = new Set(); // file ids chosen to link to a material
    this.blobs = new Map(); // id -> Blob (previews, fetched once)
    this.previewing = null;
    this.monitors = new Map(); // supervisor participant -> name (or null)
    this.notes = [];
    this.startedAt = 0;
    this.micOn = true;
    this.cameraOn = true;
    this.chat = null;
    this.peerTimer = null;
    this.el = {
      number: $("#session-number"),
      matter: $("#session-matter"),
      tags: $("#session-tags"),
      duration: $("#session-duration"),
      callback: $("#session-callback"),
      peer: $("#peer-banner"),
      monitor: $("#monitor-indicator"),
      stage: $("#stage"),
      stageWaiting: $("#stage-waiting"),
      remoteVideo: $("#remote-video"),
      remoteScreen: $("#remote-screen"),
      mic: $("#btn-mic"),
      camera: $("#btn-camera"),
      share: $("#btn-share"),
      swap: $("#btn-swap"),
      unmute: $("#btn-unmute-remote"),
      snapshot: $("#btn-snapshot"),
      end: $("#btn-end"),
      fileList: $("#file-list"),
      filesEmpty: $("#files-empty"),
      upload: $("#file-upload"),
      uploadButton: $("#file-upload-button"),
      preview: $("#file-preview"),
      chatBox: $("#chat-box"),
      noteForm: $("#note-form"),
      noteText: $("#note-text"),
      noteList: $("#note-list"),
      transferPanel: $("#transfer-panel"),
      transferForm: $("#transfer-form"),
      transferMatter: $("#transfer-matter"),
      transferMatterField: $("#transfer-matter-field"),
      transferClerk: $("#transfer-clerk"),
      transferClerkField: $("#transfer-clerk-field"),
      transferClerks: $("#transfer-clerks"),
      transferWait: $("#transfer-wait"),
      transferNote: $("#transfer-note"),
    };
    this.preview = new FilePreview(this.el.preview, {
      labels: {
        loading: t("preview_loading"),
        previous: t("preview_previous"),
        next: t("preview_next"),
        page: t("preview_page"),
        download: t("preview_download"),
        noPreview: t("preview_none"),
        failed: t("preview_failed"),
        pdfCanvas: t("preview_canvas"),
      },
    });
    this.prereview = new PreReviewPanel({
      ctx,
      selectedFiles: () => [...this.selected].filter((id) => this.files.has(id)),
      fileName: (id) => displayName((this.files.get(id) || {}).filename || id),
    });
    this._bind();
  }

  // ------------------------------------------------------------------ lifecycle

  /** A new HallClient (each login): the chat panel and the session's server events. */
  attach(client) {
    this.client = client;
    this.chat = chatPanel(client);
    const input = this.chat.element.querySelector("input");
    if (input) {
      input.id = "chat-input";
      input.dataset.testid = "chat-input";
    }
    const send = this.chat.element.querySelector("button[type=submit]");
    if (send) send.dataset.testid = "chat-send";
    fill(this.el.chatBox, this.chat.element);
    const mine = (fn) => (payload) => {
      if (this.client === client) fn(payload || {});
    };
    client.on("session.peer", mine((p) => this._onPeer(p)));
    client.on("monitor.joined", mine((p) => this._onMonitor(p, true)));
    client.on("monitor.left", mine((p) => this._onMonitor(p, false)));
    client.on("file.added", mine((p) => this._onFileAdded(p)));
    client.on("file.removed", mine((p) => this._onFileRemoved(p)));
    client.on("remote-media", mine((p) => this._onRemoteMedia(p)));
    client.on("screen", mine(({ active }) => {
      this.el.share.textContent = active ? t("stop_share") : t("share_screen");
    }));
    client.on("media-error", mine(({ audio, video }) => {
      toast(!audio && !video ? t("media_error_none") : t("media_error_camera"), "error");
    }));
  }

  /** Show a session (a fresh one, or the one the welcome restores after a reload). */
  open(session, ticket) {
    const same = this.session && this.session.id === session.id;
    this.session = session;
    this.ticket = ticket || this.ticket;
    if (same) {
      this._renderHead();
      return;
    }
    this.startedAt = performance.now();
    this.files = new Map();
    this.selected = new Set();
    this.blobs = new Map();
    this.previewing = null;
    this.preview.clear();
    this.monitors = new Map((session.monitors || []).map((id) => [id, null]));
    this.notes = Array.isArray(session.notes) ? [...session.notes] : [];
    this.micOn = true;
    this.cameraOn = true;
    this._renderControls();
    this.el.stage.dataset.layout = "camera";
    this.el.stage.dataset.large = "camera";
    this.el.swap.hidden = true;
    this.el.unmute.hidden = true;
    this.el.stageWaiting.hidden = false;
    this.el.peer.hidden = true;
    this.el.noteText.value = "";
    this.el.transferPanel.open = false;
    this.el.transferNote.value = "";
    this.el.transferClerk.value = "";
    if (this.chat) this.chat.reset(session);
    this._renderHead();
    this._renderMonitors();
    this._renderNotes();
    this._renderFiles();
    this._fillTransferMatters();
    this.prereview.open(session, this.ticket);
    this._loadFiles(session.id);
  }

  /** The session ended (wrap-up follows). */
  close() {
    this.session = null;
    this.preview.clear();
    this.previewing = null;
    this.prereview.close();
    clearTimeout(this.peerTimer);
  }

  /** Logged out: forget everything. */
  reset() {
    this.close();
    this.ticket = null;
    this.files = new Map();
    this.selected = new Set();
    this.blobs = new Map();
    this.notes = [];
    this.monitors = new Map();
    fill(this.el.fileList);
    fill(this.el.noteList);
    fill(this.el.chatBox);
    this.chat = null;
    this.client = null;
  }

  updateTicket(ticket) {
    if (!this.session || !ticket || ticket.id !== this.session.id) return;
    this.ticket = ticket;
    this._renderHead();
  }

  tick() {
    if (!this.session) return;
    this.el.duration.textContent = formatDuration((performance.now() - this.startedAt) / 1000);
  }

  // ------------------------------------------------------------------ rendering

  _renderHead() {
    const ticket = this.ticket || {};
    const session = this.session || {};
    this.el.number.textContent = ticket.number || "";
    this.el.matter.textContent = matterName(this.ctx.catalog, ticket.matter_id || session.matter_id);
    const peer = session.peer && session.peer.name
      ? h("span", { class: "tag tag-peer" }, t("peer_name", { name: session.peer.name })) : null;
    const channel = ticket.channel
      ? h("span", { class: "tag tag-channel" }, t(`channel_${ticket.channel}`)) : null;
    fill(this.el.tags, ticketTags(ticket), channel, peer);
    const callback = callbackText(ticket);
    this.el.callback.hidden = !callback;
    this.el.callback.textContent = callback;
  }

  _renderControls() {
    // The label says the state ("Microphone: off"); the title says what a click does.
    this.el.mic.textContent = this.micOn ? t("mic_on") : t("mic_off");
    this.el.mic.title = this.micOn ? t("mic_mute") : t("mic_unmute");
    this.el.mic.classList.toggle("is-off", !this.micOn);
    this.el.camera.textContent = this.cameraOn ? t("camera_on") : t("camera_off");
    this.el.camera.title = this.cameraOn ? t("camera_stop") : t("camera_start");
    this.el.camera.classList.toggle("is-off", !this.cameraOn);
    const sharing = this.client && this.client.screen;
    this.el.share.textContent = sharing ? t("stop_share") : t("share_screen");
  }

  _renderMonitors() {
    const names = [...this.monitors.values()].map((name) => name || t("supervisor_unknown"));
    this.el.monitor.hidden = names.length === 0;
    this.el.monitor.textContent = names.length ? t("monitor_listening", { names: names.join("、") })
      : "";
  }

  _renderNotes() {
    const items = [...this.notes].sort((a, b) => (a.at || 0) - (b.at || 0));
    fill(this.el.noteList, items.map((note) => h("li", { class: "note", dataset: { noteId: note.id } },
      h("time", { class: "note-time" }, note.at ? formatClock(note.at) : ""),
      h("span", { class: "note-text" }, note.text))));
  }

  _renderFiles() {
    const items = [...this.files.values()].sort((a, b) => (a.uploaded_at || 0) - (b.uploaded_at || 0));
    fill(this.el.fileList, items.map((file) => {
      const name = displayName(file.filename);
      const box = h("input", {
        type: "checkbox", id: `file-select-${file.id}`, class: "file-select",
        "aria-label": t("file_select", { name }),
        onchange: (event) => {
          if (event.target.checked) this.selected.add(file.id);
          else this.selected.delete(file.id);
          this.prereview.selectionChanged();
        },
      });
      box.checked = this.selected.has(file.id);
      return h("li", {
        class: "file-item", dataset: { fileId: file.id, kind: file.kind || "upload" },
        "aria-current": this.previewing === file.id ? "true" : null,
      },
      box,
      h("button", { type: "button", class: "file-open", "data-testid": "file-open",
                    onclick: () => this.showFile(file.id) }, name),
      file.kind === "snapshot" ? h("span", { class: "tag tag-snapshot" }, t("kind_snapshot")) : null,
      h("span", { class: "file-meta" },
        `${this._who(file.uploaded_by)} · ${formatSize(file.size)} · ${formatClock(file.uploaded_at)}`));
    }));
    this.el.filesEmpty.hidden = items.length > 0;
  }

  _who(participant) {
    const id = String(participant || "");
    if (this.client && id === this.client.participant) return t("by_me");
    if (id.startsWith("clerk:")) return t("by_clerk");
    if (id.startsWith("supervisor:")) return t("by_supervisor");
    return t("by_resident");
  }

  // ------------------------------------------------------------------ files

  async _loadFiles(sessionId) {
    try {
      const list = await files.list(sessionId, this.ctx.token());
      if (!this.session || this.session.id !== sessionId) return;
      for (const file of list) this.files.set(file.id, file);
      this._renderFiles();
    } catch (err) {
      showError(err);
    }
  }

  _addFile(file, show) {
    if (!file || !file.id) return;
    this.files.set(file.id, file);
    this._renderFiles();
    if (show || !this.previewing) this.showFile(file.id);
  }

  _onFileAdded({ ticket_id: ticketId, file }) {
    if (!this.session || ticketId !== this.session.id || !file) return;
    announce(t("file_added", { name: displayName(file.filename) }));
    this._addFile(file, false);
  }

  _onFileRemoved({ ticket_id: ticketId, file_id: fileId }) {
    if (!this.session || ticketId !== this.session.id || !this.files.has(fileId)) return;
    this.files.delete(fileId);
    this.selected.delete(fileId);
    this.blobs.delete(fileId);
    if (this.previewing === fileId) this.previewing = null;
    this._renderFiles();
    this.prereview.selectionChanged();
  }

  /** Preview a shared file inline (the bytes are fetched once with the hall token). */
  async showFile(fileId) {
    const file = this.files.get(fileId);
    if (!file || !this.session) return;
    this.previewing = fileId;
    this._renderFiles();
    try {
      let blob = this.blobs.get(fileId);
      if (!blob) {
        blob = await files.blob(this.session.id, fileId, this.ctx.token());
        this.blobs.set(fileId, blob);
      }
      if (this.previewing !== fileId) return;
      this.el.preview.dataset.fileId = fileId;
      await this.preview.show({ blob, filename: displayName(file.filename),
                                contentType: file.content_type });
    } catch (err) {
      showError(err);
    }
  }

  async _upload(list) {
    if (!this.session) return;
    const sessionId = this.session.id;
    for (const file of list) {
      try {
        const stored = await files.upload(sessionId, this.ctx.token(), file, file.name);
        if (this.session && this.session.id === sessionId) this._addFile(stored, true);
        toast(t("file_uploaded", { name: displayName(stored.filename) }));
      } catch (err) {
        showError(err);
      }
    }
  }

  /** Capture the resident's current frame (screen share when it is the large view) as PNG. */
  async snapshot() {
    if (!this.session) return;
    const sessionId = this.session.id;
    const stage = this.el.stage;
    const useScreen = stage.dataset.layout === "screen" && stage.dataset.large === "screen";
    const video = useScreen ? this.el.remoteScreen : this.el.remoteVideo;
    if (!video.srcObject || !video.videoWidth || !video.videoHeight) {
      toast(t("snapshot_no_video"), "error");
      return;
    }
    this.el.snapshot.disabled = true;
    try {
      const canvas = document.createElement("canvas");
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
      if (!blob) throw new HallError("snapshot_failed", "the frame could not be encoded");
      const name = `snapshot-${stamp()}.png`;
      const stored = await files.upload(sessionId, this.ctx.token(), blob, name, "snapshot");
      if (this.session && this.session.id === sessionId) this._addFile(stored, true);
      announce(t("snapshot_saved", { name }));
      toast(t("snapshot_saved", { name }));
    } catch (err) {
      showError(err);
    } finally {
      this.el.snapshot.disabled = false;
    }
  }

  // ------------------------------------------------------------------ media

  _onRemoteMedia({ camera, screen }) {
    const stage = this.el.stage;
    const had = stage.dataset.layout === "screen";
    stage.dataset.layout = screen ? "screen" : "camera";
    if (screen && !had) {
      stage.dataset.large = "screen";
      announce(t("screen_started"));
    } else if (!screen) {
      stage.dataset.large = "camera";
      if (had) announce(t("screen_stopped"));
    }
    this.el.swap.hidden = !screen;
    this.el.stageWaiting.hidden = !!(camera || screen);
    if (camera) this._playWithSound();
  }

  /** Autoplay with sound may be refused after a reload (no click yet): play muted and offer a
   * button that turns the sound on. */
  _playWithSound() {
    const video = this.el.remoteVideo;
    if (!video.srcObject) return;
    const attempt = video.play();
    if (!attempt || !attempt.catch) return;
    attempt.catch((err) => {
      if (!err || err.name !== "NotAllowedError") return;
      video.muted = true;
      video.play().catch(() => {});
      this.el.unmute.hidden = false;
    });
  }

  _onPeer({ session_id: sessionId, state }) {
    if (!this.session || sessionId !== this.session.id) return;
    clearTimeout(this.peerTimer);
    const text = state === "reconnecting" ? t("peer_reconnecting") : t("peer_back");
    this.el.peer.hidden = false;
    this.el.peer.textContent = text;
    this.el.peer.dataset.state = state;
    this.el.peer.classList.toggle("banner-bad", state === "reconnecting");
    if (state !== "reconnecting") {
      this.peerTimer = setTimeout(() => { this.el.peer.hidden = true; }, 4000);
    }
  }

  _onMonitor({ session_id: sessionId, supervisor, name }, joined) {
    if (!this.session || sessionId !== this.session.id) return;
    if (joined) this.monitors.set(supervisor, name || null);
    else this.monitors.delete(supervisor);
    this._renderMonitors();
  }

  // ------------------------------------------------------------------ notes, transfer, end

  _fillTransferMatters() {
    const catalog = this.ctx.catalog;
    const select = this.el.transferMatter;
    const current = (this.ticket && this.ticket.matter_id) || (this.session && this.session.matter_id);
    const groups = [h("option", { value: "" }, t("transfer_choose_matter"))];
    if (catalog) {
      for (const department of catalog.departments || []) {
        const matters = (catalog.matters || []).filter((m) => m.department_id === department.id);
        if (!matters.length) continue;
        groups.push(h("optgroup", { label: nameOf(department) },
          matters.map((m) => h("option", { value: m.id, disabled: m.id === current }, nameOf(m)))));
      }
    }
    fill(select, groups);
  }

  async _fillTransferClerks() {
    try {
      // The staff directory (names, states) comes only with the hall token.
      const response = await fetch("/api/queues", {
        headers: { Authorization: `Bearer ${this.ctx.token()}` },
      });
      if (!response.ok) return;
      const data = await response.json();
      const clerks = (data && Array.isArray(data.clerks) ? data.clerks : [])
        .filter((c) => c.id !== this.ctx.me);
      fill(this.el.transferClerks, clerks.map((c) => h("option", {
        value: c.id, label: `${c.name || c.id} · ${t(`state_${c.state}`)}`,
      })));
    } catch (err) {
      /* the field still takes a typed clerk id */
    }
  }

  _syncTransferKind() {
    const toClerk = $("#transfer-kind-clerk").checked;
    this.el.transferMatterField.hidden = toClerk;
    this.el.transferClerkField.hidden = !toClerk;
  }

  async _transfer() {
    if (!this.session || !this.ctx.client) return;
    const toClerk = $("#transfer-kind-clerk").checked;
    const payload = { session_id: this.session.id, allow_wait: this.el.transferWait.checked };
    let target;
    if (toClerk) {
      const id = this.el.transferClerk.value.trim();
      if (!id) {
        toast(t("transfer_need_clerk"), "error");
        this.el.transferClerk.focus();
        return;
      }
      payload.to_clerk = id;
      target = id;
    } else {
      const id = this.el.transferMatter.value;
      if (!id) {
        toast(t("transfer_need_matter"), "error");
        this.el.transferMatter.focus();
        return;
      }
      payload.to_matter = id;
      target = matterName(this.ctx.catalog, id);
    }
    const note = this.el.transferNote.value.trim();
    if (note) payload.note = note;
    if (!(await this.ctx.confirm(t("transfer_confirm", { target }), t("transfer_submit")))) return;
    try {
      const ack = await this.ctx.client.request("session.transfer", payload);
      this.ctx.onTicket(ack.ticket);
      announce(t("transfer_done", { target }));
      toast(t("transfer_done", { target }));
    } catch (err) {
      showError(err);
    }
  }

  async _end() {
    if (!this.session || !this.ctx.client) return;
    const sessionId = this.session.id;
    if (!(await this.ctx.confirm(t("end_confirm"), t("end_session")))) return;
    try {
      const ack = await this.ctx.client.request("session.end", { session_id: sessionId });
      this.ctx.onTicket(ack.ticket);
    } catch (err) {
      showError(err);
    }
  }

  // ------------------------------------------------------------------ controls

  _bind() {
    const el = this.el;
    el.mic.addEventListener("click", () => {
      this.micOn = !this.micOn;
      if (this.ctx.client) this.ctx.client.setMicEnabled(this.micOn);
      this._renderControls();
      announce(this.micOn ? t("mic_on") : t("mic_off"));
    });
    el.camera.addEventListener("click", () => {
      this.cameraOn = !this.cameraOn;
      if (this.ctx.client) this.ctx.client.setCameraEnabled(this.cameraOn);
      this._renderControls();
      announce(this.cameraOn ? t("camera_on") : t("camera_off"));
    });
    el.share.addEventListener("click", async () => {
      const client = this.ctx.client;
      if (!client || !this.session) return;
      try {
        if (client.screen) await client.stopScreenShare();
        else await client.shareScreen();
      } catch (err) {
        if (err && err.name === "NotAllowedError") return; // the clerk cancelled the picker
        showError(err);
      }
      this._renderControls();
    });
    el.swap.addEventListener("click", () => {
      const stage = el.stage;
      stage.dataset.large = stage.dataset.large === "screen" ? "camera" : "screen";
    });
    el.unmute.addEventListener("click", () => {
      el.remoteVideo.muted = false;
      el.remoteVideo.play().catch(() => {});
      el.unmute.hidden = true;
    });
    el.snapshot.addEventListener("click", () => this.snapshot());
    el.end.addEventListener("click", () => this._end());
    el.uploadButton.addEventListener("click", () => el.upload.click());
    el.upload.addEventListener("change", () => {
      const list = [...el.upload.files];
      el.upload.value = "";
      if (list.length) this._upload(list);
    });
    el.noteForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = el.noteText.value.trim();
      if (!text || !this.session || !this.ctx.client) return;
      try {
        const ack = await this.ctx.client.request("session.note",
                                                  { session_id: this.session.id, text });
        el.noteText.value = "";
        this.notes.push(ack.note);
        this._renderNotes();
        announce(t("note_saved"));
        toast(t("note_saved"));
      } catch (err) {
        showError(err);
      }
    });
    for (const radio of document.querySelectorAll('input[name="transfer-kind"]')) {
      radio.addEventListener("change", () => this._syncTransferKind());
    }
    el.transferPanel.addEventListener("toggle", () => {
      if (el.transferPanel.open) {
        this._syncTransferKind();
        this._fillTransferClerks();
      }
    });
    el.transferForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this._transfer();
    });
  }
}
