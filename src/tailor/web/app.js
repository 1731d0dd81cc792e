// tailor's dashboard: plain JavaScript over the server's public API (/v1/models, /v1/files,
// /v1/fine_tuning/jobs, /v1/chat/completions, /v1/evals) plus the two documented /v1/tailor extensions
// (a file's full check report, one example with its trained tokens). Nothing is fetched from
// anywhere else. The API key lives in sessionStorage and only ever travels as a Bearer header.
"use strict";

const KEY = "tailor.api_key";
const FINAL = ["succeeded", "failed", "cancelled"];
const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);
const state = { models: [], files: [], jobTimer: null, listTimer: null, jobId: null };

// ---- HTTP ---------------------------------------------------------------------------------

class Locked extends Error {}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = sessionStorage.getItem(KEY);
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function api(path, opts) {
  opts = opts || {};
  let res;
  try {
    res = await fetch(path, Object.assign({}, opts, { headers: headers(opts.headers) }));
  } catch (e) {
    throw new Error("The server did not answer (" + e.message + "). Is tailor serve still running?");
  }
  if (res.status === 401) {
    lock(sessionStorage.getItem(KEY) ? "The server refused the key (401). Enter the key given to tailor serve --api-key." : "");
    throw new Locked();
  }
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try { const body = await res.json(); if (body.error && body.error.message) msg = body.error.message + " (" + res.status + ")"; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return opts.raw ? res : res.json();
}

const getJSON = (path) => api(path);
const postJSON = (path, body) => api(path, { method: "POST", body: JSON.stringify(body || {}), headers: { "Content-Type": "application/json" } });

// ---- small DOM helpers --------------------------------------------------------------------

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : String(k == null ? "" : k));
  return e;
}

function say(id, text, kind) { const m = $(id); m.textContent = text || ""; m.className = "msg" + (kind ? " " + kind : ""); }
function fail(id, e) { if (!(e instanceof Locked)) say(id, e.message, "error"); }
function when(t) { return t ? new Date(t * 1000).toLocaleString() : "—"; }
function span(seconds) {
  if (seconds == null || !isFinite(seconds) || seconds < 0) return "—";
  seconds = Math.round(seconds);
  const h = Math.floor(seconds / 3600), m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
}
function counts(dl, pairs) {
  dl.replaceChildren(...pairs.filter((p) => p[1] != null).map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, v))));
}
function fillSelect(sel, items, keep, blank) {
  const prev = keep ? sel.value : null;
  sel.replaceChildren(...(blank ? [el("option", { value: "" }, blank)] : []), ...items.map(([v, t]) => el("option", { value: v }, t)));
  if (prev && items.some(([v]) => v === prev)) sel.value = prev;
}

// ---- key gate and start -------------------------------------------------------------------

function lock(message) {
  document.body.classList.add("locked");
  $("gate").hidden = false;
  $("forget").hidden = true;
  say("gate-msg", message, message ? "error" : "");
  stopTimers();
}

async function boot() {
  try {
    const models = await getJSON("/v1/models");
    state.models = models.data;
  } catch (e) {
    if (!(e instanceof Locked)) $("banner").textContent = "Could not load the model list: " + e.message;
    return;
  }
  document.body.classList.remove("locked");
  $("gate").hidden = true;
  $("forget").hidden = !sessionStorage.getItem(KEY);
  $("banner").textContent = "";
  fillModelPickers();
  await loadFiles();
  route();
}

$("gate-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $("gate-key").value.trim());
  $("gate-key").value = "";
  say("gate-msg", "Checking the key…", "busy");
  boot();
});
$("forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); lock(""); });

function fillModelPickers() {
  const ids = state.models.map((m) => m.id);
  const bases = ids.filter((id) => !id.startsWith("ft:"));
  const tuned = ids.filter((id) => id.startsWith("ft:") && !id.includes(":ckpt-step-"));
  fillSelect($("data-model"), ids.map((id) => [id, id]), true, "(none: no token counts)");
  fillSelect($("job-model"), ids.map((id) => [id, id]), true);
  for (const [sel, pick] of [[$("play-a"), bases[0]], [$("play-b"), tuned[tuned.length - 1] || bases[1] || bases[0]]]) {
    fillSelect(sel, ids.map((id) => [id, id]), true);
    if (!sel.dataset.picked && pick) sel.value = pick;  // until the user picks, follow the newest fine-tune
  }
}

async function loadFiles() {
  try {
    state.files = (await getJSON("/v1/files?purpose=fine-tune")).data;
  } catch (e) {
    if (e instanceof Locked) throw e;
    state.files = [];
    say("data-msg", "Files are not available: " + e.message, "error");
  }
  const label = (f) => f.filename + " · " + f.id + " · " + f.status;
  fillSelect($("data-file"), state.files.map((f) => [f.id, label(f)]), true, "(none yet)");
  const ok = state.files.filter((f) => f.status === "processed").map((f) => [f.id, f.filename + " · " + f.id]);
  fillSelect($("job-train"), ok, true);
  fillSelect($("job-val"), ok, true, "(none)");
}

// ---- routing ------------------------------------------------------------------------------

function stopTimers() { clearTimeout(state.jobTimer); clearTimeout(state.listTimer); state.jobId = null; state.evalId = null; }

function route() {
  if (document.body.classList.contains("locked")) return;
  stopTimers();
  const [name, arg] = (location.hash.slice(1) || "data").split("=");
  const tab = ["job", "eval"].includes(name) ? name : ["data", "jobs", "play", "evals"].includes(name) ? name : "data";
  document.querySelectorAll("[data-section]").forEach((s) => { s.hidden = s.dataset.section !== tab; });
  const navTab = { job: "jobs", eval: "evals" }[tab] || tab;
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.tab === navTab));
  if (tab === "evals") refreshEvals();
  if (tab === "eval") openEval(decodeURIComponent(arg || ""));
  if (tab === "jobs") refreshJobs();
  if (tab === "job") openJob(decodeURIComponent(arg || ""));
  if (tab === "play") openPlayground(arg ? decodeURIComponent(arg) : null);
}

// The model list again (a job that just succeeded serves a new model), then the pair to compare.
async function openPlayground(pick) {
  try { state.models = (await getJSON("/v1/models")).data; fillModelPickers(); } catch (e) { fail("out-a-msg", e); }
  if (pick) choose($("play-b"), pick);
  showCode();
}
window.addEventListener("hashchange", route);

function choose(sel, value) {
  if (![...sel.options].some((o) => o.value === value)) sel.append(el("option", { value }, value));
  sel.value = value;
}

// ---- data ---------------------------------------------------------------------------------

const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
drop.addEventListener("drop", (ev) => { ev.preventDefault(); if (ev.dataTransfer.files[0]) upload(ev.dataTransfer.files[0]); });
$("pick").addEventListener("change", (ev) => { if (ev.target.files[0]) upload(ev.target.files[0]); ev.target.value = ""; });
$("data-check").addEventListener("click", () => checkFile($("data-file").value));
$("data-file").addEventListener("change", () => checkFile($("data-file").value));
$("show-btn").addEventListener("click", showExample);

async function upload(file) {
  say("data-msg", "Uploading " + file.name + " (" + file.size + " bytes)…", "busy");
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file, file.name);
  try {
    const f = await api("/v1/files", { method: "POST", body: form });
    await loadFiles();
    $("data-file").value = f.id;
    await checkFile(f.id, f);
  } catch (e) { fail("data-msg", e); }
}

async function checkFile(fid, uploaded) {
  if (!fid) { say("data-msg", "Upload or pick a file first."); return; }
  const model = $("data-model").value, maxlen = $("data-maxlen").value;
  say("data-msg", "Checking" + (model ? " and counting tokens with " + model : "") + "…", "busy");
  const q = new URLSearchParams();
  if (model) q.set("model", model);
  if (maxlen) q.set("max_length", maxlen);
  try {
    const r = await getJSON("/v1/tailor/files/" + encodeURIComponent(fid) + "/check?" + q);
    renderReport(r);
    const verdict = r.errors ? r.errors + " error(s): this file cannot train until they are fixed." : "The file is ready to train on.";
    say("data-msg", (uploaded ? "Uploaded as " + fid + ". " : "") + verdict, r.errors ? "error" : "");
  } catch (e) { fail("data-msg", e); }
}

function renderReport(r) {
  $("report").hidden = false;
  $("report-title").textContent = r.file + " — " + r.errors + " error(s), " + r.warnings + " warning(s)";
  const pairs = [["Format", r.format_name || "unknown"], ["Valid examples", r.examples + " of " + r.lines + " line(s)"],
    ["Errors", r.errors], ["Warnings", r.warnings], ["Epochs with auto", r.epochs_auto]];
  const t = r.tokens;
  if (t) {
    pairs.push(["Tokens per example", "min " + t.per_example.min + " / median " + t.per_example.median + " / p95 " + t.per_example.p95.toFixed(0) + " / max " + t.per_example.max]);
    pairs.push(["Tokens total", t.total], ["Trained tokens", t.trained + " (" + (100 * t.trained / Math.max(1, t.total)).toFixed(1) + "%)"]);
    if (t.max_length) pairs.push(["Over max_length " + t.max_length, t.over_max_length + (t.over_max_length ? " (" + t.over_max_length_action + ")" : "")]);
  } else {
    pairs.push(["Tokens", "pick a model to count them"]);
  }
  if (r.template_warning) pairs.push(["Template", r.template_warning]);
  counts($("report-counts"), pairs);
  const rows = r.problems.map((p) => el("tr", { class: p.severity }, el("td", {}, p.line || "file"), el("td", {}, p.severity),
    el("td", {}, el("code", {}, p.path || "—")), el("td", {}, p.message + " [" + p.kind + "]"), el("td", {}, p.fix)));
  $("problems").tBodies[0].replaceChildren(...rows);
  $("problems").hidden = !rows.length;
  $("report-none").hidden = !!rows.length;
  $("show-index").max = Math.max(0, r.examples - 1);
  $("example").replaceChildren();
  $("show-legend").hidden = true;
  say("show-msg", r.examples ? "" : "No valid example to show.");
}

async function showExample() {
  const fid = $("data-file").value, model = $("data-model").value || (state.models[0] || {}).id;
  if (!fid || !model) { say("show-msg", "Pick a file and a model first."); return; }
  say("show-msg", "Rendering with " + model + "'s chat template…", "busy");
  try {
    const q = new URLSearchParams({ model, index: $("show-index").value || "0" });
    const r = await getJSON("/v1/tailor/files/" + encodeURIComponent(fid) + "/show?" + q);
    $("example").replaceChildren(...r.segments.map((s) => s.trained ? el("mark", {}, s.text) : document.createTextNode(s.text)));
    $("show-legend").hidden = false;
    say("show-msg", "Line " + r.line + ": " + r.tokens + " tokens, " + r.trained_tokens + " trained (rendered with " + model + ")." +
      (r.lost_tool_calls ? " Warning: the template drops " + r.lost_tool_calls + " tool call(s)." : ""));
  } catch (e) { fail("show-msg", e); }
}

// ---- jobs list and create -----------------------------------------------------------------

async function refreshJobs() {
  try {
    const jobs = (await getJSON("/v1/fine_tuning/jobs?limit=100")).data;
    const now = Date.now() / 1000;
    $("jobs").tBodies[0].replaceChildren(...jobs.map((j) => el("tr", { "data-job": j.id, onclick: () => { location.hash = "job=" + j.id; } },
      el("td", {}, el("a", { href: "#job=" + j.id }, j.id)), el("td", {}, el("span", { class: "badge " + j.status }, j.status)),
      el("td", {}, j.model), el("td", {}, when(j.created_at)), el("td", {}, span((j.finished_at || now) - j.created_at)),
      el("td", {}, j.fine_tuned_model || "—"))));
    say("jobs-msg", jobs.length ? "" : "No jobs yet. Upload a file on the Data tab, then create one above.");
  } catch (e) { fail("jobs-msg", e); return; }
  state.listTimer = setTimeout(refreshJobs, 3000);
}

function hyper(id) {
  const v = $(id).value.trim();
  return v === "" || v === "auto" ? "auto" : Number(v);
}

$("job-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = { model: $("job-model-ref").value.trim() || $("job-model").value, training_file: $("job-train").value,
    method: { type: "supervised", supervised: { hyperparameters: { n_epochs: hyper("job-epochs"), batch_size: hyper("job-batch"), learning_rate_multiplier: hyper("job-lr") } } } };
  if ($("job-val").value) body.validation_file = $("job-val").value;
  if ($("job-suffix").value.trim()) body.suffix = $("job-suffix").value.trim();
  let knobs = {};
  try { knobs = $("job-tailor").value.trim() ? JSON.parse($("job-tailor").value) : {}; } catch (e) { say("job-msg", "tailor options are not valid JSON: " + e.message, "error"); return; }
  body.tailor = Object.assign({}, knobs, { method: document.querySelector("input[name=method]:checked").value });
  if (!body.training_file) { say("job-msg", "Pick a training file (upload one on the Data tab; only files that passed the check are listed).", "error"); return; }
  say("job-msg", "Creating the job…", "busy");
  try {
    const job = await postJSON("/v1/fine_tuning/jobs", body);
    say("job-msg", "Created " + job.id + ".");
    location.hash = "job=" + job.id;
  } catch (e) { fail("job-msg", e); }
});

// ---- one job ------------------------------------------------------------------------------

function openJob(id) {
  state.jobId = id;
  $("job-title").textContent = id;
  $("events").replaceChildren();
  $("ckpts").tBodies[0].replaceChildren();
  $("job-facts").replaceChildren();
  drawCurve("curve", [], [], "No loss yet: points appear as the job trains.");
  $("preference").hidden = true;
  $("reinforcement").hidden = true;
  say("job-page-msg", "Loading…", "busy");
  pollJob(id);
}

async function pollJob(id) {
  if (state.jobId !== id) return;
  try {
    const base = "/v1/fine_tuning/jobs/" + encodeURIComponent(id);
    const [job, events, ckpts] = await Promise.all([getJSON(base), getJSON(base + "/events?limit=10000"), getJSON(base + "/checkpoints?limit=100")]);
    if (state.jobId !== id) return;
    renderJob(job, events.data.slice().reverse(), ckpts.data);
    say("job-page-msg", FINAL.includes(job.status) ? "" : "Updating every " + POLL_MS / 1000 + " s while the job is " + job.status + ".");
    if (!FINAL.includes(job.status)) state.jobTimer = setTimeout(() => pollJob(id), POLL_MS);
  } catch (e) {
    fail("job-page-msg", e);
    if (!(e instanceof Locked)) state.jobTimer = setTimeout(() => pollJob(id), POLL_MS * 3);
  }
}

function renderJob(job, events, ckpts) {
  const status = $("job-status");
  status.textContent = job.status;
  status.className = "badge " + job.status;
  $("job-cancel").disabled = !["queued", "running", "paused", "validating_files"].includes(job.status);
  $("job-pause").disabled = !["queued", "running"].includes(job.status);
  $("job-resume").disabled = job.status !== "paused";
  const train = [], valid = [], pref = { margin: [[], []], accuracy: [[], []] }, reward = [[], []];
  let total = null;
  for (const e of events) {
    if (e.type !== "metrics" || !e.data) continue;
    if (e.data.train_loss != null) train.push([e.data.step, e.data.train_loss, e.created_at]);
    if (e.data.valid_loss != null) valid.push([e.data.step, e.data.valid_loss]);
    if (e.data.total_steps) total = e.data.total_steps;
    for (const [key, name] of [["margin", "rewards_margin"], ["accuracy", "rewards_accuracy"]]) {  // DPO jobs
      if (e.data["train_" + name] != null) pref[key][0].push([e.data.step, e.data["train_" + name]]);
      if (e.data["valid_" + name] != null) pref[key][1].push([e.data.step, e.data["valid_" + name]]);
    }
    if (e.data.train_reward_mean != null) reward[0].push([e.data.step, e.data.train_reward_mean]);  // RFT jobs
    if (e.data.valid_reward_mean != null) reward[1].push([e.data.step, e.data.valid_reward_mean]);
  }
  drawCurve("curve", train, valid, "No loss yet: points appear as the job trains.");
  const dpo = job.method && job.method.type === "dpo";
  $("preference").hidden = !dpo;
  if (dpo) {
    drawCurve("margin-curve", ...pref.margin, "No reward margin yet.", { floor: false });
    drawCurve("accuracy-curve", ...pref.accuracy, "No preference accuracy yet.", { range: [0, 1] });
  }
  const rft = job.method && job.method.type === "reinforcement";
  $("reinforcement").hidden = !rft;
  if (rft) drawCurve("reward-curve", ...reward, "No reward yet: points appear as the job samples replies.", { floor: false });
  const started = events.filter((e) => e.message === "Fine-tuning job started").map((e) => e.created_at)[0];
  const end = job.finished_at || Date.now() / 1000;
  const elapsed = started ? end - started : null;
  const step = train.length ? train[train.length - 1][0] : 0;
  let eta = null;
  if (job.estimated_finish && !FINAL.includes(job.status)) eta = job.estimated_finish - Date.now() / 1000;
  else if (total && step && elapsed && !FINAL.includes(job.status)) eta = elapsed / step * (total - step);
  counts($("job-facts"), [["Model", job.model], ["Fine-tuned model", job.fine_tuned_model || "—"],
    ["Step", step + (total ? " / " + total : "")], ["Last training loss", train.length ? train[train.length - 1][1].toFixed(4) : "—"],
    ["Trained tokens", job.trained_tokens == null ? "—" : job.trained_tokens],
    ["Tokens/s", job.trained_tokens && elapsed > 0 ? (job.trained_tokens / elapsed).toFixed(1) : "—"],
    ["ETA", FINAL.includes(job.status) ? "done" : eta != null ? span(eta) : total ? "after the first steps" : "unknown (set tailor max_steps for one)"], ["Created", when(job.created_at)],
    ["Duration", span(end - job.created_at)], ["Epochs / batch / lr×", [job.hyperparameters.n_epochs, job.hyperparameters.batch_size, job.hyperparameters.learning_rate_multiplier].join(" / ")],
    ["Method", job.method ? job.method.type + (job.method.type === "dpo" ? " (beta " + job.method.dpo.hyperparameters.beta + ")" : "")
      + (rft ? " (grader " + job.method.reinforcement.grader.type + ")" : "") : null],
    ["Last mean reward", rft && reward[0].length ? reward[0][reward[0].length - 1][1].toFixed(4) : null],
    ["Error", job.error ? job.error.message : null]]);
  $("events").replaceChildren(...events.map((e) => el("li", { class: e.level }, new Date(e.created_at * 1000).toLocaleTimeString() + "  " + e.message)));
  $("events").scrollTop = $("events").scrollHeight;
  $("ckpts").tBodies[0].replaceChildren(...ckpts.map((c) => el("tr", {}, el("td", {}, c.step_number),
    el("td", {}, fmt(c.metrics.train_loss)), el("td", {}, fmt(c.metrics.valid_loss)), el("td", {}, fmt(c.metrics.valid_mean_token_accuracy)),
    el("td", {}, el("code", {}, c.fine_tuned_model_checkpoint)),
    el("td", {}, job.status === "succeeded" ? el("a", { href: "#play=" + encodeURIComponent(c.fine_tuned_model_checkpoint) }, "chat with this checkpoint") : "servable once the job succeeds"))));
  if (job.result_files.length) {
    $("results").replaceChildren(...job.result_files.map((fid) => el("button", { type: "button", class: "download", onclick: () => download(fid) }, "Download step_metrics.csv (" + fid + ")")));
  }
  if (job.status === "succeeded" && job.fine_tuned_model) {
    $("results").append(el("p", {}, el("a", { href: "#play=" + encodeURIComponent(job.fine_tuned_model) }, "Chat with the fine-tuned model")));
  }
}

function fmt(x) { return x == null ? "—" : Number(x).toFixed(4); }

async function download(fid) {
  try {
    const res = await api("/v1/files/" + encodeURIComponent(fid) + "/content", { raw: true });
    const url = URL.createObjectURL(await res.blob());
    const a = el("a", { href: url, download: "step_metrics.csv" });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 5000);
  } catch (e) { fail("job-page-msg", e); }
}

for (const verb of ["cancel", "pause", "resume"]) {
  $("job-" + verb).addEventListener("click", async () => {
    const id = state.jobId;
    say("job-page-msg", "Asking the job to " + verb + "…", "busy");
    try {
      await postJSON("/v1/fine_tuning/jobs/" + encodeURIComponent(id) + "/" + verb);
      clearTimeout(state.jobTimer);
      pollJob(id);
    } catch (e) { fail("job-page-msg", e); }
  });
}

// A curve drawn by hand: training solid blue, validation dashed orange with dots. Losses keep
// the axis from going below 0 (floor); a share is drawn on 0..1 (range).
function drawCurve(id, train, valid, empty, { floor = true, range = null } = {}) {
  const c = $(id), g = c.getContext("2d");
  c.dataset.trainPoints = train.length;
  c.dataset.validPoints = valid.length;
  const W = c.width, H = c.height, L = 56, R = 12, T = 12, B = 32;
  g.clearRect(0, 0, W, H);
  g.font = "12px system-ui, sans-serif";
  g.fillStyle = "#5a5a5a";
  const all = train.concat(valid);
  if (!all.length) { g.fillText(empty, L, H / 2); return; }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) x1 = x0 + 1;
  if (range) { [y0, y1] = range; }
  else {
    if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
    const pad = (y1 - y0) * 0.05; y0 = floor ? Math.max(y0 - pad, Math.min(y0, 0)) : y0 - pad; y1 += pad;
  }
  const X = (x) => L + (x - x0) / (x1 - x0) * (W - L - R), Y = (y) => T + (y1 - y) / (y1 - y0) * (H - T - B);
  g.strokeStyle = "#d0d0d0"; g.lineWidth = 1; g.setLineDash([]);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    g.beginPath(); g.moveTo(L, Y(y)); g.lineTo(W - R, Y(y)); g.stroke();
    g.fillText(y.toFixed(3), 4, Y(y) + 4);
  }
  g.fillText("step " + x0, L, H - 10);
  g.fillText("step " + x1, W - R - 60, H - 10);
  const line = (pts, colour, dash) => {
    g.strokeStyle = colour; g.fillStyle = colour; g.lineWidth = 2; g.setLineDash(dash);
    g.beginPath(); pts.forEach((p, i) => (i ? g.lineTo : g.moveTo).call(g, X(p[0]), Y(p[1]))); g.stroke();
    g.setLineDash([]);
    if (pts.length < 60) pts.forEach((p) => { g.beginPath(); g.arc(X(p[0]), Y(p[1]), 3, 0, 7); g.fill(); });
  };
  line(train, "#0072B2", []);
  line(valid, "#E69F00", [7, 5]);
}

// ---- playground ---------------------------------------------------------------------------

function playRequest(model, withSystem) {
  const messages = [];
  const sys = $("play-sys").value.trim();
  if (withSystem && sys) messages.push({ role: "system", content: sys });
  messages.push({ role: "user", content: $("play-prompt").value });
  const body = { model, messages, stream: true, temperature: Number($("play-temp").value), top_p: Number($("play-top").value),
    max_tokens: Number($("play-max").value) };
  if ($("play-seed").value !== "") body.seed = Number($("play-seed").value);
  return body;
}

function showCode() {
  const a = playRequest($("play-a").value, true), b = playRequest($("play-b").value, false);
  const call = (r) => "client.chat.completions.create(\n    model=" + JSON.stringify(r.model) + ",\n    messages=" + JSON.stringify(r.messages) +
    ",\n    temperature=" + r.temperature + ", top_p=" + r.top_p + ", max_tokens=" + r.max_tokens + (r.seed != null ? ", seed=" + r.seed : "") + ", stream=True)";
  $("play-code").textContent = "from openai import OpenAI\nclient = OpenAI(base_url=" + JSON.stringify(location.origin + "/v1") +
    ", api_key=\"YOUR_KEY\")\n\nfor chunk in " + call(a) + ":\n    print(chunk.choices[0].delta.content or \"\", end=\"\")\n\nfor chunk in " + call(b) + ":\n    print(chunk.choices[0].delta.content or \"\", end=\"\")\n";
}
["play-a", "play-b"].forEach((id) => $(id).addEventListener("change", () => { $(id).dataset.picked = "1"; }));
["play-a", "play-b", "play-sys", "play-prompt", "play-temp", "play-top", "play-max", "play-seed"].forEach((id) => $(id).addEventListener("input", showCode));

$("play-send").addEventListener("click", async () => {
  showCode();
  $("play-send").disabled = true;
  await Promise.all([stream("a", playRequest($("play-a").value, true)), stream("b", playRequest($("play-b").value, false))]);
  $("play-send").disabled = false;
});

// One streamed chat completion into one pane (server-sent events, read as they arrive).
async function stream(side, body) {
  const out = $("out-" + side), msg = "out-" + side + "-msg";
  $("out-" + side + "-title").textContent = body.model;
  out.textContent = ""; out.dataset.state = "streaming"; out.dataset.chunks = "0";
  say(msg, "Waiting for the first token…", "busy");
  let finish = null;
  try {
    const res = await api("/v1/chat/completions", { method: "POST", raw: true, body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
    const reader = res.body.getReader(), dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const line = buf.slice(0, cut).trim(); buf = buf.slice(cut + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const ev = JSON.parse(data);
        if (ev.error) throw new Error(ev.error.message);
        const ch = ev.choices && ev.choices[0];
        if (!ch) continue;
        if (ch.delta && ch.delta.content) { out.textContent += ch.delta.content; out.dataset.chunks = String(Number(out.dataset.chunks) + 1); say(msg, "Streaming…", "busy"); }
        if (ch.finish_reason) finish = ch.finish_reason;
      }
    }
    out.dataset.state = "done";
    say(msg, "Done (" + out.dataset.chunks + " chunks, finish_reason " + (finish || "none") + ").");
  } catch (e) {
    out.dataset.state = "error";
    fail(msg, e);
  }
}

// ---- evals ---------------------------------------------------------------------------------

function rate(c) { return c && c.total ? (100 * c.passed / c.total).toFixed(1) + "%" : "—"; }
function runLabel(r) { return (r.name || r.id) + (r.model ? " · " + r.model : ""); }

async function refreshEvals() {
  try {
    const evals = (await getJSON("/v1/evals?limit=100&order=desc")).data;
    const runs = await Promise.all(evals.map((e) => getJSON("/v1/evals/" + encodeURIComponent(e.id) + "/runs?limit=100").then((r) => r.data)));
    $("evals").tBodies[0].replaceChildren(...evals.map((e, i) => el("tr", { "data-eval": e.id, onclick: () => { location.hash = "eval=" + e.id; } },
      el("td", {}, el("a", { href: "#eval=" + e.id }, e.name || e.id)), el("td", {}, e.testing_criteria.map((c) => c.name).join(", ")),
      el("td", {}, runs[i].length),
      el("td", {}, runs[i].map((r) => runLabel(r) + ": " + (r.status === "completed" ? rate(r.result_counts) + " (" + r.result_counts.passed + "/" + r.result_counts.total + ")" : r.status)).join("; ") || "—"),
      el("td", {}, when(e.created_at)))));
    say("evals-msg", evals.length ? "" : "No evals yet.");
  } catch (e) { fail("evals-msg", e); return; }
  state.listTimer = setTimeout(refreshEvals, 3000);
}

async function openEval(id) {
  state.evalId = id;
  try {
    const base = "/v1/evals/" + encodeURIComponent(id);
    const [ev, runs] = await Promise.all([getJSON(base), getJSON(base + "/runs?limit=100")]);
    if (state.evalId !== id) return;
    $("eval-title").textContent = ev.name || ev.id;
    counts($("eval-facts"), [["Id", ev.id], ["Criteria", ev.testing_criteria.map((c) => c.name + " (" + c.type + ")").join(", ")], ["Created", when(ev.created_at)]]);
    $("runs").tBodies[0].replaceChildren(...runs.data.map((r) => el("tr", { "data-run": r.id },
      el("td", {}, r.name || r.id), el("td", {}, r.model || "(jsonl)"), el("td", {}, el("span", { class: "badge " + r.status }, r.status)),
      el("td", {}, r.result_counts.passed), el("td", {}, r.result_counts.failed), el("td", {}, r.result_counts.errored),
      el("td", { class: "rate" }, rate(r.result_counts)),
      el("td", {}, (r.per_testing_criteria_results || []).map((c) => c.testing_criteria.replace(/-[0-9a-f-]{36}$/, "") + " " + c.passed + "/" + (c.passed + c.failed)).join(", ")))));
    const ids = runs.data.map((r) => r.id), picked = [$("cmp-a").value, $("cmp-b").value];
    for (const [sel, i] of [[$("cmp-a"), 0], [$("cmp-b"), 1]]) {
      fillSelect(sel, runs.data.map((r) => [r.id, runLabel(r)]), true);
      // first view (or a choice that is gone): the two newest runs, A and B never the same one
      if (!ids.includes(picked[i]) || picked[0] === picked[1]) sel.value = ids[Math.min(i, ids.length - 1)] || "";
    }
    const busy = runs.data.some((r) => r.status === "queued" || r.status === "in_progress");
    say("eval-msg", busy ? "Updating while runs are in progress." : "");
    if (busy) state.jobTimer = setTimeout(() => openEval(id), POLL_MS);
  } catch (e) { fail("eval-msg", e); }
}

async function items(evalId, runId) {
  if (!runId) return [];
  const out = [];
  let after = null;
  for (;;) {  // every page, in the data source's order
    const page = await getJSON("/v1/evals/" + encodeURIComponent(evalId) + "/runs/" + encodeURIComponent(runId) + "/output_items?limit=100" + (after ? "&after=" + after : ""));
    out.push(...page.data);
    if (!page.has_more || !page.data.length) return out;
    after = page.last_id;
  }
}

function answerCell(item) {
  if (!item) return el("td", {}, "—");
  const text = item.sample.error ? "error: " + item.sample.error.message : (item.sample.output[0] || {}).content || "";
  return el("td", { class: "cmp " + item.status }, el("span", { class: "badge " + (item.status === "pass" ? "succeeded" : "failed") }, item.status), " ", text);
}

$("cmp-show").addEventListener("click", async () => {
  const id = state.evalId, a = $("cmp-a").value, b = $("cmp-b").value;
  say("eval-msg", "Loading both runs' outputs…", "busy");
  try {
    const [ia, ib] = await Promise.all([items(id, a), items(id, b)]);
    $("cmp-a-head").textContent = $("cmp-a").selectedOptions[0] ? $("cmp-a").selectedOptions[0].textContent : "A";
    $("cmp-b-head").textContent = $("cmp-b").selectedOptions[0] ? $("cmp-b").selectedOptions[0].textContent : "B";
    const byB = new Map(ib.map((x) => [x.datasource_item_id, x]));
    $("compare").tBodies[0].replaceChildren(...ia.map((x) => el("tr", {}, el("td", {}, x.datasource_item_id),
      el("td", {}, el("code", {}, JSON.stringify(x.datasource_item))), answerCell(x), answerCell(byB.get(x.datasource_item_id)))));
    say("eval-msg", ia.length + " item(s).");
  } catch (e) { fail("eval-msg", e); }
});

boot();
