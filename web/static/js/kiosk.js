/*
 * /kiosk/<point>: a neighbourhood kiosk (portrait 1080×1920 touch screen), for the elderly
 * first. Residents are anonymous: the kiosk's own connection acts for them.
 *
 * Device credentials: the device secret lives in localStorage `hall.kiosk.secret.<point>`
 * (a technician enters it on the set-up screen, or opens the page once with `#secret=...`).
 * It is traded at POST /api/auth/kiosk for a hall token (sessionStorage), refreshed with
 * `auth.refresh` before it expires; a refused secret brings the set-up screen back.
 *
 * Steps: home → device check → department → matter → confirm (kind, 65+, assistance) →
 * waiting → call → after (result, print, rating, 办不成事 with a claim code) → finish, which
 * wipes everything of the resident. So does walking away: 90 s without a touch (on the
 * waiting screen a "still there?" countdown from 60 s, then the ticket is left); a session is
 * never interrupted. `?idle=<s>` shortens the timeout in a demo hall only (tests).
 *
 * Health: camera, microphone, speaker and document camera are checked when the kiosk starts,
 * when a resident starts, and every 5 minutes, and reported with `kiosk.health`.
 */
import { HallClient, HallError } from "/static/js/hall-client.js";
import {
  $, $$, announce, api, bindConnectionStatus, chatPanel, config, errorText, fill, h,
  loadCatalog, nameOf, showError, t, toast,
} from "/static/js/ui.js";
import {
  QUEUED, ResidentFlow, alertNext, beep, callControls, caseForm, caseStateText,
  checklistView, closeDialogs, closeFileViewers, confirmDialog, filesView,
  keepPlaying, matterById, ratingForm, refusalText, renderWaitingCard, resultView,
  sharedAudioContext, syncReconnectingBanner,
} from "/static/js/resident-core.js";

const point = config.service_point;
const SECRET_KEY = `hall.kiosk.secret.${point.id}`;
const TOKEN_KEY = `hall.kiosk.token.${point.id}`;
const HEALTH_EVERY_MS = 5 * 60 * 1000;
const FRAME_TIMEOUT_MS = 4000;
const IDLE_S = idleSeconds();
const STILL_AT_S = (IDLE_S * 2) / 3; // the "still there?" countdown on the waiting screen
const PHASE_SCREENS = new Set(["screen-waiting", "screen-call", "screen-after"]);
const CASE_PRESETS = ["preset_materials", "preset_rules", "preset_wait", "preset_device",
  "preset_other"];

const ui = {
  screen: null,
  history: [], // screens to go "back" to
  catalog: null,
  purpose: "take", // picking a matter to take a ticket, or to report (办不成事)
  department: null,
  matter: null,
  kind: "consultation",
  elderly: false,
  assist: false,
  pendingTake: null,
  phase: null,
  dirty: false, // something of a resident is on screen or in memory
  lastTouch: Date.now(),
  voice: false,
  health: null, // the last results reported
  healthAck: null,
  check: null, // the device check under way: {generation, streams, stop}
  checkGeneration: 0,
  gone: null, // the state of a ticket that ended by itself (left elsewhere, timed out)
};
let client = null;
let flow = null;
let chat = null;
let controls = null;
const auth = { token: null, expiresAt: 0, timer: null };

function idleSeconds() {
  const asked = Number(new URLSearchParams(location.search).get("idle"));
  return config.demo && asked > 0 && asked <= 3600 ? asked : 90;
}

// ------------------------------------------------------------------ screens

function show(id, options) {
  const opts = options || {};
  if (ui.screen === id) return;
  if (opts.remember && ui.screen && !PHASE_SCREENS.has(ui.screen)) ui.history.push(ui.screen);
  if (ui.screen === "screen-check" && id !== "screen-check") stopCheck();
  ui.screen = id;
  if (id !== "screen-home" && id !== "screen-setup" && id !== "screen-loading") ui.dirty = true;
  for (const screen of $$(".screen")) screen.hidden = screen.id !== id;
  const title = $(`#${id} .screen-title`) || $(`#${id} h1`);
  if (title) title.focus();
  window.scrollTo(0, 0);
  speakScreen(id);
}

function go(id) {
  show(id, { remember: true });
}

function back() {
  const previous = ui.history.pop();
  if (ui.screen === "screen-report" || ui.screen === "screen-confirm") ui.matter = null;
  show(previous || "screen-home");
}

for (const button of $$("[data-nav]")) {
  button.addEventListener("click", () => {
    if (button.dataset.nav === "back") back();
    else wipe("start_over");
  });
}

// ------------------------------------------------------------------ voice prompts

const voice = $("#voice-toggle");
const canSpeak = typeof globalThis.speechSynthesis !== "undefined"
  && typeof globalThis.SpeechSynthesisUtterance !== "undefined";

function setVoice(on) {
  ui.voice = !!on;
  voice.setAttribute("aria-pressed", ui.voice ? "true" : "false");
  if (!ui.voice && canSpeak) globalThis.speechSynthesis.cancel();
}

voice.addEventListener("click", () => {
  setVoice(!ui.voice);
  if (ui.voice) speak(t("voice_on"));
});

function speak(text) {
  if (!ui.voice || !canSpeak || !text) return;
  try {
    globalThis.speechSynthesis.cancel();
    const utterance = new SpeechSynthesisUtterance(text);
    utterance.lang = config.lang === "en" ? "en-US" : "zh-CN";
    utterance.rate = 0.9;
    globalThis.speechSynthesis.speak(utterance);
  } catch {
    // no voice on this device: the screen says it all
  }
}

function speakScreen(id) {
  if (!ui.voice) return;
  const screen = $(`#${id}`);
  if (!screen) return;
  const title = screen.querySelector("h1");
  const lead = screen.querySelector(".lead");
  speak([title && title.textContent, lead && lead.textContent].filter(Boolean).join("。"));
}

// ------------------------------------------------------------------ device credentials

function secretFromFragment() {
  if (!location.hash) return;
  const secret = new URLSearchParams(location.hash.slice(1)).get("secret");
  if (secret) localStorage.setItem(SECRET_KEY, secret);
  history.replaceState(null, "", location.pathname + location.search);
}

function showSetup(message) {
  clearTimeout(auth.timer);
  show("screen-setup");
  $("#setup-error").hidden = !message;
  $("#setup-error").textContent = message || "";
  $("#setup-secret").value = "";
}

$("#setup-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const secret = $("#setup-secret").value.trim();
  if (!secret) return;
  localStorage.setItem(SECRET_KEY, secret);
  $("#setup-secret").value = "";
  login();
});

function setToken(token, expiresAt) {
  auth.token = token;
  auth.expiresAt = expiresAt;
  sessionStorage.setItem(TOKEN_KEY, JSON.stringify({ token, expires_at: expiresAt }));
  clearTimeout(auth.timer);
  const left = expiresAt - Date.now() / 1000;
  // Refresh at 80% of the lifetime (at least 10 s ahead of the end, at most a day away).
  const delay = Math.min(86400, Math.max(5, left - Math.max(10, left * 0.2)));
  auth.timer = setTimeout(refreshToken, delay * 1000);
}

/** Trade the device secret for a hall token; throws HallError. */
async function exchange() {
  const secret = localStorage.getItem(SECRET_KEY);
  if (!secret) throw new HallError("unauthenticated", "no device secret");
  const reply = await api("/api/auth/kiosk", { body: { service_point_id: point.id, secret } });
  setToken(reply.token, reply.expires_at);
}

function refusedText(err) {
  if (err instanceof HallError && err.code === "unauthenticated") return t("setup_wrong_secret");
  return t("setup_refused", { message: errorText(err) });
}

function refused(err) {
  return err instanceof HallError && ["unauthenticated", "forbidden", "too_many_attempts",
    "invalid_payload"].includes(err.code);
}

async function login() {
  show("screen-loading");
  $("#loading-detail").textContent = t("connecting");
  try {
    await exchange();
  } catch (err) {
    if (refused(err)) {
      if (err.code === "unauthenticated" || err.code === "invalid_payload") {
        localStorage.removeItem(SECRET_KEY);
      }
      showSetup(refusedText(err));
      return;
    }
    $("#loading-detail").textContent = t("retrying");
    setTimeout(login, 5000); // the hall is unreachable: keep trying, unattended
    return;
  }
  connectHall();
}

async function refreshToken() {
  try {
    if (client && client.connected) {
      const ack = await client.request("auth.refresh", {});
      setToken(ack.token, ack.expires_at);
    } else {
      await exchange();
    }
  } catch (err) {
    if (refused(err) && !(client && client.connected)) {
      showSetup(refusedText(err));
      return;
    }
    clearTimeout(auth.timer);
    auth.timer = setTimeout(refreshToken, 30000);
  }
}

// ------------------------------------------------------------------ the hall connection

function connectHall() {
  if (client) {
    client.connect().catch(() => {});
    return;
  }
  const remoteVideo = $("#remote-video");
  const remoteScreen = $("#remote-screen");
  client = new HallClient({
    credentials: () => ({ token: auth.token }),
    localVideo: $("#local-video"),
    remoteVideo,
    remoteScreen,
  });
  if (config.demo) window.hallClient = client; // tests drive and inspect the page with it
  bindConnectionStatus(client);
  flow = new ResidentFlow({ client, token: () => auth.token });
  if (config.demo) window.hallFlow = flow;
  chat = chatPanel(client);
  fill($("#call-chat"), chat.element, quickPhrases());
  controls = callControls(flow, {
    buttons: ["mic", "share", "end"],
    shareStream: documentStream,
    shareLabel: t("show_document"),
    stopShareLabel: t("stop_document"),
  });
  fill($("#call-controls"), controls.element);
  const playRemote = keepPlaying(remoteVideo, $("#call-unmute"));
  client.on("remote-media", ({ screen }) => {
    remoteScreen.hidden = !screen;
    $(".call-stage").classList.toggle("has-screen", !!screen);
    playRemote();
  });
  client.on("link", () => syncReconnecting());
  client.on("media-error", ({ audio }) => {
    toast(audio ? t("camera_failed") : t("devices_failed"), "error");
  });
  client.on("connect_failed", async ({ code }) => {
    if (code !== "unauthenticated") return;
    try {
      await exchange(); // the token ran out while away: a fresh one, then connect again
      client.connect().catch(() => {});
    } catch (err) {
      if (refused(err)) showSetup(refusedText(err));
      else setTimeout(() => connectHall(), 5000);
    }
  });
  client.on("welcome", (welcome) => {
    // A wiped resident's ticket still queued (the kiosk was offline when it left): leave it.
    const stale = welcome.ticket;
    if (stale && QUEUED.has(stale.state) && flow.forgotten.includes(stale.id)) {
      client.call("ticket.leave", { ticket_id: stale.id });
    }
    // Connected (first time, or again after the set-up screen): show what the flow is in.
    if (ui.screen === "screen-loading" || ui.screen === "screen-setup" || !ui.screen) {
      ui.phase = null;
      render();
      if (ui.screen === "screen-loading" || ui.screen === "screen-setup" || !ui.screen) {
        show("screen-home");
      }
    }
    startHealth();
  });
  flow.subscribe(onFlow);
  client.connect().catch(() => {});
}

// ------------------------------------------------------------------ device check and health

function agent() {
  const match = /(Chrome|Chromium|Firefox|Safari|Edg)\/[\d.]+/.exec(navigator.userAgent);
  return `kiosk-web ${match ? match[0] : ""}`.trim().slice(0, 64);
}

function waitForFrames(stream, video) {
  const element = video || document.createElement("video");
  element.muted = true;
  element.playsInline = true;
  element.srcObject = stream;
  element.play().catch(() => {});
  return new Promise((resolve) => {
    const started = Date.now();
    const poll = () => {
      if (element.readyState >= 2 && element.videoWidth > 0) return resolve(true);
      if (Date.now() - started > FRAME_TIMEOUT_MS) return resolve(false);
      return setTimeout(poll, 100);
    };
    poll();
  }).finally(() => {
    if (!video) element.srcObject = null;
  });
}

function stopStream(stream) {
  if (stream) for (const track of stream.getTracks()) track.stop();
}

async function probeCamera(deviceId, video) {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: deviceId ? { deviceId: { exact: deviceId } } : true,
    });
  } catch (err) {
    const absent = err && (err.name === "NotFoundError" || err.name === "OverconstrainedError");
    return { state: absent ? "absent" : "failed", detail: err ? err.name : "error" };
  }
  const ok = await waitForFrames(stream, video);
  return { state: ok ? "ok" : "failed", stream, detail: ok ? "" : "no frames" };
}

async function probeMicrophone() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const live = stream.getAudioTracks().some((track) => track.readyState === "live");
    return { state: live ? "ok" : "failed", stream, detail: live ? "" : "track not live" };
  } catch (err) {
    const absent = err && err.name === "NotFoundError";
    return { state: absent ? "absent" : "failed", detail: err ? err.name : "error" };
  }
}

/** The second video input (the document camera): not the one the main camera uses. */
async function documentCameraId(mainStream) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return null;
  const cameras = (await navigator.mediaDevices.enumerateDevices())
    .filter((d) => d.kind === "videoinput");
  if (cameras.length < 2) return null;
  const track = mainStream && mainStream.getVideoTracks()[0];
  const mainId = track ? track.getSettings().deviceId : cameras[0].deviceId;
  const other = cameras.find((d) => d.deviceId && d.deviceId !== mainId);
  return other ? other.deviceId : null;
}

function speakerState() {
  const context = sharedAudioContext();
  return context ? "ok" : "failed";
}

/** Camera, microphone, document camera (and speaker without asking anyone). */
async function quietProbe() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return { camera: "failed", microphone: "failed", speaker: speakerState(),
             document_camera: "absent", detail: "no mediaDevices" };
  }
  const camera = await probeCamera(null, null);
  const microphone = await probeMicrophone();
  const docId = await documentCameraId(camera.stream);
  stopStream(camera.stream);
  stopStream(microphone.stream);
  let documentCamera = { state: "absent", detail: "" };
  if (docId) {
    documentCamera = await probeCamera(docId, null);
    stopStream(documentCamera.stream);
  }
  return {
    camera: camera.state, microphone: microphone.state, speaker: speakerState(),
    document_camera: documentCamera.state,
    detail: detailOf({ camera, microphone, document_camera: documentCamera },
                     "speaker not confirmed (unattended)"),
  };
}

function detailOf(parts, extra) {
  const notes = Object.entries(parts).filter(([, r]) => r.detail)
    .map(([name, r]) => `${name}: ${r.detail}`);
  if (extra) notes.push(extra);
  return notes.join("; ").slice(0, 300);
}

async function reportHealth(results) {
  if (!client || !results) return;
  ui.health = results;
  const payload = {
    camera: results.camera, microphone: results.microphone, speaker: results.speaker,
    document_camera: results.document_camera, agent: agent(),
  };
  if (results.detail) payload.detail = results.detail;
  const ack = await client.call("kiosk.health", payload);
  ui.healthAck = ack;
  if (config.demo) window.kioskHealth = { sent: payload, ack }; // for tests
}

let healthTimer = null;
function startHealth() {
  if (healthTimer) return;
  quietProbe().then(reportHealth).catch(() => {});
  healthTimer = setInterval(() => {
    const idleHome = ui.screen === "screen-home" && !(flow && flow.ticket);
    if (idleHome) quietProbe().then(reportHealth).catch(() => {});
    else reportHealth(ui.health).catch(() => {});
  }, HEALTH_EVERY_MS);
}

function setRow(name, state, text) {
  const row = $(`#check-${name}`);
  row.dataset.state = state;
  row.querySelector(".check-state").textContent = text || t(`check_${state}`);
}

function stopCheck() {
  const check = ui.check;
  ui.check = null;
  ui.checkGeneration += 1;
  if (!check) return;
  for (const stream of check.streams) stopStream(stream);
  if (check.source) check.source.disconnect();
  $("#check-video").srcObject = null;
  $("#check-level").style.width = "0%";
}

function meter(stream, check) {
  const context = sharedAudioContext();
  if (!context) return;
  if (context.state === "suspended") context.resume().catch(() => {});
  const source = context.createMediaStreamSource(stream);
  const analyser = context.createAnalyser();
  analyser.fftSize = 512;
  source.connect(analyser);
  check.source = source;
  const data = new Uint8Array(analyser.fftSize);
  const bar = $("#check-level");
  const generation = check.generation;
  const draw = () => {
    if (ui.checkGeneration !== generation) return;
    analyser.getByteTimeDomainData(data);
    let peak = 0;
    for (const v of data) peak = Math.max(peak, Math.abs(v - 128));
    const level = Math.min(100, Math.round((peak / 128) * 140));
    check.maxLevel = Math.max(check.maxLevel, level);
    bar.style.width = `${level}%`;
    requestAnimationFrame(draw);
  };
  draw();
}

async function runCheck() {
  stopCheck();
  const generation = ui.checkGeneration;
  const check = { generation, streams: [], maxLevel: 0, speaker: null, source: null };
  ui.check = check;
  for (const name of ["camera", "microphone", "document_camera", "speaker"]) {
    setRow(name, "checking");
  }
  $("#speaker-ask").hidden = true;
  $("#check-continue").hidden = true;
  fill($("#check-problems"));
  const current = () => ui.checkGeneration === generation;

  const hasMedia = !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
  const camera = hasMedia ? await probeCamera(null, $("#check-video"))
    : { state: "failed", detail: "no mediaDevices" };
  if (!current()) return stopStream(camera.stream);
  if (camera.stream) check.streams.push(camera.stream);
  setRow("camera", camera.state);
  const microphone = hasMedia ? await probeMicrophone()
    : { state: "failed", detail: "no mediaDevices" };
  if (!current()) return stopStream(microphone.stream);
  if (microphone.stream) {
    check.streams.push(microphone.stream);
    meter(microphone.stream, check);
  }
  setRow("microphone", microphone.state);
  let documentCamera = { state: "absent", detail: "" };
  const docId = hasMedia ? await documentCameraId(camera.stream) : null;
  if (docId) {
    documentCamera = await probeCamera(docId, null);
    if (!current()) return stopStream(documentCamera.stream);
    stopStream(documentCamera.stream);
  }
  setRow("document_camera", documentCamera.state);
  check.results = { camera, microphone, document_camera: documentCamera };

  // The speaker: a short tone, and the resident says whether they heard it (optional).
  beep({ times: 2 });
  setRow("speaker", "asking", t("check_asking"));
  $("#speaker-ask").hidden = false;
  $("#check-continue").hidden = false;
  showProblems(check);
  speak(t("speaker_question"));
  return undefined;
}

function speakerAnswer(answer) {
  const check = ui.check;
  if (!check) return;
  check.speaker = answer;
  $("#speaker-ask").hidden = true;
  if (answer === "yes") setRow("speaker", "ok");
  else if (answer === "no") setRow("speaker", "failed");
  else setRow("speaker", speakerState(), t("check_skipped"));
  showProblems(check);
}

$("#speaker-yes").addEventListener("click", () => speakerAnswer("yes"));
$("#speaker-no").addEventListener("click", () => speakerAnswer("no"));
$("#speaker-skip").addEventListener("click", () => speakerAnswer("skip"));
$("#speaker-again").addEventListener("click", () => beep({ times: 2 }));

function checkResults(check) {
  const r = check.results;
  const speaker = check.speaker === "yes" ? "ok" : check.speaker === "no" ? "failed"
    : speakerState();
  const extra = [check.speaker === "yes" || check.speaker === "no" ? "" : "speaker not confirmed",
    r.microphone.state === "ok" && check.maxLevel === 0 ? "microphone: no sound level yet" : ""]
    .filter(Boolean).join("; ");
  return {
    camera: r.camera.state, microphone: r.microphone.state, speaker,
    document_camera: r.document_camera.state, detail: detailOf(r, extra),
  };
}

function showProblems(check) {
  if (!check.results) return;
  const results = checkResults(check);
  const problems = [];
  if (results.camera !== "ok") problems.push(t("problem_camera"));
  if (results.microphone !== "ok") problems.push(t("problem_microphone"));
  if (results.speaker !== "ok") problems.push(t("problem_speaker"));
  if (results.document_camera === "failed") problems.push(t("problem_document_camera"));
  fill($("#check-problems"), problems.length
    ? h("ul", { class: "problems" }, problems.map((p) => h("li", {}, p)))
    : h("p", { class: "all-ok" }, t("check_all_ok")));
}

$("#check-continue").addEventListener("click", () => {
  const check = ui.check;
  if (check && check.results) reportHealth(checkResults(check)).catch(() => {});
  ui.purpose = "take";
  openDepartments();
});

$("#home-start").addEventListener("click", () => {
  go("screen-check");
  runCheck();
});

// ------------------------------------------------------------------ picking a matter

function tile(label, meta, onclick, data) {
  const button = h("button", { type: "button", class: "btn tile", dataset: data },
                   h("span", { class: "tile-name" }, label),
                   meta ? h("span", { class: "tile-meta" }, meta) : null);
  button.addEventListener("click", onclick);
  return h("li", {}, button);
}

function openDepartments() {
  const departments = ui.catalog.departments.filter((d) => ui.catalog.matters
    .some((m) => m.department_id === d.id));
  fill($("#dept-list"), departments.map((d) => tile(nameOf(d), null, () => openMatters(d),
                                                    { department: d.id })));
  go("screen-dept");
}

function openMatters(department) {
  ui.department = department;
  $("#matter-dept").textContent = nameOf(department);
  const matters = ui.catalog.matters.filter((m) => m.department_id === department.id);
  fill($("#matter-list"), matters.map((m) => tile(
    nameOf(m), m.kinds.map((k) => t(`kind_${k}`)).join(" · "), () => chooseMatter(m),
    { matter: m.id })));
  go("screen-matter");
}

function chooseMatter(matter) {
  ui.matter = matter;
  if (ui.purpose === "report") return openReport(matter);
  return openConfirm(matter);
}

function pressed(selector, value, attribute) {
  for (const button of $$(selector)) {
    button.setAttribute("aria-pressed", button.dataset[attribute] === value ? "true" : "false");
  }
}

function openConfirm(matter) {
  ui.kind = matter.kinds.includes("consultation") ? "consultation" : matter.kinds[0];
  ui.elderly = false;
  ui.assist = false;
  ui.pendingTake = null;
  $("#confirm-matter").textContent = nameOf(matter);
  $("#confirm-kinds").hidden = matter.kinds.length < 2;
  pressed("[data-kind]", ui.kind, "kind");
  pressed("[data-elderly]", "no", "elderly");
  pressed("[data-assist]", "no", "assist");
  $("#refusal").hidden = true;
  $("#confirm-take").disabled = false;
  $("#refusal-phone").value = "";
  go("screen-confirm");
}

for (const button of $$("[data-kind]")) {
  button.addEventListener("click", () => {
    ui.kind = button.dataset.kind;
    pressed("[data-kind]", ui.kind, "kind");
  });
}
for (const button of $$("[data-elderly]")) {
  button.addEventListener("click", () => {
    ui.elderly = button.dataset.elderly === "yes";
    pressed("[data-elderly]", button.dataset.elderly, "elderly");
  });
}
for (const button of $$("[data-assist]")) {
  button.addEventListener("click", () => {
    ui.assist = button.dataset.assist === "yes";
    pressed("[data-assist]", button.dataset.assist, "assist");
  });
}

function takeRequest() {
  const request = { matter_id: ui.matter.id, kind: ui.kind };
  if (ui.assist) request.priority = "disabled";
  else if (ui.elderly) request.priority = "elderly";
  return request;
}

async function take(request) {
  $("#confirm-take").disabled = true;
  $("#refusal").hidden = true;
  try {
    const ticket = await flow.take(request);
    ui.pendingTake = null;
    announce(t("ticket_taken", { number: ticket.number }));
  } catch (err) {
    $("#confirm-take").disabled = false;
    if (!(err instanceof HallError)) {
      showError(err);
      return;
    }
    const text = refusalText(err);
    $("#refusal-text").textContent = text;
    const unstaffed = err.code === "no_clerk_on_duty";
    $("#refusal-unstaffed").hidden = !unstaffed;
    ui.pendingTake = unstaffed ? request : null;
    $("#refusal").hidden = false;
    $("#refusal").scrollIntoView({ block: "start" });
    announce(text);
    speak(text);
  }
}

$("#confirm-take").addEventListener("click", () => {
  if (ui.matter) take(takeRequest());
});
$("#refusal-wait").addEventListener("click", () => {
  if (ui.pendingTake) take(Object.assign({}, ui.pendingTake, { when_unstaffed: "wait" }));
});
$("#refusal-callback").addEventListener("click", () => {
  const phone = $("#refusal-phone").value.trim();
  if (!phone) {
    toast(t("callback_phone_needed"), "error");
    return;
  }
  if (ui.pendingTake) {
    take(Object.assign({}, ui.pendingTake, { when_unstaffed: "callback",
                                              callback_contact: phone }));
  }
});

/** Digits for a phone number, large, on the screen (no keyboard at a kiosk). */
function keypad(input) {
  const keys = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "clear", "0", "delete"];
  return keys.map((key) => {
    const label = key === "clear" ? t("key_clear") : key === "delete" ? t("key_delete") : key;
    const button = h("button", { type: "button", class: "btn key" }, label);
    button.addEventListener("click", () => {
      if (key === "clear") input.value = "";
      else if (key === "delete") input.value = input.value.slice(0, -1);
      else if (input.value.length < 20) input.value += key;
    });
    return button;
  });
}
fill($("#refusal-keypad"), keypad($("#refusal-phone")));

// ------------------------------------------------------------------ waiting

function matterName(id) {
  return nameOf(matterById(ui.catalog, id));
}

function renderWaiting() {
  renderWaitingCard(flow, matterName);
}

$("#w-leave").addEventListener("click", async () => {
  const ok = await confirmDialog(t("leave_confirm"), { confirm: t("leave_queue"), danger: true });
  if (ok) await wipe("left");
});

// ------------------------------------------------------------------ "still there?"

const still = $("#still-there");

function showStill(secondsLeft) {
  $("#still-text").textContent = t("still_text", { n: secondsLeft });
  if (!still.open) {
    still.showModal();
    speak(t("still_there"));
    beep({ times: 1 });
  }
}

function hideStill() {
  if (still.open) still.close();
}

$("#still-yes").addEventListener("click", () => {
  ui.lastTouch = Date.now();
  hideStill();
});
still.addEventListener("cancel", (event) => {
  event.preventDefault(); // Escape counts as a touch
  ui.lastTouch = Date.now();
  hideStill();
});

for (const type of ["pointerdown", "keydown", "touchstart"]) {
  document.addEventListener(type, () => { ui.lastTouch = Date.now(); },
                            { capture: true, passive: true });
}

let wiping = false;
function idleTick() {
  if (wiping || !flow) return;
  if (ui.screen === "screen-setup" || ui.screen === "screen-loading") return;
  const idle = (Date.now() - ui.lastTouch) / 1000;
  const phase = flow.phase;
  if (phase === "call") {
    hideStill(); // a session is never interrupted
    return;
  }
  if (phase === "waiting") {
    if (idle >= IDLE_S) {
      hideStill();
      wipe("idle");
    } else if (idle >= STILL_AT_S) {
      showStill(Math.ceil(IDLE_S - idle));
    } else {
      hideStill();
    }
    return;
  }
  hideStill();
  if (idle >= IDLE_S && (ui.dirty || ui.screen !== "screen-home")) wipe("idle");
}
setInterval(idleTick, 250);

/**
 * Forget the resident: leave a queued ticket, clear every trace from the page (chat, files,
 * results, forms, dialogs, messages), forget the resumable connection state, go home.
 */
async function wipe(reason) {
  if (wiping) return;
  wiping = true;
  const gone = ui.gone;
  try {
    const ticket = flow && flow.ticket;
    const leave = ticket && QUEUED.has(ticket.state) ? ticket.id : null;
    stopCheck();
    hideStill();
    closeDialogs();
    closeFileViewers();
    if (flow) flow.clear();
    if (chat) chat.reset(null);
    if (controls) controls.reset();
    if (client && client.screen) await client.stopScreenShare();
    for (const id of ["#call-files", "#call-checklist", "#after-result", "#after-rating",
      "#after-case", "#report-body", "#lookup-result", "#check-problems"]) {
      fill($(id));
    }
    for (const id of ["#refusal-text", "#w-number", "#w-matter", "#w-status", "#after-ticket",
      "#report-matter", "#call-peer", "#confirm-matter"]) {
      $(id).textContent = "";
    }
    for (const id of ["#refusal-phone", "#lookup-code"]) $(id).value = "";
    $("#refusal").hidden = true;
    $("#w-next").hidden = true;
    fill($("#toasts"));
    $("#announcer").textContent = "";
    const chatInput = $("#call-chat .chat-input");
    if (chatInput) chatInput.value = "";
    Object.assign(ui, { history: [], purpose: "take", department: null, matter: null,
                        kind: "consultation", elderly: false, assist: false,
                        pendingTake: null, phase: null, dirty: false, gone: null,
                        lastTouch: Date.now() });
    setVoice(false);
    if (client) client.forgetResume();
    ui.screen = null;
    show("screen-home");
    if (reason === "finish") toast(t("goodbye"));
    if (reason === "left") toast(t("left_queue"));
    if (reason === "gone" && gone) toast(t(`ticket_${gone}`));
    // Last, so that the screen is clean at once even if the hall is slow to answer; a
    // refusal means the ticket is gone already. Missed while offline: see "welcome".
    if (leave) await client.call("ticket.leave", { ticket_id: leave });
  } finally {
    wiping = false;
  }
}

// ------------------------------------------------------------------ the call

async function documentStream() {
  const id = await documentCameraId(client.localStream);
  if (!id) {
    toast(t("no_document_camera"), "error");
    return null;
  }
  return navigator.mediaDevices.getUserMedia({
    video: { deviceId: { exact: id }, width: { ideal: 1920 }, height: { ideal: 1080 } },
  });
}

function quickPhrases() {
  const phrases = ["phrase_repeat", "phrase_cant_hear", "phrase_cant_see", "phrase_ok"];
  return h("div", { class: "phrases", role: "group", "aria-label": t("phrases") },
           phrases.map((key) => {
             const button = h("button", { type: "button", class: "btn phrase" }, t(key));
             button.addEventListener("click", () => {
               const input = $("#call-chat .chat-input");
               const form = $("#call-chat .chat-form");
               if (!input || !form) return;
               input.value = t(key);
               form.requestSubmit();
             });
             return button;
           }));
}

function enterCall() {
  const session = flow.session;
  chat.reset(session);
  controls.reset();
  $("#call-peer").textContent = session && session.peer && session.peer.name
    ? t("call_with", { name: session.peer.name }) : "";
  controls.share.hidden = true;
  documentCameraId(null).then((id) => {
    controls.share.hidden = !id; // one camera only: nothing else to show
  }).catch(() => {});
  renderChecklist();
  renderFiles();
  syncReconnecting();
  announce(t("call_started"));
  speak(t("call_started"));
}

function renderChecklist() {
  const parts = [checklistView(flow.prereview)];
  if (flow.result) parts.push(resultView(flow.result, { link: false }));
  fill($("#call-checklist"), parts);
}

function renderFiles() {
  fill($("#call-files"), filesView(flow));
}

function syncReconnecting() {
  if (!flow || flow.phase !== "call") return;
  syncReconnectingBanner(client, flow);
}

// ------------------------------------------------------------------ after the call

function enterAfter() {
  const served = flow.served || {};
  $("#after-ticket").textContent = t("after_ticket", {
    number: served.number || (flow.ticket && flow.ticket.number) || "",
    matter: matterName(flow.matterId),
  });
  renderResult();
  fill($("#after-rating"), ratingForm(flow, { comment: false }));
  $("#after-case-open").hidden = false;
  fill($("#after-case"));
  speak(t("after_title"));
}

function renderResult() {
  $("#after-result-panel").hidden = !flow.result;
  fill($("#after-result"), flow.result ? resultView(flow.result, { link: false }) : null);
  $("#after-print").hidden = !(flow.result && flow.result.url);
}

$("#after-print").addEventListener("click", () => {
  if (flow.result && flow.result.url) window.open(flow.result.url, "_blank", "noopener");
});

function claimView(filed) {
  return h("div", { class: "claim", role: "status" },
           h("p", { class: "lead" }, t("case_filed", { number: filed.number })),
           filed.claim_code ? h("p", { class: "lead" }, t("claim_code_is")) : null,
           filed.claim_code ? h("p", { class: "claim-code" }, filed.claim_code) : null,
           filed.claim_code ? h("p", { class: "lead" }, t("claim_hint")) : null);
}

$("#after-case-open").addEventListener("click", () => {
  $("#after-case-open").hidden = true;
  fill($("#after-case"), caseForm(flow, {
    presets: CASE_PRESETS,
    rows: 2,
    onFiled(filed) {
      fill($("#after-case"), claimView(filed));
      speak(t("claim_code_is"));
    },
  }));
});

$("#after-finish").addEventListener("click", () => wipe("finish"));

// ------------------------------------------------------------------ 办不成事 from home, lookup

$("#home-report").addEventListener("click", () => {
  ui.purpose = "report";
  openDepartments();
});

function openReport(matter) {
  $("#report-matter").textContent = nameOf(matter);
  fill($("#report-body"), caseForm(flow, {
    presets: CASE_PRESETS,
    rows: 2,
    withTicket: false,
    matterId: matter.id,
    onFiled(filed) {
      fill($("#report-body"), claimView(filed));
      speak(t("claim_code_is"));
    },
  }));
  go("screen-report");
}

$("#home-lookup").addEventListener("click", () => {
  fill($("#lookup-result"));
  $("#lookup-code").value = "";
  go("screen-lookup");
});

$("#lookup-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const code = $("#lookup-code").value.trim();
  if (!code) return;
  try {
    const { case: found } = await client.request("case.lookup", { claim_code: code });
    fill($("#lookup-result"), h("div", { class: "panel lookup-case" },
                                h("p", { class: "lead" }, t("case_number", { number: found.number })),
                                h("p", { class: "lead" }, matterName(found.matter_id)),
                                h("p", { class: "case-state-big" }, caseStateText(found.state))));
  } catch (err) {
    fill($("#lookup-result"), h("p", { class: "banner banner-bad" },
                                err instanceof HallError && err.code === "not_found"
                                  ? t("lookup_not_found") : errorText(err)));
  }
});

// ------------------------------------------------------------------ follow the flow

function render() {
  const phase = flow.phase;
  const changed = phase !== ui.phase;
  const before = ui.phase;
  ui.phase = phase;
  if (phase === "waiting") {
    renderWaiting();
    if (changed) show("screen-waiting");
    return;
  }
  if (phase === "call") {
    if (changed) {
      enterCall();
      show("screen-call");
    }
    return;
  }
  if (phase === "after") {
    if (changed) {
      enterAfter();
      show("screen-after");
    }
    return;
  }
  if (changed && (before === "waiting" || before === "call" || before === "after")
      && PHASE_SCREENS.has(ui.screen)) {
    wipe("gone");
  }
}

function onFlow(what, details) {
  if (wiping && what === "state") return;
  switch (what) {
    case "position":
      if (flow.phase === "waiting") renderWaiting();
      return;
    case "next":
      renderWaiting();
      alertNext();
      speak(t("you_are_next"));
      return;
    case "files":
      renderFiles();
      if (details.added && details.added.uploaded_by !== client.participant) {
        toast(t("file_from_clerk_arrived", { name: details.added.filename }));
      }
      return;
    case "prereview":
      renderChecklist();
      return;
    case "result":
      renderChecklist();
      renderResult();
      announce(t("result_arrived"));
      return;
    case "peer":
      syncReconnecting();
      return;
    case "gone":
      ui.gone = details.ticket.state; // said on the home screen once the page is wiped
      return;
    case "ended":
      announce(t("call_ended"));
      return;
    case "state":
    case "welcome":
      render();
      return;
    default:
  }
}

// ------------------------------------------------------------------ start

async function boot() {
  secretFromFragment();
  try {
    ui.catalog = await loadCatalog();
  } catch {
    show("screen-loading");
    $("#loading-detail").textContent = t("retrying");
    setTimeout(boot, 5000);
    return;
  }
  const saved = JSON.parse(sessionStorage.getItem(TOKEN_KEY) || "null");
  if (saved && saved.expires_at - Date.now() / 1000 > 30 && localStorage.getItem(SECRET_KEY)) {
    setToken(saved.token, saved.expires_at); // a reload: the token is still good
    show("screen-loading");
    connectHall();
    return;
  }
  if (!localStorage.getItem(SECRET_KEY)) {
    showSetup();
    return;
  }
  login();
}

boot();
