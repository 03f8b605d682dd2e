/*
 * Silent monitoring from the wallboard: `hall.monitor(session_id)` joins a live session
 * receive-only (the clerk's page offers the leg; the resident is never told), the panel shows
 * the resident's and the clerk's video (and a shared screen) from "monitor-media", Leave calls
 * `hall.unmonitor()`, and the panel closes by itself when the session ends.
 */
import { t, showError, announce } from "/static/js/ui.js";
import { setText, setHidden, clockText } from "/static/js/supervisor-board.js";

export class MonitorPanel {
  /**
   * @param {object} sessions  the Sessions table (marks the monitored row)
   */
  constructor(sessions) {
    this.client = null;
    this.sessions = sessions;
    this.panel = document.getElementById("monitor-panel");
    this.heading = document.getElementById("monitor-heading");
    this.status = document.getElementById("monitor-status");
    this.duration = document.getElementById("monitor-duration");
    this.leaveButton = document.getElementById("monitor-leave");
    this.soundButton = document.getElementById("monitor-sound");
    this.screenFigure = document.getElementById("monitor-screen-figure");
    this.videos = {
      resident: document.getElementById("monitor-video-resident"),
      clerk: document.getElementById("monitor-video-clerk"),
      screen: document.getElementById("monitor-video-screen"),
    };
    this.current = null; // {id, number, startedAt}
    this.sound = true;
    this._busy = false;
    this.leaveButton.addEventListener("click", () => this.leave());
    this.soundButton.addEventListener("click", () => this.setSound(!this.sound));
    this.setSound(true);
  }

  attach(client) {
    this.client = client;
    client.on("monitor-media", (event) => this._onMedia(event));
    client.on("session.ended", (payload) => {
      if (this.current && payload.session_id === this.current.id) {
        this._close(t("monitor_ended"));
      }
    });
  }

  get sessionId() {
    return this.current ? this.current.id : null;
  }

  /** Join a session silently (leaves the one being watched first). */
  async open(session) {
    if (!this.client || this._busy) return;
    if (this.current && this.current.id === session.session_id) return;
    this._busy = true;
    const number = session.ticket_number || session.session_id;
    this.current = { id: session.session_id, number, startedAt: session.started_at };
    this._clearVideos();
    setText(this.heading, t("monitor_heading", { number }));
    setText(this.status, t("monitor_connecting"));
    setHidden(this.panel, false);
    this.sessions.setMonitoring(session.session_id);
    this.heading.focus();
    try {
      await this.client.monitor(session.session_id);
      announce(t("monitor_started", { number }));
    } catch (err) {
      showError(err);
      this._close(null);
    } finally {
      this._busy = false;
    }
  }

  /** Leave the session (monitor.leave) and close the panel. */
  async leave() {
    if (!this.current) return;
    const id = this.current.id;
    this._close(t("monitor_left"));
    try {
      await this.client.unmonitor();
    } catch (err) {
      showError(err);
    }
    return id;
  }

  setSound(on) {
    this.sound = !!on;
    this.videos.resident.muted = !on;
    this.videos.clerk.muted = !on;
    setText(this.soundButton, on ? t("monitor_sound_on") : t("monitor_sound_off"));
  }

  _onMedia({ sessionId, streams }) {
    if (!this.current) return;
    if (sessionId === null) {
      // The client closed the monitor (the session ended, or we left): nothing to show.
      if (!this._busy) this._close(t("monitor_ended"));
      return;
    }
    if (sessionId !== this.current.id) return;
    const byRole = { resident: null, clerk: null, screen: null };
    for (const { role, stream } of streams || []) {
      if (role in byRole && !byRole[role]) byRole[role] = stream;
    }
    for (const role of Object.keys(byRole)) show(this.videos[role], byRole[role]);
    setHidden(this.screenFigure, !byRole.screen);
    setText(this.status, t("monitor_live"));
  }

  _clearVideos() {
    for (const video of Object.values(this.videos)) show(video, null);
    setHidden(this.screenFigure, true);
  }

  _close(message) {
    if (!this.current) return;
    const id = this.current.id;
    this.current = null;
    const hadFocus = this.panel.contains(document.activeElement);
    this._clearVideos();
    setHidden(this.panel, true);
    setText(this.duration, "");
    this.sessions.setMonitoring(null);
    if (message) announce(message);
    // Focus was in the panel: give it back to the session's Monitor button (or the table).
    if (hadFocus) {
      const button = this.sessions.button(id);
      if (button) button.focus();
      else document.getElementById("sessions-heading").focus({ preventScroll: true });
    }
  }

  tick(now) {
    if (!this.current) return;
    const session = this.sessions.get(this.current.id);
    const started = (session && session.started_at) || this.current.startedAt;
    setText(this.duration, started ? clockText(now - started) : "");
  }
}

function show(video, stream) {
  if (video.srcObject !== stream) video.srcObject = stream;
  if (stream) video.play().catch(() => {});
}
