// fpt dashboard: a small single-page app over the same REST API and keys as every other client.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const main = () => $("#main");
const TASKS = ["mnist", "bit_xor", "bit_memory", "listops", "cifar10", "cifar10_lra", "remote_homology", "sequence_classification", "image_classification", "regression", "multilabel_classification"];
let stopStream = null;

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function say(msg, bad = false) {
  const s = $("#status");
  s.textContent = msg;
  s.className = bad ? "error" : "";
}

function headers(extra = {}) {
  const key = sessionStorage.getItem("fpt-key");
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: headers(opts.headers || {}) });
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  if (!r.ok) {
    const msg = body?.error?.message || `${r.status} ${r.statusText}`;
    throw new Error(body?.error?.param ? `${body.error.param}: ${msg}` : msg);
  }
  return body;
}

// ---- routing
async function route() {
  if (stopStream) { stopStream(); stopStream = null; }
  const [, view, id] = (location.hash || "#/jobs").split("/");
  for (const a of document.querySelectorAll("nav a")) a.removeAttribute("aria-current");
  const nav = $(`#nav-${view === "jobs" || !view ? "jobs" : view}`);
  if (nav) nav.setAttribute("aria-current", "page");
  try {
    if (view === "jobs" && id) await jobPage(id);
    else if (view === "models") await modelsPage();
    else if (view === "playground") await playground(id);
    else await jobsPage();
  } catch (e) {
    main().innerHTML = `<p class="error">${esc(e.message)}</p>`;
  }
}

// ---- jobs
async function jobsPage() {
  const [jobs, models] = await Promise.all([api("/v1/fine_tuning/jobs?limit=100"), api("/v1/models")]);
  const bases = models.data.filter((m) => m.kind === "base");
  main().innerHTML = `
    <h2>New fine-tuning job</h2>
    <form id="job-form" class="grid">
      <label>Task <select id="f-task">${TASKS.map((t) => `<option>${t}</option>`).join("")}</select></label>
      <label>Base model <select id="f-model">${bases.map((b) => `<option>${esc(b.id)}</option>`).join("")}</select></label>
      <label>Training file <input id="f-file" type="file"></label>
      <label>Task options (JSON) <input id="f-opts" placeholder='{"n_bits": 5}'></label>
      <label>Steps <input id="f-steps" type="number" min="1" value="500"></label>
      <label>Batch size <input id="f-batch" type="number" min="1" value="16"></label>
      <label>Learning rate <input id="f-lr" type="number" step="any" value="0.001"></label>
      <label>Evaluate every <input id="f-eval" type="number" min="1" value="50"></label>
      <fieldset><legend>Trained (unfrozen)</legend>
        ${[["ln", true], ["pos", true], ["in", true], ["out", true], ["attn", false], ["ff", false]]
          .map(([g, on]) => `<label><input type="checkbox" id="f-${g}" ${on ? "checked" : ""}> ${g}</label>`).join("")}
        <label><input type="checkbox" id="f-pretrained" checked> pretrained</label>
      </fieldset>
      <button type="submit" id="f-submit">Start job</button>
    </form>
    <h2>Jobs</h2>
    <div class="table-wrap"><table id="jobs"><thead><tr><th>Job</th><th>Status</th><th>Base model</th><th>Task</th><th>Progress</th><th>Best validation</th></tr></thead>
    <tbody>${jobs.data.map(jobRow).join("") || `<tr><td colspan="6">No jobs yet.</td></tr>`}</tbody></table></div>`;
  $("#job-form").addEventListener("submit", submitJob);
}

// A metric's value as people read it: fractions that are accuracies or F1 scores as percentages.
function metricText(name, v) {
  if (v == null) return "";
  return /accuracy|f1/.test(name) ? (100 * v).toFixed(1) + "%" : (+v).toPrecision(4);
}

function jobRow(j) {
  const total = j.hyperparameters?.n_steps || 1;
  const m = j.result?.primary_metric;
  const best = m ? `${esc(m)} ${metricText(m, j.result[`best_valid_${m}`])}` : "";
  return `<tr><td><a href="#/jobs/${esc(j.id)}">${esc(j.id)}</a></td><td class="status ${esc(j.status)}">${esc(j.status)}</td>
    <td>${esc(j.model)}</td><td>${esc(j.task?.type)}</td>
    <td><progress max="${total}" value="${j.trained_steps}" aria-label="progress"></progress> ${j.trained_steps}/${total}</td>
    <td>${best}</td></tr>`;
}

async function submitJob(ev) {
  ev.preventDefault();
  const button = $("#f-submit");
  button.disabled = true;
  try {
    let training_file;
    const file = $("#f-file").files[0];
    if (file) {
      say(`Uploading ${file.name}…`);
      const fd = new FormData();
      fd.append("purpose", "fine-tune");
      fd.append("file", file);
      training_file = (await api("/v1/files", { method: "POST", body: fd })).id;
    }
    const opts = $("#f-opts").value.trim() ? JSON.parse($("#f-opts").value) : {};
    const on = (g) => $(`#f-${g}`).checked;
    const body = {
      model: $("#f-model").value,
      task: { type: $("#f-task").value, ...opts },
      training_file,
      hyperparameters: { n_steps: +$("#f-steps").value, batch_size: +$("#f-batch").value, learning_rate: +$("#f-lr").value, eval_every: +$("#f-eval").value, log_every: 5 },
      method: { type: "fpt", fpt: { pretrained: on("pretrained"), freeze_ln: !on("ln"), freeze_pos: !on("pos"), freeze_in: !on("in"), freeze_out: !on("out"), freeze_attn: !on("attn"), freeze_ff: !on("ff") } },
    };
    const job = await api("/v1/fine_tuning/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    say(`Started ${job.id}`);
    location.hash = `#/jobs/${job.id}`;
  } catch (e) {
    say(e.message, true);
  } finally {
    button.disabled = false;
  }
}

// ---- one job: live curves from the event stream
async function jobPage(id) {
  const job = await api(`/v1/fine_tuning/jobs/${id}`);
  main().innerHTML = `
    <h2>Job ${esc(id)}</h2>
    <p>Status: <span id="job-status" class="status ${esc(job.status)}">${esc(job.status)}</span>
      · base <b>${esc(job.model)}</b> · task <b>${esc(job.task?.type)}</b> · model <b id="job-model">${esc(job.fine_tuned_model || "–")}</b></p>
    <div class="actions">
      <button class="secondary" data-act="cancel">Cancel</button>
      <button class="secondary" data-act="pause">Pause</button>
      <button class="secondary" data-act="resume">Resume</button>
    </div>
    <div class="charts">
      <div class="chart"><svg id="chart-loss" viewBox="0 0 400 220" role="img" aria-label="loss by step"></svg><div class="legend">loss: train (blue), validation (orange)</div></div>
      <div class="chart"><svg id="chart-acc" viewBox="0 0 400 220" role="img" aria-label="primary metric by step"></svg><div class="legend" id="acc-legend">accuracy: train (blue), validation (orange)</div></div>
    </div>
    <h2>Parameters</h2><p id="params">–</p>
    <h2>Checkpoints</h2><div class="table-wrap"><table><thead><tr><th>Step</th><th>Model</th><th id="ckpt-metric">Validation accuracy</th></tr></thead><tbody id="ckpts"></tbody></table></div>
    <h2>Events</h2><div class="log" id="log" aria-live="off"></div>`;
  for (const b of document.querySelectorAll("[data-act]")) {
    b.addEventListener("click", async () => {
      try {
        const j = await api(`/v1/fine_tuning/jobs/${id}/${b.dataset.act}`, { method: "POST" });
        setStatus(j.status);
        say(`${b.dataset.act}: ${j.status}`);
      } catch (e) { say(e.message, true); }
    });
  }
  const points = [];
  // The task's primary metric, as its metrics events (or its result) name it.
  const primary = () => points.at(-1)?.primary_metric || job.result?.primary_metric || "accuracy";
  const draw = () => {
    const m = primary();
    chart($("#chart-loss"), points, "train_loss", "valid_loss");
    chart($("#chart-acc"), points, `train_${m}`, `valid_${m}`, /accuracy|f1/.test(m) ? 1 : undefined);
    const legend = $("#acc-legend");
    if (legend) legend.textContent = `${m}: train (blue), validation (orange)`;
  };
  draw();
  stopStream = stream(`/v1/fine_tuning/jobs/${id}/events?stream=true`, (e) => {
    const line = document.createElement("div");
    line.textContent = `${new Date(e.created_at * 1000).toLocaleTimeString()} ${e.message}`;
    $("#log")?.appendChild(line);
    if (e.type === "metrics" && e.data) {
      points.push(e.data);
      draw();
    } else if (e.data?.parameters) {
      const p = e.data.parameters;
      $("#params").textContent = `${p.trained.toLocaleString()} trained of ${p.total.toLocaleString()} (${(100 * p.trained_fraction).toFixed(3)}%) in ${p.trained_tensors} tensors`;
    }
  }, async () => {
    const j = await api(`/v1/fine_tuning/jobs/${id}`);
    setStatus(j.status);
    $("#job-model").textContent = j.fine_tuned_model || "–";
    await checkpoints(id, primary());
  });
  await checkpoints(id, primary());
}

function setStatus(s) {
  const el = $("#job-status");
  if (el) { el.textContent = s; el.className = `status ${s}`; }
}

async function checkpoints(id, metric) {
  const c = await api(`/v1/fine_tuning/jobs/${id}/checkpoints?limit=100`);
  const head = $("#ckpt-metric");
  if (head) head.textContent = `Validation ${metric}`;
  const body = $("#ckpts");
  if (body) body.innerHTML = c.data.map((k) => `<tr><td>${k.step_number}</td><td>${esc(k.fine_tuned_model_checkpoint)}</td><td>${metricText(metric, k.metrics?.[`valid_${metric}`])}</td></tr>`).join("");
}

// Server-Sent Events over fetch, so the API key travels in a header (EventSource cannot send one).
function stream(path, onEvent, onDone) {
  const ctl = new AbortController();
  (async () => {
    const r = await fetch(path, { headers: headers(), signal: ctl.signal });
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const chunk = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = chunk.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (!data) continue;
        if (data === "[DONE]") { await onDone(); return; }
        onEvent(JSON.parse(data));
      }
    }
  })().catch((e) => { if (e.name !== "AbortError") say(e.message, true); });
  return () => ctl.abort();
}

function chart(svg, points, a, b, fixedMax) {
  if (!svg) return;
  const W = 400, H = 220, L = 40, B = 24, T = 8, R = 8;
  const xs = points.map((p) => p.step);
  const ys = points.flatMap((p) => [p[a], p[b]]).filter((v) => v != null && isFinite(v));
  const xmax = Math.max(1, ...xs), ymax = fixedMax ?? Math.max(1e-6, ...ys);
  const X = (x) => L + (W - L - R) * (x / xmax), Y = (y) => T + (H - T - B) * (1 - y / ymax);
  const line = (key, color, cls) => {
    const pts = points.filter((p) => p[key] != null).map((p) => `${X(p.step).toFixed(1)},${Y(p[key]).toFixed(1)}`);
    return pts.length ? `<polyline class="${cls}" fill="none" stroke="${color}" stroke-width="2" points="${pts.join(" ")}"/>` : "";
  };
  svg.innerHTML = `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#999"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#999"/>
    <text x="${L - 4}" y="${T + 10}" font-size="10" text-anchor="end">${ymax.toPrecision(2)}</text><text x="${L - 4}" y="${H - B}" font-size="10" text-anchor="end">0</text>
    <text x="${W - R}" y="${H - 6}" font-size="10" text-anchor="end">step ${xmax}</text>
    ${line(a, "#2457c5", "train")}${line(b, "#e07a10", "valid")}`;
}

// ---- models
async function modelsPage() {
  const m = await api("/v1/models");
  main().innerHTML = `<h2>Models</h2><div class="table-wrap"><table><thead><tr><th>Model</th><th>Kind</th><th>Base</th><th>Loaded</th><th></th></tr></thead><tbody>
    ${m.data.map((x) => `<tr><td>${esc(x.id)}</td><td>${esc(x.kind)}</td><td>${esc(x.base_model || x.arch || "")}</td><td>${x.loaded ? "yes" : "no"}</td>
      <td>${x.kind === "fine-tuned" ? `<button class="secondary" data-id="${esc(x.id)}" data-act="${x.loaded ? "unload" : "load"}">${x.loaded ? "Unload" : "Load"}</button> <a href="#/playground/${esc(x.id)}">Try</a>` : ""}</td></tr>`).join("")}
    </tbody></table></div>`;
  for (const b of document.querySelectorAll("[data-act]")) {
    b.addEventListener("click", async () => {
      try { await api(`/v1/models/${b.dataset.id}/${b.dataset.act}`, { method: "POST" }); await modelsPage(); }
      catch (e) { say(e.message, true); }
    });
  }
}

// ---- playground: draw a digit for MNIST adapters, paste JSON for the rest
async function playground(selected) {
  const m = await api("/v1/models");
  const tuned = m.data.filter((x) => x.kind === "fine-tuned");
  main().innerHTML = `<h2>Playground</h2>
    <label>Model <select id="pg-model">${tuned.map((x) => `<option ${x.id === selected ? "selected" : ""}>${esc(x.id)}</option>`).join("")}</select></label>
    <div id="pg-body"></div>`;
  $("#pg-model").addEventListener("change", () => pgBody($("#pg-model").value));
  if (tuned.length) await pgBody($("#pg-model").value);
  else $("#pg-body").innerHTML = "<p>No fine-tuned models yet.</p>";
}

async function pgBody(id) {
  const model = await api(`/v1/models/${id}`);
  const job = await api(`/v1/fine_tuning/jobs/${model.job_id}`);
  const body = $("#pg-body");
  if (job.task?.type === "mnist") {
    body.innerHTML = `<p>Draw a digit with the mouse or a finger; with the keyboard, arrows move the pen and Space draws.</p>
      <div class="pad"><canvas id="pad" width="28" height="28" tabindex="0" aria-label="drawing pad, 28 by 28 pixels"></canvas>
      <div><div class="actions"><button id="pg-predict">Predict</button><button class="secondary" id="pg-clear">Clear</button></div>
      <div class="bars" id="pg-bars" aria-live="polite"></div></div></div>`;
    const c = $("#pad"), ctx = c.getContext("2d");
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, 28, 28);
    let down = false;
    const dot = (e) => {
      const r = c.getBoundingClientRect();
      const x = ((e.clientX - r.left) / r.width) * 28, y = ((e.clientY - r.top) / r.height) * 28;
      ctx.fillStyle = "#fff"; ctx.beginPath(); ctx.arc(x, y, 1.4, 0, 2 * Math.PI); ctx.fill();
    };
    let cx = 14, cy = 14;
    c.addEventListener("keydown", (e) => {
      const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
      if (moves[e.key]) { cx = Math.min(27, Math.max(0, cx + moves[e.key][0])); cy = Math.min(27, Math.max(0, cy + moves[e.key][1])); e.preventDefault(); }
      if (e.key === " " || moves[e.key] && e.shiftKey) { ctx.fillStyle = "#fff"; ctx.fillRect(cx - 1, cy - 1, 2, 2); e.preventDefault(); }
    });
    c.addEventListener("pointerdown", (e) => { down = true; dot(e); });
    c.addEventListener("pointermove", (e) => { if (down) dot(e); });
    window.addEventListener("pointerup", () => { down = false; });
    $("#pg-clear").addEventListener("click", () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, 28, 28); $("#pg-bars").innerHTML = ""; });
    $("#pg-predict").addEventListener("click", async () => {
      const px = ctx.getImageData(0, 0, 28, 28).data;
      const sample = Array.from({ length: 784 }, (_, i) => px[4 * i]);
      await predict(id, [sample]);
    });
  } else if (job.task?.type === "forecasting") {
    const n = job.task.context_length;
    body.innerHTML = `<p>The series' last ${n} steps (or more) as JSON: a flat array for one channel, <code>[[…], …]</code> (a value per channel) for several.</p>
      <label for="pg-json">Context</label><br><textarea id="pg-json" rows="6" cols="60"></textarea>
      <div class="actions"><button id="pg-predict">Forecast</button></div>
      <div class="chart"><svg id="pg-forecast" viewBox="0 0 400 220" role="img" aria-label="the context and its forecast, first channel"></svg>
      <div class="legend">first channel: context (blue), forecast (orange)</div></div><pre id="pg-out" aria-live="polite"></pre>`;
    $("#pg-predict").addEventListener("click", async () => {
      let context;
      try { context = JSON.parse($("#pg-json").value); } catch (e) { say(e.message, true); return; }
      const d = await predict(id, [context]);
      if (d?.forecast) forecastChart($("#pg-forecast"), context.slice(-n), d.forecast);
    });
  } else {
    body.innerHTML = `<p>One sample as JSON (the form of a dataset record's <code>input</code>).</p>
      <label for="pg-json">Sample</label><br><textarea id="pg-json" rows="6" cols="60"></textarea>
      <div class="actions"><button id="pg-predict">Predict</button></div><pre id="pg-out" aria-live="polite"></pre>`;
    $("#pg-predict").addEventListener("click", async () => {
      try { await predict(id, [JSON.parse($("#pg-json").value)]); } catch (e) { say(e.message, true); }
    });
  }
}

async function predict(id, inputs) {
  try {
    const r = await api("/v1/predictions", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ model: id, inputs }) });
    const d = r.data[0];
    const bars = $("#pg-bars");
    if (bars && d.probabilities) {
      bars.innerHTML = d.probabilities.map((p, k) => `<span>${k}</span><div class="bar" style="width:${(100 * p).toFixed(1)}%" title="${(100 * p).toFixed(1)}%"></div><span class="prob">${(100 * p).toFixed(1)}%</span>`).join("");
    }
    const out = $("#pg-out");
    if (out) out.textContent = JSON.stringify(d, null, 2);
    say(d.label != null ? `Predicted ${d.label}` : "Predicted");
    return d;
  } catch (e) {
    say(e.message, true);
  }
}

// A context (its first channel) and the forecast that follows it, on one axis.
function forecastChart(svg, context, forecast) {
  const first = (step) => (Array.isArray(step) ? step[0] : step);
  const past = context.map(first), future = forecast.map(first);
  const all = past.concat(future), n = all.length;
  const W = 400, H = 220, L = 48, B = 24, T = 8, R = 8;
  const lo = Math.min(...all), hi = Math.max(...all), span = hi - lo || 1;
  const X = (i) => L + (W - L - R) * (i / Math.max(1, n - 1)), Y = (v) => T + (H - T - B) * (1 - (v - lo) / span);
  const line = (values, start, color, cls) =>
    `<polyline class="${cls}" fill="none" stroke="${color}" stroke-width="2" points="${values.map((v, i) => `${X(start + i).toFixed(1)},${Y(v).toFixed(1)}`).join(" ")}"/>`;
  svg.innerHTML = `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#999"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#999"/>
    <text x="${L - 4}" y="${T + 10}" font-size="10" text-anchor="end">${hi.toPrecision(4)}</text><text x="${L - 4}" y="${H - B}" font-size="10" text-anchor="end">${lo.toPrecision(4)}</text>
    <text x="${W - R}" y="${H - 6}" font-size="10" text-anchor="end">step ${n}</text>
    ${line(past, 0, "#2457c5", "context")}${line([past.at(-1)].concat(future), past.length - 1, "#e07a10", "forecast")}`;
}

// ---- the key's project
async function showProject() {
  const el = $("#project");
  try {
    const me = await api("/v1/me");
    el.textContent = `Project: ${me.project.name}`;
    el.title = me.project.id;
    el.className = "project";
  } catch (e) {
    el.textContent = "No project: set a valid API key";
    el.title = e.message;
    el.className = "project error";
  }
}

// ---- start
$("#key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("fpt-key", $("#api-key").value);
  say("API key set for this browser session");
  showProject();
  route();
});
$("#api-key").value = sessionStorage.getItem("fpt-key") || "";
window.addEventListener("hashchange", route);
showProject();
route();
