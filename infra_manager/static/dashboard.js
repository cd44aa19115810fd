// tradefleet operator dashboard: plain JavaScript, no dependencies, served by the infra manager.
//
// Data flow: one WebSocket to /v1/stream (the operator token is sent as the first frame,
// because browsers cannot set headers on WebSockets) brings `fleet` and `events` frames; the
// page updates its DOM in place, keyed by location / manager / worker id, so focus and typed
// values survive live updates. Actions are REST calls with the token as a bearer header.
// Two views share that stream: the fleet (#fleet) and trading (#trading: accounts, positions,
// traders, read from each worker's `info`).
"use strict";

const TOKEN_KEY = "tradefleet.operatorToken";
const STATES = ["starting", "up", "suspect", "draining", "failed", "stopped", "unreachable"];
const PROBLEM_EVENTS = new Set(["failed", "suspect", "spawn_failed", "partition_suspected",
  "manager_silent", "location_unreachable", "location_degraded", "replaced", "risk_rejected",
  "signal_rejected", "venue_down", "position_corrected"]);
// Worker events (risk refusals, venue resyncs…) carry a `category`; these fill in the
// category of lines from managers that predate it.
const EVENT_CATEGORIES = {
  risk_rejected: "risk", signal_rejected: "risk", exit_fired: "risk", kill_switch: "risk",
  fleet_kill_switch: "risk", venue_down: "venue", venue_resync: "venue",
  position_corrected: "venue",
};
const RECENT_FILLS_SHOWN = 25;
const HISTORY_SAMPLES = 300; // one per second: the last five minutes
const MIN_CHART_SPAN = 20; // samples
const MAX_EVENTS = 1000;

const page = {
  token: null,
  socket: null,
  retryMs: 250,
  fleet: null,
  events: [],
  history: new Map(), // key -> [{t, msgs, p50, p99}]
  lastSample: new Map(),
  confirmResolve: null,
  view: "fleet",
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// ------------------------------------------------------------------ formatting

function maskToken(token) {
  return token && token.length >= 8 ? `…${token.slice(-4)}` : "…";
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(s / 3600);
  return `${h}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return seconds < 10 ? `${seconds.toFixed(1)} s` : fmtDuration(seconds);
}

function fmtRate(value) {
  if (!value) return "0";
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

function fmtMicros(us) {
  if (us === null || us === undefined) return "–";
  if (us < 1000) return `${Math.round(us)} µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(1)} ms`;
  return `${(us / 1e6).toFixed(2)} s`;
}

function fmtTime(ts) {
  const d = new Date(ts * 1000);
  return d.toLocaleTimeString([], { hour12: false });
}

// ------------------------------------------------------------------ login

function showLogin(message) {
  $("app").hidden = true;
  $("status-line").hidden = true;
  $("views-nav").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("status-line").hidden = false;
  $("views-nav").hidden = false;
  $("token-hint").textContent = `operator token ${maskToken(page.token)}`;
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  page.token = null;
  if (page.socket) {
    const socket = page.socket;
    page.socket = null;
    socket.close(1000, "logout");
  }
  showLogin(message);
}

// ------------------------------------------------------------------ live stream

function setConn(text, kind) {
  const conn = $("conn");
  conn.textContent = text;
  conn.dataset.kind = kind;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/v1/stream`);
  page.socket = socket;
  setConn("connecting…", "wait");
  socket.addEventListener("open", () => {
    socket.send(JSON.stringify({ type: "auth", token: page.token }));
  });
  socket.addEventListener("message", (msg) => {
    let frame;
    try {
      frame = JSON.parse(msg.data);
    } catch {
      return;
    }
    if (frame.type === "welcome") {
      page.retryMs = 250;
      $("infra-id").textContent = frame.infra_id;
      setConn("live", "ok");
      showApp();
    } else if (frame.type === "fleet") {
      onFleet(frame.fleet);
    } else if (frame.type === "events") {
      onEvents(frame.events);
    }
  });
  socket.addEventListener("close", (ev) => {
    if (page.socket !== socket) return; // replaced or logged out
    page.socket = null;
    if (ev.code === 1008) {
      logout("That token was refused. Check it and try again.");
      return;
    }
    setConn("reconnecting…", "bad");
    const delay = page.retryMs * (0.5 + Math.random() / 2);
    page.retryMs = Math.min(page.retryMs * 2, 5000);
    setTimeout(() => { if (page.token && !page.socket) connect(); }, delay);
  });
}

// ------------------------------------------------------------------ fleet rendering

function keyed(parent, key, create) {
  for (const child of parent.children) {
    if (child.dataset.key === key) return child;
  }
  const node = create();
  node.dataset.key = key;
  parent.append(node);
  return node;
}

function prune(parent, keep) {
  for (const child of [...parent.children]) {
    if (child.dataset.key !== undefined && !keep.has(child.dataset.key)) child.remove();
  }
}

function ordered(parent, keys) {
  // Keep DOM order equal to `keys` order, moving only what is out of place.
  let index = 0;
  for (const key of keys) {
    const node = [...parent.children].find((c) => c.dataset.key === key);
    if (!node) continue;
    if (parent.children[index] !== node) parent.insertBefore(node, parent.children[index]);
    index += 1;
  }
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function badge(node, value) {
  setText(node, value);
  node.className = `badge state-${value}`;
}

function onFleet(fleet) {
  page.fleet = fleet;
  sampleHistory(fleet);
  renderSummary(fleet);
  const root = $("fleet");
  const keep = new Set();
  for (const loc of fleet.locations) {
    keep.add(loc.name);
    renderLocation(keyed(root, loc.name, () => locationCard(loc.name)), loc);
  }
  prune(root, keep);
  ordered(root, fleet.locations.map((l) => l.name));
  $("empty").hidden = fleet.locations.length > 0;
  renderTrading(fleet);
}

function renderSummary(fleet) {
  const head = $("summary-head");
  if (head.children.length === 2) {
    for (const state of STATES) head.append(el("th", { scope: "col", class: `count-head state-text-${state}`, text: state }));
  }
  const body = $("summary-body");
  const keep = new Set();
  for (const loc of fleet.locations) {
    keep.add(loc.name);
    const row = keyed(body, loc.name, () => {
      const tr = el("tr");
      tr.append(el("th", { scope: "row", text: loc.name }), el("td", {}, el("span")));
      for (const state of STATES) tr.append(el("td", { class: "count", "data-state": state }));
      return tr;
    });
    badge(row.children[1].firstChild, loc.state);
    STATES.forEach((state, i) => {
      const cell = row.children[2 + i];
      const n = loc.counts[state] || 0;
      setText(cell, String(n));
      cell.classList.toggle("zero", n === 0);
      cell.classList.toggle(`state-text-${state}`, n > 0);
    });
  }
  prune(body, keep);
}

function locationCard(name) {
  const card = el("article", { class: "location panel", "aria-label": `Location ${name}` });
  const header = el("header", { class: "location-head" },
    el("h2", { text: name }), el("span", { class: "badge" }),
    el("span", { class: "muted counts-line" }));
  const charts = el("div", { class: "charts" },
    chartBox("msgs/s (in + out)", "msgs"), chartBox("latency p50 / p99 (worst worker)", "lat"));
  const managers = el("div", { class: "managers" });
  card.append(header, charts, managers);
  return card;
}

function chartBox(label, kind) {
  const canvas = el("canvas", { width: "320", height: "64", class: `chart chart-${kind}`, role: "img", "aria-label": label });
  return el("figure", { class: "chart-box" }, canvas,
    el("figcaption", {}, el("span", { text: label }), el("span", { class: "chart-value" })));
}

function renderLocation(card, loc) {
  const head = card.querySelector(".location-head");
  badge(head.children[1], loc.state);
  const live = STATES.filter((s) => loc.counts[s]).map((s) => `${loc.counts[s]} ${s}`);
  setText(head.children[2], live.length ? live.join(" · ") : "no workers");
  const series = page.history.get(`loc:${loc.name}`) || [];
  const [msgsBox, latBox] = card.querySelectorAll(".chart-box");
  drawChart(msgsBox.querySelector("canvas"), [series.map((p) => p.msgs)], ["#2f7d4f"]);
  const last = series[series.length - 1];
  setText(msgsBox.querySelector(".chart-value"), last ? `${fmtRate(last.msgs)}/s` : "–");
  drawChart(latBox.querySelector("canvas"), [series.map((p) => p.p50), series.map((p) => p.p99)],
    ["#2d5fa8", "#b5542a"]);
  setText(latBox.querySelector(".chart-value"),
    last ? `${fmtMicros(last.p50)} / ${fmtMicros(last.p99)}` : "–");

  const list = card.querySelector(".managers");
  const keep = new Set();
  for (const manager of loc.managers) {
    keep.add(manager.id);
    renderManager(keyed(list, manager.id, () => managerBlock(loc.name, manager)), manager);
  }
  prune(list, keep);
  ordered(list, loc.managers.map((m) => m.id));
}

function managerBlock(locationName, manager) {
  const block = el("section", { class: "manager", "aria-label": `${manager.kind} manager at ${locationName}` });
  const title = el("h3", {}, el("span", { class: "kind", text: `${manager.kind}` }),
    el("span", { class: "muted mid", text: manager.id }), el("span", { class: "badge" }));
  const facts = el("p", { class: "facts muted" });

  const spawnForm = el("form", { class: "inline-form spawn-form" });
  const spawnId = `spawn-${locationName}-${manager.kind}`;
  spawnForm.append(
    el("label", { for: spawnId, text: "Spawn" }),
    el("input", { id: spawnId, type: "number", min: "1", max: "256", value: "1", required: "", class: "num" }),
    el("button", { type: "submit", text: `Spawn ${manager.kind} workers` }));
  spawnForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const count = Number(spawnForm.querySelector("input").value);
    spawn(locationName, manager.kind, count);
  });

  const desiredForm = el("form", { class: "inline-form desired-form" });
  const desiredId = `desired-${locationName}-${manager.kind}`;
  desiredForm.append(
    el("label", { for: desiredId, text: "Desired" }),
    el("input", { id: desiredId, type: "number", min: "0", max: "256", value: String(manager.desired), required: "", class: "num" }),
    el("button", { type: "submit", text: "Set desired" }));
  desiredForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const desired = Number(desiredForm.querySelector("input").value);
    setDesired(locationName, manager.kind, desired, block.dataset.desired);
  });

  const table = el("table", { class: "workers" });
  const headRow = el("tr");
  for (const name of ["Worker", "State", "Epoch", "Uptime", "Sessions", "Subs", "Msgs/s in / out",
    "Latency p50 / p99", "Heartbeat", "Trend", "Actions"]) {
    headRow.append(el("th", { scope: "col", text: name }));
  }
  table.append(el("thead", {}, headRow), el("tbody"));
  block.append(title, facts, el("div", { class: "controls" }, spawnForm, desiredForm), table);
  return block;
}

function renderManager(block, manager) {
  block.dataset.desired = String(manager.desired);
  block.classList.toggle("silent", manager.state === "silent");
  badge(block.querySelector("h3 .badge"), manager.state);
  setText(block.querySelector(".facts"),
    `epoch ${manager.epoch} · desired ${manager.desired} · heard ${fmtAge(manager.last_seen_age_s)} ago`);
  const desiredInput = block.querySelector(".desired-form input");
  if (document.activeElement !== desiredInput && !desiredInput.dataset.touched) {
    desiredInput.value = String(manager.desired);
  }
  desiredInput.oninput = () => { desiredInput.dataset.touched = "1"; };

  const body = block.querySelector("tbody");
  const keep = new Set();
  for (const worker of manager.workers) {
    keep.add(worker.id);
    renderWorker(keyed(body, worker.id, () => workerRow(worker)), worker);
  }
  prune(body, keep);
  ordered(body, manager.workers.map((w) => w.id));
}

function workerRow(worker) {
  const row = el("tr", { class: "worker" });
  row.append(el("th", { scope: "row", class: "wid", text: worker.id }));
  row.append(el("td", {}, el("span", { class: "badge" })));
  // epoch, uptime, sessions, subscriptions, msgs/s, latency, heartbeat age
  for (let i = 0; i < 7; i += 1) row.append(el("td", { class: "num-cell" }));
  row.append(el("td", {}, el("canvas", { width: "96", height: "22", class: "spark", role: "img", "aria-label": "msgs/s trend" })));
  const drain = el("button", { type: "button", class: "quiet", text: "Drain", "aria-label": `Drain ${worker.id}` });
  const stop = el("button", { type: "button", class: "danger quiet", text: "Stop", "aria-label": `Stop ${worker.id}` });
  drain.addEventListener("click", () => workerAction(worker.id, "drain"));
  stop.addEventListener("click", () => workerAction(worker.id, "stop"));
  row.append(el("td", { class: "actions" }, drain, stop));
  return row;
}

function renderWorker(row, worker) {
  const load = worker.load || {};
  row.dataset.state = worker.state;
  badge(row.children[1].firstChild, worker.state);
  setText(row.children[2], String(worker.epoch));
  setText(row.children[3], fmtDuration(worker.uptime_s));
  setText(row.children[4], String(load.sessions ?? 0));
  setText(row.children[5], String(load.subscriptions ?? 0));
  setText(row.children[6], `${fmtRate(load.msgs_in_per_s)} / ${fmtRate(load.msgs_out_per_s)}`);
  setText(row.children[7], `${fmtMicros(load.latency_p50_us)} / ${fmtMicros(load.latency_p99_us)}`);
  setText(row.children[8], fmtAge(worker.last_heartbeat_age_s));
  const series = page.history.get(`w:${worker.id}`) || [];
  drawChart(row.querySelector("canvas"), [series.map((p) => p.msgs)], ["#2f7d4f"]);
  const live = ["starting", "up", "suspect"].includes(worker.state);
  for (const button of row.querySelectorAll(".actions button")) button.disabled = !live;
}

// ------------------------------------------------------------------ charts

function sampleHistory(fleet) {
  const now = Date.now() / 1000;
  const add = (key, point) => {
    const last = page.lastSample.get(key) || 0;
    if (now - last < 1) return;
    page.lastSample.set(key, now);
    const series = page.history.get(key) || [];
    series.push({ t: now, ...point });
    if (series.length > HISTORY_SAMPLES) series.shift();
    page.history.set(key, series);
  };
  for (const loc of fleet.locations) {
    let msgs = 0;
    let p50 = null;
    let p99 = null;
    for (const manager of loc.managers) {
      for (const worker of manager.workers) {
        const load = worker.load || {};
        const wm = (load.msgs_in_per_s || 0) + (load.msgs_out_per_s || 0);
        msgs += wm;
        if (load.latency_p50_us != null) p50 = Math.max(p50 ?? 0, load.latency_p50_us);
        if (load.latency_p99_us != null) p99 = Math.max(p99 ?? 0, load.latency_p99_us);
        add(`w:${worker.id}`, { msgs: wm, p50: load.latency_p50_us, p99: load.latency_p99_us });
      }
    }
    add(`loc:${loc.name}`, { msgs, p50, p99 });
  }
}

function drawChart(canvas, seriesList, colours) {
  const ratio = window.devicePixelRatio || 1;
  const cssW = Number(canvas.getAttribute("width"));
  const cssH = Number(canvas.getAttribute("height"));
  if (!canvas.dataset.scaled) {
    canvas.style.width = `${cssW}px`;
    canvas.style.height = `${cssH}px`;
    canvas.width = Math.round(cssW * ratio);
    canvas.height = Math.round(cssH * ratio);
    canvas.dataset.scaled = "1";
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  ctx.strokeStyle = "rgba(127,127,127,0.25)";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(0, cssH - 0.5);
  ctx.lineTo(cssW, cssH - 0.5);
  ctx.stroke();
  const values = seriesList.flat().filter((v) => v != null);
  if (!values.length) return;
  const max = (Math.max(...values) || 1) * 1.15; // headroom above the peak
  const longest = Math.max(...seriesList.map((series) => series.length));
  seriesList.forEach((series, i) => {
    ctx.strokeStyle = colours[i];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let started = false;
    // The time axis grows with the history up to five minutes, so a fresh page is not a
    // flat line squeezed against the right edge.
    const span = Math.min(HISTORY_SAMPLES, Math.max(MIN_CHART_SPAN, longest));
    const step = cssW / Math.max(span - 1, 1);
    const offset = span - series.length;
    series.forEach((v, j) => {
      if (v == null) { started = false; return; }
      const x = (offset + j) * step;
      const y = cssH - 2 - (v / max) * (cssH - 4);
      if (started) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      started = true;
    });
    ctx.stroke();
  });
}

// ------------------------------------------------------------------ events

function onEvents(events) {
  page.events.push(...events);
  if (page.events.length > MAX_EVENTS) page.events.splice(0, page.events.length - MAX_EVENTS);
  renderEvents();
}

function categoryOf(event) {
  return event.category || EVENT_CATEGORIES[event.event] || null;
}

function eventMatches(event, text, source) {
  const category = categoryOf(event);
  if (source === "lifecycle" && !(event.source === "manager" && event.worker_id && !category)) return false;
  if (source === "operator" && event.event !== "operator") return false;
  if (source === "infra" && !(event.source === "infra" && event.event !== "operator")) return false;
  if ((source === "risk" || source === "venue") && category !== source) return false;
  if (source === "problems" && !isProblem(event)) return false;
  if (!text) return true;
  return describe(event).toLowerCase().includes(text);
}

function isProblem(event) {
  if ((event.event === "kill_switch" || event.event === "fleet_kill_switch") && event.active) return true;
  return PROBLEM_EVENTS.has(event.event) || (event.event === "operator" && event.status >= 400);
}

const EVENT_DETAILS = ["count", "desired", "epoch", "status", "error", "reason", "exit_code",
  "replaces", "old_worker_id", "code", "client_order_id", "signal_id", "instrument", "customer",
  "dropped_before"];

function describe(event) {
  const parts = [event.location, event.kind, event.event];
  if (event.event === "operator") parts.push(event.action);
  if (event.account) parts.push(event.account);
  if (event.worker_id) parts.push(event.worker_id);
  for (const key of EVENT_DETAILS) {
    const value = event[key];
    if (value === undefined || value === null || typeof value === "object") continue;
    if (SECRETISH.test(key)) continue;
    parts.push(`${key}=${value}`);
  }
  let text = parts.filter((p) => p !== undefined && p !== null && p !== "").join(" ");
  if (event.message) text += ` — ${event.message}`;
  return text;
}

function renderEvents() {
  const text = $("event-filter").value.trim().toLowerCase();
  const source = $("event-source").value;
  const shown = page.events.filter((e) => eventMatches(e, text, source)).slice(-300).reverse();
  const list = $("event-list");
  const items = shown.map((event) => {
    const item = el("li", { class: isProblem(event) ? "problem" : "" });
    const category = categoryOf(event);
    if (category) item.dataset.category = category;
    item.append(el("time", { text: fmtTime(event.ts) }),
      el("span", { class: `event-tag tag-${category || event.source || "other"}`,
        text: category || (event.event === "operator" ? "operator" : event.source || "") }),
      el("span", { class: "event-text", text: describe(event) }));
    return item;
  });
  list.replaceChildren(...items);
  setText($("event-count"), `${shown.length} of ${page.events.length}`);
}

// ------------------------------------------------------------------ actions

async function call(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${page.token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = {};
  try { data = await response.json(); } catch { /* no body */ }
  if (response.status === 401) logout("The token is no longer accepted.");
  return { ok: response.ok, status: response.status, data };
}

function report(ok, text) {
  const result = $("result");
  result.textContent = text;
  result.dataset.kind = ok ? "ok" : "bad";
}

function errorText(outcome) {
  const err = outcome.data && outcome.data.error;
  return err ? `${err.code}: ${err.message}` : `HTTP ${outcome.status}`;
}

function requestId() {
  if (crypto.randomUUID) return `ui-${crypto.randomUUID()}`;
  return `ui-${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

async function spawn(locationName, kind, count) {
  if (!Number.isInteger(count) || count < 1) {
    report(false, "Spawn: enter a whole number of workers, at least 1.");
    return;
  }
  const outcome = await call("POST", `/v1/locations/${encodeURIComponent(locationName)}/${kind}/spawn`,
    { count, request_id: requestId() });
  if (outcome.ok) {
    report(true, `Spawned ${count} ${kind} at ${locationName}: ${(outcome.data.workers || []).join(", ")}`);
  } else {
    report(false, `Spawn ${kind} at ${locationName} failed — ${errorText(outcome)}`);
  }
}

async function setDesired(locationName, kind, desired, current) {
  if (!Number.isInteger(desired) || desired < 0) {
    report(false, "Desired: enter a whole number, 0 or more.");
    return;
  }
  if (current !== undefined && desired < Number(current)) {
    const ok = await confirmAction(`Lower the desired ${kind} workers at ${locationName} from ${current} to ${desired}? Workers will be drained.`, "Lower");
    if (!ok) { report(false, "Desired count unchanged."); return; }
  }
  const outcome = await call("PUT", `/v1/locations/${encodeURIComponent(locationName)}/${kind}/desired`, { desired });
  for (const input of document.querySelectorAll(".desired-form input")) delete input.dataset.touched;
  if (outcome.ok) report(true, `Desired ${kind} workers at ${locationName}: ${desired}`);
  else report(false, `Set desired ${kind} at ${locationName} failed — ${errorText(outcome)}`);
}

async function workerAction(workerId, action) {
  const text = action === "stop"
    ? `Stop worker ${workerId} now? Its sessions end without draining.`
    : `Drain worker ${workerId}? It takes no new work, finishes and exits.`;
  const ok = await confirmAction(text, action === "stop" ? "Stop" : "Drain");
  if (!ok) { report(false, `${action} of ${workerId} cancelled.`); return; }
  const outcome = await call("POST", `/v1/workers/${encodeURIComponent(workerId)}/${action}`);
  if (outcome.ok) report(true, `${action === "stop" ? "Stopping" : "Draining"} ${workerId}`);
  else report(false, `${action} ${workerId} failed — ${errorText(outcome)}`);
}

function confirmAction(text, verb, defaultReason) {
  // Resolves true/false; with `defaultReason` the dialog also asks for a reason and resolves
  // to it (or false when cancelled).
  const dialog = $("confirm");
  const askReason = defaultReason !== undefined;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = verb;
  $("confirm-reason-row").hidden = !askReason;
  $("confirm-reason").value = askReason ? defaultReason : "";
  const opener = document.activeElement;
  dialog.returnValue = "cancel";
  dialog.showModal();
  $("confirm-cancel").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (opener && opener.focus) opener.focus();
      const ok = dialog.returnValue === "ok";
      if (!askReason) resolve(ok);
      else resolve(ok ? ($("confirm-reason").value.trim() || defaultReason) : false);
    }, { once: true });
  });
}
// ------------------------------------------------------------------ views

const VIEWS = ["fleet", "trading"];

function currentView() {
  const wanted = location.hash.slice(1);
  return VIEWS.includes(wanted) ? wanted : page.view;
}

function showView() {
  // Other hashes (the skip link's #app) keep the current view.
  page.view = currentView();
  $("fleet-view").hidden = page.view !== "fleet";
  $("trading-view").hidden = page.view !== "trading";
  for (const link of $("views-nav").querySelectorAll("a")) {
    if (link.dataset.view === page.view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `tradefleet · ${page.view}`;
}

// ------------------------------------------------------------------ decimal amounts
// Quantities, prices and PnL arrive as decimal strings. Sums are done on scaled BigInts so
// that a column total never shows binary floating-point noise (0.1 + 0.2).

const DECIMAL = /^([+-]?)(\d*)(?:\.(\d*))?$/;

function parseDecimal(value) {
  if (value === null || value === undefined || value === "") return null;
  const match = DECIMAL.exec(String(value).trim());
  if (!match || (match[2] === "" && !match[3])) return null;
  const fraction = match[3] || "";
  const digits = BigInt((match[2] || "0") + fraction);
  return { units: match[1] === "-" ? -digits : digits, scale: fraction.length };
}

function addDecimals(values) {
  const parsed = values.map(parseDecimal).filter((d) => d !== null);
  if (!parsed.length) return null;
  const scale = Math.max(...parsed.map((d) => d.scale));
  let total = 0n;
  for (const d of parsed) total += d.units * 10n ** BigInt(scale - d.scale);
  const negative = total < 0n;
  const text = (negative ? -total : total).toString().padStart(scale + 1, "0");
  const whole = text.slice(0, text.length - scale);
  const frac = scale ? `.${text.slice(text.length - scale)}` : "";
  return `${negative ? "-" : ""}${whole}${frac}`;
}

function sign(value) {
  const d = parseDecimal(value);
  if (d === null || d.units === 0n) return 0;
  return d.units > 0n ? 1 : -1;
}

function fmtAmount(value, digits = 2) {
  // At most `digits` decimals for money; the full string stays in the cell's title.
  const d = parseDecimal(value);
  if (d === null) return "–";
  const n = Number(value);
  return n.toLocaleString([], { minimumFractionDigits: Math.min(digits, d.scale), maximumFractionDigits: digits });
}

function fmtQty(value) {
  const d = parseDecimal(value);
  if (d === null) return "–";
  // Trailing zeros of the venue's precision say nothing to an operator.
  const text = String(value).trim();
  return text.includes(".") ? text.replace(/0+$/, "").replace(/\.$/, "") : text;
}

// ------------------------------------------------------------------ trading view model
// The fleet document carries each worker's `info`. Fields are read defensively: a Broker
// that predates risk reporting has no `kill_switch` and plain `{instrument: qty}` positions.

const SECRETISH = /token|secret|passw|api[_-]?key|credential|signature|private/i;

function positionEntry(instrument, raw) {
  if (raw !== null && typeof raw === "object") {
    return {
      instrument,
      qty: raw.qty ?? raw.quantity ?? null,
      avgPrice: raw.avg_price ?? raw.avg_px ?? null,
      realized: raw.realized_pnl ?? raw.realized ?? null,
      unrealized: raw.unrealized_pnl ?? raw.unrealized ?? null,
    };
  }
  return { instrument, qty: raw, avgPrice: null, realized: null, unrealized: null };
}

function entriesOf(raw) {
  if (Array.isArray(raw)) return raw.map((p) => positionEntry(p.instrument, p));
  if (raw && typeof raw === "object") {
    return Object.entries(raw).map(([instrument, value]) => positionEntry(instrument, value));
  }
  return [];
}

function positionsOf(info) {
  // `positions` is the order book's {instrument: qty}; the position manager, when present,
  // adds `position_pnl` {instrument: {qty, avg_price, realized_pnl, unrealized_pnl}}.
  const merged = new Map(entriesOf(info.positions).map((p) => [p.instrument, p]));
  for (const rich of entriesOf(info.position_pnl)) {
    const plain = merged.get(rich.instrument);
    merged.set(rich.instrument, { ...rich, qty: plain ? plain.qty : rich.qty });
  }
  return [...merged.values()].sort((a, b) => (a.instrument < b.instrument ? -1 : 1));
}

function killSwitchOf(info) {
  // Absent → unknown (null); a string names who stopped trading and why; an object has
  // `active` and `reason`; a boolean is just the state.
  if (!("kill_switch" in info)) return null;
  const raw = info.kill_switch;
  if (raw === null || raw === false) return { active: false, reason: "" };
  if (raw === true) return { active: true, reason: "" };
  if (typeof raw === "string") return { active: true, reason: raw };
  if (typeof raw === "object") {
    return { active: Boolean(raw.active), reason: String(raw.reason || raw.by || "") };
  }
  return null;
}

function tradingModel(fleet) {
  const accounts = new Map();
  const traders = new Map();
  let idleTraders = 0;
  for (const loc of fleet.locations) {
    for (const manager of loc.managers) {
      for (const worker of manager.workers) {
        const info = worker.info || {};
        if (manager.kind === "broker" && info.account) {
          const candidate = { worker, location: loc.name, info };
          const held = accounts.get(info.account);
          // During a handover two workers name the same account: show the acting owner.
          if (!held || ownerRank(candidate) > ownerRank(held)) accounts.set(info.account, candidate);
        } else if (manager.kind === "trader") {
          if (info.trader) {
            const candidate = { worker, location: loc.name, info };
            const held = traders.get(info.trader);
            if (!held || ownerRank(candidate) > ownerRank(held)) traders.set(info.trader, candidate);
          } else {
            idleTraders += 1;
          }
        }
      }
    }
  }
  return { accounts, traders, idleTraders };
}

function ownerRank(entry) {
  const live = ["up", "starting", "suspect"].includes(entry.worker.state) ? 2 : 0;
  const ready = entry.info.ready || entry.info.status === "running" ? 1 : 0;
  return (live + ready) * 1e9 + (entry.info.epoch ?? entry.worker.epoch ?? 0);
}

// ------------------------------------------------------------------ trading rendering

function renderTrading(fleet) {
  const model = tradingModel(fleet);
  const names = [...model.accounts.keys()].sort();
  renderFleetKill(fleet);
  renderAccounts(model, names);
  renderPositions(model, names);
  renderFills(model, names);
  renderTraders(model);
  renderTraderPositions(model);
}

function fleetKillOf(fleet) {
  // Each BrokerManager reports the fleet-wide switch it hands to new owners. Active if any
  // location has it on; unknown when no BrokerManager reports it.
  let state = null;
  for (const loc of fleet.locations) {
    for (const manager of loc.managers) {
      const raw = manager.kind === "broker" && manager.info ? manager.info.fleet_kill_switch : undefined;
      if (!raw || typeof raw !== "object") continue;
      const here = { active: Boolean(raw.active), reason: String(raw.reason || ""), by: String(raw.by || ""), location: loc.name };
      if (state === null || (here.active && !state.active)) state = here;
    }
  }
  return state;
}

// A kill-switch badge: its text, its colour (a state-* class) and its tooltip.
function killBadge(label, text, stateClass, title) {
  setText(label, text);
  label.className = `badge kill-state ${stateClass}`;
  label.title = title;
}

function renderFleetKill(fleet) {
  const box = $("fleet-kill");
  const state = fleetKillOf(fleet);
  const label = $("fleet-kill-state");
  const button = $("fleet-kill-button");
  box.dataset.active = state === null ? "unknown" : String(state.active);
  if (state === null) {
    killBadge(label, "off", "state-up", "No BrokerManager has reported a fleet-wide switch");
  } else {
    killBadge(label, state.active ? "ACTIVE" : "off", state.active ? "state-silent" : "state-up",
              state.active ? `at ${state.location}` : "");
  }
  const active = state !== null && state.active;
  setText($("fleet-kill-reason"), active ? [state.reason, state.by && `by ${state.by}`].filter(Boolean).join(" · ") : "");
  setText(button, active ? "Release fleet-wide" : "Engage fleet-wide");
  button.classList.toggle("danger", !active);
  button.setAttribute("aria-label", active ? "Release the fleet-wide kill switch" : "Engage the fleet-wide kill switch");
}

async function fleetKillAction() {
  const engaged = $("fleet-kill").dataset.active === "true";
  const activate = !engaged;
  const text = activate
    ? "Engage the fleet-wide kill switch? Every account, at every location, cancels its open orders and refuses new ones — including accounts opened later — until it is released."
    : "Release the fleet-wide kill switch? Accounts accept orders again (unless their own switch is on).";
  const reason = await confirmAction(text, activate ? "Engage fleet-wide" : "Release fleet-wide",
    activate ? "fleet stopped from the dashboard" : "fleet released from the dashboard");
  if (reason === false) { report(false, "Fleet-wide kill switch unchanged."); return; }
  const outcome = await call("POST", "/v1/kill-switch", { active: activate, reason });
  const verb = activate ? "engaged" : "released";
  if (outcome.ok && outcome.status === 200) report(true, `Fleet-wide kill switch ${verb}.`);
  else if (outcome.ok) report(false, `Fleet-wide kill switch ${verb} with failures at some locations — ${JSON.stringify(outcome.data.locations || {})}`);
  else report(false, `Fleet-wide kill switch not ${verb} — ${errorText(outcome)}`);
}

function cellsRow(count, className) {
  const row = el("tr", { class: className });
  for (let i = 0; i < count; i += 1) row.append(el(i === 0 ? "th" : "td", i === 0 ? { scope: "row" } : {}));
  return row;
}

function setAmount(cell, value, digits) {
  setText(cell, digits === undefined ? fmtQty(value) : fmtAmount(value, digits));
  cell.title = value === null || value === undefined ? "" : String(value);
  cell.classList.add("num-cell");
  const s = sign(value);
  cell.classList.toggle("gain", digits !== undefined && s > 0);
  cell.classList.toggle("loss", digits !== undefined && s < 0);
}

function accountRow(account) {
  const row = cellsRow(12, "account");
  row.children[0].classList.add("wid");
  row.children[2].classList.add("owner");
  row.children[3].append(el("span", { class: "badge" }));
  row.children[4].append(el("span", { class: "badge" }));
  const button = el("button", { type: "button", class: "danger quiet kill-button" });
  button.addEventListener("click", () => killSwitchAction(account));
  row.children[11].append(el("div", { class: "kill-cell" },
    el("span", { class: "badge kill-state" }), button));
  return row;
}

function renderAccounts(model, names) {
  const body = $("accounts-body");
  for (const name of names) {
    const { worker, location: where, info } = model.accounts.get(name);
    const row = keyed(body, name, () => accountRow(name));
    row.dataset.location = where;
    row.dataset.ready = String(Boolean(info.ready));
    const c = row.children;
    setText(c[0], name);
    setText(c[1], info.venue || "–");
    setText(c[2], `${worker.id} @ ${where}`);
    c[2].title = `epoch ${info.epoch ?? worker.epoch} · worker ${worker.state}`
      + (info.exits ? ` · ${info.exits} server-side exits` : "");
    const ownerState = info.state || "–";
    badge(c[3].firstChild, ownerState);
    c[3].firstChild.classList.add(`owner-${info.ready ? "ready" : "waiting"}`);
    c[3].title = info.error ? `error: ${info.error}` : "";
    const link = info.connected === undefined ? "–" : info.connected ? "connected" : "disconnected";
    badge(c[4].firstChild, link);
    for (const [i, key] of [[5, "open_orders"], [6, "orders"], [7, "fills"]]) {
      setText(c[i], info[key] === undefined ? "–" : String(info[key]));
      c[i].classList.add("num-cell");
      c[i].dataset.field = key;
    }
    const positions = positionsOf(info).filter((p) => sign(p.qty) !== 0);
    setText(c[8], String(positions.length));
    c[8].classList.add("num-cell");
    c[8].title = positions.map((p) => `${p.instrument} ${fmtQty(p.qty)}`).join(", ");
    const all = positionsOf(info);
    setAmount(c[9], addDecimals(all.map((p) => p.realized)), 2);
    setAmount(c[10], addDecimals(all.map((p) => p.unrealized)), 2);
    renderKillSwitch(c[11].firstChild, name, killSwitchOf(info));
  }
  prune(body, new Set(names));
  ordered(body, names);
  $("accounts-empty").hidden = names.length > 0;
}

function renderKillSwitch(cell, account, state) {
  const label = cell.querySelector(".kill-state");
  const button = cell.querySelector("button");
  if (state === null) {
    killBadge(label, "not reported", "state-stopped", "This Broker does not report a kill switch");
  } else {
    killBadge(label, state.active ? "ACTIVE" : "off", state.active ? "state-silent" : "state-up",
              state.active ? state.reason : "");
  }
  cell.dataset.active = state === null ? "unknown" : String(state.active);
  const releasing = state !== null && state.active;
  // Stopped by the fleet-wide switch: only releasing that one (above) lets it trade again.
  const byFleet = releasing && state.reason.startsWith("the fleet-wide");
  cell.dataset.scope = byFleet ? "fleet" : "account";
  button.disabled = byFleet;
  button.title = byFleet ? "Stopped by the fleet-wide kill switch: release it above" : "";
  setText(button, releasing ? "Release" : "Kill switch");
  button.classList.toggle("danger", !releasing);
  button.setAttribute("aria-label", `${releasing ? "Release the kill switch of" : "Engage the kill switch of"} ${account}`);
  if (releasing && state.reason) {
    let why = cell.querySelector(".kill-reason");
    if (!why) { why = el("span", { class: "kill-reason muted" }); label.after(why); }
    setText(why, state.reason);
  } else {
    const why = cell.querySelector(".kill-reason");
    if (why) why.remove();
  }
}

function renderPositions(model, names) {
  const body = $("positions-body");
  const keep = new Set();
  const order = [];
  for (const name of names) {
    for (const p of positionsOf(model.accounts.get(name).info)) {
      if (sign(p.qty) === 0 && sign(p.realized) === 0) continue; // flat, nothing to say
      const key = `${name}|${p.instrument}`;
      keep.add(key);
      order.push(key);
      const row = keyed(body, key, () => cellsRow(6, "position"));
      row.dataset.flat = String(sign(p.qty) === 0);
      setText(row.children[0], name);
      setText(row.children[1], p.instrument);
      setAmount(row.children[2], p.qty);
      row.children[2].classList.toggle("short", sign(p.qty) < 0);
      setAmount(row.children[3], p.avgPrice);
      setAmount(row.children[4], p.realized, 2);
      setAmount(row.children[5], p.unrealized, 2);
    }
  }
  prune(body, keep);
  ordered(body, order);
  $("positions-empty").hidden = order.length > 0;
}

function fmtStrategyState(state) {
  if (state === null || state === undefined) return "–";
  if (typeof state !== "object") return String(state);
  return Object.entries(state).map(([key, value]) => {
    if (SECRETISH.test(key)) return `${key}=•••`;
    const text = typeof value === "object" && value !== null ? JSON.stringify(value) : String(value);
    return `${key}=${text.length > 60 ? `${text.slice(0, 57)}…` : text}`;
  }).join(" · ");
}

function recentFills(model, names) {
  const all = [];
  for (const name of names) {
    const fills = model.accounts.get(name).info.recent_fills;
    if (!Array.isArray(fills)) continue;
    for (const f of fills) {
      if (!f || typeof f !== "object") continue;
      all.push({ ...f, account: name, key: `${name}|${f.client_order_id}|${f.fill_id}` });
    }
  }
  all.sort((a, b) => (Number(b.ts) || 0) - (Number(a.ts) || 0) || (a.key < b.key ? -1 : 1));
  return all.slice(0, RECENT_FILLS_SHOWN);
}

function renderFills(model, names) {
  const body = $("fills-body");
  const fills = recentFills(model, names);
  for (const f of fills) {
    const row = keyed(body, f.key, () => {
      const tr = cellsRow(10, "fill");
      tr.children[0].classList.add("num-cell");
      tr.children[8].classList.add("wid");
      return tr;
    });
    const c = row.children;
    const ms = Number(f.ts) / 1e6;
    setText(c[0], Number.isFinite(ms) && ms > 0 ? fmtTime(ms / 1000) : "–");
    c[0].title = Number.isFinite(ms) && ms > 0 ? new Date(ms).toISOString() : "";
    setText(c[1], f.account);
    setText(c[2], f.instrument || "–");
    setText(c[3], f.side || "–");
    c[3].className = f.side === "buy" ? "gain" : f.side === "sell" ? "short" : "";
    setAmount(c[4], f.qty);
    setAmount(c[5], f.price);
    setAmount(c[6], f.fee);
    c[6].title = f.fee === undefined ? "" : `${f.fee} ${f.fee_currency || ""}`.trim();
    setText(c[7], f.liquidity || "–");
    setText(c[8], f.client_order_id || "–");
    setText(c[9], f.customer || "–");
  }
  const keys = fills.map((f) => f.key);
  prune(body, new Set(keys));
  ordered(body, keys);
  $("fills-empty").hidden = fills.length > 0;
}

function pnlTotals(pnl) {
  // {currency: {realized, unrealized}} → one amount when there is one currency, else text.
  const totals = pnl && pnl.totals && typeof pnl.totals === "object" ? pnl.totals : null;
  if (!totals) return null;
  return Object.entries(totals).map(([currency, t]) => ({ currency, ...t }));
}

function setMoney(cell, amounts) {
  // `amounts`: [{currency, value}] (value a decimal string or null).
  if (!amounts || amounts.length === 0) { setAmount(cell, null, 2); return; }
  if (amounts.length === 1) {
    setAmount(cell, amounts[0].value, 2);
    cell.title = amounts[0].value === null || amounts[0].value === undefined ? "not marked yet" : `${amounts[0].value} ${amounts[0].currency}`;
    return;
  }
  setText(cell, amounts.map((a) => `${fmtAmount(a.value, 2)} ${a.currency}`).join(" · "));
  cell.title = amounts.map((a) => `${a.value} ${a.currency}`).join(", ");
  cell.classList.add("num-cell");
  cell.classList.remove("gain", "loss");
}

function renderTraders(model) {
  const body = $("traders-body");
  const names = [...model.traders.keys()].sort();
  for (const name of names) {
    const { worker, location: where, info } = model.traders.get(name);
    const row = keyed(body, name, () => {
      const tr = cellsRow(11, "trader");
      tr.children[0].classList.add("wid");
      tr.children[3].append(el("span", { class: "badge" }));
      tr.children[4].dataset.field = "realized";
      tr.children[5].dataset.field = "unrealized";
      tr.children[6].dataset.field = "fees";
      tr.children[7].classList.add("strategy-state");
      tr.children[9].classList.add("last-error");
      return tr;
    });
    const c = row.children;
    setText(c[0], name);
    setText(c[1], info.strategy || "–");
    setText(c[2], info.account || "–");
    badge(c[3].firstChild, info.status || "–");
    const totals = pnlTotals(info.pnl);
    setMoney(c[4], totals && totals.map((t) => ({ currency: t.currency, value: t.realized })));
    setMoney(c[5], totals && totals.map((t) => ({ currency: t.currency, value: t.unrealized })));
    const fees = info.pnl && info.pnl.fees && typeof info.pnl.fees === "object" ? info.pnl.fees : null;
    setMoney(c[6], fees && Object.entries(fees).map(([currency, value]) => ({ currency, value })));
    c[6].classList.remove("gain", "loss");
    const state = fmtStrategyState(info.strategy_state);
    setText(c[7], state);
    c[7].title = state;
    const errors = info.errors ?? 0;
    setText(c[8], String(errors));
    c[8].classList.add("num-cell");
    c[8].classList.toggle("loss", errors > 0);
    setText(c[9], info.last_error || "–");
    c[9].title = info.last_error || "";
    c[9].classList.toggle("loss", Boolean(info.last_error));
    setText(c[10], `${worker.id} @ ${where}`);
  }
  prune(body, new Set(names));
  ordered(body, names);
  $("traders-empty").hidden = names.length > 0;
  setText($("traders-idle"), model.idleTraders
    ? `${model.idleTraders} Trader worker${model.idleTraders === 1 ? "" : "s"} on standby.` : "");
}

function renderTraderPositions(model) {
  const body = $("trader-positions-body");
  const order = [];
  for (const name of [...model.traders.keys()].sort()) {
    const pnl = model.traders.get(name).info.pnl;
    const instruments = pnl && pnl.instruments && typeof pnl.instruments === "object" ? pnl.instruments : {};
    for (const instrument of Object.keys(instruments).sort()) {
      const p = instruments[instrument] || {};
      const key = `${name}|${instrument}`;
      order.push(key);
      const row = keyed(body, key, () => cellsRow(9, "trader-position"));
      row.dataset.flat = String(sign(p.position) === 0);
      const c = row.children;
      setText(c[0], name);
      setText(c[1], instrument);
      setAmount(c[2], p.position);
      c[2].classList.toggle("short", sign(p.position) < 0);
      setAmount(c[3], p.avg_cost);
      setAmount(c[4], p.mark);
      c[4].title = p.mark ? `${p.mark} (from ${p.mark_source || "?"})` : "";
      setAmount(c[5], p.realized_pnl, 2);
      setAmount(c[6], p.unrealized_pnl, 2);
      const fees = p.fees && typeof p.fees === "object" ? Object.entries(p.fees) : [];
      setMoney(c[7], fees.map(([currency, value]) => ({ currency, value })));
      c[7].classList.remove("gain", "loss");
      setText(c[8], String(p.fills ?? "–"));
      c[8].classList.add("num-cell");
    }
  }
  prune(body, new Set(order));
  ordered(body, order);
  $("trader-positions-empty").hidden = order.length > 0;
}

// ------------------------------------------------------------------ kill switch

async function killSwitchAction(account) {
  const row = $("accounts-body").querySelector(`tr[data-key="${CSS.escape(account)}"]`);
  if (!row) return;
  const where = row.dataset.location;
  const engaged = row.querySelector(".kill-cell").dataset.active === "true";
  const activate = !engaged;
  const text = activate
    ? `Engage the kill switch of ${account} (at ${where})? Its Broker refuses every new order until the switch is released.`
    : `Release the kill switch of ${account} (at ${where})? New orders are accepted again.`;
  const reason = await confirmAction(text, activate ? "Engage" : "Release",
    activate ? "stopped from the dashboard" : "released from the dashboard");
  if (reason === false) { report(false, `Kill switch of ${account} unchanged.`); return; }
  const outcome = await call("POST",
    `/v1/locations/${encodeURIComponent(where)}/accounts/${encodeURIComponent(account)}/kill-switch`,
    { active: activate, reason });
  const verb = activate ? "engaged" : "released";
  if (outcome.ok) report(true, `Kill switch of ${account} ${verb}.`);
  else report(false, `Kill switch of ${account} not ${verb} — ${errorText(outcome)}`);
}

// ------------------------------------------------------------------ start

function start() {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    page.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    $("login-error").textContent = "";
    connect();
  });
  $("logout").addEventListener("click", () => logout(""));
  $("fleet-kill-button").addEventListener("click", fleetKillAction);
  $("event-filter").addEventListener("input", renderEvents);
  $("event-source").addEventListener("change", renderEvents);
  $("confirm-reason").addEventListener("keydown", (ev) => {
    // Enter in the reason field would submit the dialog's first button (Cancel).
    if (ev.key === "Enter") { ev.preventDefault(); $("confirm-ok").focus(); }
  });
  window.addEventListener("hashchange", showView);
  showView();
  page.token = sessionStorage.getItem(TOKEN_KEY);
  if (page.token) connect(); else showLogin("");
}

document.addEventListener("DOMContentLoaded", start);
