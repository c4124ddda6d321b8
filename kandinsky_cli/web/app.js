// The page of `kandinsky serve`: paint a mask on an image and run an inpainting job through /api/v1.
// Plain JavaScript, no build step. The mask is kept at the image's own size (a canvas whose painted pixels are
// the area to repaint) and sent as a PNG, white = repaint.
"use strict";

const API = "/api/v1";
const $ = (id) => document.getElementById(id);
// the options shown first; every other option of the schema that a job may set is under "more options"
const COMMON = ["steps", "guidance_scale", "scheduler", "seed", "region", "resolution"];
const NOT_CONTROLS = ["prompt", "negative_prompt", "mask_rects"];
const PAINT = "rgb(255, 30, 90)";
const UNDO_LIMIT = 40;

const state = {
  token: sessionStorage.getItem("kandinsky-token"), schema: null, controls: [],
  file: null, fileName: "image.png", width: 0, height: 0, fileUrl: null,
  tool: "brush", size: 24, undo: [], drawing: false, start: null, last: null, base: null,
  job: null, resultBlob: null, resultUrl: null,
};

// ---------------------------------------------------------------------------------------- the API
if (location.hash.startsWith("#token=")) {
  state.token = decodeURIComponent(location.hash.slice(7));
  sessionStorage.setItem("kandinsky-token", state.token);
  history.replaceState(null, "", location.pathname);
}

function authHeaders() { return state.token ? { Authorization: "Bearer " + state.token } : {}; }

async function api(path, options = {}) {
  const response = await fetch(API + path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (response.status === 401 || response.status === 403) $("token-row").hidden = false;
  return response;
}

async function errorLine(response) {
  try { return (await response.json()).error || `HTTP ${response.status}`; } catch (e) { return `HTTP ${response.status}`; }
}

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// ---------------------------------------------------------------------------------------- options
async function loadOptions() {
  const response = await api("/options");
  if (!response.ok) { say(await errorLine(response), true); return; }
  state.schema = await response.json();
  $("options").replaceChildren();
  $("more-options").replaceChildren();
  state.controls = [];
  const usable = state.schema.options.filter((o) => o.inpaint && !NOT_CONTROLS.includes(o.key));
  for (const key of COMMON) {
    const option = usable.find((o) => o.key === key);
    if (option) $("options").append(control(option));
  }
  for (const option of usable) if (!COMMON.includes(option.key)) $("more-options").append(control(option));
}

function control(option) {
  const label = document.createElement("label");
  let range = "";
  if (option.min !== null && option.max !== null) range = ` (${option.min} to ${option.max}${option.multiple ? `, multiple of ${option.multiple}` : ""})`;
  label.title = option.help + range + (option.default_text ? ` Default: ${option.default_text}.` : "");
  const name = option.key.replace(/_/g, " ");
  let input;
  if (option.type === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = option.default === true;
    label.className = "check";
    label.append(input, name);
  } else if (option.type === "choice") {
    input = document.createElement("select");
    if (option.nullable) input.append(new Option("default", ""));
    for (const choice of option.choices) input.append(new Option(choice, choice));
    input.value = option.default ?? "";
    label.append(name, input);
  } else {
    input = document.createElement("input");
    if (option.type === "integer" || option.type === "number") {
      input.type = "number";
      if (option.min !== null) input.min = option.min;
      if (option.max !== null) input.max = option.max;
      input.step = option.type === "integer" ? (option.multiple || 1) : "any";
    } else {
      input.type = "text";
    }
    input.value = option.default ?? "";
    input.placeholder = option.default_text || (option.key === "seed" ? "random" : "");
    label.append(name, input);
  }
  input.id = "opt-" + option.key;
  state.controls.push({ option, input });
  return label;
}

function jobValues() {
  const values = {};
  for (const { option, input } of state.controls) {
    let value;
    if (option.type === "boolean") value = input.checked;
    else {
      const text = input.value.trim();
      if (text === "") continue;                                  // the default
      value = option.type === "integer" || option.type === "number" ? Number(text) : text;
      if (typeof value === "number" && Number.isNaN(value)) value = text;   // the server names the problem
    }
    if (value !== option.default) values[option.key] = value;
  }
  return values;
}

// ---------------------------------------------------------------------------------------- the image
const imageCanvas = $("image");
const maskCanvas = $("mask");
const maskContext = maskCanvas.getContext("2d", { willReadFrequently: true });

async function openImage(blob, name, keepMask = false) {
  let bitmap;
  try { bitmap = await createImageBitmap(blob); } catch (e) { say(`cannot read ${name}: not an image this browser can open`, true); return; }
  const sameSize = bitmap.width === state.width && bitmap.height === state.height;
  const oldMask = keepMask && sameSize ? maskContext.getImageData(0, 0, state.width, state.height) : null;
  state.file = blob;
  state.fileName = name || "image.png";
  state.width = bitmap.width;
  state.height = bitmap.height;
  for (const canvas of [imageCanvas, maskCanvas]) { canvas.width = bitmap.width; canvas.height = bitmap.height; }
  imageCanvas.getContext("2d").drawImage(bitmap, 0, 0);
  if (oldMask) maskContext.putImageData(oldMask, 0, 0);
  state.undo = [];
  setSize(Math.max(1, Math.round(Math.max(bitmap.width, bitmap.height) / 20)));
  $("stage").hidden = false;
  $("drop-hint").hidden = true;
  if (state.fileUrl) URL.revokeObjectURL(state.fileUrl);
  state.fileUrl = URL.createObjectURL(blob);
  layout();
  say(`${state.fileName}: ${bitmap.width}x${bitmap.height}. Paint the area to repaint.`);
}

function layout() {
  if (!state.width) return;
  const room = $("drop").clientWidth - 16;
  const scale = Math.min(room / state.width, (window.innerHeight * 0.7) / state.height);
  for (const canvas of [imageCanvas, maskCanvas]) {
    canvas.style.width = `${Math.floor(state.width * scale)}px`;
    canvas.style.height = `${Math.floor(state.height * scale)}px`;
  }
}

$("file").addEventListener("change", (e) => { if (e.target.files[0]) openImage(e.target.files[0], e.target.files[0].name); e.target.value = ""; });
$("drop").addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (e) => {
  e.preventDefault();
  $("drop").classList.remove("over");
  const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/"));
  if (file) openImage(file, file.name); else say("drop a PNG, JPEG or WebP image", true);
});
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
  if (item) { e.preventDefault(); openImage(item.getAsFile(), "pasted.png"); }
});
window.addEventListener("resize", layout);

// ---------------------------------------------------------------------------------------- painting
function setTool(tool) {
  state.tool = tool;
  for (const name of ["brush", "erase", "rect"]) $("tool-" + name).classList.toggle("active", name === tool);
}
function setSize(size) {
  state.size = Math.max(1, Math.min(Number($("size").max), Math.round(size)));
  $("size").value = state.size;
  $("size-value").textContent = state.size;
}
for (const name of ["brush", "erase", "rect"]) $("tool-" + name).addEventListener("click", () => setTool(name));
$("size").addEventListener("input", (e) => setSize(Number(e.target.value)));

function snapshot() {
  state.undo.push(maskContext.getImageData(0, 0, state.width, state.height));
  if (state.undo.length > UNDO_LIMIT) state.undo.shift();
}
function undo() { if (state.undo.length) maskContext.putImageData(state.undo.pop(), 0, 0); }

function imagePoint(event) {
  const box = maskCanvas.getBoundingClientRect();
  return { x: (event.clientX - box.left) * state.width / box.width, y: (event.clientY - box.top) * state.height / box.height };
}

function stroke(from, to) {
  maskContext.globalCompositeOperation = state.tool === "erase" ? "destination-out" : "source-over";
  maskContext.strokeStyle = maskContext.fillStyle = PAINT;
  maskContext.lineWidth = state.size;
  maskContext.lineCap = maskContext.lineJoin = "round";
  maskContext.beginPath();
  maskContext.moveTo(from.x, from.y);
  maskContext.lineTo(to.x, to.y);
  maskContext.stroke();
  maskContext.globalCompositeOperation = "source-over";
}

function rectangle(a, b) {
  maskContext.putImageData(state.base, 0, 0);
  maskContext.fillStyle = PAINT;
  maskContext.fillRect(Math.min(a.x, b.x), Math.min(a.y, b.y), Math.abs(b.x - a.x), Math.abs(b.y - a.y));
}

maskCanvas.addEventListener("pointerdown", (e) => {
  if (!state.width || e.button !== 0) return;
  e.preventDefault();
  maskCanvas.setPointerCapture(e.pointerId);
  snapshot();
  state.drawing = true;
  state.start = state.last = imagePoint(e);
  state.base = state.undo[state.undo.length - 1];
  if (state.tool !== "rect") stroke(state.start, state.start);
});
maskCanvas.addEventListener("pointermove", (e) => {
  if (!state.drawing) return;
  const point = imagePoint(e);
  if (state.tool === "rect") rectangle(state.start, point); else stroke(state.last, point);
  state.last = point;
});
function endStroke(e) {
  if (!state.drawing) return;
  state.drawing = false;
  if (state.tool === "rect") rectangle(state.start, imagePoint(e));
}
maskCanvas.addEventListener("pointerup", endStroke);
maskCanvas.addEventListener("pointercancel", endStroke);

$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", () => { if (!state.width) return; snapshot(); maskContext.clearRect(0, 0, state.width, state.height); });
$("invert").addEventListener("click", () => {
  if (!state.width) return;
  snapshot();
  const data = maskContext.getImageData(0, 0, state.width, state.height);
  const px = data.data;
  for (let i = 0; i < px.length; i += 4) {
    const on = px[i + 3] < 128;
    px[i] = 255; px[i + 1] = 30; px[i + 2] = 90; px[i + 3] = on ? 255 : 0;
  }
  maskContext.putImageData(data, 0, 0);
});

// The mask as the server reads it: a PNG at the image's size, opaque white = repaint (painted pixels with
// alpha >= 128), transparent black = keep. (A browser writes canvases as RGBA PNGs, and the tool reads the alpha
// of an RGBA mask, so "keep" must be transparent, not opaque black.)
function maskBlob() {
  const data = maskContext.getImageData(0, 0, state.width, state.height);
  const px = data.data;
  for (let i = 0; i < px.length; i += 4) {
    const v = px[i + 3] >= 128 ? 255 : 0;
    px[i] = px[i + 1] = px[i + 2] = px[i + 3] = v;
  }
  const canvas = document.createElement("canvas");
  canvas.width = state.width; canvas.height = state.height;
  canvas.getContext("2d").putImageData(data, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

// ---------------------------------------------------------------------------------------- running
function busy(running) {
  $("run").disabled = running;
  $("cancel").disabled = !running;
}

async function run() {
  if (state.job) return;
  if (!state.file) { say("open an image first (Open, drop or paste)", true); return; }
  const job = { prompt: $("prompt").value, ...jobValues() };
  if ($("negative").value.trim()) job.negative_prompt = $("negative").value;
  const form = new FormData();
  form.append("image", state.file, state.fileName);
  form.append("mask", await maskBlob(), "mask.png");
  form.append("job", JSON.stringify(job));
  busy(true);
  $("progress").value = 0;
  say("sending…");
  let response;
  try { response = await api("/inpaint", { method: "POST", body: form }); } catch (e) { busy(false); say(`cannot reach the server: ${e}`, true); return; }
  if (response.status !== 202) { busy(false); say(await errorLine(response), true); return; }
  const accepted = await response.json();
  state.job = accepted.id;
  const notes = (accepted.warnings || []).map((w) => "warning: " + w).join("\n");
  say((notes ? notes + "\n" : "") + `job ${accepted.id} queued (seed ${accepted.seed})`);
  try { await follow(accepted.id, notes); } catch (e) { say(`lost the job's progress: ${e}`, true); }
  state.job = null;
  busy(false);
}

// Server-sent events read with fetch (an EventSource cannot send the Authorization header).
async function follow(id, notes) {
  const response = await api(`/jobs/${id}/events`);
  if (!response.ok) { say(await errorLine(response), true); return; }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  const seen = {};
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (!data) continue;
      const payload = JSON.parse(data);
      if (event === "queued" && payload.position) say(`waiting: position ${payload.position} in the queue`);
      else if (event === "running") say("running…");
      else if (event === "progress") {
        seen[payload.stage] = payload;
        const parts = Object.values(seen);
        const total = parts.reduce((n, p) => n + p.total, 0) + (seen.decoder ? 0 : 1);
        $("progress").value = parts.reduce((n, p) => n + p.step, 0) / Math.max(1, total);
        say(`${payload.stage} step ${payload.step}/${payload.total}`);
      } else if (event === "done") { await showResult(payload, notes); reader.cancel(); return; }
      else if (event === "failed") { say(payload.error || "the job failed", true); reader.cancel(); return; }
      else if (event === "cancelled") { say("cancelled"); $("progress").value = 0; reader.cancel(); return; }
    }
  }
}

async function showResult(job, notes) {
  const response = await api(`/jobs/${job.id}/images/1`);
  if (!response.ok) { say(await errorLine(response), true); return; }
  state.resultBlob = await response.blob();
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = URL.createObjectURL(state.resultBlob);
  $("before").src = state.fileUrl;
  $("after").src = state.resultUrl;
  $("after").dataset.job = job.id;
  $("download").href = state.resultUrl;
  $("download").download = `kandinsky-${job.id}.png`;
  $("results").hidden = false;
  $("results").scrollIntoView({ block: "nearest" });
  $("progress").value = 1;
  const seconds = (job.finished - job.started).toFixed(1);
  say((notes ? notes + "\n" : "") + `done in ${seconds} s (seed ${job.seed}, job ${job.id})`);
}

$("run").addEventListener("click", run);
$("cancel").addEventListener("click", async () => {
  if (!state.job) return;
  const response = await api(`/jobs/${state.job}`, { method: "DELETE" });
  if (!response.ok) say(await errorLine(response), true); else say("cancelling…");
});
$("use").addEventListener("click", () => { if (state.resultBlob) openImage(state.resultBlob, "result.png", true); });
$("token-save").addEventListener("click", () => {
  state.token = $("token").value.trim();
  sessionStorage.setItem("kandinsky-token", state.token);
  $("token-row").hidden = true;
  loadOptions();
});

// ---------------------------------------------------------------------------------------- keyboard
document.addEventListener("keydown", (e) => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(e.target.tagName);
  if (e.key === "Enter" && !e.shiftKey && e.target.tagName !== "BUTTON" && e.target.id !== "token") {
    e.preventDefault();
    run();
  } else if (!typing && (e.key === "[" || e.key === "]")) {
    setSize(e.key === "[" ? Math.min(state.size - 1, state.size * 0.8) : Math.max(state.size + 1, state.size * 1.25));
  } else if (!typing && (e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") {
    e.preventDefault();
    undo();
  }
});

loadOptions();
