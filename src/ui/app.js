// fpt dashboard: a small single-page app over the same REST API and keys as every other client.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const main = () => $("#main");
const TASKS = ["mnist", "bit_xor", "bit_memory", "listops", "cifar10", "cifar10_lra", "remote_homology", "sequence_classification", "image_classification", "regression", "multilabel_classification", "forecasting"];
// What the open page started (a stream, a timer): stopped when another page opens. `page`
// counts the pages opened: work of a page left behind (a slow request) draws nothing.
let leaving = [];
let page = 0;
const onLeave = (f) => leaving.push(f);
const current = () => { const mine = page; return () => mine === page; };

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
    const param = body?.error?.param;
    // The message often names its field already (`inputs[0]: …`): said once.
    throw new Error(param && !msg.startsWith(param) ? `${param}: ${msg}` : msg);
  }
  return body;
}

// ---- routing
async function route() {
  for (const f of leaving) f();
  leaving = [];
  page++;
  const [, view, id] = (location.hash || "#/jobs").split("/");
  for (const a of document.querySelectorAll("nav a")) a.removeAttribute("aria-current");
  const nav = $(`#nav-${view === "jobs" || view === "compare" || !view ? "jobs" : view}`);
  if (nav) nav.setAttribute("aria-current", "page");
  try {
    if (view === "jobs" && id) await jobPage(id);
    else if (view === "compare") await comparePage(id);
    else if (view === "files") await filesPage();
    else if (view === "models") await modelsPage();
    else if (view === "playground") await playground(id);
    else await jobsPage();
  } catch (e) {
    main().innerHTML = `<p class="error">${esc(e.message)}</p>`;
  }
}

// ---- jobs
const ACTIVE = ["validating_files", "queued", "running", "paused"];

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
    <div class="actions"><button class="secondary" id="compare" disabled>Compare selected</button></div>
    <div class="table-wrap"><table id="jobs"><thead><tr><th><span class="sr-only">Compare</span></th><th>Job</th><th>Status</th><th>Base model</th><th>Task</th><th>Progress</th><th>Best validation</th><th>Created</th></tr></thead>
    <tbody></tbody></table></div>`;
  $("#job-form").addEventListener("submit", submitJob);
  const picked = new Set();
  const body = $("#jobs tbody");
  const compare = $("#compare");
  body.addEventListener("change", (e) => {
    if (!e.target.classList.contains("pick")) return;
    if (e.target.checked) picked.add(e.target.value); else picked.delete(e.target.value);
    compare.disabled = picked.size < 2;
  });
  compare.addEventListener("click", () => { location.hash = `#/compare/${[...picked].join(",")}`; });
  let shown = "";
  const show = (list) => {
    const html = list.data.map((j) => jobRow(j, picked.has(j.id))).join("") || `<tr><td colspan="8">No jobs yet.</td></tr>`;
    if (html !== shown) { body.innerHTML = html; shown = html; }
  };
  show(jobs);
  // The list follows the jobs' progress while this page is open: a request at a time, 2 s apart.
  const here = current();
  let timer;
  const poll = async () => {
    try { const list = await api("/v1/fine_tuning/jobs?limit=100"); if (here()) show(list); } catch (e) { if (here()) say(e.message, true); }
    if (here()) timer = setTimeout(poll, 2000);
  };
  timer = setTimeout(poll, 2000);
  onLeave(() => clearTimeout(timer));
}

// A metric's value as people read it: fractions that are accuracies or F1 scores as percentages.
function metricText(name, v) {
  if (v == null) return "";
  return /accuracy|f1/.test(name) ? (100 * v).toFixed(1) + "%" : (+v).toPrecision(4);
}

function when(t) {
  return t ? new Date(t * 1000).toLocaleString() : "–";
}

// Seconds left, as people say it.
function etaText(seconds) {
  if (seconds == null || !isFinite(seconds) || seconds < 0) return "";
  const s = Math.round(seconds);
  if (s < 60) return `about ${s} s left`;
  if (s < 3600) return `about ${Math.floor(s / 60)} min ${s % 60} s left`;
  return `about ${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min left`;
}

function jobRow(j, picked) {
  const total = j.hyperparameters?.n_steps || 1;
  const m = j.result?.primary_metric;
  const best = m ? `${esc(m)} ${metricText(m, j.result[`best_valid_${m}`])}` : "";
  const eta = j.status === "running" && j.estimated_finish ? ` <span class="muted">${etaText(j.estimated_finish - Date.now() / 1000)}</span>` : "";
  return `<tr><td><input type="checkbox" class="pick" value="${esc(j.id)}" ${picked ? "checked" : ""} aria-label="compare ${esc(j.id)}"></td>
    <td><a href="#/jobs/${esc(j.id)}">${esc(j.id)}</a></td><td class="status ${esc(j.status)}">${esc(j.status)}</td>
    <td>${esc(j.model)}</td><td>${esc(j.task?.type)}</td>
    <td><progress max="${total}" value="${j.trained_steps}" aria-label="progress"></progress> ${j.trained_steps}/${total}${eta}</td>
    <td>${best}</td><td>${when(j.created_at)}</td></tr>`;
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
      training_file = (await upload(file, "fine-tune")).id;
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

async function upload(file, purpose) {
  const fd = new FormData();
  fd.append("purpose", purpose);
  fd.append("file", file);
  return api("/v1/files", { method: "POST", body: fd });
}

// A download through the API (the key travels in a header, which a plain link cannot send).
async function download(path, name) {
  try {
    const r = await fetch(path, { headers: headers() });
    if (!r.ok) throw new Error((await r.json().catch(() => null))?.error?.message || `${r.status} ${r.statusText}`);
    const url = URL.createObjectURL(await r.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    say(`Downloaded ${name}`);
  } catch (e) { say(e.message, true); }
}

// ---- one job: status, progress and curves live from the event stream
async function jobPage(id) {
  const here = current();
  let job = await api(`/v1/fine_tuning/jobs/${id}`);
  if (!here()) return;
  const total = job.hyperparameters?.n_steps || 1;
  main().innerHTML = `
    <h2>Job ${esc(id)}</h2>
    <p class="job-head">Status: <span id="job-status" class="status ${esc(job.status)}">${esc(job.status)}</span>
      <progress id="job-progress" max="${total}" value="${job.trained_steps}" aria-label="steps trained"></progress>
      <span id="job-steps">${job.trained_steps}/${total} steps</span> <span id="job-eta" class="muted"></span></p>
    <p>Base <b>${esc(job.model)}</b> · task <b>${esc(job.task?.type)}</b> · model <b id="job-model">${esc(job.fine_tuned_model || "–")}</b>
      <button class="secondary" id="job-adapter" hidden>Download adapter</button></p>
    <div class="actions">
      <button class="secondary" data-act="cancel">Cancel</button>
      <button class="secondary" data-act="pause">Pause</button>
      <button class="secondary" data-act="resume">Resume</button>
    </div>
    <div class="charts">
      <figure class="chart"><figcaption>Loss</figcaption><svg id="chart-loss" viewBox="0 0 400 240" role="img" aria-label="loss by step"></svg><div class="legend"><span class="swatch train"></span>train <span class="swatch valid"></span>validation</div></figure>
      <figure class="chart"><figcaption id="acc-title">Accuracy</figcaption><svg id="chart-acc" viewBox="0 0 400 240" role="img" aria-label="primary metric by step"></svg><div class="legend"><span class="swatch train"></span>train <span class="swatch valid"></span>validation</div></figure>
      <figure class="chart" id="trials" hidden><figcaption id="trials-title">Learning-rate search</figcaption><svg id="chart-trials" viewBox="0 0 400 240" role="img" aria-label="each trial's validation metric by step"></svg><div class="legend" id="trials-legend"></div></figure>
    </div>
    <h2>Result</h2><div id="result"><p class="muted">When the job ends.</p></div>
    <h2>Confusion matrix</h2><div id="confusion"><p class="muted">For a classifier, when the job ends: the kept checkpoint on the validation split.</p></div>
    <h2>Details</h2><div id="details"></div>
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
  $("#job-adapter").addEventListener("click", () => download(`/v1/models/${job.fine_tuned_model}/adapter`, `${job.fine_tuned_model}.safetensors`));
  const points = [];
  let streaming = true;
  // The task's primary metric, as its metrics events (or its result) name it.
  const primary = () => points.at(-1)?.primary_metric || job.result?.primary_metric || "accuracy";
  let drawing = 0;
  // At most one drawing a frame: a long job's replayed history does not redraw once per report.
  const draw = () => { if (!drawing) drawing = requestAnimationFrame(() => { drawing = 0; if (here()) drawNow(); }); };
  const drawNow = () => {
    const m = primary();
    const empty = streaming && ACTIVE.includes(job.status) ? "Waiting for the first report…" : "No reports";
    // A learning-rate search's trials (reports with a `trial`) have a chart of their own; an
    // ensemble's later members (reports with a `member`) are told of in words, not drawn.
    const first = points.filter((p) => p.member == null);
    const run = first.filter((p) => p.trial == null);
    chart($("#chart-loss"), run, "train_loss", "valid_loss", { yTitle: "loss", empty: points.length ? "Searching the learning rate…" : empty });
    chart($("#chart-acc"), run, `train_${m}`, `valid_${m}`, { yTitle: m, yMax: /accuracy|f1/.test(m) ? 1 : undefined, empty: points.length ? "Searching the learning rate…" : empty });
    $("#acc-title").textContent = m;
    trials(first, m, job.result?.learning_rate_search?.chosen);
  };
  const progress = (step, steps, eta) => {
    const bar = $("#job-progress");
    if (!here() || !bar) return;
    bar.max = steps;
    bar.value = step;
    $("#job-steps").textContent = `${Number(step)}/${Number(steps)} steps`;
    $("#job-eta").textContent = eta;
  };
  const ended = (j) => {
    if (!here()) return;
    job = j;
    setStatus(j.status);
    progress(j.trained_steps, j.hyperparameters?.n_steps || j.trained_steps, "");
    $("#job-model").textContent = j.fine_tuned_model || "–";
    $("#job-adapter").hidden = !j.fine_tuned_model;
    details(j);
    resultOf(j);
  };
  setStatus(job.status);
  details(job);
  if (!ACTIVE.includes(job.status)) ended(job);
  draw();
  onLeave(stream(`/v1/fine_tuning/jobs/${id}/events?stream=true`, (e) => {
    if (!here()) return;
    const line = document.createElement("div");
    line.textContent = `${new Date(e.created_at * 1000).toLocaleTimeString()} ${e.message}`;
    $("#log")?.appendChild(line);
    if (e.type === "metrics" && e.data) {
      points.push(e.data);
      if (job.status === "queued" || job.status === "validating_files") { job.status = "running"; setStatus("running"); }
      if (!ACTIVE.includes(job.status)) { draw(); return; }
      progress(e.data.step, e.data.total_steps, job.status === "running" ? etaText(e.data.eta_seconds) : "");
      if (e.data.trial != null) $("#job-eta").textContent = `learning-rate search: trial ${e.data.trial + 1} (lr ${e.data.learning_rate})`;
      if (e.data.member != null) $("#job-eta").textContent = `ensemble member ${e.data.member + 1} of ${job.hyperparameters?.ensemble}: ${$("#job-eta").textContent}`;
      draw();
    } else if (e.data?.status && ACTIVE.includes(job.status)) {
      // Lifecycle events replayed for an ended job do not bring its buttons back.
      job.status = e.data.status;
      setStatus(e.data.status);
      if (e.data.status !== "running") $("#job-eta").textContent = "";
    } else if (e.data?.parameters) {
      const p = e.data.parameters;
      $("#params").textContent = `${p.trained.toLocaleString()} trained of ${p.total.toLocaleString()} (${(100 * p.trained_fraction).toFixed(3)}%) in ${p.trained_tensors} tensors`;
    }
  }, async () => {
    streaming = false;
    const j = await api(`/v1/fine_tuning/jobs/${id}`);
    if (!here()) return;
    ended(j);
    draw();
    await checkpoints(id, primary());
  }));
  await checkpoints(id, primary());
}

function setStatus(s) {
  const el = $("#job-status");
  if (el) { el.textContent = s; el.className = `status ${s}`; }
  // Only what the job's state allows.
  const allowed = { cancel: ACTIVE.includes(s), pause: s === "queued" || s === "running", resume: s === "paused" };
  for (const b of document.querySelectorAll("button[data-act]")) if (b.dataset.act in allowed) b.disabled = !allowed[b.dataset.act];
}

// What the job is: its task as resolved, hyperparameters, switches, files and times.
function details(j) {
  const el = $("#details");
  if (!el) return;
  const inferred = j.inferred?.task ? " (inferred from the training file)" : "";
  const auto = (j.inferred?.hyperparameters || []).length ? ` (auto: ${j.inferred.hyperparameters.map(esc).join(", ")})` : "";
  const rows = (o) => Object.entries(o || {}).map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(typeof v === "object" ? JSON.stringify(v) : v)}</td></tr>`).join("");
  const file = (label, fid, name) => fid ? `<li>${label}: <code>${esc(fid)}</code> <button class="secondary small" data-file="${esc(fid)}" data-name="${esc(name)}">Download</button></li>` : "";
  el.innerHTML = `
    <p>Task${inferred}: <code id="job-task">${esc(JSON.stringify(j.task))}</code></p>
    <div class="cols">
      <div><h3>Hyperparameters${auto}</h3><table class="kv" id="job-hyper">${rows(j.hyperparameters)}</table></div>
      <div><h3>Freeze switches</h3><table class="kv">${rows(j.method?.fpt)}</table></div>
      <div><h3>Times</h3><table class="kv">
        <tr><th>created</th><td>${when(j.created_at)}</td></tr><tr><th>started</th><td>${when(j.started_at)}</td></tr>
        <tr><th>finished</th><td>${when(j.finished_at)}</td></tr>${j.estimated_finish ? `<tr><th>estimated finish</th><td>${when(j.estimated_finish)}</td></tr>` : ""}
        <tr><th>seed</th><td>${esc(j.seed)}</td></tr></table>
        <h3>Files</h3><ul class="files">${file("training", j.training_file, `${j.id}-training`)}${file("validation", j.validation_file, `${j.id}-validation`)}
        ${(j.result_files || []).map((f) => file("results (CSV)", f, `${j.id}-results.csv`)).join("")}</ul></div>
    </div>`;
  for (const b of el.querySelectorAll("[data-file]")) b.addEventListener("click", () => download(`/v1/files/${b.dataset.file}/content`, b.dataset.name));
}

// The final metrics of an ended job, and a classifier's confusion matrix.
function resultOf(j) {
  const r = j.result || {};
  const el = $("#result");
  if (el) {
    const metrics = Object.entries(r).filter(([k, v]) => typeof v === "number" && /^(train|valid|test|best_valid|trivial_valid|trivial_test)_/.test(k));
    el.innerHTML = j.error ? `<p class="error">${esc(j.error.code)}: ${esc(j.error.message)}</p>` : "";
    if (metrics.length) {
      el.innerHTML += `<table class="kv" id="job-result">${metrics.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${metricText(k, v)}</td></tr>`).join("")}</table>`;
      if (r.warning) el.innerHTML += `<p class="error">${esc(r.warning)}</p>`;
      if (r.protocol) el.innerHTML += `<p class="muted" id="job-protocol">Reported on the ${esc(r.protocol.reported_split)} split, at the checkpoint chosen on validation (${esc(r.protocol.validation)}).</p>`;
      if (r.learning_rate_search?.chosen != null) el.innerHTML += `<p id="job-chosen-lr">Learning rate chosen by the search: <b>${esc(r.learning_rate_search.chosen)}</b></p>`;
    } else if (!j.error) el.innerHTML = `<p class="muted">No result: the job ${esc(j.status)}.</p>`;
  }
  const c = $("#confusion");
  if (c && r.confusion) c.innerHTML = confusionTable(r.confusion, r.best_step);
  else if (c) c.innerHTML = `<p class="muted">None: ${r.primary_metric && r.primary_metric !== "accuracy" ? "not a classifier" : "no result"}.</p>`;
}

function confusionTable(c, step) {
  const caption = `${c.split === "valid" ? "Validation" : "Test"} split, the checkpoint kept${step != null ? ` (step ${step})` : ""}`;
  if (c.matrix) {
    const max = Math.max(1, ...c.matrix.flat());
    const head = c.labels.map((l) => `<th scope="col">${esc(l)}</th>`).join("");
    const body = c.matrix.map((row, t) => `<tr><th scope="row">${esc(c.labels[t])}</th>${row.map((n, p) =>
      `<td class="${t === p ? "diag" : ""}" style="background: rgba(36, 87, 197, ${(0.85 * n / max).toFixed(3)}); color: ${n / max > 0.55 ? "#fff" : "inherit"}">${n}</td>`).join("")}
      <td class="muted">${metricText("accuracy", c.per_class_accuracy?.[t])}</td></tr>`).join("");
    return `<div class="table-wrap"><table class="confusion" id="confusion-matrix"><caption>${caption}: rows are the true class, columns the predicted one</caption>
      <thead><tr><th>true \\ predicted</th>${head}<th>accuracy</th></tr></thead><tbody>${body}</tbody></table></div>`;
  }
  const list = (title, rows) => `<div><h3>${title}</h3><table class="kv">${rows.map((x) => `<tr><th>${esc(x.label)}</th><td>${metricText("accuracy", x.accuracy)} of ${x.rows}</td></tr>`).join("")}</table></div>`;
  return `<p>${caption}; ${Number(c.classes)} classes, too many for a matrix: the classes predicted best and worst.</p>
    <div class="cols" id="confusion-extremes">${list("Best", c.best)}${list("Worst", c.worst)}</div>`;
}

async function checkpoints(id, metric) {
  const c = await api(`/v1/fine_tuning/jobs/${id}/checkpoints?limit=100`);
  const head = $("#ckpt-metric");
  if (head) head.textContent = `Validation ${metric}`;
  const body = $("#ckpts");
  if (body) body.innerHTML = c.data.map((k) => `<tr><td>${k.step_number}</td><td>${esc(k.fine_tuned_model_checkpoint)}</td><td>${metricText(metric, k.metrics?.[`valid_${metric}`])}</td></tr>`).join("");
}

// Server-Sent Events over fetch, so the API key travels in a header (EventSource cannot send one).
// A stream cut short (the server restarting) is taken up again from its last event.
function stream(path, onEvent, onDone) {
  const ctl = new AbortController();
  let last = null;
  const once = async () => {
    const r = await fetch(path, { headers: headers(last ? { "Last-Event-ID": last } : {}), signal: ctl.signal });
    if (!r.ok) {
      const body = await r.json().catch(() => null);
      throw new Error(body?.error?.message || `the event stream: ${r.status} ${r.statusText}`);
    }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const chunk = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const lines = chunk.split("\n");
        const id = lines.find((l) => l.startsWith("id: "));
        if (id) last = id.slice(4);
        const data = lines.filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (!data) continue;
        if (data === "[DONE]") { await onDone(); return true; }
        onEvent(JSON.parse(data));
      }
    }
  };
  (async () => {
    for (let tries = 0; tries < 30; tries++) {
      if (await once()) return;
      await new Promise((ok) => setTimeout(ok, 1000));
    }
    say("The event stream keeps ending: reload the page to follow the job", true);
  })().catch((e) => { if (e.name !== "AbortError") say(e.message, true); });
  return () => ctl.abort();
}

// Round numbers from lo to hi for an axis, about n of them.
function ticks(lo, hi, n = 5) {
  if (!(hi > lo)) hi = lo + 1;
  const raw = (hi - lo) / n, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw * 0.999);
  const out = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function tickText(v) {
  if (Math.abs(v) >= 10000) return v.toExponential(0);
  return String(+v.toPrecision(3));
}

// A line chart with axes, ticks and titles. `series`: [{points: [[x, y]…], color, cls}]; every
// point is also a dot, so a single evaluation shows.
function plot(svg, series, { xTitle = "step", yTitle = "", yMax, empty = "No data" } = {}) {
  if (!svg) return;
  const W = 400, H = 240, L = 52, B = 40, T = 10, R = 12;
  const all = series.flatMap((s) => s.points).filter(([x, y]) => y != null && isFinite(y));
  if (!all.length) {
    svg.innerHTML = `<text class="empty" x="${W / 2}" y="${H / 2}" text-anchor="middle" font-size="13" fill="#5d6778">${esc(empty)}</text>`;
    return;
  }
  const ys = all.map(([, y]) => y);
  const lo = Math.min(0, ...ys), hi = yMax ?? Math.max(...ys, lo + 1e-9);
  const xt = ticks(0, Math.max(1, ...all.map(([x]) => x)), 5), yt = ticks(lo, hi, 5);
  const x0 = 0, x1 = xt.at(-1), y0 = Math.min(lo, yt[0]), y1 = Math.max(hi, yt.at(-1));
  const X = (x) => L + (W - L - R) * ((x - x0) / (x1 - x0 || 1)), Y = (y) => T + (H - T - B) * (1 - (y - y0) / (y1 - y0 || 1));
  const grid = yt.map((v) => `<line x1="${L}" x2="${W - R}" y1="${Y(v).toFixed(1)}" y2="${Y(v).toFixed(1)}" stroke="#eef0f4"/>
      <text x="${L - 5}" y="${(Y(v) + 3).toFixed(1)}" font-size="10" text-anchor="end">${tickText(v)}</text>`).join("")
    + xt.map((v) => `<line x1="${X(v).toFixed(1)}" x2="${X(v).toFixed(1)}" y1="${H - B}" y2="${H - B + 4}" stroke="#999"/>
      <text x="${X(v).toFixed(1)}" y="${H - B + 15}" font-size="10" text-anchor="middle">${tickText(v)}</text>`).join("");
  const lines = series.map((s) => {
    const pts = s.points.filter(([, y]) => y != null && isFinite(y));
    if (!pts.length) return "";
    const xy = pts.map(([x, y]) => `${X(x).toFixed(1)},${Y(y).toFixed(1)}`);
    const dots = pts.length <= 60 ? pts.map(([x, y]) => `<circle class="${s.cls}" cx="${X(x).toFixed(1)}" cy="${Y(y).toFixed(1)}" r="2.5" fill="${s.color}"/>`).join("") : "";
    return `<polyline class="${s.cls}" fill="none" stroke="${s.color}" stroke-width="2" points="${xy.join(" ")}"/>${dots}`;
  }).join("");
  svg.innerHTML = `${grid}<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#999"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#999"/>
    <text class="x-title" x="${(L + W - R) / 2}" y="${H - 6}" font-size="11" text-anchor="middle">${esc(xTitle)}</text>
    <text class="y-title" transform="translate(12 ${(T + H - B) / 2}) rotate(-90)" font-size="11" text-anchor="middle">${esc(yTitle)}</text>${lines}`;
}

const TRAIN = "#2457c5", VALID = "#e07a10";

// One validation curve per learning-rate trial, labelled by its rate; the chosen one bold.
function trials(points, metric, chosen) {
  const fig = $("#trials");
  if (!fig) return;
  const byTrial = new Map();
  for (const p of points) if (p.trial != null) {
    if (!byTrial.has(p.trial)) byTrial.set(p.trial, { lr: p.learning_rate, points: [] });
    if (p[`valid_${metric}`] != null) byTrial.get(p.trial).points.push([p.step, p[`valid_${metric}`]]);
  }
  fig.hidden = !byTrial.size;
  if (!byTrial.size) return;
  const ordered = [...byTrial.entries()].sort((a, b) => a[0] - b[0]);
  const series = ordered.map(([t, s]) => ({ points: s.points, color: PALETTE[t % PALETTE.length], cls: `trial${s.lr === chosen ? " chosen" : ""}` }));
  plot($("#chart-trials"), series, { yTitle: `validation ${metric}`, yMax: /accuracy|f1/.test(metric) ? 1 : undefined, empty: "No evaluations yet" });
  $("#trials-title").textContent = chosen != null ? `Learning-rate search: chose ${chosen}` : "Learning-rate search";
  $("#trials-legend").innerHTML = ordered.map(([t, s]) =>
    `<span class="swatch" style="background:${PALETTE[t % PALETTE.length]}"></span>lr ${esc(s.lr)}${s.lr === chosen ? " (chosen)" : ""}`).join(" ");
}

function chart(svg, points, a, b, opts) {
  const series = (key, color, cls) => ({ points: points.filter((p) => p[key] != null).map((p) => [p.step, p[key]]), color, cls });
  plot(svg, [series(a, TRAIN, "train"), series(b, VALID, "valid")], opts);
}

// ---- compare: several jobs' curves on one axis, and their final metrics side by side
const PALETTE = ["#2457c5", "#e07a10", "#1e7b34", "#b3261e", "#7b3fb3", "#0f8a8a", "#8a6d0f", "#c2185b"];

async function metricsOf(id) {
  // Every metrics report, oldest first (the list answers newest first, a page at a time).
  const out = [];
  let after = "";
  for (let page = 0; page < 50; page++) {
    const r = await api(`/v1/fine_tuning/jobs/${id}/events?limit=1000${after ? `&after=${after}` : ""}`);
    out.push(...r.data.filter((e) => e.type === "metrics" && e.data).map((e) => e.data));
    if (!r.has_more || !r.data.length) break;
    after = r.data.at(-1).id;
  }
  return out.reverse();
}

async function comparePage(ids) {
  const here = current();
  const list = (ids || "").split(",").filter(Boolean);
  if (list.length < 2) { main().innerHTML = `<p>Select two or more jobs on the <a href="#/jobs">jobs page</a> to compare them.</p>`; return; }
  main().innerHTML = `<h2>Compare ${list.length} jobs</h2><p class="muted" id="compare-loading">Loading…</p>`;
  const runs = await Promise.all(list.map(async (id) => ({ job: await api(`/v1/fine_tuning/jobs/${id}`), points: await metricsOf(id) })));
  if (!here()) return;
  const primaries = [...new Set(runs.map((r) => r.points.at(-1)?.primary_metric || r.job.result?.primary_metric || "accuracy"))];
  const m = primaries.length === 1 ? primaries[0] : null;
  const legend = runs.map((r, i) => `<span class="swatch" style="background:${PALETTE[i % PALETTE.length]}"></span>${esc(r.job.id)}`).join(" ");
  main().innerHTML = `<h2>Compare ${runs.length} jobs</h2>
    <div class="charts">
      <figure class="chart"><figcaption>Validation ${esc(m || "primary metric")}</figcaption><svg id="compare-metric" viewBox="0 0 400 240" role="img" aria-label="validation metric by step, one line per job"></svg><div class="legend">${legend}</div></figure>
      <figure class="chart"><figcaption>Training loss</figcaption><svg id="compare-loss" viewBox="0 0 400 240" role="img" aria-label="training loss by step, one line per job"></svg><div class="legend">${legend}</div></figure>
    </div>
    <h2>Final metrics</h2>
    <div class="table-wrap"><table id="compare-table"><thead><tr><th>Job</th><th>Status</th><th>Task</th><th>Base</th><th>Learning rate</th><th>Steps</th><th>Primary metric</th><th>Best validation</th><th>Validation loss</th><th>Training loss</th><th>Test</th></tr></thead><tbody>
    ${runs.map(({ job: j }, i) => {
      const r = j.result || {}, pm = r.primary_metric || "accuracy";
      return `<tr><td><span class="swatch" style="background:${PALETTE[i % PALETTE.length]}"></span><a href="#/jobs/${esc(j.id)}">${esc(j.id)}</a></td>
        <td class="status ${esc(j.status)}">${esc(j.status)}</td><td>${esc(j.task?.type)}</td><td>${esc(j.model)}</td>
        <td>${esc(j.hyperparameters?.learning_rate)}</td><td>${j.trained_steps}</td><td>${esc(pm)}</td>
        <td>${metricText(pm, r[`best_valid_${pm}`])}</td><td>${metricText("loss", r.valid_loss)}</td><td>${metricText("loss", r.train_loss)}</td>
        <td>${metricText(pm, r[`test_${pm}`])}</td></tr>`;
    }).join("")}</tbody></table></div>`;
  const series = (key) => runs.map((r, i) => {
    const k = key === "valid" ? `valid_${r.points.at(-1)?.primary_metric || "accuracy"}` : "train_loss";
    return { points: r.points.filter((p) => p[k] != null).map((p) => [p.step, p[k]]), color: PALETTE[i % PALETTE.length], cls: `run run-${i}` };
  });
  plot($("#compare-metric"), series("valid"), { yTitle: m ? `validation ${m}` : "validation (each job's primary metric)", yMax: m && /accuracy|f1/.test(m) ? 1 : undefined, empty: "No evaluations" });
  plot($("#compare-loss"), series("train"), { yTitle: "training loss", empty: "No reports" });
}

// ---- files: the project's datasets, uploaded and deleted here
async function filesPage() {
  const f = await api("/v1/files?limit=1000");
  main().innerHTML = `<h2>Upload a file</h2>
    <form id="upload-form" class="grid">
      <label>File <input id="u-file" type="file" required></label>
      <label>Purpose <select id="u-purpose"><option value="fine-tune">fine-tune (training or validation data)</option><option value="batch">batch (prediction requests)</option></select></label>
      <button type="submit" id="u-submit">Upload</button>
    </form>
    <p id="u-error" class="error" role="alert"></p>
    <h2>Files</h2>
    <div class="table-wrap"><table id="files"><thead><tr><th>File</th><th>Name</th><th>Purpose</th><th>Format</th><th>Samples</th><th>Size</th><th>Created</th><th></th></tr></thead><tbody>
    ${f.data.map((x) => `<tr><td><code>${esc(x.id)}</code></td><td>${esc(x.filename)}</td><td>${esc(x.purpose)}</td><td>${esc(x.format)}</td><td>${esc(x.samples ?? "")}</td>
      <td>${(x.bytes / 1024).toFixed(1)} KiB</td><td>${when(x.created_at)}</td>
      <td><button class="secondary small" data-download="${esc(x.id)}" data-name="${esc(x.filename)}">Download</button> <button class="secondary small" data-delete="${esc(x.id)}">Delete</button></td></tr>`).join("") || `<tr><td colspan="8">No files yet.</td></tr>`}
    </tbody></table></div>`;
  $("#upload-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = $("#u-file").files[0];
    $("#u-error").textContent = "";
    $("#u-submit").disabled = true;
    try {
      const made = await upload(file, $("#u-purpose").value);
      say(`Uploaded ${made.filename}: ${made.samples ?? "?"} samples (${made.format})`);
      await filesPage();
    } catch (err) {
      $("#u-error").textContent = err.message;
      $("#u-submit").disabled = false;
    }
  });
  for (const b of document.querySelectorAll("[data-download]")) b.addEventListener("click", () => download(`/v1/files/${b.dataset.download}/content`, b.dataset.name));
  for (const b of document.querySelectorAll("[data-delete]")) {
    b.addEventListener("click", async () => {
      try { await api(`/v1/files/${b.dataset.delete}`, { method: "DELETE" }); say(`Deleted ${b.dataset.delete}`); await filesPage(); }
      catch (e) { say(e.message, true); }
    });
  }
}

// ---- models
async function modelsPage() {
  const m = await api("/v1/models");
  main().innerHTML = `<h2>Models</h2><div class="table-wrap"><table id="models"><thead><tr><th>Model</th><th>Kind</th><th>Base</th><th>Loaded</th><th></th></tr></thead><tbody>
    ${m.data.map((x) => `<tr><td>${esc(x.id)}</td><td>${esc(x.kind)}</td><td>${esc(x.base_model || x.arch || "")}</td><td>${x.loaded ? "yes" : "no"}</td>
      <td>${x.kind === "fine-tuned" ? `<button class="secondary small" data-id="${esc(x.id)}" data-act="${x.loaded ? "unload" : "load"}">${x.loaded ? "Unload" : "Load"}</button>
        <button class="secondary small" data-adapter="${esc(x.id)}">Download adapter</button>
        <button class="secondary small" data-remove="${esc(x.id)}">Delete</button> <a href="#/playground/${esc(x.id)}">Try</a>` : ""}</td></tr>`).join("")}
    </tbody></table></div>`;
  for (const b of document.querySelectorAll("[data-act]")) {
    b.addEventListener("click", async () => {
      try { await api(`/v1/models/${b.dataset.id}/${b.dataset.act}`, { method: "POST" }); await modelsPage(); }
      catch (e) { say(e.message, true); }
    });
  }
  for (const b of document.querySelectorAll("[data-adapter]")) b.addEventListener("click", () => download(`/v1/models/${b.dataset.adapter}/adapter`, `${b.dataset.adapter}.safetensors`));
  for (const b of document.querySelectorAll("[data-remove]")) {
    b.addEventListener("click", async () => {
      try { await api(`/v1/models/${b.dataset.remove}`, { method: "DELETE" }); say(`Deleted ${b.dataset.remove}`); await modelsPage(); }
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
      <p id="pg-error" class="error" role="alert"></p><div class="bars" id="pg-bars" aria-live="polite"></div></div></div>`;
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
    $("#pg-clear").addEventListener("click", () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, 28, 28); clearAnswer(); });
    $("#pg-predict").addEventListener("click", async () => {
      const px = ctx.getImageData(0, 0, 28, 28).data;
      const sample = Array.from({ length: 784 }, (_, i) => px[4 * i]);
      await predict(id, [sample]);
    });
  } else if (job.task?.type === "forecasting") {
    const n = job.task.context_length;
    body.innerHTML = `<p>The series' last ${n} steps (or more) as JSON: a flat array for one channel, <code>[[…], …]</code> (a value per channel) for several.</p>
      <label for="pg-json">Context</label><br><textarea id="pg-json" rows="6" cols="60" aria-describedby="pg-error"></textarea>
      <p id="pg-error" class="error" role="alert"></p>
      <div class="actions"><button id="pg-predict">Forecast</button></div>
      <div class="chart"><svg id="pg-forecast" viewBox="0 0 400 220" role="img" aria-label="the context and its forecast, first channel"></svg>
      <div class="legend">first channel: context (blue), forecast (orange)</div></div><pre id="pg-out" aria-live="polite"></pre>`;
    $("#pg-predict").addEventListener("click", async () => {
      const context = sampleFromText();
      if (context === undefined) return;
      const d = await predict(id, [context]);
      if (d?.forecast) forecastChart($("#pg-forecast"), context.slice(-n), d.forecast);
    });
  } else {
    body.innerHTML = `<p>One sample as JSON (the form of a dataset record's <code>input</code>).</p>
      <label for="pg-json">Sample</label><br><textarea id="pg-json" rows="6" cols="60" aria-describedby="pg-error"></textarea>
      <p id="pg-error" class="error" role="alert"></p>
      <div class="actions"><button id="pg-predict">Predict</button></div><pre id="pg-out" aria-live="polite"></pre>`;
    $("#pg-predict").addEventListener("click", async () => {
      const sample = sampleFromText();
      if (sample !== undefined) await predict(id, [sample]);
    });
  }
}

// The playground's sample, parsed; undefined (and said next to it) when it is not JSON.
function sampleFromText() {
  clearAnswer();
  try { return JSON.parse($("#pg-json").value); } catch (e) { $("#pg-error").textContent = `Not JSON: ${e.message}`; return undefined; }
}

// No answer on screen: the last one (or its error) goes before the next is asked for.
function clearAnswer() {
  for (const sel of ["#pg-bars", "#pg-forecast"]) { const el = $(sel); if (el) el.innerHTML = ""; }
  for (const sel of ["#pg-out", "#pg-error"]) { const el = $(sel); if (el) el.textContent = ""; }
}

async function predict(id, inputs) {
  clearAnswer();
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
    // Said once, next to the input it is about; the footer keeps to the page's own news.
    $("#pg-error").textContent = e.message;
    say("");
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
