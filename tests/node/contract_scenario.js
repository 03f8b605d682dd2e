// The client contract, as an outside client author reads it: a whole session written from
// docs/protocol.md alone, with the official JavaScript client (socket.io-client 4.x).
//
//   node contract_scenario.js --url http://127.0.0.1:8080 --password <demo password> \
//        [--clerk clerk01]
//
// A clerk logs in over HTTP, a demo resident gets an identity token, both connect over
// websocket, the resident takes a ticket the clerk is offered and accepts, they signal and
// chat, the resident's transport is cut and resumed (the replay must fill the gap with the
// original seq numbers), the clerk ends the session and wraps up, the resident rates; then the
// error answers the document promises. Every check prints one line ("ok" or "FAIL", its name and
// what it looked at); the last line is JSON: {"ok", "checks": {name: bool}, "errors": [...]}.
// Exit 0 when every check passed.
"use strict";

const { io } = require("socket.io-client");

const TIMEOUT_MS = 5000;

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i !== -1 && i + 1 < process.argv.length) return process.argv[i + 1];
  return fallback;
}

const url = option("url", "");
const password = option("password", "");
const clerkUser = option("clerk", "clerk01");
// A clerk of another department: never offered the scenario's ticket.
const otherClerkUser = option("other-clerk", "clerk05");
const suffix = `${process.pid}`;

const checks = {};
const errors = [];

function show(value) {
  const text = JSON.stringify(value);
  return text && text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

function check(name, condition, detail) {
  if (name in checks) throw new Error(`duplicate check name ${name}`);
  checks[name] = Boolean(condition);
  console.log(`${condition ? "ok  " : "FAIL"} ${name}: ${show(detail)}`);
  if (!condition) errors.push(`${name}: ${show(detail)}`);
}

function hasFields(obj, fields) {
  return obj !== null && typeof obj === "object" && fields.every((f) => f in obj);
}

function missing(obj, fields) {
  if (obj === null || typeof obj !== "object") return fields;
  return fields.filter((f) => !(f in obj));
}

function isErr(ack, code) {
  return (
    ack !== null && typeof ack === "object" && ack.ok === false && ack.error &&
    ack.error.code === code && typeof ack.error.message === "string"
  );
}

// Events without `seq` (docs/protocol.md, "Conventions").
const UNNUMBERED = new Set(["welcome", "replaced", "session.expired", "wall.update", "queues.update"]);

// One participant across its connections: every event received, in order, with a cursor per
// event name so each wait takes the next one not taken yet.
class Participant {
  constructor(label) {
    this.label = label;
    this.log = []; // {event, data, conn}
    this.taken = new Set();
    this.waiters = [];
    this.socket = null;
    this.conn = 0;
    this.lastSeq = 0;
  }

  connect(auth, extra = {}) {
    this.conn += 1;
    const conn = this.conn;
    const socket = io(url, {
      auth,
      transports: ["websocket"],
      reconnection: false,
      forceNew: true,
      ...extra,
    });
    socket.onAny((event, ...args) => {
      const data = args[0];
      // The welcome asks for an ack; it is answered explicitly by the scenario.
      if (data && typeof data === "object" && typeof args[args.length - 1] === "function") {
        Object.defineProperty(data, "__ack", { value: args[args.length - 1], enumerable: false });
      }
      if (data && typeof data === "object" && Number.isInteger(data.seq) && data.seq > this.lastSeq) {
        this.lastSeq = data.seq;
      }
      this.log.push({ event, data, conn });
      for (const w of [...this.waiters]) w();
    });
    this.socket = socket;
    return new Promise((resolve, reject) => {
      socket.once("connect", () => resolve(socket));
      socket.once("connect_error", (err) => reject(err));
    });
  }

  next(event, pred = () => true, timeout = TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      const look = () => {
        for (let i = 0; i < this.log.length; i += 1) {
          const entry = this.log[i];
          if (!this.taken.has(i) && entry.event === event && pred(entry.data)) {
            this.taken.add(i);
            return entry.data;
          }
        }
        return undefined;
      };
      const found = look();
      if (found !== undefined) return resolve(found);
      const waiter = () => {
        const hit = look();
        if (hit !== undefined) {
          clearTimeout(timer);
          this.waiters = this.waiters.filter((w) => w !== waiter);
          resolve(hit);
        }
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`${this.label}: no ${event} within ${timeout} ms; got ${show(this.log.map((e) => e.event))}`));
      }, timeout);
      this.waiters.push(waiter);
    });
  }

  async call(event, payload) {
    const ack = await this.socket.timeout(TIMEOUT_MS).emitWithAck(event, payload);
    acks.push({ who: this.label, event, ack });
    return ack;
  }

  numbered() {
    return this.log.filter((e) => !UNNUMBERED.has(e.event));
  }
}

const acks = [];

async function http(method, path, { body, headers = {}, raw } = {}) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.body = raw ? body : JSON.stringify(body);
    if (!raw) init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(`${url}${path}`, init);
  const text = await response.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    json = null;
  }
  return { status: response.status, headers: response.headers, json, text };
}

function httpErrorShape(res, status, code) {
  return (
    res.status === status && res.json && res.json.ok === false && res.json.error &&
    res.json.error.code === code && typeof res.json.error.message === "string" &&
    (res.headers.get("cache-control") || "").includes("no-store")
  );
}

const WELCOME = ["participant", "role", "name", "resume_token", "resumed", "last_seq", "ping_interval_s", "ticket", "session"];
const TICKET = ["id", "number", "matter_id", "department_id", "kind", "channel", "state", "priority", "callback", "joined_at", "position", "clerk_id", "transfers", "outcome", "rating"];
const CLERK = ["id", "name", "state", "break_reason", "ticket_id", "missed_in_row", "wrapup_deadline", "wrapup_overdue", "pending_break"];
const SESSION = ["id", "ticket_id", "matter_id", "role", "peer", "initiator", "polite", "ice_servers", "chat"];
const QUEUE = ["matter_id", "name", "name_en", "department_id", "primary", "waiting", "oldest_wait_s", "on_duty"];
const OFFER = ["ticket_id", "number", "matter_id", "kind", "priority", "callback", "callback_contact", "transfers", "transfer_note", "wait_s", "deadline", "timeout_s"];
const MESSAGE = ["id", "from_role", "name", "text", "at"];

// A fake but well-formed SDP: the hall relays descriptions, it does not parse them.
function fakeSdp(tag) {
  return [
    "v=0", `o=- ${Date.now()} 2 IN IP4 127.0.0.1`, "s=-", "t=0 0",
    "a=group:BUNDLE 0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0",
    `a=ice-ufrag:${tag}`, "a=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa", "a=mid:0", "a=sendrecv",
    "a=rtpmap:111 opus/48000/2", "",
  ].join("\r\n");
}

async function scenario() {
  // --- HTTP: a clerk's login, a demo resident's identity token -------------------------------
  const origin = new URL(url).origin;
  const login = await http("POST", "/api/auth/login", {
    body: { username: clerkUser, password },
    headers: { Origin: origin },
  });
  check(
    "login_answer",
    login.status === 200 && login.json && login.json.ok === true && typeof login.json.token === "string" &&
      login.json.role === "clerk" && typeof login.json.name === "string" && typeof login.json.expires_at === "number",
    { status: login.status, fields: login.json && Object.keys(login.json) },
  );
  const clerkToken = login.json.token;

  async function residentToken(id) {
    const res = await http("POST", "/api/dev/resident-token", {
      body: { resident_id: id, name: "测试居民" },
      headers: { Origin: origin },
    });
    return res;
  }
  const residentId = `contract-a-${suffix}`;
  const tokA = await residentToken(residentId);
  check(
    "demo_resident_token",
    tokA.status === 200 && tokA.json && tokA.json.ok === true && typeof tokA.json.id_token === "string",
    { status: tokA.status, fields: tokA.json && Object.keys(tokA.json) },
  );
  const idTokenA = tokA.json.id_token;

  // --- connect both --------------------------------------------------------------------------
  const clerk = new Participant("clerk");
  const resident = new Participant("resident");
  await clerk.connect({ token: clerkToken });
  await resident.connect({ id_token: idTokenA });

  const cw = await clerk.next("welcome");
  check(
    "clerk_welcome_fields",
    hasFields(cw, [...WELCOME, "clerk", "offer"]) && cw.participant === `clerk:${clerkUser}` && cw.role === "clerk" &&
      cw.resumed === false && cw.last_seq === 0 && typeof cw.resume_token === "string" && cw.ping_interval_s === 5 &&
      cw.ticket === null && cw.session === null && cw.offer === null && !("seq" in cw),
    { missing: missing(cw, [...WELCOME, "clerk", "offer"]), participant: cw.participant, last_seq: cw.last_seq },
  );
  check(
    "clerk_welcome_clerk_available",
    hasFields(cw.clerk, CLERK) && cw.clerk.id === clerkUser && cw.clerk.state === "available",
    { missing: missing(cw.clerk, CLERK), state: cw.clerk && cw.clerk.state },
  );
  check("welcome_asks_ack", typeof cw.__ack === "function", typeof cw.__ack);
  cw.__ack({});
  const rw = await resident.next("welcome");
  check(
    "resident_welcome_fields",
    hasFields(rw, WELCOME) && rw.participant === `resident:${residentId}` && rw.role === "resident" &&
      rw.resumed === false && rw.last_seq === 0 && typeof rw.resume_token === "string" && rw.ticket === null &&
      rw.session === null,
    { missing: missing(rw, WELCOME), participant: rw.participant },
  );
  rw.__ack({});

  // queues.update right after the welcome: the clerk's matters, unnumbered.
  const qu = await clerk.next("queues.update");
  const queues = (qu && qu.queues) || [];
  check(
    "queues_update_shape",
    hasFields(qu, ["at", "queues"]) && !("seq" in qu) && queues.length > 0 && queues.every((q) => hasFields(q, QUEUE)),
    { missing: missing(queues[0], QUEUE), n: queues.length, seq: qu && qu.seq },
  );
  const firstAfterWelcome = clerk.log.map((e) => e.event).slice(0, 3);
  check(
    "queues_update_right_after_welcome",
    firstAfterWelcome[0] === "welcome" && firstAfterWelcome[1] === "queues.update",
    firstAfterWelcome,
  );
  const primary = queues.find((q) => q.primary) || queues[0];
  check("queues_primary_first", queues.length > 0 && queues[0].primary === true, queues.map((q) => [q.matter_id, q.primary]));
  const matterId = primary.matter_id;

  // --- errors before anything happens ---------------------------------------------------------
  const unknown = await resident.call("no.such.event", {});
  check("unknown_event", isErr(unknown, "unknown_event"), unknown);
  // ("connect" and friends are reserved by socket.io-client itself; "*" is not.)
  const starNamed = await resident.call("*", {});
  check("event_named_star_is_unknown", isErr(starNamed, "unknown_event"), starNamed);
  const wrongRole = await resident.call("offer.accept", { ticket_id: "A001" });
  check("wrong_role_forbidden", isErr(wrongRole, "forbidden"), wrongRole);
  const clerkTakes = await clerk.call("ticket.take", { matter_id: matterId });
  check("clerk_ticket_take_forbidden", isErr(clerkTakes, "forbidden"), clerkTakes);
  const extra = await resident.call("ticket.take", { matter_id: matterId, colour: "blue" });
  check(
    "unknown_field_invalid_payload",
    isErr(extra, "invalid_payload") && extra.error.message.includes("colour"),
    extra,
  );

  // --- the ticket and the offer ---------------------------------------------------------------
  const take = await resident.call("ticket.take", { matter_id: matterId });
  const ticket = take && take.ticket;
  check(
    "ticket_take_ack",
    take && take.ok === true && hasFields(ticket, TICKET) && ticket.matter_id === matterId,
    { ok: take && take.ok, missing: missing(ticket, TICKET), error: take && take.error },
  );
  const ticketId = ticket.id;
  const pos = await resident.call("ticket.position", { ticket_id: ticketId });
  check(
    "ticket_position_ack",
    pos && pos.ok === true && hasFields(pos.position, ["ticket_id", "position", "eta_s", "staffed"]) &&
      pos.position.ticket_id === ticketId,
    pos,
  );
  const offer = await clerk.next("offer.new");
  check(
    "offer_new_fields",
    hasFields(offer, [...OFFER, "seq"]) && offer.ticket_id === ticketId && offer.matter_id === matterId &&
      typeof offer.deadline === "number" && typeof offer.timeout_s === "number",
    { missing: missing(offer, [...OFFER, "seq"]), ticket_id: offer.ticket_id },
  );

  // --- another resident: not_found for A's ticket, and a rate limit ----------------------------
  const other = new Participant("resident_b");
  const tokB = await residentToken(`contract-b-${suffix}`);
  await other.connect({ id_token: tokB.json.id_token });
  (await other.next("welcome")).__ack({});
  const notMine = await other.call("ticket.leave", { ticket_id: ticketId });
  const noSuch = await other.call("ticket.leave", { ticket_id: "Z999" });
  check(
    "another_residents_ticket_not_found",
    isErr(notMine, "not_found") && isErr(noSuch, "not_found") &&
      notMine.error.message.split(ticketId).join("<id>") === noSuch.error.message.split("Z999").join("<id>"),
    { notMine, noSuch },
  );
  // ticket.position: 1 a second, bursts of 5, and a refused one (not_found) spends its token.
  // Seven at once: at most 5 (6 if a second passed) get through, the rest are over the budget.
  const positions = await Promise.all(
    Array.from({ length: 7 }, () => other.call("ticket.position", { ticket_id: "Z999" })),
  );
  const throttled = positions.filter((a) => isErr(a, "too_many_requests"));
  check(
    "ticket_position_rate_limited",
    throttled.length >= 1 && positions.every((a) => isErr(a, "not_found") || isErr(a, "too_many_requests")) &&
      throttled.every((a) => typeof a.error.retry_after_s === "number" && a.error.retry_after_s > 0),
    positions.map((a) => a.error && [a.error.code, a.error.retry_after_s]),
  );

  // --- another clerk: the offer is not theirs -------------------------------------------------
  const login2 = await http("POST", "/api/auth/login", { body: { username: otherClerkUser, password }, headers: { Origin: origin } });
  const clerk2 = new Participant("clerk_b");
  await clerk2.connect({ token: login2.json.token });
  (await clerk2.next("welcome")).__ack({});
  const stolen = await clerk2.call("offer.accept", { ticket_id: ticketId });
  check("other_clerk_accept_not_found", isErr(stolen, "not_found"), stolen);

  // --- accept: both get session.started -------------------------------------------------------
  const accept = await clerk.call("offer.accept", { ticket_id: ticketId });
  check(
    "offer_accept_ack",
    accept && accept.ok === true && hasFields(accept.ticket, TICKET) && hasFields(accept.session, SESSION),
    { ok: accept && accept.ok, error: accept && accept.error },
  );
  const cs = await clerk.next("session.started");
  const rs = await resident.next("session.started");
  check(
    "clerk_session_started",
    hasFields(cs, ["session", "seq"]) && hasFields(cs.session, [...SESSION, "monitors", "notes"]) &&
      cs.session.id === ticketId && cs.session.ticket_id === ticketId && cs.session.role === "clerk" &&
      cs.session.initiator === true && cs.session.peer.role === "resident" && Array.isArray(cs.session.ice_servers),
    { missing: missing(cs.session, [...SESSION, "monitors", "notes"]), session: cs.session },
  );
  check(
    "resident_session_started",
    hasFields(rs, ["session", "seq"]) && hasFields(rs.session, SESSION) && rs.session.id === ticketId &&
      rs.session.role === "resident" && rs.session.initiator === false && rs.session.polite === true &&
      rs.session.peer.role === "clerk" && !("notes" in rs.session) && !("monitors" in rs.session),
    { missing: missing(rs.session, SESSION), session: rs.session },
  );
  const inSession = await resident.next("ticket.update", (d) => d.ticket && d.ticket.state === "in_session");
  check("resident_ticket_in_session", hasFields(inSession.ticket, TICKET) && inSession.ticket.clerk_id === clerkUser, inSession);

  // --- rtc.signal and chat -------------------------------------------------------------------
  const sid = ticketId;
  const sigOffer = await clerk.call("rtc.signal", { session_id: sid, description: { type: "offer", sdp: fakeSdp("clrk") } });
  check("rtc_signal_ack", sigOffer && sigOffer.ok === true, sigOffer);
  const gotOffer = await resident.next("rtc.signal");
  check(
    "rtc_signal_relayed",
    gotOffer.session_id === sid && gotOffer.from === "peer" && gotOffer.description &&
      gotOffer.description.type === "offer" && gotOffer.description.sdp.startsWith("v=0") && Number.isInteger(gotOffer.seq),
    gotOffer,
  );
  const sigAnswer = await resident.call("rtc.signal", { session_id: sid, description: { type: "answer", sdp: fakeSdp("resd") } });
  const cand = await resident.call("rtc.signal", {
    session_id: sid,
    candidate: { candidate: "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host", sdpMid: "0", sdpMLineIndex: 0 },
  });
  const endCand = await resident.call("rtc.signal", { session_id: sid, candidate: null });
  check("rtc_answer_and_candidates_acked", [sigAnswer, cand, endCand].every((a) => a && a.ok === true), [sigAnswer, cand, endCand]);
  const gotAnswer = await clerk.next("rtc.signal", (d) => d.description && d.description.type === "answer");
  const gotCand = await clerk.next("rtc.signal", (d) => d.candidate && d.candidate.candidate);
  const gotEnd = await clerk.next("rtc.signal", (d) => "candidate" in d && d.candidate === null);
  check(
    "rtc_answer_and_candidates_relayed",
    gotAnswer.from === "peer" && gotCand.candidate.sdpMid === "0" && gotEnd.candidate === null,
    [gotAnswer.from, gotCand.candidate, gotEnd],
  );
  const badSignal = await clerk.call("rtc.signal", { session_id: sid, to: "resident:somebody-else", candidate: null });
  check("rtc_signal_to_outsider_forbidden", isErr(badSignal, "forbidden"), badSignal);

  const intruderSignal = await clerk2.call("rtc.signal", { session_id: sid, candidate: null });
  const intruderEnd = await clerk2.call("session.end", { session_id: sid });
  const intruderChat = await other.call("chat.send", { session_id: sid, text: "hi" });
  check(
    "others_session_not_found",
    isErr(intruderSignal, "not_found") && isErr(intruderEnd, "not_found") && isErr(intruderChat, "not_found"),
    [intruderSignal, intruderEnd, intruderChat],
  );
  const chat = await resident.call("chat.send", { session_id: sid, text: "  你好  " });
  check(
    "chat_send_ack",
    chat && chat.ok === true && hasFields(chat.message, MESSAGE) && chat.message.text === "你好" && chat.message.from_role === "resident",
    chat,
  );
  const chatIn = await clerk.next("chat.message");
  check(
    "chat_message_relayed",
    chatIn.session_id === sid && hasFields(chatIn.message, MESSAGE) && chatIn.message.text === "你好" && Number.isInteger(chatIn.seq),
    chatIn,
  );
  const oversized = await resident.call("chat.send", { session_id: sid, text: "x".repeat(70 * 1024) });
  check("oversized_payload_too_large", isErr(oversized, "payload_too_large"), oversized);
  const unknownChatField = await resident.call("chat.send", { session_id: sid, text: "hi", mood: "happy" });
  check("chat_unknown_field_invalid_payload", isErr(unknownChatField, "invalid_payload"), unknownChatField);
  const tooLong = await resident.call("chat.send", { session_id: sid, text: "x".repeat(1001) });
  check("chat_text_over_limit_invalid_payload", isErr(tooLong, "invalid_payload"), tooLong);

  // --- a shared file over HTTP, during the session -------------------------------------------
  const PNG = Buffer.from("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==", "base64");
  function pngForm(name) {
    const form = new FormData();
    form.append("file", new Blob([PNG], { type: "image/png" }), name);
    return form;
  }
  const jsonUpload = await http("POST", `/api/tickets/${ticketId}/files`, {
    body: { file: "x" },
    headers: { Authorization: `Bearer ${idTokenA}`, Origin: origin },
  });
  check("upload_not_multipart_415", httpErrorShape(jsonUpload, 415, "unsupported_media_type"), { status: jsonUpload.status, body: jsonUpload.json });
  const uploaded = await http("POST", `/api/tickets/${ticketId}/files`, {
    body: pngForm("id-card.png"), raw: true,
    headers: { Authorization: `Bearer ${idTokenA}`, Origin: origin },
  });
  const FILE = ["id", "filename", "size", "content_type", "kind", "uploaded_by", "uploaded_at"];
  check(
    "upload_201",
    uploaded.status === 201 && uploaded.json && uploaded.json.ok === true && hasFields(uploaded.json.file, FILE) &&
      uploaded.json.file.content_type === "image/png" && uploaded.json.file.uploaded_by === `resident:${residentId}`,
    { status: uploaded.status, body: uploaded.json },
  );
  const fileAdded = await clerk.next("file.added");
  check(
    "file_added_to_clerk",
    fileAdded.ticket_id === ticketId && hasFields(fileAdded.file, FILE) && Number.isInteger(fileAdded.seq) &&
      uploaded.json && fileAdded.file.id === uploaded.json.file.id,
    fileAdded,
  );
  const noTicket = await http("POST", "/api/tickets/T000000000/files", {
    body: pngForm("x.png"), raw: true,
    headers: { Authorization: `Bearer ${clerkToken}`, Origin: origin },
  });
  check("upload_unknown_ticket_404", httpErrorShape(noTicket, 404, "not_found"), { status: noTicket.status, body: noTicket.json });

  // --- drop the resident's transport, the clerk goes on, the resident resumes --------------------
  const beforeDrop = resident.lastSeq;
  const resumeToken = rw.resume_token;
  const dropped = new Promise((resolve) => resident.socket.once("disconnect", resolve));
  const engine = resident.socket.io.engine;
  const ws = engine.transport && engine.transport.ws;
  if (ws && typeof ws.terminate === "function") ws.terminate(); // the TCP connection, no close frame
  else engine.close();
  const reason = await dropped;
  check("resident_transport_dropped", reason === "transport close" || reason === "transport error", reason);
  const peerGone = await clerk.next("session.peer", (d) => d.state === "reconnecting");
  check("clerk_peer_reconnecting", peerGone.session_id === sid && Number.isInteger(peerGone.seq), peerGone);
  const awayChat = await clerk.call("chat.send", { session_id: sid, text: "您还在吗?" });
  const awayOffer = await clerk.call("rtc.signal", { session_id: sid, description: { type: "offer", sdp: fakeSdp("rest") } });
  check("clerk_sends_while_resident_away", awayChat.ok === true && awayOffer.ok === true, [awayChat, awayOffer]);

  const lastSeqSent = resident.lastSeq;
  check("resident_last_seq_unchanged_by_drop", lastSeqSent === beforeDrop, { beforeDrop, lastSeqSent });
  const tokResume = await residentToken(residentId); // a fresh identity token, as the app would
  await resident.connect({ id_token: tokResume.json.id_token, resume: resumeToken, last_seq: lastSeqSent });
  const conn2 = resident.conn;
  const rw2 = await resident.next("welcome");
  check(
    "resume_welcome",
    hasFields(rw2, WELCOME) && rw2.resumed === true && rw2.ticket && rw2.ticket.id === ticketId &&
      rw2.session && rw2.session.id === sid && rw2.last_seq >= lastSeqSent + 2 && rw2.resume_token !== resumeToken,
    { resumed: rw2.resumed, last_seq: rw2.last_seq, lastSeqSent, ticket: rw2.ticket && rw2.ticket.state },
  );
  rw2.__ack({});
  const replayChat = await resident.next("chat.message", (d) => d.message.text === "您还在吗?");
  const replayOffer = await resident.next("rtc.signal", (d) => d.description && d.description.sdp.includes("ice-ufrag:rest"));
  const replayed = resident.log.filter((e) => e.conn === conn2 && !UNNUMBERED.has(e.event)).map((e) => e.data.seq);
  check(
    "replay_in_order_original_seq",
    replayed.length >= 2 && replayed[0] === lastSeqSent + 1 &&
      replayed.every((s, i) => i === 0 || s === replayed[i - 1] + 1) &&
      replayChat.seq > lastSeqSent && replayOffer.seq === replayChat.seq + 1 && replayed.includes(rw2.last_seq),
    { lastSeqSent, replayed, welcome_last_seq: rw2.last_seq },
  );
  const back = await clerk.next("session.peer", (d) => d.state === "back");
  check("clerk_peer_back", back.session_id === sid && Number.isInteger(back.seq), back);
  const afterResume = await resident.call("chat.send", { session_id: sid, text: "在的" });
  check("chat_after_resume", afterResume.ok === true, afterResume);
  await clerk.next("chat.message", (d) => d.message.text === "在的");
  const staleResume = new Participant("stale");
  let staleErr = null;
  try {
    await staleResume.connect({ id_token: tokResume.json.id_token, resume: resumeToken, last_seq: 0 });
  } catch (err) {
    staleErr = err;
  }
  // The token resumed with is retired by the welcome's ack: the answer to the chat sent after
  // it proves the ack took effect ("Resume", "How long a resume token is good").
  check(
    "retired_resume_token_refused",
    staleErr && staleErr.data && staleErr.data.code === "resume_invalid",
    staleErr && { message: staleErr.message, data: staleErr.data },
  );
  if (staleResume.socket) staleResume.socket.disconnect();

  // --- end, wrap-up, rating ------------------------------------------------------------------
  const end = await clerk.call("session.end", { session_id: sid });
  check("session_end_ack", end.ok === true && hasFields(end.ticket, TICKET) && end.ticket.state === "wrap_up", end);
  const ended = await resident.next("session.ended");
  check("resident_session_ended", ended.session_id === sid && ended.reason === "clerk" && Number.isInteger(ended.seq), ended);
  const rWrap = await resident.next("ticket.update", (d) => d.ticket.state === "wrap_up");
  check("resident_ticket_wrap_up", rWrap.ticket.id === ticketId, rWrap.ticket.state);
  const cWrap = await clerk.next("ticket.update", (d) => d.ticket.state === "wrap_up");
  check("clerk_ticket_wrap_up", cWrap.ticket.id === ticketId, cWrap.ticket.state);
  const cState = await clerk.next("clerk.state", (d) => d.clerk.state === "wrap_up");
  check("clerk_state_wrap_up", hasFields(cState.clerk, CLERK) && typeof cState.clerk.wrapup_deadline === "number", cState.clerk);
  const afterEnd = await resident.call("chat.send", { session_id: sid, text: "还有一个问题" });
  check(
    "chat_on_ended_session_invalid_state",
    isErr(afterEnd, "invalid_state") && afterEnd.error.message.includes('"wrap_up"'),
    afterEnd,
  );
  const noReason = await clerk.call("wrapup.finish", { outcome: "referred_offline" });
  check("outcome_without_reason_invalid_input", isErr(noReason, "invalid_input"), noReason);
  const blankReason = await clerk.call("wrapup.finish", { outcome: "referred_offline", reason: "   " });
  check("outcome_blank_reason_invalid_input", isErr(blankReason, "invalid_input"), blankReason);
  const hallCode = await clerk.call("wrapup.finish", { outcome: "transferred", reason: "x" });
  check("outcome_set_by_hall_invalid_input", isErr(hallCode, "invalid_input"), hallCode);
  const finish = await clerk.call("wrapup.finish", { outcome: "referred_offline", reason: "需到实体窗口核验原件" });
  check("wrapup_finish_ack", finish.ok === true && hasFields(finish.clerk, CLERK) && finish.clerk.state === "available", finish);
  const done = await resident.next("ticket.update", (d) => d.ticket.state === "done");
  check("resident_ticket_done", done.ticket.outcome === "referred_offline", done.ticket);
  const available = await clerk.next("clerk.state", (d) => d.clerk.state === "available");
  check("clerk_state_available", available.clerk.ticket_id === null, available.clerk);
  const rate = await resident.call("session.rate", { ticket_id: ticketId, score: 5, comment: "很好" });
  check("session_rate_ack", rate.ok === true && hasFields(rate.ticket, TICKET) && rate.ticket.rating !== null, rate);
  const rateAgain = await resident.call("session.rate", { ticket_id: ticketId, score: 4 });
  check("session_rate_twice_invalid_state", isErr(rateAgain, "invalid_state"), rateAgain);
  const badScore = await resident.call("session.rate", { ticket_id: ticketId, score: 6 });
  check("session_rate_bad_score_invalid_payload", isErr(badScore, "invalid_payload"), badScore);

  // --- hello: a handshake without credentials authenticates by its first event ----------------
  const late = new Participant("resident_hello");
  const tokC = await residentToken(`contract-c-${suffix}`);
  await late.connect(undefined);
  const hello = await late.call("hello", { id_token: tokC.json.id_token });
  check(
    "hello_ack_is_welcome",
    hello && hello.ok === true && hasFields(hello, WELCOME) && hello.participant === `resident:contract-c-${suffix}` &&
      hello.resumed === false,
    hello,
  );
  const helloWelcome = await late.next("welcome");
  check("hello_also_emits_welcome", helloWelcome.resume_token === hello.resume_token, helloWelcome);
  helloWelcome.__ack({});
  const helloAgain = await late.call("hello", { id_token: tokC.json.id_token });
  check("second_hello_refused", helloAgain && helloAgain.ok === false && typeof helloAgain.error.code === "string", helloAgain);
  late.socket.disconnect();

  // --- refused handshakes -------------------------------------------------------------------
  async function refused(auth, extra) {
    const p = new Participant("refused");
    try {
      await p.connect(auth, extra);
      p.socket.disconnect();
      return null;
    } catch (err) {
      return err;
    }
  }
  const badToken = await refused({ id_token: "not-a-jwt" });
  check(
    "bad_credential_connect_error",
    badToken && typeof badToken.message === "string" && badToken.data && badToken.data.code === "unauthenticated" &&
      typeof badToken.data.message === "string",
    badToken && { message: badToken.message, data: badToken.data },
  );
  const noCred = await refused({ resume: rw2.resume_token, last_seq: 0 });
  check(
    "resume_without_credential_unauthenticated",
    noCred && noCred.data && noCred.data.code === "unauthenticated",
    noCred && { message: noCred.message, data: noCred.data },
  );
  const foreign = await refused({ token: clerkToken }, { extraHeaders: { Origin: "https://evil.example" } });
  check(
    "foreign_origin_connect_error",
    foreign && foreign.data && foreign.data.code === "origin_refused",
    foreign && { message: foreign.message, data: foreign.data },
  );

  // --- HTTP answers -------------------------------------------------------------------------
  const noAuth = await http("GET", `/api/tickets/${ticketId}/files`);
  check("file_route_401_shape", httpErrorShape(noAuth, 401, "unauthenticated"), { status: noAuth.status, body: noAuth.json });
  const othersFiles = await http("GET", `/api/tickets/${ticketId}/files`, { headers: { Authorization: `Bearer ${tokB.json.id_token}` } });
  check("file_route_others_ticket_404", httpErrorShape(othersFiles, 404, "not_found"), { status: othersFiles.status, body: othersFiles.json });
  const lateUpload = await http("POST", `/api/tickets/${ticketId}/files`, {
    body: pngForm("late.png"), raw: true,
    headers: { Authorization: `Bearer ${idTokenA}`, Origin: origin },
  });
  check("resident_upload_after_session_409", httpErrorShape(lateUpload, 409, "uploads_closed"), { status: lateUpload.status, body: lateUpload.json });
  const ownFiles = await http("GET", `/api/tickets/${ticketId}/files`, { headers: { Authorization: `Bearer ${idTokenA}` } });
  check(
    "resident_lists_files_after_session",
    ownFiles.status === 200 && ownFiles.json && ownFiles.json.files.length === 1,
    { status: ownFiles.status, body: ownFiles.json },
  );
  const foreignPost = await http("POST", "/api/auth/login", {
    body: { username: clerkUser, password },
    headers: { Origin: "https://evil.example" },
  });
  check("foreign_origin_post_403", httpErrorShape(foreignPost, 403, "origin_forbidden"), { status: foreignPost.status, body: foreignPost.json });
  const badLogin = await http("POST", "/api/auth/login", {
    body: { username: clerkUser, password: `${password}-wrong` },
    headers: { Origin: origin },
  });
  check("bad_password_401", httpErrorShape(badLogin, 401, "unauthenticated"), { status: badLogin.status, body: badLogin.json });
  const badShape = await http("POST", "/api/auth/login", { body: ["x"], headers: { Origin: origin } });
  check("login_not_object_400", httpErrorShape(badShape, 400, "invalid_payload"), { status: badShape.status, body: badShape.json });

  // --- every ack and every seq ----------------------------------------------------------------
  const badAcks = acks.filter(({ ack }) => !(ack && typeof ack === "object" && typeof ack.ok === "boolean" &&
    (ack.ok || (ack.error && typeof ack.error.code === "string" && typeof ack.error.message === "string"))));
  check("every_ack_ok_shape", acks.length > 0 && badAcks.length === 0, { n: acks.length, bad: badAcks });
  check("no_internal_error", !acks.some(({ ack }) => ack && ack.error && ack.error.code === "internal_error"), acks.filter(({ ack }) => ack && ack.error && ack.error.code === "internal_error"));
  for (const p of [clerk, resident, other, clerk2]) {
    const numbered = p.numbered();
    const seqs = numbered.map((e) => e.data && e.data.seq);
    const unnumbered = p.log.filter((e) => UNNUMBERED.has(e.event) && e.data && "seq" in e.data);
    const gapFree = seqs.every((s, i) => s === i + 1);
    check(
      `seq_gap_free_${p.label}`,
      gapFree && unnumbered.length === 0,
      { seqs, events: numbered.map((e) => e.event), numbered_unnumbered: unnumbered.map((e) => e.event) },
    );
  }
  for (const p of [clerk, resident, other, clerk2]) if (p.socket) p.socket.disconnect();
}

function finish() {
  const ok = errors.length === 0 && Object.keys(checks).length > 0;
  console.log(JSON.stringify({ ok, checks, errors }));
  process.exit(ok ? 0 : 1);
}

if (!url || !password) {
  console.error("--url and --password are required");
  process.exit(2);
}
scenario()
  .catch((err) => errors.push(String(err && err.stack ? err.stack : err)))
  .finally(finish);
