// ccproxy-engine dashboard. Every value from the server is shown as text (textContent), never as
// markup: model output and upstream errors can hold anything. No inline script: the page's CSP
// allows only this file.
"use strict";

const POLL_MS = 1000;
const COOKIE = "ccproxy_key";
const SVG = "http://www.w3.org/2000/svg";
let selected = null;
let timer = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

function setKey(key) {
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `${COOKIE}=${key}; path=/ui/api; SameSite=Strict${secure}`;
}

function keyFromFragment() {
  const match = /(?:^#|&)key=([^&]*)/.exec(location.hash);
  if (match) {
    setKey(decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) throw Object.assign(new Error("key"), { unauthorized: true });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

const fmt = {
  time: (epoch) => new Date(epoch * 1000).toLocaleTimeString(),
  ms: (v) => (v === null || v === undefined ? "—" : v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`),
  n: (v) => (v === null || v === undefined ? "—" : v >= 10000 ? `${(v / 1000).toFixed(1)}k` : String(v)),
  cost: (v) => (v === null || v === undefined ? "unknown" : `$${v < 0.01 ? v.toFixed(5) : v.toFixed(3)}`),
};

function cell(row, text, cls) { row.appendChild(el("td", text, cls)); }

function requestRow(r) {
  const row = el("tr");
  row.dataset.id = r.id;
  if (r.id === selected) row.classList.add("selected");
  const u = r.usage || {};
  cell(row, fmt.time(r.started));
  cell(row, r.reason ?? "—");
  cell(row, r.provider ? `${r.provider}/${r.model}` + (r.attempts > 1 ? ` (try ${r.attempts})` : "") : r.client_model);
  cell(row, r.stream ? "stream" : "whole");
  cell(row, r.state === "in_flight" ? "in flight" : String(r.status), `state-${r.state}`);
  cell(row, fmt.ms(r.ttft_ms), "num");
  cell(row, fmt.ms(r.total_ms), "num");
  cell(row, fmt.n(u.input_tokens), "num");
  cell(row, fmt.n(u.output_tokens), "num");
  cell(row, fmt.n(u.cache_read_input_tokens), "num");
  cell(row, r.state === "in_flight" || !Object.keys(u).length ? "—" : fmt.cost(r.cost), "num");
  cell(row, r.error_type ? `${r.error_type}: ${r.error_message}` : "", "err");
  row.addEventListener("click", () => showDetail(r.id));
  return row;
}

function renderRequests(data) {
  document.querySelector("#requests tbody").replaceChildren(...data.requests.map(requestRow));
}

function lineChart(minutes, keys, width, height) {
  const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  const values = minutes.flatMap((m) => keys.map((k) => m[k]).filter((v) => v !== null));
  const top = Math.max(1, ...values);
  const x = (i) => (i / Math.max(1, minutes.length - 1)) * (width - 4) + 2;
  const y = (v) => height - 2 - (v / top) * (height - 4);
  chart.appendChild(svg("line", { x1: 0, y1: height - 1, x2: width, y2: height - 1, class: "axis" }));
  for (const key of keys) {
    const points = minutes.map((m, i) => (m[key] === null ? null : [x(i), y(m[key])])).filter((p) => p !== null);
    chart.appendChild(svg("polyline", { points: points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" "), class: key }));
    for (const [px, py] of points) chart.appendChild(svg("circle", { cx: px.toFixed(1), cy: py.toFixed(1), r: 2, class: key }));
  }
  chart.appendChild(Object.assign(svg("title"), { textContent: `max ${fmt.ms(top)}` }));
  return chart;
}

function barChart(minutes, width, height) {
  const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  const top = Math.max(1, ...minutes.map((m) => m.requests));
  const w = width / minutes.length;
  minutes.forEach((m, i) => {
    const h = (m.requests / top) * (height - 2);
    const e = (m.errors / top) * (height - 2);
    chart.appendChild(svg("rect", { x: i * w + 1, y: height - h, width: w - 2, height: h - e, class: "bar" }));
    if (e > 0) chart.appendChild(svg("rect", { x: i * w + 1, y: height - e, width: w - 2, height: e, class: "bar err" }));
  });
  chart.appendChild(Object.assign(svg("title"), { textContent: `max ${top} requests a minute` }));
  return chart;
}

function providerCard(name, info) {
  const minutes = info.minutes;
  const card = el("div", null, "card");
  card.dataset.provider = name;
  card.appendChild(el("h3", name));
  const total = minutes.reduce((s, m) => s + m.requests, 0);
  const errors = minutes.reduce((s, m) => s + m.errors, 0);
  const last = [...minutes].reverse().find((m) => m.p50 !== null);
  const stats = el("div", null, "stats");
  stats.append(el("span", `${(total / 15).toFixed(1)} req/min avg`), el("span", `errors ${total ? Math.round((errors / total) * 100) : 0}%`),
    el("span", `p50 ${fmt.ms(last?.p50)} · p95 ${fmt.ms(last?.p95)} · p99 ${fmt.ms(last?.p99)}`),
    el("span", `breaker ${info.breaker ?? "n/a"}`));
  card.appendChild(stats);
  if (minutes.length) {
    card.appendChild(barChart(minutes, 300, 36));
    card.appendChild(lineChart(minutes, ["p50", "p95", "p99"], 300, 60));
    card.appendChild(el("div", "requests a minute (errors red) · latency p50 blue, p95 amber, p99 red", "legend"));
  }
  return card;
}

function renderSummary(data) {
  document.getElementById("worker").textContent =
    `worker pid ${data.worker} · ${data.kept} requests kept · ${data.in_flight} in flight` + (data.capture ? " · capture on" : "");
  document.getElementById("providers").replaceChildren(
    ...Object.entries(data.providers).map(([name, info]) => providerCard(name, info)));
  const routes = Object.entries(data.routes);
  const all = routes.reduce((s, [, n]) => s + n, 0);
  document.querySelector("#routes tbody").replaceChildren(...routes.map(([reason, n]) => {
    const row = el("tr");
    cell(row, reason); cell(row, n, "num"); cell(row, `${Math.round((n / all) * 100)}%`, "num");
    return row;
  }));
  document.querySelector("#models tbody").replaceChildren(...data.models.map((m) => {
    const row = el("tr");
    const u = m.usage;
    cell(row, `${m.provider}/${m.model}`); cell(row, m.requests, "num");
    cell(row, fmt.n(u.input_tokens || 0), "num"); cell(row, fmt.n(u.output_tokens || 0), "num");
    cell(row, fmt.n(u.cache_read_input_tokens || 0), "num"); cell(row, fmt.cost(m.cost), "num");
    return row;
  }));
}

async function showDetail(id) {
  selected = id;
  const detail = await api(`/ui/api/requests/${encodeURIComponent(id)}`);
  document.getElementById("detail").hidden = false;
  document.getElementById("detail-id").textContent = id;
  document.getElementById("detail-note").textContent = detail.captured ? ""
    : "Nothing captured: set server.dashboard.capture: true in the config to keep bodies (keys masked).";
  document.getElementById("detail-request").textContent = detail.upstream_request ?? "—";
  document.getElementById("detail-answer").textContent = detail.answer ?? (detail.error_message || "—");
}

async function refresh() {
  try {
    const [requests, summary] = await Promise.all([api("/ui/api/requests?limit=200"), api("/ui/api/summary")]);
    document.getElementById("login").hidden = true;
    document.getElementById("main").hidden = false;
    renderRequests(requests);
    renderSummary(summary);
    document.getElementById("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    if (error.unauthorized) {
      clearInterval(timer);
      timer = null;
      document.getElementById("main").hidden = true;
      document.getElementById("login").hidden = false;
      document.getElementById("worker").textContent = "the server key is needed";
      return;
    }
    document.getElementById("status").textContent = `not updated: ${error.message}`;
  }
}

function start() {
  if (timer === null) timer = setInterval(refresh, POLL_MS);
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  keyFromFragment();
  document.getElementById("login").addEventListener("submit", (event) => {
    event.preventDefault();
    setKey(document.getElementById("key").value);
    start();
  });
  start();
});
