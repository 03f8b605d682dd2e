/*
 * /app: the resident inside 随申办 (phone first, 390×844; works on a desktop too).
 *
 * Identity: the app opens this page with `#id_token=...`; the token is kept in sessionStorage
 * and the fragment removed. Without one, a demo hall offers a clearly labelled demo sign-in
 * (POST /api/dev/resident-token); a real hall asks to open the page from 随申办.
 *
 * Screens: pick a matter (departments, instant search) → matter detail (kinds, materials,
 * queue, priority) → waiting (number, live position and wait, "you are next", leave,
 * callback, uploads) → the call (video, controls, checklist, files, chat) → after (result,
 * rating, 办不成事 report, my reports, another ticket). The welcome's ticket and session put
 * a reloaded page back where it was.
 */
import { HallClient, HallError } from "/static/js/hall-client.js";
import {
  $, $$, announce, api, bindConnectionStatus, chatPanel, config, errorText, fill, h,
  loadCatalog, nameOf, showError, t, toast,
} from "/static/js/ui.js";
import {
  ResidentFlow, alertNext, callControls, caseForm, casesView, checklistView,
  confirmDialog, filesView, keepPlaying, matterById, ratingForm, refusalText,
  renderWaitingCard, resultView, syncReconnectingBanner,
} from "/static/js/resident-core.js";

const TOKEN_KEY = "hall.app.id_token";

const ui = {
  catalog: null,
  matter: null, // the matter on the detail screen
  department: null, // the department being browsed
  screen: null, // the screen shown
  overlay: null, // "cases" over the phase's screen
  phase: null, // the flow phase last rendered
  pendingTake: null, // the ticket.take that was refused with no_clerk_on_duty
};
let client = null;
let flow = null;
let chat = null;
let controls = null;

// ------------------------------------------------------------------ identity

function tokenFromFragment() {
  if (!location.hash) return null;
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("id_token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    // Out of the address bar, the history and any bookmark.
    history.replaceState(null, "", location.pathname + location.search);
  }
  return token;
}

function currentToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function showSignin(message) {
  show("screen-signin");
  $("#signin-demo").hidden = !config.demo;
  $("#signin-none").hidden = !!config.demo;
  const error = $("#signin-error");
  error.hidden = !message;
  error.textContent = message || "";
}

$("#signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("#signin-name").value.trim();
  const residentId = $("#signin-id").value.trim();
  if (!name || !residentId) return;
  try {
    const reply = await api("/api/dev/resident-token", {
      body: { resident_id: residentId, name },
    });
    sessionStorage.setItem(TOKEN_KEY, reply.id_token);
    start();
  } catch (err) {
    showSignin(errorText(err));
  }
});

// ------------------------------------------------------------------ screens

function show(id) {
  if (ui.screen === id) return;
  ui.screen = id;
  for (const screen of $$(".screen")) screen.hidden = screen.id !== id;
  const title = $(`#${id} .screen-title`) || $(`#${id} h1`);
  if (title) title.focus({ preventScroll: false });
  window.scrollTo(0, 0);
}

/** Show what the flow's phase asks for (or the resident's own choice when idle). */
function render() {
  const phase = flow.phase;
  const changed = phase !== ui.phase;
  ui.phase = phase;
  if (phase === "call" || phase === "waiting") ui.overlay = null;
  if (changed) enterPhase(phase);
  if (phase === "waiting") renderWaiting();
  if (phase === "after") renderAfterHead();
  if (ui.overlay === "cases") return show("screen-cases");
  if (phase === "waiting") return show("screen-waiting");
  if (phase === "call") return show("screen-call");
  if (phase === "after") return show("screen-after");
  if (ui.screen !== "screen-matter" || !ui.matter) show("screen-pick");
  return undefined;
}

function enterPhase(phase) {
  if (phase === "call") enterCall();
  if (phase === "after") enterAfter();
  if (phase === "waiting") {
    $("#w-callback-form").hidden = true;
    renderFiles();
  }
  if (phase === "none") {
    ui.matter = null;
    $("#refusal").hidden = true;
  }
}

// ------------------------------------------------------------------ pick a matter

function departmentMatters(departmentId) {
  return ui.catalog.matters.filter((m) => m.department_id === departmentId);
}

function matterButton(matter) {
  const department = ui.catalog.departments.find((d) => d.id === matter.department_id);
  const button = h("button", { type: "button", class: "choice", dataset: { matter: matter.id } },
                   h("span", { class: "choice-name" }, nameOf(matter)),
                   h("span", { class: "choice-meta" },
                     [nameOf(department), ...matter.kinds.map((k) => t(`kind_${k}`))].join(" · ")));
  button.addEventListener("click", () => openMatter(matter));
  return h("li", {}, button);
}

function renderDepartments() {
  fill($("#dept-list"), ui.catalog.departments.map((department) => {
    const count = departmentMatters(department.id).length;
    const button = h("button", { type: "button", class: "choice", dataset: { department: department.id } },
                     h("span", { class: "choice-name" }, nameOf(department)),
                     h("span", { class: "choice-meta" }, t("matter_count", { n: count })));
    button.addEventListener("click", () => openDepartment(department));
    return h("li", {}, button);
  }));
}

function openDepartment(department) {
  ui.department = department;
  $("#browse").hidden = true;
  $("#dept-matters").hidden = false;
  $("#dept-name").textContent = nameOf(department);
  fill($("#dept-matter-list"), departmentMatters(department.id).map(matterButton));
  $("#dept-back").focus();
}

$("#dept-back").addEventListener("click", () => {
  ui.department = null;
  $("#dept-matters").hidden = true;
  $("#browse").hidden = false;
  const first = $("#dept-list button");
  if (first) first.focus();
});

function runSearch() {
  const query = $("#search-input").value.trim().toLowerCase();
  const box = $("#search-results");
  if (!query || !ui.catalog) {
    fill(box);
    $("#browse").hidden = !!ui.department;
    $("#dept-matters").hidden = !ui.department;
    return;
  }
  $("#browse").hidden = true;
  $("#dept-matters").hidden = true;
  const found = ui.catalog.matters.filter((m) => m.name.toLowerCase().includes(query)
    || (m.name_en || "").toLowerCase().includes(query));
  fill(box,
       h("p", { class: "muted", id: "search-count" }, t("search_count", { n: found.length })),
       found.length ? h("ul", { class: "choice-list", "aria-labelledby": "search-count" },
                        found.map(matterButton)) : null);
}

$("#search-input").addEventListener("input", runSearch);

async function openMatter(matter) {
  ui.matter = matter;
  ui.pendingTake = null;
  const department = ui.catalog.departments.find((d) => d.id === matter.department_id);
  $("#matter-title").textContent = nameOf(matter);
  $("#matter-dept").textContent = nameOf(department);
  $("#refusal").hidden = true;
  $("#take-submit").disabled = false;
  const both = matter.kinds.length > 1;
  $("#take-kinds").hidden = !both;
  $("#take-kind-only").textContent = both ? ""
    : t("kind_only", { kind: t(`kind_${matter.kinds[0]}`) });
  const consultation = $("#take-kinds input[value=consultation]");
  consultation.checked = true;
  fill($("#matter-materials"), matter.materials.length ? matter.materials.map((m) => h(
    "li", { class: "material" },
    h("span", { class: "material-name" }, nameOf(m)),
    h("span", { class: m.required ? "tag tag-required" : "tag tag-optional" },
      m.required ? t("required") : t("optional")),
    m.description ? h("span", { class: "material-desc", lang: "zh-CN" }, m.description) : null,
  )) : h("li", { class: "muted" }, t("materials_none")));
  $("#matter-queue").textContent = "";
  show("screen-matter");
  try {
    const queues = await api("/api/queues");
    const row = (queues.matters || []).find((q) => q.id === matter.id);
    if (row && ui.matter === matter) {
      const waiting = row.queued ?? row.waiting ?? 0;
      $("#matter-queue").textContent = row.on_duty > 0
        ? t("queue_info", { waiting, clerks: row.on_duty })
        : t("queue_no_clerk", { waiting });
    }
  } catch {
    // The queue is "if known": the detail works without it.
  }
}

$("#matter-back").addEventListener("click", () => {
  ui.matter = null;
  show("screen-pick");
});

function takeRequest() {
  const matter = ui.matter;
  const kind = matter.kinds.length > 1
    ? $("#take-kinds input[name=kind]:checked").value : matter.kinds[0];
  const request = { matter_id: matter.id, kind };
  if ($("#take-disabled").checked) request.priority = "disabled";
  else if ($("#take-elderly").checked) request.priority = "elderly";
  return request;
}

async function take(request) {
  $("#take-submit").disabled = true;
  $("#refusal").hidden = true;
  try {
    const ticket = await flow.take(request);
    ui.pendingTake = null;
    announce(t("ticket_taken", { number: ticket.number }));
  } catch (err) {
    $("#take-submit").disabled = false;
    showRefusal(err, request);
  }
}

function showRefusal(err, request) {
  if (!(err instanceof HallError)) {
    showError(err);
    return;
  }
  $("#refusal-text").textContent = refusalText(err);
  const unstaffed = err.code === "no_clerk_on_duty";
  $("#refusal-unstaffed").hidden = !unstaffed;
  ui.pendingTake = unstaffed ? request : null;
  $("#refusal").hidden = false;
  $("#refusal").scrollIntoView({ block: "start" });
  announce(refusalText(err));
}

$("#take-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (ui.matter) take(takeRequest());
});

$("#refusal-wait").addEventListener("click", () => {
  if (ui.pendingTake) take(Object.assign({}, ui.pendingTake, { when_unstaffed: "wait" }));
});

$("#refusal-callback").addEventListener("submit", (event) => {
  event.preventDefault();
  const phone = $("#refusal-phone").value.trim();
  if (!phone) {
    toast(t("callback_phone_needed"), "error");
    $("#refusal-phone").focus();
    return;
  }
  if (ui.pendingTake) {
    take(Object.assign({}, ui.pendingTake, { when_unstaffed: "callback",
                                              callback_contact: phone }));
  }
});

// ------------------------------------------------------------------ waiting

function matterName(id) {
  return nameOf(matterById(ui.catalog, id));
}

function renderWaiting() {
  const ticket = renderWaitingCard(flow, matterName);
  if (!ticket) return;
  $("#w-callback").hidden = !!ticket.callback || ticket.state === "offered";
}

$("#w-leave").addEventListener("click", async () => {
  const ok = await confirmDialog(t("leave_confirm"), { confirm: t("leave_queue"), danger: true });
  if (!ok) return;
  try {
    await flow.leave();
    toast(t("left_queue"));
  } catch (err) {
    showError(err);
  }
});

$("#w-callback").addEventListener("click", () => {
  const form = $("#w-callback-form");
  form.hidden = !form.hidden;
  if (!form.hidden) $("#w-phone").focus();
});

$("#w-callback-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const phone = $("#w-phone").value.trim();
  if (!phone) return;
  try {
    await flow.askCallback(phone);
    $("#w-callback-form").hidden = true;
    toast(t("callback_saved"));
    announce(t("callback_saved"));
  } catch (err) {
    showError(err);
  }
});

async function uploadFrom(input, status) {
  const chosen = [...input.files];
  input.value = "";
  for (const file of chosen) {
    status.textContent = t("uploading", { name: file.name });
    try {
      await flow.upload(file);
      status.textContent = t("uploaded", { name: file.name });
    } catch (err) {
      status.textContent = "";
      showError(err);
    }
  }
}

for (const [input, status] of [["#w-photo", "#w-uploading"], ["#w-file", "#w-uploading"],
                                ["#c-photo", "#c-uploading"], ["#c-file", "#c-uploading"]]) {
  $(input).addEventListener("change", () => uploadFrom($(input), $(status)));
}

function renderFiles() {
  if (!flow) return;
  fill($("#w-files"), filesView(flow));
  fill($("#call-files"), filesView(flow));
}

// ------------------------------------------------------------------ the call

function enterCall() {
  const session = flow.session;
  chat.reset(session);
  controls.reset();
  $("#call-peer").textContent = session && session.peer && session.peer.name
    ? t("call_with", { name: session.peer.name }) : "";
  renderChecklist();
  renderFiles();
  syncReconnecting();
  announce(t("call_started"));
}

function renderChecklist() {
  const parts = [checklistView(flow.prereview)];
  if (flow.result) parts.push(resultView(flow.result));
  fill($("#call-checklist"), parts);
}

function syncReconnecting() {
  syncReconnectingBanner(client, flow);
}

// ------------------------------------------------------------------ after the call

function renderAfterHead() {
  const served = flow.served || {};
  const number = served.number || (flow.ticket && flow.ticket.number) || "";
  $("#after-ticket").textContent = t("after_ticket", { number, matter: matterName(flow.matterId) });
}

function enterAfter() {
  renderAfterHead();
  renderResult();
  fill($("#after-rating"), ratingForm(flow));
  $("#after-case-open").hidden = !!flow.filed;
  fill($("#after-case"), flow.filed ? filedView(flow.filed) : null);
  announce(t("after_title"));
}

function renderResult() {
  $("#after-result-panel").hidden = !flow.result;
  fill($("#after-result"), flow.result ? resultView(flow.result) : null);
}

function filedView(filed) {
  return h("p", { class: "banner case-filed", role: "status" },
           t("case_filed", { number: filed.number }));
}

$("#after-case-open").addEventListener("click", () => {
  $("#after-case-open").hidden = true;
  fill($("#after-case"), caseForm(flow, {
    onFiled(filed) {
      fill($("#after-case"), filedView(filed));
    },
  }));
  const text = $("#after-case textarea");
  if (text) text.focus();
});

$("#after-again").addEventListener("click", () => {
  flow.clear();
  ui.matter = null;
  ui.phase = null;
  render();
});

async function openCases() {
  ui.overlay = "cases";
  fill($("#cases-list"), h("p", { class: "muted" }, t("loading")));
  show("screen-cases");
  try {
    await flow.myCases();
    renderCases();
  } catch (err) {
    fill($("#cases-list"));
    showError(err);
  }
}

function renderCases() {
  fill($("#cases-list"), casesView([...flow.cases.values()], ui.catalog));
}

$("#pick-cases").addEventListener("click", openCases);
$("#after-cases").addEventListener("click", openCases);
$("#cases-back").addEventListener("click", () => {
  ui.overlay = null;
  ui.screen = null;
  render();
});

// ------------------------------------------------------------------ start

function onFlow(what, details) {
  switch (what) {
    case "position":
      if (flow.phase === "waiting") renderWaiting();
      return;
    case "next":
      renderWaiting();
      alertNext();
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
    case "case":
      if (ui.overlay === "cases") renderCases();
      return;
    case "gone":
      toast(t(`ticket_${details.ticket.state}`));
      announce(t(`ticket_${details.ticket.state}`));
      return;
    case "ended":
      announce(t("call_ended"));
      return;
    default:
      render();
  }
}

async function start() {
  show("screen-loading");
  if (client) client.close(); // signing in again after a refused token
  const remoteVideo = $("#remote-video");
  const remoteScreen = $("#remote-screen");
  client = new HallClient({
    credentials: () => ({ id_token: currentToken() }),
    localVideo: $("#local-video"),
    remoteVideo,
    remoteScreen,
  });
  if (config.demo) window.hallClient = client; // tests drive and inspect the page with it
  bindConnectionStatus(client);
  flow = new ResidentFlow({ client, token: currentToken, storage: sessionStorage });
  if (config.demo) window.hallFlow = flow;
  chat = chatPanel(client);
  fill($("#call-chat"), chat.element);
  controls = callControls(flow);
  fill($("#call-controls"), controls.element);
  const playRemote = keepPlaying(remoteVideo, $("#call-unmute"));
  client.on("remote-media", ({ screen }) => {
    remoteScreen.hidden = !screen;
    $(".call-stage").classList.toggle("has-screen", !!screen);
    playRemote();
  });
  client.on("link", () => {
    if (flow.phase === "call") syncReconnecting();
  });
  client.on("media-error", ({ audio }) => {
    toast(audio ? t("camera_failed") : t("devices_failed"), "error");
  });
  client.on("connect_failed", ({ code }) => {
    if (code === "unauthenticated" || code === "forbidden") {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignin(t("signin_expired"));
    } else if (code === "too_many_attempts") {
      showSignin(t("error_too_many_attempts"));
    }
  });
  client.on("replaced", () => toast(t("conn_replaced"), "error"));
  flow.subscribe(onFlow);
  client.on("welcome", (welcome) => {
    $("#pick-greeting").textContent = welcome.name ? t("hello", { name: welcome.name }) : "";
  });
  try {
    ui.catalog = await loadCatalog();
  } catch (err) {
    showError(err);
    return;
  }
  renderDepartments();
  try {
    await client.connect();
  } catch {
    // connect_failed above says what went wrong
  }
}

const fromFragment = tokenFromFragment();
if (fromFragment || currentToken()) start();
else showSignin();
