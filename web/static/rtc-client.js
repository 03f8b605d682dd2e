/*
 * Virtual Hall: the resident's side of the hall's real-time protocol (docs/protocol.md), for
 * browsers. Plain script, no build step: load /static/vendor/socket.io.min.js first (it defines
 * `io`), then this file; it defines `window.HallRtc`.
 *
 *   const hall = new HallRtc({ credentials: { id_token }, localVideo, remoteVideo });
 *   hall.on("session.started", ({ session }) => ...);   // any server event, plus local ones
 *   const welcome = await hall.connect();
 *   const ack = await hall.call("ticket.take", { matter_id });
 *
 * What it does:
 *   - Socket.IO (websocket only) with the handshake `auth` the contract asks for: the given
 *     credentials for the first connection, then `{resume, last_seq}` for every reconnection,
 *     so a dropped connection resumes and the server replays what was missed, in order.
 *   - Numbering: remembers the last `seq` received and `resume_token` from every `welcome`;
 *     a gap or a repeat in the numbering is recorded in `stats().seqViolations`.
 *   - Media: on `session.started` it opens an RTCPeerConnection with the session's
 *     `ice_servers`, adds the camera and microphone, takes (or, as initiator, creates) the
 *     `hall` data channel, and negotiates over `rtc.signal` with "perfect negotiation" (the
 *     session says whether this side is `polite`). Candidates trickle out one `rtc.signal`
 *     each, then `{candidate: null}` (full trickle); half-trickle peers (aiortc) need none.
 *   - After a resume it restarts ICE (`restartIce()`: a new offer with new ICE credentials,
 *     on the same connection). A peer that cannot restart ICE (aiortc) answers either with
 *     its old ICE credentials (the restart can never complete) or from a fresh connection of
 *     its own (new DTLS certificate: media would recover through a DTLS restart, but the data
 *     channel's SCTP association does not survive one). In both cases, and when a restart has
 *     not connected after RESTART_TIMEOUT_MS or fails, this side falls back to a fresh
 *     RTCPeerConnection and a new offer (`stats().fallbacks`, `stats().lastRestart`).
 *
 * Hooks for tests: `stats()` (counters and timings) and `dropForTest()`.
 */
(function (global) {
  "use strict";

  const ACK_TIMEOUT_MS = 10000;
  const RESTART_TIMEOUT_MS = 8000; // ICE restart not connected by then: fresh connection
  const DATA_CHANNEL = "hall";

  function now() {
    return performance.now();
  }

  function iceUfrag(sdp) {
    const match = /^a=ice-ufrag:(\S+)/m.exec(sdp || "");
    return match ? match[1] : null;
  }

  function dtlsFingerprint(sdp) {
    const match = /^a=fingerprint:(.+)$/m.exec(sdp || "");
    return match ? match[1].trim().toLowerCase() : null;
  }

  class HallRtc {
    /**
     * @param {object} options
     * @param {object} options.credentials  {id_token} (resident app) or {token} (hall token)
     * @param {string} [options.url]         the hall's origin (default: this page's)
     * @param {HTMLVideoElement} [options.localVideo]   shows the camera
     * @param {HTMLVideoElement} [options.remoteVideo]  shows the peer
     * @param {MediaStreamConstraints} [options.media]  getUserMedia constraints
     * @param {boolean} [options.autoReconnect]  resume by itself after a drop (default true)
     * @param {function} [options.log]       receives (message, details) for diagnostics
     */
    constructor(options) {
      if (typeof global.io !== "function") {
        throw new Error("HallRtc: load /static/vendor/socket.io.min.js first");
      }
      this.url = options.url || global.location.origin;
      this.credentials = Object.assign({}, options.credentials);
      this.localVideo = options.localVideo || null;
      this.remoteVideo = options.remoteVideo || null;
      this.media = options.media || { audio: true, video: true };
      this.autoReconnect = options.autoReconnect !== false;
      this.logger = options.log || null;

      this.socket = null;
      this.participant = null;
      this.resumeToken = null;
      this.lastSeq = 0;
      this.connected = false;
      this.session = null;

      this.pc = null;
      this.localStream = null;
      this.channel = null;
      this.generation = 0; // RTCPeerConnections opened so far
      this._ops = Promise.resolve(); // signaling work, strictly one after another
      this._handlers = new Map();
      this._welcomeWaiters = [];
      this._remoteUfrag = null;
      this._restart = null; // {startedAt, ufrag, timer} while an ICE restart is under way

      this.counters = {
        welcomes: 0,
        resumes: 0,
        events: [], // [event, seq] of every numbered server event, in arrival order
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
    }

    // ------------------------------------------------------------------ events

    /** Listen to a server event ("welcome", "ticket.update", ...) or a local one
     * ("connection" {state}, "track", "datachannel", "message", "restart"). */
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
          this._log("handler failed", { event, err: String(err) });
        }
      }
    }

    _log(message, details) {
      if (this.logger) this.logger(message, details);
    }

    _mark(name) {
      this.timings[name] = now();
    }

    // ------------------------------------------------------------------ Socket.IO

    /** Connect with the credentials; resolves with the `welcome` payload. */
    connect() {
      if (this.socket) return this.reconnect();
      const socket = global.io(this.url, {
        path: "/socket.io/",
        transports: ["websocket"],
        reconnection: this.autoReconnect,
        autoConnect: false,
        // Called for every (re)connection: resume once there is a token to resume with.
        auth: (cb) => cb(this._auth()),
      });
      this.socket = socket;
      socket.on("connect", () => {
        this.connected = true;
      });
      socket.on("disconnect", (reason) => {
        this.connected = false;
        this._log("disconnected", { reason });
        this._emitLocal("disconnected", { reason });
      });
      socket.on("connect_error", (err) => this._onConnectError(err));
      socket.onAny((event, payload) => this._onServerEvent(event, payload));
      const welcome = this._nextWelcome();
      socket.connect();
      return welcome;
    }

    /** Resume a dropped connection (auth {resume, last_seq}); resolves with the `welcome`.
     * If a session is live, ICE restarts once the hall has welcomed us back. */
    reconnect() {
      if (!this.socket) return this.connect();
      const welcome = this._nextWelcome();
      if (!this.socket.connected) {
        this.socket.io.reconnection(this.autoReconnect);
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
      if (!socket || !socket.connected) throw new Error("HallRtc: not connected");
      socket.io.reconnection(false);
      const transport = socket.io.engine && socket.io.engine.transport;
      const ws = transport && transport.ws;
      if (!ws) throw new Error("HallRtc: no websocket to drop");
      ws.close(); // the server sees the websocket go away without a CLOSE packet
      return new Promise((resolve) => {
        if (!socket.connected) return resolve();
        socket.once("disconnect", () => resolve());
      });
    }

    /** Emit with an ack (the contract requires one); resolves with the ack object. */
    async call(event, payload) {
      if (!this.socket) throw new Error("HallRtc: not connected");
      try {
        return await this.socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload || {});
      } catch (err) {
        return { ok: false, error: { code: "timeout", message: String(err) } };
      }
    }

    close() {
      this._closeMedia();
      if (this.socket) {
        this.socket.io.reconnection(false);
        this.socket.disconnect();
      }
    }

    _auth() {
      if (this.resumeToken) return { resume: this.resumeToken, last_seq: this.lastSeq };
      return this.credentials;
    }

    _nextWelcome() {
      return new Promise((resolve, reject) => this._welcomeWaiters.push({ resolve, reject }));
    }

    _onConnectError(err) {
      const data = (err && err.data) || {};
      const code = data.code || (data.data && data.data.code) || null;
      this._log("connect_error", { message: err && err.message, code });
      if (code === "resume_invalid" && this.resumeToken) {
        // The hall forgot us (grace over, or the token was used): start afresh.
        this.resumeToken = null;
        this.lastSeq = 0;
        this._emitLocal("resume_failed", { code });
        this.socket.connect();
        return;
      }
      if (!this.socket.io.reconnection() || !this.socket.active) {
        const waiters = this._welcomeWaiters.splice(0);
        for (const w of waiters) w.reject(Object.assign(new Error(err.message), { code }));
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
      } else if (event !== "replaced") {
        this.counters.seqViolations.push(`${event}: no seq`);
      }
      switch (event) {
        case "session.started":
          this._enqueue(() => this._startMedia(payload.session, false));
          break;
        case "session.ended":
          if (this.session && payload.session_id === this.session.id) {
            this._enqueue(() => this._closeMedia());
          }
          break;
        case "rtc.signal":
          if (this.session && payload.session_id === this.session.id && payload.from === "peer") {
            this._enqueue(() => this._onSignal(payload));
          }
          break;
        case "replaced":
          this.socket.io.reconnection(false); // another tab took over: do not fight it
          break;
        default:
          break;
      }
      this._emitLocal(event, payload);
    }

    _onWelcome(welcome) {
      this.counters.welcomes += 1;
      this.participant = welcome.participant;
      this.resumeToken = welcome.resume_token;
      if (welcome.resumed) {
        // The replay (seq > lastSeq) follows; lastSeq stays where it was.
        this.counters.resumes += 1;
        this._mark("resumed");
      } else {
        this.lastSeq = welcome.last_seq; // nothing is replayed on a fresh connection
      }
      const session = welcome.session;
      if (this.pc && session && this.session && session.id === this.session.id) {
        // Back in the session we have media for: the network path may have changed too.
        this._enqueue(() => this._restartIce());
      } else if (session) {
        // A session negotiated before this page had media for it (a reload): offer afresh.
        this._enqueue(() => this._startMedia(session, true));
      } else if (this.pc) {
        this._enqueue(() => this._closeMedia()); // the session ended while we were away
      }
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

    async _signal(message) {
      if (!this.session) return;
      this.counters.signalsOut += 1;
      const ack = await this.call("rtc.signal", Object.assign({ session_id: this.session.id },
                                                              message));
      if (!ack || ack.ok !== true) {
        this.counters.signalErrors.push(JSON.stringify(ack));
        this._log("rtc.signal refused", ack);
      }
    }

    // ------------------------------------------------------------------ media

    /** Open the media for a session. `offerNow`: offer at once instead of waiting for the
     * initiator's offer (used when joining a session that was negotiated before). */
    async _startMedia(session, offerNow) {
      if (this.session && this.session.id === session.id && this.pc) return;
      this._closeMedia();
      this.session = session;
      this._mark("sessionStarted");
      if (!this.localStream) {
        this.localStream = await navigator.mediaDevices.getUserMedia(this.media);
        if (this.localVideo) {
          this.localVideo.srcObject = this.localStream;
          this.localVideo.play().catch(() => {});
        }
      }
      this._openConnection(session.initiator || offerNow);
    }

    /** A new RTCPeerConnection with our tracks. `offerer`: this side makes the first offer
     * (and creates the data channel); otherwise it waits for the peer's offer. */
    _openConnection(offerer) {
      const session = this.session;
      const pc = new RTCPeerConnection({ iceServers: session.ice_servers || [] });
      const generation = ++this.generation;
      this.pc = pc;
      this.polite = !!session.polite;
      this.makingOffer = false;
      this.ignoreOffer = false;
      this.negotiating = offerer; // the non-initiator stays quiet until the first offer
      this._remoteUfrag = null;
      this._remoteFingerprint = null;
      this._mark("connectionOpened");
      delete this.timings.iceConnected;
      delete this.timings.firstFrame;
      const current = () => generation === this.generation;

      for (const track of this.localStream.getTracks()) pc.addTrack(track, this.localStream);
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
        this._emitLocal("track", { kind: track.kind, generation });
        if (track.kind !== "video" || !this.remoteVideo) return;
        this.remoteVideo.srcObject = streams[0] || new MediaStream([track]);
        this.remoteVideo.play().catch(() => {});
        this._countFrames(generation);
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
          this._onSelectedPair(ufrag);
        });
      };
      watch();
    }

    _onSelectedPair(ufrag) {
      const restart = this._restart;
      if (restart && ufrag && ufrag === restart.ufrag) this._restartDone("selected pair");
    }

    _countFrames(generation) {
      const video = this.remoteVideo;
      if (!video || typeof video.requestVideoFrameCallback !== "function") return;
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
        this._emitLocal("message", data);
      };
      channel.onopen = () => this._emitLocal("datachannel", { state: "open", generation });
    }

    /** Send a text message on the `hall` data channel. */
    sendMessage(text) {
      if (!this.channel || this.channel.readyState !== "open") {
        throw new Error("HallRtc: the hall data channel is not open");
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
        this.pc.close();
      }
      this.pc = null;
      this.channel = null;
    }

    _closeMedia() {
      if (this._restart) clearTimeout(this._restart.timer);
      this._restart = null;
      this._closeConnection();
      this.generation += 1; // late callbacks of the closed connection are ignored
      if (this.localStream) {
        for (const track of this.localStream.getTracks()) track.stop();
      }
      this.localStream = null;
      if (this.localVideo) this.localVideo.srcObject = null;
      if (this.remoteVideo) this.remoteVideo.srcObject = null;
      this.session = null;
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
        selectedLocalUfrag: null,
        restartPending: !!this._restart,
        lastRestart: this.lastRestart ? Object.assign({}, this.lastRestart, { timer: null })
          : null,
        timings: Object.assign({}, this.timings),
        now: now(),
      };
      Object.assign(out, JSON.parse(JSON.stringify(this.counters)));
      if (!pc) return out;
      const report = await pc.getStats();
      const byId = new Map();
      report.forEach((s) => byId.set(s.id, s));
      report.forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "video") {
          out.framesDecoded += s.framesDecoded || 0;
          out.framesReceived += s.framesReceived || 0;
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

  global.HallRtc = HallRtc;
})(window);
