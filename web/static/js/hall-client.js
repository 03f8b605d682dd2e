/*
 * Virtual Hall: the hall's real-time protocol (docs/protocol.md) for browsers, as one ES module
 * that every page uses: the resident (app and kiosk), the clerk console and the supervisor
 * wallboard.
 *
 *   import { HallClient } from "/static/js/hall-client.js";
 *   const hall = new HallClient({ credentials: { id_token }, localVideo, remoteVideo });
 *   hall.on("session.started", ({ session }) => ...);   // any server event, plus local ones
 *   const welcome = await hall.connect();
 *   const ack = await hall.call("ticket.take", { matter_id });      // never throws: {ok, ...}
 *   const { ticket } = await hall.request("ticket.take", {...});    // throws HallError
 *
 * What it does:
 *   - Socket.IO (websocket only) with the handshake `auth` the contract asks for: the given
 *     credentials for the first connection, then the same credentials plus `{resume,
 *     last_seq}` for every reconnection (the hall binds a resume to its credential), so a
 *     dropped connection resumes and the server replays what was missed, in order.
 *   - Numbering: remembers the last `seq` received and `resume_token` from every `welcome`,
 *     and acknowledges the `welcome` (so the hall retires the token it resumed with);
 *     a gap or a repeat in the numbering is recorded in `stats().seqViolations`. The state
 *     pushes (`wall.update`, `queues.update`) are not numbered.
 *   - Media (unless `withMedia: false`): on `session.started` it opens an RTCPeerConnection
 *     with the session's `ice_servers`, adds the camera and microphone (audio only, or
 *     receive-only, when a device fails: `media-error`), takes (or, as initiator, creates) the
 *     `hall` data channel, and negotiates over `rtc.signal` with "perfect negotiation" (the
 *     session says whether this side is `polite`). Candidates trickle out one `rtc.signal`
 *     each, then `{candidate: null}` (full trickle); half-trickle peers (aiortc) need none.
 *   - Screen share (`shareScreen()`): a second video track, announced first with
 *     `media.screen {active, stream_id}`; the receiving side tells camera from screen by the
 *     stream id and shows it in `remoteScreen`.
 *   - After a resume it restarts ICE (`restartIce()`); a peer that cannot restart ICE (aiortc)
 *     is met with a fresh RTCPeerConnection and a new offer (`stats().fallbacks`).
 *   - Silent monitoring: a clerk's client offers each monitoring supervisor (`monitor.joined`)
 *     a send-only leg with what it sends and receives (the resident's tracks first, then its
 *     own); a supervisor's `monitor(sessionId)` answers it receive-only.
 *
 * Local events (besides every server event): "connection" {ice, pc, generation}, "link"
 * {state: connecting|online|reconnecting|offline|replaced}, "track", "remote-media" {camera,
 * screen}, "local-media" {stream}, "media-error" {error, audio, video}, "datachannel",
 * "message", "restart", "resume_failed", "monitor-media" {streams: [{role, stream}]}.
 *
 * Hooks for tests: `stats()` (counters and timings) and `dropForTest()`.
 */
import { io } from "/vendor/socket.io.esm.min.js";
import { CallQuality } from "./call-quality.js";

const ACK_TIMEOUT_MS = 10000;
const RESTART_TIMEOUT_MS = 8000; // ICE restart not connected by then: fresh connection
const DATA_CHANNEL = "hall";
// A resume refused for the resume itself (not the credential): connect afresh instead.
const RESUME_REFUSED = new Set(["resume_invalid", "last_seq_ahead", "replay_unavailable"]);
// State pushes: each supersedes the previous one, so the hall does not number or replay them.
const UNNUMBERED = new Set(["welcome", "replaced", "session.expired", "wall.update",
  "queues.update"]);

function now() {
  return performance.now();
}

function iceUfrag(sdp) {
  const match = /^a=ice-ufrag:(\S+)/m.exec(sdp || "");
  return match ? match[1] : null;
}

/** `?relay=1` in the page's address: relay-only media (options.iceTransportPolicy). */
function relayFromAddress() {
  const search = globalThis.location ? globalThis.location.search : "";
  return new URLSearchParams(search).get("relay") === "1" ? "relay" : "all";
}

function dtlsFingerprint(sdp) {
  const match = /^a=fingerprint:(.+)$/m.exec(sdp || "");
  return match ? match[1].trim().toLowerCase() : null;
}

/** An error the hall answered with ({code, message}), or a local one ("timeout"). */
export class HallError extends Error {
  constructor(code, message, details) {
    super(message || code);
    this.name = "HallError";
    this.code = code;
    this.details = details || {};
  }
}

export class HallClient {
  /**
   * @param {object} options
   * @param {object|function} options.credentials  {id_token} (app resident) or {token} (hall
   *        token); a function returning them is asked again for every fresh (non-resume)
   *        connection, so an expired token can be replaced.
   * @param {string} [options.url]          the hall's origin (default: this page's)
   * @param {boolean} [options.withMedia]   open media for sessions (default true)
   * @param {HTMLVideoElement} [options.localVideo]    shows the camera
   * @param {HTMLVideoElement} [options.remoteVideo]   shows the peer's camera
   * @param {HTMLVideoElement} [options.remoteScreen]  shows the peer's screen share
   * @param {MediaStreamConstraints} [options.media]   getUserMedia constraints
   * @param {boolean} [options.autoReconnect]  resume by itself after a drop (default true)
   * @param {function} [options.log]       receives (message, details) for diagnostics
   * @param {string} [options.iceTransportPolicy]  "relay": TURN-relayed candidates only (to
   *        diagnose a network that blocks UDP or direct paths; also `?relay=1` in the page's
   *        address); default "all"
   */
  constructor(options) {
    this.url = options.url || globalThis.location.origin;
    this.credentials = options.credentials;
    this.withMedia = options.withMedia !== false;
    this.localVideo = options.localVideo || null;
    this.remoteVideo = options.remoteVideo || null;
    this.remoteScreen = options.remoteScreen || null;
    this.media = options.media || { audio: true, video: true };
    this.autoReconnect = options.autoReconnect !== false;
    this.logger = options.log || null;
    this.iceTransportPolicy = options.iceTransportPolicy || relayFromAddress();

    this.socket = null;
    this.participant = null;
    this.role = null;
    this.resumeToken = null;
    this.lastSeq = 0;
    this.connected = false;
    this.session = null;
    this.welcome = null;

    this.pc = null;
    this.localStream = null;
    this.screen = null; // {stream, track, sender} while sharing
    this.remoteStreams = new Map(); // stream id -> MediaStream, current connection
    this.remoteScreenId = null; // the peer's screen-share stream id (media.screen)
    this.channel = null;
    this.generation = 0; // RTCPeerConnections opened so far
    this.legs = new Map(); // clerk: supervisor participant -> RTCPeerConnection
    this.monitorSession = null; // supervisor: {id, clerk, pc, streams}
    this._ops = Promise.resolve(); // signaling work, strictly one after another
    this._handlers = new Map();
    this._welcomeWaiters = [];
    this._remoteUfrag = null;
    this._restart = null; // {startedAt, ufrag, timer} while an ICE restart is under way

    this.counters = {
      welcomes: 0,
      resumes: 0,
      events: [], // [event, seq] of the last 500 numbered server events, in arrival order
      seqViolations: [],
      signalsOut: 0,
      candidatesOut: 0,
      endOfCandidatesOut: 0,
      signalsIn: 0,
      candidatesIn: 0,
      signalErrors: [],
      offersOut: 0,
      answersOut: 0,
      iceRestarts: 0,
      restartsCompleted: 0,
      fallbacks: 0,
      framesRendered: 0, // requestVideoFrameCallback on the remote video, every connection
      messages: [], // data-channel messages received
    };
    this.timings = {}; // performance.now() marks, see _mark()
    this.quality = new CallQuality(this); // call.report: the call funnel and stats
  }

  // ------------------------------------------------------------------ events

  /** Listen to a server event ("welcome", "ticket.update", ...) or a local one (see top). */
  on(event, handler) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(handler);
    return () => this._handlers.get(event).delete(handler);
  }

  _emitLocal(event, payload) {
    for (const handler of this._handlers.get(event) || []) {
      try {
        handler(payload);
      } catch (err) {
        this._log("handler failed", { event, err: String(err && err.stack ? err.stack : err) });
      }
    }
  }

  _log(message, details) {
    if (this.logger) this.logger(message, details);
  }

  _mark(name) {
    this.timings[name] = now();
  }

  _link(state) {
    this.linkState = state;
    this._emitLocal("link", { state });
  }

  // ------------------------------------------------------------------ Socket.IO

  /** Connect with the credentials; resolves with the `welcome` payload. */
  connect() {
    if (this.socket) return this.reconnect();
    const socket = io(this.url, {
      path: "/socket.io/",
      transports: ["websocket"],
      reconnection: this.autoReconnect,
      reconnectionDelay: 500,
      reconnectionDelayMax: 5000,
      autoConnect: false,
      // Called for every (re)connection: resume once there is a token to resume with.
      auth: (cb) => cb(this._auth()),
    });
    this.socket = socket;
    this._link("connecting");
    socket.on("connect", () => {
      this.connected = true;
    });
    socket.on("disconnect", (reason) => {
      this.connected = false;
      this._log("disconnected", { reason });
      if (this.linkState !== "replaced") {
        this._link(socket.active ? "reconnecting" : "offline");
      }
      this._emitLocal("disconnected", { reason });
    });
    socket.on("connect_error", (err) => this._onConnectError(err));
    // socket.io-client passes the ack function last when the hall asks for one (welcome).
    socket.onAny((event, payload, ack) => {
      this._onServerEvent(event, payload);
      if (event === "welcome" && typeof ack === "function") ack({ ok: true });
    });
    const welcome = this._nextWelcome();
    socket.connect();
    return welcome;
  }

  /** Resume a dropped connection (auth {credentials, resume, last_seq}); resolves with the
   * `welcome`.
   * If a session is live, ICE restarts once the hall has welcomed us back. */
  reconnect() {
    if (!this.socket) return this.connect();
    const welcome = this._nextWelcome();
    if (!this.socket.connected) {
      this.socket.io.reconnection(this.autoReconnect);
      this._link("reconnecting");
      this.socket.connect();
    }
    return welcome;
  }

  /** Lose the connection without a goodbye, and do not reconnect until `reconnect()` is
   * called. For tests. Closes the websocket under Engine.IO: the server gets neither a
   * Socket.IO DISCONNECT nor an Engine.IO CLOSE packet, so it treats this as a dropped
   * connection (a page cannot abort TCP, so a websocket close frame is still sent). */
  dropForTest() {
    const socket = this.socket;
    if (!socket || !socket.connected) throw new Error("HallClient: not connected");
    socket.io.reconnection(false);
    const transport = socket.io.engine && socket.io.engine.transport;
    const ws = transport && transport.ws;
    if (!ws) throw new Error("HallClient: no websocket to drop");
    ws.close(); // the server sees the websocket go away without a CLOSE packet
    return new Promise((resolve) => {
      if (!socket.connected) return resolve();
      socket.once("disconnect", () => resolve());
    });
  }

  /** Emit with an ack (the contract requires one); resolves with the ack object, also for a
   * refusal ({ok: false, error}) or no answer in time (code "timeout"). */
  async call(event, payload) {
    if (!this.socket) throw new Error("HallClient: not connected");
    try {
      return await this.socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload || {});
    } catch (err) {
      return { ok: false, error: { code: "timeout", message: String(err) } };
    }
  }

  /** Like `call`, but resolves with the ack of a success and throws HallError otherwise. */
  async request(event, payload) {
    const ack = await this.call(event, payload);
    if (ack && ack.ok === true) return ack;
    const error = (ack && ack.error) || { code: "internal_error", message: "no answer" };
    throw new HallError(error.code, error.message, error);
  }

  close() {
    this._closeMedia();
    this._closeMonitor();
    if (this.socket) {
      this.socket.io.reconnection(false);
      this.socket.disconnect();
    }
    this._link("offline");
  }

  /** Forget the resumable identity (a kiosk wiping its last resident starts afresh). */
  forgetResume() {
    this.resumeToken = null;
    this.lastSeq = 0;
  }

  _auth() {
    const credentials = typeof this.credentials === "function"
      ? this.credentials() : this.credentials;
    // A resume presents its credential too (the hall verifies it as at a fresh connect).
    if (this.resumeToken) {
      return { ...credentials, resume: this.resumeToken, last_seq: this.lastSeq };
    }
    return credentials;
  }

  _nextWelcome() {
    return new Promise((resolve, reject) => this._welcomeWaiters.push({ resolve, reject }));
  }

  _onConnectError(err) {
    const data = (err && err.data) || {};
    const code = data.code || (data.data && data.data.code) || null;
    this._log("connect_error", { message: err && err.message, code });
    if (RESUME_REFUSED.has(code) && this.resumeToken) {
      // The hall forgot us (grace over, or the token was superseded), or cannot replay the
      // gap: start afresh.
      this.resumeToken = null;
      this.lastSeq = 0;
      this._emitLocal("resume_failed", { code });
      this.socket.connect();
      return;
    }
    const fatal = code === "unauthenticated" || code === "forbidden"
      || code === "too_many_attempts" || code === "origin_refused";
    if (fatal || !this.socket.io.reconnection() || !this.socket.active) {
      if (fatal) this.socket.io.reconnection(false);
      this._link("offline");
      const waiters = this._welcomeWaiters.splice(0);
      const error = new HallError(code || "connect_failed", err && err.message, data);
      for (const w of waiters) w.reject(error);
      this._emitLocal("connect_failed", { code, message: err && err.message });
    }
  }

  _onServerEvent(event, payload) {
    if (event === "welcome") return this._onWelcome(payload);
    if (payload && typeof payload.seq === "number") {
      const seq = payload.seq;
      if (seq <= this.lastSeq) {
        this.counters.seqViolations.push(`${event}: seq ${seq} repeated (last ${this.lastSeq})`);
        return; // already handled
      }
      if (seq !== this.lastSeq + 1) {
        this.counters.seqViolations.push(`${event}: seq ${seq} after ${this.lastSeq}`);
      }
      this.lastSeq = seq;
      this.counters.events.push([event, seq]);
      if (this.counters.events.length > 500) this.counters.events.splice(0, 100);
    } else if (!UNNUMBERED.has(event)) {
      this.counters.seqViolations.push(`${event}: no seq`);
    }
    switch (event) {
      case "session.started":
        if (this.withMedia) this._enqueue(() => this._startMedia(payload.session, false));
        else this.session = payload.session;
        break;
      case "session.ended":
        if (this.session && payload.session_id === this.session.id) {
          this._enqueue(() => this._closeMedia());
        }
        if (this.monitorSession && payload.session_id === this.monitorSession.id) {
          this._closeMonitor();
        }
        break;
      case "rtc.signal":
        this._routeSignal(payload);
        break;
      case "media.screen":
        this._onRemoteScreen(payload);
        break;
      case "monitor.joined":
        if (this.session && payload.session_id === this.session.id) {
          this._enqueue(() => this._openLeg(payload.supervisor));
        }
        break;
      case "monitor.left":
        this._closeLeg(payload.supervisor);
        break;
      case "replaced":
        this.socket.io.reconnection(false); // another tab took over: do not fight it
        this._link("replaced");
        break;
      default:
        break;
    }
    this._emitLocal(event, payload);
  }

  _onWelcome(welcome) {
    this.counters.welcomes += 1;
    this.welcome = welcome;
    this.participant = welcome.participant;
    this.role = welcome.role;
    this.resumeToken = welcome.resume_token;
    if (welcome.resumed) {
      // The replay (seq > lastSeq) follows; lastSeq stays where it was.
      this.counters.resumes += 1;
      this._mark("resumed");
    } else {
      this.lastSeq = welcome.last_seq; // nothing is replayed on a fresh connection
    }
    const session = welcome.session;
    if (!this.withMedia) {
      this.session = session || null;
    } else if (this.pc && session && this.session && session.id === this.session.id) {
      // Back in the session we have media for: the network path may have changed too.
      this.session = Object.assign({}, this.session, session);
      this._enqueue(() => this._restartIce());
    } else if (session) {
      // A session negotiated before this page had media for it (a reload): offer afresh.
      this._enqueue(() => this._startMedia(session, true));
    } else if (this.pc) {
      this._enqueue(() => this._closeMedia()); // the session ended while we were away
    }
    this._link("online");
    for (const w of this._welcomeWaiters.splice(0)) w.resolve(welcome);
    this._emitLocal("welcome", welcome);
  }

  _enqueue(work) {
    this._ops = this._ops.then(work).catch((err) => {
      this._log("signaling step failed", { err: String(err && err.stack ? err.stack : err) });
      this.counters.signalErrors.push(String(err));
    });
    return this._ops;
  }

  async _signal(message, sessionId) {
    const id = sessionId || (this.session && this.session.id);
    if (!id) return;
    this.counters.signalsOut += 1;
    const ack = await this.call("rtc.signal", Object.assign({ session_id: id }, message));
    if (!ack || ack.ok !== true) {
      this.counters.signalErrors.push(JSON.stringify(ack));
      this._log("rtc.signal refused", ack);
    }
  }

  _routeSignal(payload) {
    if (payload.from === "peer") {
      if (this.session && payload.session_id === this.session.id) {
        this._enqueue(() => this._onSignal(payload));
      }
    } else if (this.legs.has(payload.from)) {
      this._enqueue(() => this._onLegSignal(payload));
    } else if (this.monitorSession && payload.session_id === this.monitorSession.id) {
      this._enqueue(() => this._onMonitorSignal(payload));
    }
  }

  // ------------------------------------------------------------------ local media

  /** The camera and microphone; when one fails, what still works (a resident without a
   * camera can still talk). Emits "media-error" with what failed. */
  async _getLocalStream() {
    const wanted = this.media;
    try {
      return await navigator.mediaDevices.getUserMedia(wanted);
    } catch (err) {
      this._log("getUserMedia failed", { err: String(err) });
      if (wanted.video && wanted.audio) {
        try {
          const audioOnly = await navigator.mediaDevices.getUserMedia({ audio: wanted.audio });
          this._emitLocal("media-error", { error: String(err), audio: true, video: false });
          return audioOnly;
        } catch (err2) {
          this._log("audio-only getUserMedia failed", { err: String(err2) });
        }
      }
      this._emitLocal("media-error", { error: String(err), audio: false, video: false });
      return new MediaStream();
    }
  }

  /** Camera and microphone on/off for the other side (the tracks stay, muted). */
  setMicEnabled(on) {
    for (const track of this.localStream ? this.localStream.getAudioTracks() : []) {
      track.enabled = !!on;
    }
  }

  setCameraEnabled(on) {
    for (const track of this.localStream ? this.localStream.getVideoTracks() : []) {
      track.enabled = !!on;
    }
  }

  /** The next camera (front/back on a phone); resolves with its label, or null if only one. */
  async switchCamera() {
    if (!this.localStream) return null;
    const current = this.localStream.getVideoTracks()[0];
    const cameras = (await navigator.mediaDevices.enumerateDevices())
      .filter((d) => d.kind === "videoinput");
    if (cameras.length < 2) return null;
    const currentId = current ? current.getSettings().deviceId : null;
    const index = cameras.findIndex((d) => d.deviceId === currentId);
    const next = cameras[(index + 1) % cameras.length];
    const fresh = await navigator.mediaDevices.getUserMedia({
      video: { deviceId: { exact: next.deviceId } },
    });
    const track = fresh.getVideoTracks()[0];
    if (current) {
      track.enabled = current.enabled;
      this.localStream.removeTrack(current);
      current.stop();
    }
    this.localStream.addTrack(track);
    const sender = this.pc && this.pc.getSenders().find((s) => s.track === current);
    if (sender) await sender.replaceTrack(track);
    for (const leg of this.legs.values()) {
      const legSender = leg.getSenders().find((s) => s.track === current);
      if (legSender) await legSender.replaceTrack(track);
    }
    if (this.localVideo) this.localVideo.srcObject = this.localStream;
    this._emitLocal("local-media", { stream: this.localStream });
    return next.label || next.deviceId;
  }

  /** Share a screen (getDisplayMedia) or a given stream (a kiosk's document camera) as the
   * second video of the session. Announced with media.screen before the track is added. */
  async shareScreen(stream) {
    if (!this.session || !this.pc) throw new HallError("invalid_state", "no session");
    if (this.screen) return this.screen.stream;
    const shared = stream || await navigator.mediaDevices.getDisplayMedia({ video: true });
    const track = shared.getVideoTracks()[0];
    if (!track) throw new HallError("invalid_input", "the stream has no video");
    await this.request("media.screen", {
      session_id: this.session.id, active: true, stream_id: shared.id,
    });
    this.screen = { stream: shared, track, sender: null };
    this.screen.sender = this.pc.addTrack(track, shared); // negotiationneeded → offer
    track.addEventListener("ended", () => this.stopScreenShare());
    this._emitLocal("screen", { active: true, stream: shared });
    return shared;
  }

  async stopScreenShare() {
    const screen = this.screen;
    if (!screen) return;
    this.screen = null;
    if (this.pc && screen.sender && this.pc.signalingState !== "closed") {
      try {
        this.pc.removeTrack(screen.sender);
      } catch (err) {
        this._log("removeTrack failed", { err: String(err) });
      }
    }
    for (const track of screen.stream.getTracks()) track.stop();
    this._emitLocal("screen", { active: false, stream: null });
    if (this.session) {
      await this.call("media.screen", { session_id: this.session.id, active: false });
    }
  }

  _onRemoteScreen(payload) {
    if (!this.session || payload.session_id !== this.session.id) {
      if (this.monitorSession && payload.session_id === this.monitorSession.id) {
        this.monitorSession.screenId = payload.active ? payload.stream_id : null;
        this._emitMonitorMedia();
      }
      return;
    }
    this.remoteScreenId = payload.active ? payload.stream_id : null;
    this._showRemote();
  }

  /** Put the peer's camera and screen streams into their video elements. */
  _showRemote() {
    let camera = null;
    let screen = null;
    for (const [id, stream] of this.remoteStreams) {
      const live = stream.getTracks().some((t) => t.readyState === "live");
      if (!live) continue;
      if (id === this.remoteScreenId) screen = stream;
      else if (stream.getVideoTracks().length || !camera) camera = stream;
    }
    attach(this.remoteVideo, camera);
    attach(this.remoteScreen, screen);
    this._emitLocal("remote-media", { camera, screen });
  }

  // ------------------------------------------------------------------ the session's media

  /** Open the media for a session. `offerNow`: offer at once instead of waiting for the
   * initiator's offer (used when joining a session that was negotiated before). */
  async _startMedia(session, offerNow) {
    if (this.session && this.session.id === session.id && this.pc) return;
    this._closeMedia();
    this.session = session;
    this._mark("sessionStarted");
    if (!this.localStream) {
      this.localStream = await this._getLocalStream();
      attach(this.localVideo, this.localStream);
      this._emitLocal("local-media", { stream: this.localStream });
    }
    if (!this.session || this.session.id !== session.id) return; // ended meanwhile
    this._openConnection(session.initiator || offerNow);
  }

  /** What every RTCPeerConnection of a session is opened with. */
  _rtcConfig(session) {
    return { iceServers: session.ice_servers || [], iceTransportPolicy: this.iceTransportPolicy };
  }

  /** A new RTCPeerConnection with our tracks. `offerer`: this side makes the first offer
   * (and creates the data channel); otherwise it waits for the peer's offer. */
  _openConnection(offerer) {
    const session = this.session;
    const pc = new RTCPeerConnection(this._rtcConfig(session));
    const generation = ++this.generation;
    this.pc = pc;
    this.polite = !!session.polite;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.negotiating = offerer; // the non-initiator stays quiet until the first offer
    this._remoteUfrag = null;
    this._remoteFingerprint = null;
    this.remoteStreams = new Map();
    this._mark("connectionOpened");
    delete this.timings.iceConnected;
    delete this.timings.firstFrame;
    const current = () => generation === this.generation;

    const tracks = this.localStream.getTracks();
    for (const track of tracks) pc.addTrack(track, this.localStream);
    // Without a device we still receive the other side's audio and video.
    if (!this.localStream.getAudioTracks().length) {
      pc.addTransceiver("audio", { direction: "recvonly" });
    }
    if (!this.localStream.getVideoTracks().length) {
      pc.addTransceiver("video", { direction: "recvonly" });
    }
    if (this.screen) this.screen.sender = pc.addTrack(this.screen.track, this.screen.stream);
    if (offerer) this._wireChannel(pc.createDataChannel(DATA_CHANNEL), generation);
    pc.ondatachannel = ({ channel }) => {
      if (current() && channel.label === DATA_CHANNEL) this._wireChannel(channel, generation);
    };
    pc.onnegotiationneeded = () => {
      if (current()) this._enqueue(() => this._offer(pc));
    };
    pc.onicecandidate = ({ candidate }) => {
      if (!current()) return;
      if (candidate) {
        this.counters.candidatesOut += 1;
        this._signal({ candidate: candidate.toJSON() });
      } else {
        this.counters.endOfCandidatesOut += 1;
        this._signal({ candidate: null });
      }
    };
    pc.oniceconnectionstatechange = () => {
      if (!current()) return;
      const state = pc.iceConnectionState;
      if ((state === "connected" || state === "completed") && !this.timings.iceConnected) {
        this._mark("iceConnected");
        if (this._restart && this._restart.fallback) this._restartDone("fresh connection");
      }
      if (state === "failed") {
        if (this._restart) this._enqueue(() => this._fallback("failed"));
        else this._enqueue(() => this._restartIce());
      }
      this._emitLocal("connection", { ice: state, pc: pc.connectionState, generation });
    };
    pc.onconnectionstatechange = () => {
      if (current()) {
        this._emitLocal("connection", { ice: pc.iceConnectionState, pc: pc.connectionState,
                                        generation });
      }
    };
    pc.ontrack = ({ track, streams }) => {
      if (!current()) return;
      const stream = streams[0] || new MediaStream([track]);
      this.remoteStreams.set(stream.id, stream);
      this._emitLocal("track", { kind: track.kind, generation, streamId: stream.id });
      track.addEventListener("ended", () => this._showRemote());
      stream.addEventListener("removetrack", () => this._showRemote());
      this._showRemote();
      if (track.kind === "video" && stream.id !== this.remoteScreenId) {
        this._countFrames(generation);
      }
      // Monitoring supervisors see what this side receives too.
      for (const leg of this.legs.values()) {
        if (leg.signalingState !== "closed") leg.addTrack(track, stream);
      }
    };
    this._watchIceTransport(pc, generation);
  }

  _watchIceTransport(pc, generation) {
    // The DTLS/ICE transports exist once a description is set; poll lightly until then.
    const watch = () => {
      if (generation !== this.generation || pc.signalingState === "closed") return;
      const sender = pc.getSenders().find((s) => s.transport);
      const iceTransport = sender && sender.transport && sender.transport.iceTransport;
      if (!iceTransport) return void setTimeout(watch, 50);
      iceTransport.addEventListener("selectedcandidatepairchange", () => {
        if (generation !== this.generation) return;
        const pair = iceTransport.getSelectedCandidatePair();
        const ufrag = pair && pair.local && pair.local.usernameFragment;
        const restart = this._restart;
        if (restart && ufrag && ufrag === restart.ufrag) this._restartDone("selected pair");
      });
    };
    watch();
  }

  _countFrames(generation) {
    const video = this.remoteVideo;
    if (!video || typeof video.requestVideoFrameCallback !== "function") return;
    if (this._countingFrames === generation) return;
    this._countingFrames = generation;
    const tick = () => {
      if (generation !== this.generation) return;
      this.counters.framesRendered += 1;
      if (!this.timings.firstFrame) this._mark("firstFrame");
      if (this._restart && !this._restart.firstFrameAt && this._restart.answeredAt) {
        // First frame rendered after the restart's answer (the old path may still carry
        // media before that; this is what the resident sees once the restart settled).
        this._restart.firstFrameAt = now();
      }
      video.requestVideoFrameCallback(tick);
    };
    video.requestVideoFrameCallback(tick);
  }

  _wireChannel(channel, generation) {
    this.channel = channel;
    channel.onmessage = ({ data }) => {
      if (generation !== this.generation) return;
      this.counters.messages.push(String(data));
      if (this.counters.messages.length > 200) this.counters.messages.shift();
      this._emitLocal("message", data);
    };
    channel.onopen = () => this._emitLocal("datachannel", { state: "open", generation });
  }

  /** Send a text message on the `hall` data channel. */
  sendMessage(text) {
    if (!this.channel || this.channel.readyState !== "open") {
      throw new Error("HallClient: the hall data channel is not open");
    }
    this.channel.send(text);
  }

  async _offer(pc) {
    if (pc !== this.pc || !this.negotiating || pc.signalingState !== "stable") return;
    try {
      this.makingOffer = true;
      await pc.setLocalDescription();
      if (pc !== this.pc) return;
      this.counters.offersOut += 1;
      if (this._restart && !this._restart.offeredAt) {
        this._restart.offeredAt = now();
        this._restart.ufrag = iceUfrag(pc.localDescription.sdp);
      }
      await this._signal({ description: pc.localDescription.toJSON() });
    } finally {
      this.makingOffer = false;
    }
  }

  async _onSignal(message) {
    const pc = this.pc;
    if (!pc) return;
    this.counters.signalsIn += 1;
    const description = message.description;
    if (description) {
      const collision = description.type === "offer"
        && (this.makingOffer || pc.signalingState !== "stable");
      this.ignoreOffer = !this.polite && collision;
      if (this.ignoreOffer) return;
      const previousUfrag = this._remoteUfrag;
      const previousFingerprint = this._remoteFingerprint;
      await pc.setRemoteDescription(description); // rolls back our offer on glare
      if (description.type === "rollback") return;
      this._remoteUfrag = iceUfrag(description.sdp);
      this._remoteFingerprint = dtlsFingerprint(description.sdp);
      if (description.type === "offer") {
        await pc.setLocalDescription();
        this.counters.answersOut += 1;
        await this._signal({ description: pc.localDescription.toJSON() });
        this.negotiating = true; // from now on either side may renegotiate
      } else if (this._restart && !this._restart.answeredAt) {
        this._restart.answeredAt = now();
        if (previousUfrag && this._remoteUfrag === previousUfrag) {
          // The peer kept its ICE credentials: it did not restart ICE (aiortc answers a
          // restart offer that way), so checks with our new credentials can never succeed.
          await this._fallback("the peer kept its ICE credentials");
        } else if (previousFingerprint && this._remoteFingerprint !== previousFingerprint) {
          // The peer answered from a fresh connection (new DTLS certificate): media would
          // come back through a DTLS restart, but the data channel's SCTP association does
          // not survive one. Start afresh on our side too.
          await this._fallback("the peer answered from a fresh connection");
        }
      }
      return;
    }
    if ("candidate" in message) {
      this.counters.candidatesIn += message.candidate ? 1 : 0;
      try {
        await pc.addIceCandidate(message.candidate || undefined);
      } catch (err) {
        if (!this.ignoreOffer) this._log("addIceCandidate failed", { err: String(err) });
      }
    }
  }

  /** Restart ICE on the current connection (after a resume); falls back to a fresh
   * connection if the peer does not restart with us or it does not reconnect in time. */
  async _restartIce() {
    const pc = this.pc;
    if (!pc || !this.negotiating) {
      // Not negotiated yet (still waiting for the initiator's offer): nothing to restart.
      return;
    }
    if (this._restart) clearTimeout(this._restart.timer);
    this.counters.iceRestarts += 1;
    this._mark("restartStarted");
    const restart = { startedAt: now(), generation: this.generation };
    restart.timer = setTimeout(() => {
      if (this._restart === restart) this._enqueue(() => this._fallback("timeout"));
    }, RESTART_TIMEOUT_MS);
    this._restart = restart;
    this._emitLocal("restart", { kind: "ice" });
    pc.restartIce(); // onnegotiationneeded → _offer with fresh ICE credentials
  }

  _restartDone(how) {
    const restart = this._restart;
    if (!restart) return;
    clearTimeout(restart.timer);
    restart.connectedAt = now();
    restart.how = how;
    this.counters.restartsCompleted += 1;
    this.lastRestart = restart;
    this._restart = null;
    this._emitLocal("restart", { kind: "done", how });
  }

  /** Replace the connection with a fresh one and offer from it (the peer, seeing new ICE
   * credentials and a new DTLS certificate, answers from a fresh connection too). */
  async _fallback(reason) {
    const restart = this._restart;
    if (!restart || !this.session) return;
    if (restart.fallback) {
      this._log("the fresh connection failed too", { reason });
      return;
    }
    this._log("ICE restart fallback: fresh RTCPeerConnection", { reason });
    this.counters.fallbacks += 1;
    restart.fallback = reason;
    this._closeConnection();
    clearTimeout(restart.timer);
    restart.fallbackAt = now();
    restart.restartOfferedAt = restart.offeredAt;
    restart.restartAnsweredAt = restart.answeredAt;
    restart.ufrag = null;
    restart.offeredAt = null;
    restart.answeredAt = null;
    restart.firstFrameAt = null;
    this._openConnection(true); // offerer: onnegotiationneeded sends the new offer
  }

  _closeConnection() {
    if (this.pc) {
      this.pc.onnegotiationneeded = null;
      this.pc.onicecandidate = null;
      this.pc.ontrack = null;
      this.pc.close();
    }
    this.pc = null;
    this.channel = null;
  }

  _closeMedia() {
    if (this._restart) clearTimeout(this._restart.timer);
    this._restart = null;
    for (const supervisor of [...this.legs.keys()]) this._closeLeg(supervisor);
    this._closeConnection();
    this.generation += 1; // late callbacks of the closed connection are ignored
    if (this.screen) {
      for (const track of this.screen.stream.getTracks()) track.stop();
      this.screen = null;
      this._emitLocal("screen", { active: false, stream: null });
    }
    if (this.localStream) {
      for (const track of this.localStream.getTracks()) track.stop();
    }
    this.localStream = null;
    this.remoteStreams = new Map();
    this.remoteScreenId = null;
    attach(this.localVideo, null);
    attach(this.remoteVideo, null);
    attach(this.remoteScreen, null);
    this.session = null;
  }

  // ------------------------------------------------------------------ silent monitoring

  /** Clerk: a send-only leg to a monitoring supervisor with the resident's tracks (first)
   * and our own; this side always offers, the supervisor only answers. */
  async _openLeg(supervisor) {
    if (this.legs.has(supervisor) || !this.session || !this.pc) return;
    const sessionId = this.session.id;
    const leg = new RTCPeerConnection(this._rtcConfig(this.session));
    this.legs.set(supervisor, leg);
    for (const receiver of this.pc.getReceivers()) {
      const track = receiver.track;
      if (!track || track.readyState !== "live") continue;
      const stream = [...this.remoteStreams.values()].find((s) => s.getTracks().includes(track));
      leg.addTrack(track, stream || new MediaStream([track]));
    }
    if (this.localStream) {
      for (const track of this.localStream.getTracks()) leg.addTrack(track, this.localStream);
    }
    const signal = (message) => this._signal(Object.assign({ to: supervisor }, message), sessionId);
    leg.onicecandidate = ({ candidate }) => {
      signal({ candidate: candidate ? candidate.toJSON() : null });
    };
    leg.onnegotiationneeded = () => {
      this._enqueue(async () => {
        if (this.legs.get(supervisor) !== leg || leg.signalingState !== "stable") return;
        await leg.setLocalDescription();
        await signal({ description: leg.localDescription.toJSON() });
      });
    };
  }

  async _onLegSignal(message) {
    const leg = this.legs.get(message.from);
    if (!leg) return;
    if (message.description && message.description.type === "answer") {
      await leg.setRemoteDescription(message.description);
    } else if ("candidate" in message) {
      try {
        await leg.addIceCandidate(message.candidate || undefined);
      } catch (err) {
        this._log("monitor leg candidate failed", { err: String(err) });
      }
    }
  }

  _closeLeg(supervisor) {
    const leg = this.legs.get(supervisor);
    if (!leg) return;
    this.legs.delete(supervisor);
    leg.onnegotiationneeded = null;
    leg.onicecandidate = null;
    leg.close();
  }

  /** Supervisor: silently join a live session, receive-only. Resolves with the ack's
   * session; media arrives as "monitor-media" {streams: [{role, stream}]} (role "resident",
   * "clerk" or "screen"). */
  async monitor(sessionId) {
    if (this.monitorSession) await this.unmonitor();
    const ack = await this.request("monitor.join", { session_id: sessionId });
    const session = ack.session;
    const pc = new RTCPeerConnection(this._rtcConfig(session));
    this.monitorSession = { id: session.id, clerk: session.clerk, pc, streams: [], screenId: null };
    pc.onicecandidate = ({ candidate }) => {
      this._signal({ to: session.clerk, candidate: candidate ? candidate.toJSON() : null },
                   session.id);
    };
    pc.ontrack = ({ track, streams }) => {
      const monitor = this.monitorSession;
      if (!monitor || monitor.pc !== pc) return;
      const stream = streams[0] || new MediaStream([track]);
      if (!monitor.streams.includes(stream)) monitor.streams.push(stream);
      this._emitMonitorMedia();
    };
    return session;
  }

  async _onMonitorSignal(message) {
    const monitor = this.monitorSession;
    if (!monitor || message.from !== monitor.clerk) return;
    const pc = monitor.pc;
    if (message.description && message.description.type === "offer") {
      await pc.setRemoteDescription(message.description);
      await pc.setLocalDescription();
      await this._signal({ to: monitor.clerk, description: pc.localDescription.toJSON() },
                         monitor.id);
    } else if ("candidate" in message) {
      try {
        await pc.addIceCandidate(message.candidate || undefined);
      } catch (err) {
        this._log("monitor candidate failed", { err: String(err) });
      }
    }
  }

  _emitMonitorMedia() {
    const monitor = this.monitorSession;
    if (!monitor) return;
    // The clerk adds the resident's tracks first, then its own: the first camera stream is
    // the resident's, the next the clerk's; the screen share is told by its stream id.
    let cameras = 0;
    const streams = monitor.streams.map((stream) => {
      if (stream.id === monitor.screenId) return { role: "screen", stream };
      cameras += 1;
      return { role: cameras === 1 ? "resident" : "clerk", stream };
    });
    this._emitLocal("monitor-media", { sessionId: monitor.id, streams });
  }

  /** Supervisor: leave the monitored session. */
  async unmonitor() {
    const monitor = this.monitorSession;
    if (!monitor) return;
    this._closeMonitor();
    await this.call("monitor.leave", { session_id: monitor.id });
  }

  _closeMonitor() {
    const monitor = this.monitorSession;
    if (!monitor) return;
    this.monitorSession = null;
    monitor.pc.onicecandidate = null;
    monitor.pc.ontrack = null;
    monitor.pc.close();
    this._emitLocal("monitor-media", { sessionId: null, streams: [] });
  }

  // ------------------------------------------------------------------ for tests

  /** Counters and timings (ms, performance.now() based) for tests and diagnostics. */
  async stats() {
    const pc = this.pc;
    const out = {
      connected: this.connected,
      participant: this.participant,
      lastSeq: this.lastSeq,
      sessionId: this.session ? this.session.id : null,
      generation: this.generation,
      iceConnectionState: pc ? pc.iceConnectionState : null,
      connectionState: pc ? pc.connectionState : null,
      signalingState: pc ? pc.signalingState : null,
      localUfrag: pc && pc.localDescription ? iceUfrag(pc.localDescription.sdp) : null,
      remoteUfrag: pc && pc.remoteDescription ? iceUfrag(pc.remoteDescription.sdp) : null,
      channelState: this.channel ? this.channel.readyState : null,
      framesDecoded: 0,
      framesReceived: 0,
      framesSent: 0,
      audioPacketsReceived: 0,
      videoStreamsReceiving: 0, // inbound video RTP streams with frames decoded
      selectedLocalUfrag: null,
      sharingScreen: !!this.screen,
      remoteScreenId: this.remoteScreenId,
      legs: this.legs.size,
      monitorFramesDecoded: 0,
      restartPending: !!this._restart,
      lastRestart: this.lastRestart ? Object.assign({}, this.lastRestart, { timer: null })
        : null,
      timings: Object.assign({}, this.timings),
      now: now(),
    };
    Object.assign(out, JSON.parse(JSON.stringify(this.counters)));
    if (this.monitorSession) {
      const report = await this.monitorSession.pc.getStats();
      report.forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "video") {
          out.monitorFramesDecoded += s.framesDecoded || 0;
        }
      });
    }
    if (!pc) return out;
    const report = await pc.getStats();
    const byId = new Map();
    report.forEach((s) => byId.set(s.id, s));
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") {
        out.framesDecoded += s.framesDecoded || 0;
        out.framesReceived += s.framesReceived || 0;
        if (s.framesDecoded > 0) out.videoStreamsReceiving += 1;
      } else if (s.type === "inbound-rtp" && s.kind === "audio") {
        out.audioPacketsReceived += s.packetsReceived || 0;
      } else if (s.type === "outbound-rtp" && s.kind === "video") {
        out.framesSent += s.framesSent || 0;
      } else if (s.type === "transport" && s.selectedCandidatePairId) {
        const pair = byId.get(s.selectedCandidatePairId);
        const local = pair && byId.get(pair.localCandidateId);
        out.selectedLocalUfrag = local ? local.usernameFragment || null : null;
      }
    });
    return out;
  }
}

/** Show a stream in a video element (or clear it). */
function attach(video, stream) {
  if (!video) return;
  if (video.srcObject !== stream) video.srcObject = stream;
  if (stream) video.play().catch(() => {});
}
