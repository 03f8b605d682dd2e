/**
 * The call funnel and call quality of this side of a session, reported to the hall with
 * `call.report` (docs/protocol.md, "Call funnel and quality"). hall-client.js makes one per
 * HallClient; the app, kiosk and clerk pages need nothing else.
 *
 * Stages, in milliseconds since `session.started` arrived (this side's view of the clerk's
 * accept): `signaling` (the first rtc.signal sent or received), `ice_connected` (the
 * connection's iceConnectionState connected or completed), `first_frame` (the first video
 * frame decoded, getStats framesDecoded > 0), or `failed` with a code: `ice_failed` (ICE
 * failed and never connected within ICE_TIMEOUT_MS, the client's own restarts included),
 * `timeout` (not connected within ICE_TIMEOUT_MS, never failed), `no_frames` (connected, no
 * frame within FRAME_TIMEOUT_MS). A page reloaded in the middle of a session reports its
 * stages without `at_ms` (the hall then times them from the accept).
 *
 * Once the call is up, a getStats summary right away and then every STATS_INTERVAL_MS: the
 * selected candidate pair's local candidate type and current round-trip time, inbound RTP
 * loss (over the interval), jitter (the worst stream), the received bitrate over the interval,
 * video freezes (Chromium's freezeCount) and frames decoded. Best effort: a refused report is
 * only logged and never touches the call.
 */

const STATS_INTERVAL_MS = 5000;
const TICK_MS = 250;
const ICE_TIMEOUT_MS = 30000;
const FRAME_TIMEOUT_MS = 15000;
const MAX_AT_MS = 3600000;

const clamp = (value, high, digits) => {
  const f = 10 ** digits;
  return Math.round(Math.min(high, Math.max(0, value)) * f) / f;
};

/** The `stats` object of a call.report from one RTCStatsReport, and the totals for the next. */
export function summarize(report, previous, nowMs) {
  let transport = null;
  const pairs = [];
  let received = 0;
  let lost = 0;
  let bytes = 0;
  let jitter = null;
  let freezes = null;
  let frames = 0;
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) transport = s;
    else if (s.type === "candidate-pair") pairs.push(s);
    else if (s.type === "inbound-rtp") {
      received += s.packetsReceived || 0;
      lost += Math.max(0, s.packetsLost || 0);
      bytes += s.bytesReceived || 0;
      if (typeof s.jitter === "number") jitter = Math.max(jitter || 0, s.jitter);
      if (s.kind === "video") {
        frames += s.framesDecoded || 0;
        if (typeof s.freezeCount === "number") freezes = (freezes || 0) + s.freezeCount;
      }
    }
  });
  const pair = (transport && report.get(transport.selectedCandidatePairId)) ||
    pairs.find((c) => c.selected) ||
    pairs.find((c) => c.nominated && c.state === "succeeded") || null;
  const stats = { frames_decoded: Math.min(1e9, frames) };
  if (pair) {
    const local = report.get(pair.localCandidateId);
    const type = local && local.candidateType;
    if (["host", "srflx", "prflx", "relay"].includes(type)) stats.candidate_type = type;
    if (typeof pair.currentRoundTripTime === "number") {
      stats.rtt_ms = clamp(pair.currentRoundTripTime * 1000, 60000, 1);
    }
  }
  const base = previous || { at: nowMs, received: 0, lost: 0, bytes: 0 };
  const got = Math.max(0, received - base.received);
  const missed = Math.max(0, lost - base.lost);
  if (got + missed > 0) stats.loss_ratio = clamp(missed / (got + missed), 1, 4);
  if (jitter !== null) stats.jitter_ms = clamp(jitter * 1000, 60000, 1);
  if (previous && nowMs > previous.at) {
    const kbps = (Math.max(0, bytes - previous.bytes) * 8) / (nowMs - previous.at);
    stats.bitrate_kbps = clamp(kbps, 1000000, 1);
  }
  if (freezes !== null) stats.freezes = Math.min(1000000, freezes);
  return { stats, totals: { at: nowMs, received, lost, bytes } };
}

export class CallQuality {
  /** @param {import("./hall-client.js").HallClient} hall */
  constructor(hall) {
    this.hall = hall;
    this.current = null; // {sessionId, startedAt, timed, reached, failure, ...} of the call
    this.sent = 0; // reports the hall accepted
    this.refused = []; // the last refusals (diagnostics)
    hall.on("session.started", ({ session }) => this._begin(session.id, true));
    hall.on("welcome", (welcome) => {
      const session = welcome.session;
      if (!session) this._end();
      else if (!this.current || this.current.sessionId !== session.id) {
        this._begin(session.id, false); // a page reloaded in the middle of the session
      }
    });
    hall.on("session.ended", ({ session_id: id }) => {
      if (this.current && this.current.sessionId === id) this._end();
    });
    hall.on("rtc.signal", (signal) => {
      if (signal.from === "peer") this._reach("signaling");
    });
  }

  _begin(sessionId, timed) {
    this._end();
    if (!this.hall.withMedia) return;
    const call = {
      sessionId, timed, startedAt: performance.now(), reached: {}, failure: null,
      iceFailed: false, connectedAt: null, totals: null, timer: null,
      signalsOut: this.hall.counters.signalsOut,
    };
    this.current = call;
    const tick = async () => {
      if (this.current !== call) return;
      const up = await this._look(call);
      if (this.current !== call) return;
      if (up) {
        await this._sendStats(call);
        call.timer = setInterval(() => this._sendStats(call), STATS_INTERVAL_MS);
      } else {
        call.timer = setTimeout(tick, TICK_MS);
      }
    };
    call.timer = setTimeout(tick, 0);
  }

  _end() {
    const call = this.current;
    this.current = null;
    if (call && call.timer !== null) {
      clearTimeout(call.timer);
      clearInterval(call.timer);
    }
  }

  _ms(call) {
    return Math.round(Math.min(MAX_AT_MS, Math.max(0, performance.now() - call.startedAt)));
  }

  /** One look at the connection; true once the call is up (first frame) or failed. */
  async _look(call) {
    const pc = this.hall.pc;
    if (this.hall.counters.signalsOut > call.signalsOut) this._reach("signaling");
    if (!pc) return false;
    const ice = pc.iceConnectionState;
    if (ice === "failed") call.iceFailed = true;
    if (ice === "connected" || ice === "completed") {
      if (!call.reached.ice_connected) call.connectedAt = performance.now();
      this._reach("ice_connected");
    }
    if (call.reached.ice_connected) {
      try {
        const { stats } = summarize(await pc.getStats(), null, performance.now());
        if (stats.frames_decoded > 0) {
          this._reach("first_frame");
          return true;
        }
      } catch (err) {
        return false; // closed under us: the next look sees the next connection
      }
    }
    const waited = performance.now() - call.startedAt;
    if (!call.reached.ice_connected && waited > ICE_TIMEOUT_MS) {
      return this._fail(call, call.iceFailed ? "ice_failed" : "timeout");
    }
    if (call.connectedAt !== null && performance.now() - call.connectedAt > FRAME_TIMEOUT_MS) {
      return this._fail(call, "no_frames");
    }
    return false;
  }

  _reach(stage) {
    const call = this.current;
    if (!call || call.reached[stage] !== undefined) return;
    call.reached[stage] = this._ms(call);
    const report = { stage };
    if (call.timed) report.at_ms = call.reached[stage];
    this._send(call, report);
  }

  _fail(call, code) {
    call.failure = code;
    const report = { stage: "failed", failure: code };
    if (call.timed) report.at_ms = this._ms(call);
    this._send(call, report);
    return true;
  }

  async _sendStats(call) {
    const pc = this.hall.pc;
    if (this.current !== call || !pc || pc.connectionState === "closed") return;
    try {
      const now = performance.now();
      const { stats, totals } = summarize(await pc.getStats(), call.totals, now);
      call.totals = totals;
      this._send(call, { stats });
    } catch (err) {
      this.hall._log("call quality: getStats failed", { err: String(err) });
    }
  }

  async _send(call, fields) {
    let ack;
    try {
      ack = await this.hall.call("call.report", { session_id: call.sessionId, ...fields });
    } catch (err) {
      ack = { ok: false, error: { code: "not_connected", message: String(err) } };
    }
    if (ack && ack.ok === true) this.sent += 1;
    else {
      this.refused.push(ack);
      this.refused.splice(0, this.refused.length - 10);
      this.hall._log("call.report refused", ack);
    }
  }
}
