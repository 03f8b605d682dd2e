// Minimal Node.js Socket.IO relay: the baseline that bench/signaling.py measures the hall
// against. It implements only the relay part of the hall protocol (docs/protocol.md), written
// the way a competent Node developer would: no batching, no custom parser, stock settings.
//
//   node relay.js [port]        (or PORT=... node relay.js)
//
// A client connects with auth {room, peer}; `rtc.signal` {session_id, description?, candidate?}
// with an ack goes to the other socket of the room as `rtc.signal`
// {seq, session_id, from: "peer", description, candidate} and is acked with {ok: true}.
"use strict";

const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.argv[2] || process.env.PORT || 0);

const httpServer = http.createServer();
const io = new Server(httpServer, {
  path: "/socket.io/",
  // Same limit as the hall (Engine.IO closes on a frame over 128 KiB), so both refuse alike.
  maxHttpBufferSize: 128 * 1024,
  // Same heartbeat as the hall, so idle connections cost the same timers on both sides.
  pingInterval: 5000,
  pingTimeout: 5000,
});

// Per-recipient sequence numbers, like the hall's per-participant `seq`.
const seqs = new Map();

io.use((socket, next) => {
  const { room, peer } = socket.handshake.auth || {};
  if (typeof room !== "string" || typeof peer !== "string" || !room || !peer) {
    const err = new Error("auth {room, peer} required");
    err.data = { code: "unauthenticated", message: "auth {room, peer} required" };
    return next(err);
  }
  next();
});

io.on("connection", (socket) => {
  const { room } = socket.handshake.auth;
  socket.join(room);
  seqs.set(socket.id, 0);

  socket.on("rtc.signal", (payload, ack) => {
    if (typeof ack !== "function") return; // the protocol requires an ack; ignore otherwise
    if (payload === null || typeof payload !== "object" || typeof payload.session_id !== "string") {
      ack({ ok: false, error: { code: "invalid_payload", message: "session_id" } });
      return;
    }
    const members = io.of("/").adapter.rooms.get(room);
    let peerId = null;
    if (members) {
      for (const id of members) {
        if (id !== socket.id) {
          peerId = id;
          break;
        }
      }
    }
    const peer = peerId && io.of("/").sockets.get(peerId);
    if (!peer) {
      ack({ ok: false, error: { code: "invalid_state", message: "no peer in the room" } });
      return;
    }
    const seq = seqs.get(peerId) + 1;
    seqs.set(peerId, seq);
    peer.emit("rtc.signal", {
      seq,
      session_id: payload.session_id,
      from: "peer",
      description: payload.description,
      candidate: payload.candidate,
    });
    ack({ ok: true });
  });

  socket.on("disconnect", () => {
    seqs.delete(socket.id);
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  // bench/signaling.py waits for this line to learn that the port is bound.
  console.log(`node relay listening on ${httpServer.address().port}`);
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
