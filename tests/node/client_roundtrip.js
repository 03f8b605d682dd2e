// Protocol compatibility: the official JavaScript client (socket.io-client 4.x) against the hall.
//
//   node client_roundtrip.js --url http://127.0.0.1:8080 --matter <matter_id> \
//        [--transport default|websocket] [--resident <id>]
//
// (or HALL_URL, HALL_MATTER, HALL_TRANSPORT, HALL_RESIDENT in the environment). As a resident of
// the app, it gets an identity token from the demo endpoint, connects, waits for `welcome`,
// sends a malformed `ticket.take` (must be refused with invalid_payload), a valid one (must be
// acked with the ticket), leaves the ticket again, and prints one JSON line:
// {"ok": bool, "transport": ..., "checks": {...}, "errors": [...]}. Exit 0 when every check
// passed, 1 otherwise.
"use strict";

const { io } = require("socket.io-client");

const TIMEOUT_MS = 5000;

function option(name, envName, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i !== -1 && i + 1 < process.argv.length) return process.argv[i + 1];
  return process.env[envName] || fallback;
}

const url = option("url", "HALL_URL", "");
const matterId = option("matter", "HALL_MATTER", "");
const transport = option("transport", "HALL_TRANSPORT", "default");
const residentId = option("resident", "HALL_RESIDENT", `node-${transport}-${process.pid}`);

const checks = {};
const errors = [];

function check(name, condition, detail) {
  checks[name] = Boolean(condition);
  if (!condition) errors.push(`${name}: ${JSON.stringify(detail)}`);
}

function finish(socket) {
  if (socket) socket.disconnect();
  const ok = errors.length === 0 && Object.keys(checks).length > 0;
  console.log(JSON.stringify({ ok, transport, checks, errors }));
  process.exit(ok ? 0 : 1);
}

function once(socket, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
    socket.once(event, (data) => {
      clearTimeout(timer);
      resolve(data);
    });
  });
}

async function residentToken() {
  const response = await fetch(`${url}/api/dev/resident-token`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ resident_id: residentId, name: "测试居民" }),
  });
  const body = await response.json();
  if (response.status !== 200 || typeof body.id_token !== "string") {
    throw new Error(`resident-token: HTTP ${response.status} ${JSON.stringify(body)}`);
  }
  return body.id_token;
}

async function main() {
  if (!url || !matterId) throw new Error("--url and --matter are required");
  if (!["default", "websocket"].includes(transport)) throw new Error(`bad --transport ${transport}`);
  const idToken = await residentToken();

  const options = { auth: { id_token: idToken }, reconnection: false, forceNew: true };
  // "default" is the client's own choice: long-polling first, then the upgrade to websocket.
  if (transport === "websocket") options.transports = ["websocket"];
  const socket = io(url, options);
  // The transport the connection opened with, recorded before an upgrade can replace it.
  let first = null;
  socket.io.once("open", () => {
    first = socket.io.engine.transport.name;
  });
  try {
    // Listen before the handshake completes: the server emits welcome right after connect.
    const welcomed = once(socket, "welcome");
    const connected = new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("connect_error", (err) => reject(new Error(`connect_error: ${err.message} ${JSON.stringify(err.data)}`)));
    });
    await connected;
    check("first_transport", first === (transport === "websocket" ? "websocket" : "polling"), first);
    const welcome = await welcomed;
    // welcome is not numbered (docs/protocol.md): it says where the sequence stands instead.
    check(
      "welcome",
      welcome &&
        welcome.role === "resident" &&
        welcome.participant === `resident:${residentId}` &&
        welcome.resumed === false &&
        welcome.last_seq === 0 &&
        typeof welcome.resume_token === "string",
      welcome,
    );

    const bad = await socket.timeout(TIMEOUT_MS).emitWithAck("ticket.take", { matter_id: 42 });
    check(
      "malformed_refused",
      bad && bad.ok === false && bad.error && bad.error.code === "invalid_payload" && typeof bad.error.message === "string",
      bad,
    );

    const taken = await socket.timeout(TIMEOUT_MS).emitWithAck("ticket.take", { matter_id: matterId, when_unstaffed: "wait" });
    const ticket = taken && taken.ticket;
    check(
      "ticket_taken",
      taken && taken.ok === true && ticket && typeof ticket.id === "string" && ticket.matter_id === matterId,
      taken,
    );

    if (ticket && typeof ticket.id === "string") {
      const left = await socket.timeout(TIMEOUT_MS).emitWithAck("ticket.leave", { ticket_id: ticket.id });
      check("ticket_left", left && left.ok === true && left.ticket && left.ticket.id === ticket.id, left);
    }

    if (transport === "default") {
      // The upgrade may already have happened during the round trips above.
      if (socket.io.engine.transport.name !== "websocket") await once(socket.io.engine, "upgrade");
      check("upgraded", socket.io.engine.transport.name === "websocket", socket.io.engine.transport.name);
    }
  } catch (err) {
    errors.push(String(err && err.stack ? err.stack : err));
  } finally {
    finish(socket);
  }
}

main().catch((err) => {
  errors.push(String(err && err.stack ? err.stack : err));
  finish(null);
});
