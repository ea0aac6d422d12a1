# ruff: noqa: E501  (inline HTML, CSS and JS)
"""The web page the API serves at `/`: one HTML document with its CSS and JS inline, nothing from the internet.
It asks for a team token (kept in the browser's localStorage) and polls the API every 2 s: the queue with
estimated starts, the jobs table with states and a cancel button, the nodes with utilisation bars, usage per
team, a submit box, and a job panel (transitions, loss chart drawn on a canvas, log tail)."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>flopwise cluster</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 18px;display:flex;gap:16px;align-items:center}
header h1{font-size:18px;margin:0;flex:1}
main{display:grid;grid-template-columns:1fr 1fr;gap:14px;padding:14px}
section{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:10px 12px;overflow:auto}
section.wide{grid-column:1 / span 2}
h2{font-size:15px;margin:2px 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:3px 6px;border-bottom:1px solid #eef0f4;font-size:13px;white-space:nowrap}
td.reason{white-space:normal;color:#555}
.state{padding:1px 6px;border-radius:9px;font-size:12px;background:#e8eaf0}
.running{background:#cdeccf}.succeeded{background:#d9f0ff}.failed{background:#ffd6d6}.preempted{background:#ffe9b8}
.cancelled{background:#ddd}.queued,.admitted{background:#eee4ff}
.bar{background:#e8eaf0;border-radius:3px;height:12px;width:160px;display:inline-block;vertical-align:middle}
.bar span{display:block;height:100%;background:#3b82f6;border-radius:3px}
textarea{width:100%;height:110px;font-family:monospace}
pre{background:#10131a;color:#d7dae0;padding:8px;max-height:260px;overflow:auto;font-size:12px}
button{cursor:pointer}#msg{color:#b00}a{color:#2357c6;cursor:pointer}
</style></head><body>
<header><h1>flopwise cluster</h1><span id="who">not logged in</span>
<input id="token" type="password" placeholder="team token" size="28"><button id="login">log in</button></header>
<div id="msg"></div>
<main>
<section><h2>Queue</h2><table id="queue"><thead><tr><th>#</th><th>job</th><th>team</th><th>GPUs</th><th>priority</th>
<th>state</th><th>estimated start</th></tr></thead><tbody></tbody></table></section>
<section><h2>Nodes</h2><table id="nodes"><thead><tr><th>node</th><th>flavor</th><th>allocated</th><th>CPU</th>
<th>jobs</th></tr></thead><tbody></tbody></table></section>
<section class="wide"><h2>Jobs</h2><table id="jobs"><thead><tr><th>id</th><th>name</th><th>team</th><th>kind</th>
<th>GPUs</th><th>state</th><th>reason</th><th></th></tr></thead><tbody></tbody></table></section>
<section><h2>Usage (GPU-hours)</h2><table id="usage"><thead><tr><th>team</th><th>allocated</th><th>used</th>
<th>idle</th></tr></thead><tbody></tbody></table></section>
<section><h2>Submit a job</h2><textarea id="jobtoml">kind = "command"
name = "hello"
argv = ["python3", "-c", "print('hello')"]</textarea><br><button id="submit">submit</button> <span id="submitted"></span></section>
<section class="wide" id="jobpanel" hidden><h2 id="jobtitle"></h2><canvas id="chart" width="640" height="200"></canvas>
<table id="transitions"><thead><tr><th>time</th><th>from</th><th>to</th><th>reason</th></tr></thead><tbody></tbody></table>
<pre id="log"></pre></section>
</main>
<script>
"use strict";
let token = localStorage.getItem("flopwiseToken") || "";
let current = null;
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const time = (t) => t == null ? "-" : new Date(t * 1000).toLocaleTimeString();
async function api(path, opts = {}) {
  const r = await fetch(path, {...opts, headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"}});
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(r.status + ": " + (body.detail || r.statusText));
  return body;
}
function rows(id, items, cells) {
  $(id).querySelector("tbody").innerHTML = items.map((x) => "<tr>" + cells(x).join("") + "</tr>").join("");
}
const td = (s, cls) => `<td${cls ? ` class="${cls}"` : ""}>${esc(s)}</td>`;
const st = (s) => `<td><span class="state ${esc(s)}">${esc(s)}</span></td>`;
async function refresh() {
  if (!token) return;
  try {
    const [who, jobs, queue, nodes, usage] = await Promise.all(["/api/whoami", "/api/jobs", "/api/queue", "/api/nodes",
      "/api/usage"].map((p) => api(p)));
    $("who").textContent = "team " + who.team; $("msg").textContent = "";
    rows("queue", queue, (q) => [td(q.position), td(q.id), td(q.team), td(q.gpus), td(q.priority), st(q.state),
      td(time(q.estimated_start))]);
    rows("jobs", jobs.slice().reverse(), (j) => [`<td><a data-job="${esc(j.id)}">${esc(j.id)}</a></td>`, td(j.name),
      td(j.team), td(j.kind), td(j.gpus), st(j.state), td(j.reason, "reason"),
      ["succeeded", "failed", "cancelled"].includes(j.state) ? "<td></td>" : `<td><button data-cancel="${esc(j.id)}">cancel</button></td>`]);
    rows("nodes", nodes, (n) => [td(n.name), td(n.flavor),
      `<td><span class="bar"><span style="width:${100 * n.allocated / n.gpus}%"></span></span> ${n.allocated}/${n.gpus}</td>`,
      `<td><span class="bar"><span style="width:${n.cpu_percent}%"></span></span> ${n.cpu_percent.toFixed(0)}%</td>`,
      td(n.jobs.join(", "))]);
    rows("usage", usage, (u) => [td(u.team), td(u.allocated_gpu_h.toFixed(4)),
      td(u.used_gpu_h == null ? "n/a" : u.used_gpu_h.toFixed(4)),
      td(u.idle_fraction == null ? "n/a" : (100 * u.idle_fraction).toFixed(0) + "%")]);
    if (current) await showJob(current);
  } catch (e) { $("msg").textContent = e.message; }
}
function chart(points) {
  const c = $("chart"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  if (points.length < 2) { g.fillText("no loss curve (yet)", 10, 20); return; }
  const xs = points.map((p) => p.step), ys = points.map((p) => p.loss);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const X = (x) => 40 + (c.width - 50) * (x - x0) / Math.max(1e-9, x1 - x0);
  const Y = (y) => c.height - 20 - (c.height - 30) * (y - y0) / Math.max(1e-9, y1 - y0);
  g.strokeStyle = "#3b82f6"; g.beginPath();
  points.forEach((p, i) => i ? g.lineTo(X(p.step), Y(p.loss)) : g.moveTo(X(p.step), Y(p.loss))); g.stroke();
  g.fillStyle = "#333"; g.fillText("loss " + y1.toFixed(3), 2, 12); g.fillText(y0.toFixed(3), 2, c.height - 22);
  const last = points[points.length - 1];
  g.fillText(`step ${last.step}  loss ${last.loss.toFixed(4)}` + (last.mfu != null ? `  MFU ${(100 * last.mfu).toFixed(1)}%` : ""), 60, 12);
}
async function showJob(id) {
  current = id;
  const j = await api("/api/jobs/" + encodeURIComponent(id));
  const log = await api("/api/jobs/" + encodeURIComponent(id) + "/logs");
  $("jobpanel").hidden = false;
  $("jobtitle").textContent = `${j.id} (${j.name}): ${j.state}`;
  rows("transitions", j.transitions, (t) => [td(time(t.at)), td(t.from_state), td(t.to_state), td(t.reason, "reason")]);
  chart(j.metrics);
  $("log").textContent = log.text.slice(-8000);
}
document.addEventListener("click", async (ev) => {
  const t = ev.target;
  try {
    if (t.dataset.job) await showJob(t.dataset.job);
    if (t.dataset.cancel) { await api(`/api/jobs/${encodeURIComponent(t.dataset.cancel)}/cancel`, {method: "POST"}); await refresh(); }
  } catch (e) { $("msg").textContent = e.message; }
});
$("login").onclick = () => { token = $("token").value.trim(); localStorage.setItem("flopwiseToken", token); refresh(); };
$("submit").onclick = async () => {
  try {
    const r = await api("/api/jobs", {method: "POST", body: JSON.stringify({toml: $("jobtoml").value})});
    $("submitted").textContent = "submitted " + r.id; await refresh();
  } catch (e) { $("msg").textContent = e.message; }
};
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""
