// The scalelab dashboard page: reads frames from /api/stream (server-sent events), or polls
// /api/frame and /api/events once a period when SSE is blocked, and draws them. No library, no
// build step: this file is served as it is from the binary.
"use strict";

const ROLE_ORDER = ["lb", "gateway", "service", "cache", "db", "auth", "users", "units", "finances", "legal", "worker"];
const COLORS = ["#5fb3f9", "#f0a04b", "#7bd389", "#e06c9f", "#b39ddb", "#ffd54f", "#4dd0e1", "#ff8a65", "#aed581", "#90a4ae", "#f48fb1"];
const MAX_EVENTS = 200;

const state = {
  frame: null,
  points: [],
  events: [],
  lastEventMs: 0,
  historyPoints: 300,
  scrapeMs: 1000,
  controls: false,
  credential: null, // "Basic ..." once an admin signed in; kept in memory only
  transport: "connecting",
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function roleRank(role) {
  const i = ROLE_ORDER.indexOf(role);
  return i < 0 ? ROLE_ORDER.length : i;
}

function roleColor(role) {
  return COLORS[roleRank(role) % COLORS.length];
}

function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en-US");
  return v.toFixed(digits === undefined ? 1 : digits);
}

function fmtMs(v) {
  return v === null || v === undefined ? "–" : fmt(v, v < 10 ? 2 : 1) + " ms";
}

function fmtUptime(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return Math.floor(s) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

// ---------------------------------------------------------------------------------------------
// Transport: SSE, falling back to polling.

function start() {
  const params = new URLSearchParams(location.search);
  fetch("api/info").then((r) => r.json()).then((info) => {
    state.controls = !!info.controls;
    state.scrapeMs = info.scrape_ms || 1000;
    setupControls();
  }).catch(() => setupControls());
  if (params.get("transport") === "poll" || typeof EventSource === "undefined") {
    poll();
  } else {
    stream();
  }
  $("projector").addEventListener("change", (e) => {
    document.body.classList.toggle("projector", e.target.checked);
    drawAll();
  });
  window.addEventListener("resize", () => drawAll());
  setInterval(() => { $("clock").textContent = new Date().toLocaleTimeString(); }, 1000);
}

function setTransport(kind, text) {
  state.transport = kind;
  const t = $("transport");
  t.textContent = text;
  t.className = "pill " + kind;
}

function stream() {
  const es = new EventSource("api/stream");
  let got = false;
  // No message within a few periods: SSE is blocked (a proxy buffering it, for one): poll instead.
  const giveUp = setTimeout(() => {
    if (!got) { es.close(); poll(); }
  }, Math.max(4000, 4 * state.scrapeMs));
  es.addEventListener("history", (e) => {
    got = true;
    clearTimeout(giveUp);
    const h = JSON.parse(e.data);
    state.points = h.points || [];
    state.events = [];
    addEvents(h.events || []);
    setTransport("live", "live (SSE)");
  });
  es.addEventListener("frame", (e) => {
    got = true;
    setTransport("live", "live (SSE)");
    const f = JSON.parse(e.data);
    state.points.push(f.point);
    trimPoints();
    addEvents(f.events || []);
    show(f);
  });
  es.onerror = () => {
    if (!got) return; // the give-up timer decides
    // EventSource reconnects by itself; say so meanwhile.
    setTransport("lost", "reconnecting…");
  };
}

function poll() {
  setTransport("poll", "live (polling)");
  let first = true;
  const tick = async () => {
    try {
      if (first) {
        const h = await (await fetch("api/history")).json();
        state.points = h.points || [];
        addEvents(h.events || []);
        first = false;
      }
      const r = await fetch("api/frame");
      if (r.ok) {
        const f = await r.json();
        if (!state.frame || f.seq !== state.frame.seq) {
          state.points.push(f.point);
          trimPoints();
        }
        const ev = await (await fetch("api/events?after=" + state.lastEventMs)).json();
        addEvents(ev.events || []);
        show(f);
        setTransport("poll", "live (polling)");
      }
    } catch (_) {
      setTransport("lost", "dashboard unreachable");
    }
    setTimeout(tick, state.scrapeMs);
  };
  tick();
}

function trimPoints() {
  const keep = Math.max(state.historyPoints, 10);
  if (state.points.length > keep) state.points.splice(0, state.points.length - keep);
}

function addEvents(list) {
  for (const e of list) {
    if (e.at_ms > state.lastEventMs) state.lastEventMs = e.at_ms;
    state.events.push(e);
  }
  if (state.events.length > MAX_EVENTS) state.events.splice(0, state.events.length - MAX_EVENTS);
  drawEvents();
}

// ---------------------------------------------------------------------------------------------
// Drawing.

function show(frame) {
  state.frame = frame;
  drawAll();
}

function drawAll() {
  if (!state.frame) return;
  drawSummary();
  drawTopology();
  drawCharts();
  drawTables();
  drawCache();
  drawLimits();
  drawQueue();
  fillScaleRoles();
}

function drawSummary() {
  const f = state.frame;
  const lb = f.roles.find((r) => r.role === "lb") || f.roles.find((r) => r.role === "gateway");
  const up = f.instances.filter((i) => i.health === "up").length;
  const parts = [`${up}/${f.instances.length} instances up`];
  if (lb) parts.push(`${fmt(lb.rps)} req/s in`, `p99 ${fmtMs(lb.p99_ms)}`);
  if (f.discovery_error) parts.push("⚠ " + f.discovery_error);
  $("summary").textContent = parts.join(" · ");
  $("summary").dataset.rps = lb ? lb.rps : 0;
}

function boxClass(i) {
  if (i.health === "down") return "down";
  if (i.restarting) return "restarting";
  if (i.ejected) return "ejected";
  if (i.breakers && i.breakers.length) return "breaker";
  if (i.state === "starting") return "starting";
  if (i.state === "draining" || i.state === "stopping") return i.state;
  return "up";
}

function makeBox(i, dense) {
  const p99 = i.p99_ms === null ? "" : ` · p99 ${fmt(i.p99_ms)}`;
  const title = `${i.id} (${i.url})\nstate ${i.state}, health ${i.health}${i.why ? " (" + i.why + ")" : ""}\n` +
    `${fmt(i.rps)} req/s, in flight ${fmt(i.in_flight, 0)}, p50 ${fmtMs(i.p50_ms)}, p99 ${fmtMs(i.p99_ms)}` +
    (i.restarts ? `\nrestarts ${i.restarts}` : "") +
    (i.ejected ? "\nejected by a pool: failing or slow answers" : "") +
    (i.breakers && i.breakers.length ? `\ncircuit breaker open: ${i.breakers.join(", ")}` : "");
  const short = dense ? i.id.replace(/^[a-z]+-/, "#") : i.id;
  const box = el("div", {
    class: "box " + boxClass(i) + (dense ? " dense" : ""),
    title,
    dataset: { id: i.id, health: i.health, state: i.state, role: i.role, restarting: i.restarting ? "yes" : "no" },
  },
  el("b", {}, short),
  el("span", { class: "rps" }, `${fmt(i.rps)} r/s`),
  el("span", { class: "p99" }, p99),
  i.role === "worker" && i.slots ? el("span", { class: "p99" }, ` · ${fmt(i.busy, 0)}/${fmt(i.slots, 0)} busy`) : null,
  i.ejected ? el("span", { class: "fuse" }, "ejected") : null,
  i.breakers && i.breakers.length ? el("span", { class: "fuse" }, `breaker: ${i.breakers.join(", ")}`) : null);
  const bar = el("div", { class: "bar" });
  bar.style.width = Math.round((i.share || 0) * 100) + "%";
  box.append(bar);
  return box;
}

function group(role, instances, dense) {
  const rps = instances.reduce((a, i) => a + i.rps, 0);
  const up = instances.filter((i) => i.health === "up").length;
  const g = el("div", { class: "group", dataset: { role } },
    el("h4", {}, `${role} ×${instances.length}`, el("small", {}, ` ${up} up · ${fmt(rps)} r/s`)));
  const boxes = el("div", { class: "boxes" });
  for (const i of instances) boxes.append(makeBox(i, dense));
  g.append(boxes);
  return g;
}

function drawTopology() {
  const f = state.frame;
  const byRole = new Map();
  for (const i of f.instances) {
    if (!byRole.has(i.role)) byRole.set(i.role, []);
    byRole.get(i.role).push(i);
  }
  const cols = { lb: $("col-lb"), gateway: $("col-gateway"), backends: $("col-backends"), queue: $("col-queue") };
  for (const c of Object.values(cols)) {
    while (c.children.length > 1) c.lastChild.remove();
  }
  const roles = [...byRole.keys()].sort((a, b) => roleRank(a) - roleRank(b) || a.localeCompare(b));
  const total = f.instances.length;
  for (const role of roles) {
    const list = byRole.get(role);
    const dense = list.length > 8 || total > 30;
    const col = role === "lb" ? cols.lb : role === "gateway" ? cols.gateway : role === "worker" ? cols.queue : cols.backends;
    col.append(group(role, list, dense));
  }
  if (byRole.has("worker")) {
    const q = f.queue;
    const waiting = Object.values(q.depth || {}).reduce((a, b) => a + b, 0);
    const qb = el("div", { class: "box queuebox", id: "queue-box", dataset: { id: "queue" } },
      el("b", {}, "task queue"), `${fmt(waiting, 0)} waiting · ${fmt(q.busy, 0)} running`);
    cols.queue.insertBefore(qb, cols.queue.children[1] || null);
  }
  requestAnimationFrame(drawEdges);
}

function center(node, side) {
  const host = $("topology").getBoundingClientRect();
  const r = node.getBoundingClientRect();
  const x = side === "left" ? r.left : side === "right" ? r.right : r.left + r.width / 2;
  return [x - host.left, r.top + r.height / 2 - host.top];
}

function drawEdges() {
  const svg = $("edges");
  while (svg.firstChild) svg.firstChild.remove();
  const f = state.frame;
  if (!f) return;
  const find = (id) => document.querySelector(`#topology .box[data-id="${CSS.escape(id)}"]`);
  const gwCol = $("col-gateway");
  const lbBoxes = [...document.querySelectorAll('#col-lb .box')];
  for (const e of f.edges) {
    const to = find(e.to);
    if (!to) continue;
    let from;
    if (e.from === "lb") {
      if (!lbBoxes.length) continue;
      from = center(lbBoxes[0], "right");
    } else if (e.from === "gateway") {
      const r = gwCol.getBoundingClientRect();
      const host = $("topology").getBoundingClientRect();
      if (!gwCol.querySelector(".box")) continue;
      from = [r.right - host.left, r.top + r.height / 2 - host.top];
    } else if (e.from === "queue") {
      const q = $("queue-box");
      if (!q) continue;
      from = center(q, "middle");
      from[1] += q.getBoundingClientRect().height / 2;
    } else continue;
    const [x2, y2] = e.from === "queue" ? center(to, "middle") : center(to, "left");
    const line = document.createElementNS("http://www.w3.org/2000/svg", "path");
    const mx = (from[0] + x2) / 2;
    const d = e.from === "queue" ? `M${from[0]},${from[1]} L${x2},${y2}` : `M${from[0]},${from[1]} C${mx},${from[1]} ${mx},${y2} ${x2},${y2}`;
    line.setAttribute("d", d);
    line.setAttribute("fill", "none");
    const share = e.share || 0;
    line.setAttribute("stroke", share > 0 ? "#5fb3f9" : "#2a3642");
    line.setAttribute("stroke-opacity", share > 0 ? String(0.35 + 0.65 * share) : "1");
    line.setAttribute("stroke-width", String(1 + 9 * share));
    line.dataset.to = e.to;
    line.dataset.share = share;
    svg.append(line);
  }
}

// Charts: one canvas each, a line per role, the same time axis for all.
function drawCharts() {
  const pts = state.points;
  const roles = new Set();
  for (const p of pts) for (const r of Object.keys(p.roles)) roles.add(r);
  const list = [...roles].sort((a, b) => roleRank(a) - roleRank(b));
  const t1 = pts.length ? pts[pts.length - 1].at_ms : Date.now();
  const t0 = Math.min(pts.length ? pts[0].at_ms : t1, t1 - 60000);
  chart($("chart-rps"), pts, list, (r) => r.rps, t0, t1);
  chart($("chart-p99"), pts, list, (r) => r.p99_ms, t0, t1);
  chart($("chart-errors"), pts, list, (r) => r.errors_per_s, t0, t1);
  chart($("chart-instances"), pts, list, (r) => r.instances, t0, t1);
  const legend = $("chart-legend");
  legend.replaceChildren(...list.map((r) => {
    const i = el("i");
    i.style.background = roleColor(r);
    return el("span", {}, i, r);
  }));
}

function chart(canvas, pts, roles, value, t0, t1) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w || !h) return;
  if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
  if (canvas.height !== Math.round(h * dpr)) canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  let max = 0;
  for (const p of pts) for (const r of roles) {
    const v = p.roles[r] ? value(p.roles[r]) : null;
    if (v !== null && v !== undefined && v > max) max = v;
  }
  max = niceMax(max);
  const left = 34, bottom = 14, top = 4;
  const x = (t) => left + ((t - t0) / Math.max(1, t1 - t0)) * (w - left - 4);
  const y = (v) => top + (1 - v / max) * (h - top - bottom);
  ctx.strokeStyle = "#2a3642";
  ctx.fillStyle = "#8a99a8";
  ctx.font = "10px system-ui, sans-serif";
  ctx.lineWidth = 1;
  for (const frac of [0, 0.5, 1]) {
    const v = max * frac;
    ctx.beginPath(); ctx.moveTo(left, y(v)); ctx.lineTo(w - 4, y(v)); ctx.stroke();
    ctx.fillText(fmt(v, v < 10 ? 1 : 0), 2, y(v) + 3);
  }
  const minutes = Math.round((t1 - t0) / 60000);
  ctx.fillText(`−${minutes} min`, left, h - 2);
  ctx.fillText("now", w - 24, h - 2);
  ctx.lineWidth = 1.6;
  for (const r of roles) {
    ctx.strokeStyle = roleColor(r);
    ctx.beginPath();
    let pen = false;
    for (const p of pts) {
      const v = p.roles[r] ? value(p.roles[r]) : null;
      if (v === null || v === undefined) { pen = false; continue; }
      if (pen) ctx.lineTo(x(p.at_ms), y(v)); else ctx.moveTo(x(p.at_ms), y(v));
      pen = true;
    }
    ctx.stroke();
  }
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function drawTables() {
  const f = state.frame;
  const host = $("tables");
  const scroll = host.scrollTop;
  const signed = !!state.credential;
  const tables = [];
  const roles = f.roles.slice().sort((a, b) => roleRank(a.role) - roleRank(b.role));
  for (const role of roles) {
    const head = ["instance", "state", "req/s", "in flight", "p50", "p95", "p99", "4xx/s", "5xx/s", "429/s", "restarts", "uptime"];
    if (signed && state.controls) head.push("");
    const rows = f.instances.filter((i) => i.role === role.role).map((i) => {
      const cells = [
        el("td", {}, i.id),
        el("td", {}, i.health === "down" ? `down: ${i.why || ""}` : i.restarting ? "restarted" : i.state),
        el("td", {}, fmt(i.rps)), el("td", {}, fmt(i.in_flight, 0)),
        el("td", {}, fmtMs(i.p50_ms)), el("td", {}, fmtMs(i.p95_ms)), el("td", {}, fmtMs(i.p99_ms)),
        el("td", {}, fmt(i.client_errors_per_s)), el("td", {}, fmt(i.server_errors_per_s)), el("td", {}, fmt(i.limited_per_s)),
        el("td", {}, i.restarts === null ? "–" : i.restarts), el("td", {}, fmtUptime(i.uptime_secs)),
      ];
      if (signed && state.controls) {
        cells.push(el("td", {},
          el("button", { onclick: () => control(`api/instances/${encodeURIComponent(i.id)}/drain`, {}), "data-action": "drain" }, "drain"), " ",
          el("button", { onclick: () => control(`api/instances/${encodeURIComponent(i.id)}/kill`, {}), "data-action": "kill" }, "kill")));
      }
      return el("tr", { class: i.health === "down" ? "down" : "", dataset: { id: i.id } }, ...cells);
    });
    const total = el("tr", { class: "total" },
      el("td", {}, `${role.role} (${role.up}/${role.instances} up)`), el("td", {}, ""),
      el("td", {}, fmt(role.rps)), el("td", {}, fmt(role.in_flight, 0)), el("td", {}, fmtMs(role.p50_ms)),
      el("td", {}, ""), el("td", {}, fmtMs(role.p99_ms)), el("td", {}, fmt(role.errors_per_s)));
    tables.push(el("table", { dataset: { role: role.role } },
      el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows, total)));
  }
  host.replaceChildren(...tables);
  host.scrollTop = scroll;
}

function dl(host, pairs) {
  host.replaceChildren(...pairs.flatMap(([k, v, id]) => [el("dt", {}, k), el("dd", id ? { id } : {}, v)]));
}

function drawCache() {
  const c = state.frame.cache;
  $("hit-ratio").textContent = c.hit_ratio === null ? "–" : Math.round(c.hit_ratio * 100) + "%";
  dl($("cache"), [
    ["hits / misses per s", `${fmt(c.hits_per_s)} / ${fmt(c.misses_per_s)}`, "cache-rates"],
    ["hit ratio since start", c.hit_ratio_total === null ? "–" : Math.round(c.hit_ratio_total * 100) + "%"],
    ["hit latency p50 / p99", `${fmtMs(c.hit_p50_ms)} / ${fmtMs(c.hit_p99_ms)}`],
    ["miss latency p50 / p99", `${fmtMs(c.miss_p50_ms)} / ${fmtMs(c.miss_p99_ms)}`],
    ["entries", c.entries === null ? "– (local or Redis cache)" : fmt(c.entries, 0)],
    ["evictions", c.evictions === null ? "–" : `${fmt(c.evictions, 0)} (${fmt(c.evictions_per_s || 0)}/s)`],
  ]);
}

function drawLimits() {
  const l = state.frame.limits;
  const edge = Object.entries(l.edge_refused_per_s || {});
  dl($("limits"), [
    ["admitted by the balancer", `${fmt(l.admitted_per_s)} /s`, "admitted"],
    ...edge.map(([k, v]) => [`refused at the edge (${k})`, `${fmt(v)} /s`]),
    ["refused by the gateways", `${fmt(l.gateway_refused_per_s)} /s`],
  ]);
}

function drawQueue() {
  const q = state.frame.queue;
  const depth = $("depth");
  const prios = ["high", "normal", "low"];
  const max = Math.max(1, ...prios.map((p) => q.depth[p] || 0));
  depth.replaceChildren(...prios.map((p) => {
    const fill = el("div", { class: "fill" });
    fill.style.width = Math.round(((q.depth[p] || 0) / max) * 100) + "%";
    return el("div", { class: "prio" }, el("span", {}, p), el("div", { class: "track" }, fill), el("span", {}, fmt(q.depth[p] || 0, 0)));
  }));
  const outcomes = Object.entries(q.outcomes_per_s || {}).map(([k, v]) => `${k} ${fmt(v)}`).join(", ") || "–";
  dl($("queue"), [
    ["running", fmt(q.by_status.running || 0, 0)],
    ["busy slots", q.slots ? `${fmt(q.busy, 0)} / ${fmt(q.slots, 0)}` : fmt(q.busy, 0)],
    ["finished per s", outcomes],
    ["succeeded / dead (total)", `${fmt(q.by_status.succeeded || 0, 0)} / ${fmt(q.by_status.dead || 0, 0)}`],
    ["oldest waiting", q.oldest_wait_secs === null ? "–" : fmt(q.oldest_wait_secs) + " s"],
    ["wait p50 / p99", `${fmtMs(q.wait_p50_ms)} / ${fmtMs(q.wait_p99_ms)}`],
  ]);
}

function drawEvents() {
  const list = $("events");
  const shown = state.events.slice(-MAX_EVENTS).reverse();
  list.replaceChildren(...shown.map((e) => el("li", { dataset: { kind: e.kind } },
    el("time", {}, new Date(e.at_ms).toLocaleTimeString()),
    el("span", { class: "kind " + e.kind }, e.kind),
    e.message)));
}

// ---------------------------------------------------------------------------------------------
// Controls: the admin credential is kept in memory (never stored) and sent as HTTP Basic.

function setupControls() {
  if (!state.controls) {
    const off = $("controls-off");
    off.textContent = "Controls need the supervisor of `scalelab up`; on an orchestrator, scale with it.";
    off.hidden = false;
    $("signin").hidden = true;
    $("controls").hidden = true;
    return;
  }
  $("signin").hidden = !!state.credential;
  $("controls").hidden = !state.credential;
}

function result(text, bad) {
  const r = $("control-result");
  r.textContent = text;
  r.className = bad ? "bad" : "";
}

async function control(path, body) {
  try {
    const r = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Authorization": state.credential || "" },
      body: JSON.stringify(body),
    });
    const answer = await r.json().catch(() => ({}));
    if (!r.ok) {
      result(`${answer.error || r.status}: ${answer.message || ""}`, true);
      if (r.status === 401) { state.credential = null; setupControls(); drawTables(); }
      return null;
    }
    result(JSON.stringify(answer));
    return answer;
  } catch (e) {
    result("the dashboard did not answer", true);
    return null;
  }
}

function fillScaleRoles() {
  const sel = $("scale-role");
  const roles = state.frame.roles.map((r) => r.role).filter((r) => r !== "lb");
  if ([...sel.options].map((o) => o.value).join() === roles.join()) return;
  const was = sel.value;
  sel.replaceChildren(...roles.map((r) => el("option", {}, r)));
  if (roles.includes(was)) sel.value = was;
  else if (roles.includes("service")) sel.value = "service";
}

function wireControls() {
  $("signin").addEventListener("submit", async (e) => {
    e.preventDefault();
    const user = $("user").value, password = $("password").value;
    const r = await fetch("api/session", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username: user, password }),
    }).catch(() => null);
    if (!r) { result("the dashboard did not answer", true); return; }
    const answer = await r.json().catch(() => ({}));
    if (!r.ok) { result(`${answer.error || r.status}: ${answer.message || ""}`, true); return; }
    state.credential = "Basic " + btoa(unescape(encodeURIComponent(`${user}:${password}`)));
    $("password").value = "";
    result(`signed in as ${answer.user}`);
    setupControls();
    if (state.frame) drawTables();
  });
  $("signout").addEventListener("click", () => {
    state.credential = null;
    result("signed out");
    setupControls();
    if (state.frame) drawTables();
  });
  $("scale").addEventListener("click", () => {
    const role = $("scale-role").value, n = parseInt($("scale-count").value, 10);
    if (!role || Number.isNaN(n)) return;
    control("api/scale", { [role]: n });
  });
  $("flush").addEventListener("click", () => control("api/cache/flush", {}));
  $("load").addEventListener("click", () => control("api/load", {
    route: $("load-route").value,
    seconds: parseInt($("load-seconds").value, 10) || 10,
    connections: parseInt($("load-connections").value, 10) || 16,
  }));
}

wireControls();
start();
