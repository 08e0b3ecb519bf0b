// The page of `python -m pianolm serve`: POST the settings (and a prompt file) to /api/generate,
// poll /api/jobs/<id>: the token count while it runs; as soon as it is done, the piece (its piano
// roll, drawn here from roll.json, and the MIDI link); then, still polling, the audio player when
// the server has rendered the audio, and the PNG link.
// With a model trained to infill and a prompt file chosen, Regenerate sends infill=FIRST-LAST: the
// whole piece comes back with those bars new, shaded on the roll.
// document.body.dataset.state is idle | working | done | error, and dataset.audio is
// pending | loading | ready | none | unplayable (the browser tests wait on both).
"use strict";

const $ = (id) => document.getElementById(id);
const SLIDERS = ["temperature", "top_p", "bars", "prompt_bars"];
const POLL_MS = 150;  // the token count every 0.15 s, the piece and then its audio within 0.15 s of each
let current = null;  // the job the page follows; a new Generate stops following the one before
let shownRoll = null;  // the roll on the canvas, redrawn when the window is resized

function setState(state) { document.body.dataset.state = state; }

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("progress-box").hidden = true;
  $("generate").disabled = $("regenerate").disabled = false;
  setState("error");
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (e) { /* not JSON: fall through */ }
  return `the server answered ${response.status} ${response.statusText}`;
}

async function loadInfo() {
  const response = await fetch("/api/info");
  if (!response.ok) { showError(await errorText(response)); return; }
  const info = await response.json();
  $("model").textContent = `${info.checkpoint} · context ${info.block_size} tokens · vocabulary ${info.vocab_size}`
    + (info.audio ? ` · audio by ${info.audio_engine}` : " · no audio");
  $("temperature").max = info.limits.max_temperature;
  $("prompt_bars").max = info.limits.max_prompt_bars;
  if (!info.audio) { $("audio-note").textContent = info.audio_note; }
  canInfill = Boolean(info.infill);
  showInfill();
}

let canInfill = false;  // the model was trained to regenerate bars inside a piece
function showInfill() { $("infill-box").hidden = !(canInfill && $("prompt").files.length); }

function query(infill) {
  const q = new URLSearchParams();
  for (const name of ["temperature", "top_p", "bars"]) q.set(name, $(name).value);
  if ($("seed").value !== "") q.set("seed", $("seed").value);
  const file = $("prompt").files[0];
  if (file) { q.set("name", file.name); q.set("prompt_bars", $("prompt_bars").value); }
  if (infill) q.set("infill", `${$("infill_from").value}-${$("infill_to").value}`);
  return { q, file };
}

async function generate(event, infill = false) {
  event.preventDefault();
  $("error").hidden = true;
  $("generate").disabled = $("regenerate").disabled = true;
  $("progress").removeAttribute("value");  // indeterminate until the first tokens arrive
  $("status").textContent = "sending…";
  $("progress-box").hidden = false;
  delete document.body.dataset.audio;  // the piece before this one's player keeps playing until this one shows
  setState("working");
  const { q, file } = query(infill);
  let response;
  try {
    response = await fetch(`/api/generate?${q}`, { method: "POST", body: file || null,
      headers: { "Content-Type": file ? "audio/midi" : "application/octet-stream" } });
  } catch (e) { showError(`the server cannot be reached (${e.message})`); return; }
  if (!response.ok) { showError(await errorText(response)); return; }
  const { job } = await response.json();
  current = job;
  poll(job, false);
}

async function poll(job, shown) {
  if (job !== current) return;  // a newer piece took over the page
  let response;
  try { response = await fetch(`/api/jobs/${job}`); } catch (e) { showError(`the server cannot be reached (${e.message})`); return; }
  if (!response.ok) { showError(await errorText(response)); return; }
  const s = await response.json();
  if (job !== current) return;
  if (s.state === "queued") {
    $("status").textContent = "waiting for the generation before this one…";
  } else if (s.state === "running") {
    const what = s.infill ? `regenerating bars ${s.infill[0]}-${s.infill[1]}` : `generating ${s.bars} bars`;
    $("status").textContent = `${what}: ${s.tokens} tokens so far (${s.seconds} s)`;
  } else if (s.state === "error") {
    showError(s.error); return;
  } else if (s.state === "done") {
    if (shown) media(s.result);
    else if (!(await show(s))) return;
    shown = true;
    if (s.result.pending.length === 0) return;  // the audio and the PNG are in (or their notes)
  }
  setTimeout(() => poll(job, shown), POLL_MS);
}

// The piece, at once: the roll drawn from roll.json, the MIDI link and the summary; the audio follows.
async function show(s) {
  const r = s.result;
  let roll;
  try {
    const response = await fetch(r.roll);
    if (!response.ok) { showError(await errorText(response)); return false; }
    roll = await response.json();
  } catch (e) { showError(`the piano roll could not be read (${e.message})`); return false; }
  $("audio").pause();
  $("audio").removeAttribute("src");
  $("audio").load();  // unloads the piece before this one
  $("audio").hidden = true;
  $("png-link").hidden = true;
  $("download").href = r.midi;
  $("summary").textContent = `${r.bars} bars · ${r.notes} notes · ${r.seconds} s · ${r.tokens} tokens in ${s.seconds} s`
    + (r.seed !== null && r.seed !== undefined ? ` · seed ${r.seed}` : "");
  $("progress-box").hidden = true;
  $("result").hidden = false;  // before drawing: a hidden canvas has no width
  shownRoll = roll;
  drawRoll($("roll"), roll);
  media(r);
  $("generate").disabled = $("regenerate").disabled = false;
  setState("done");
  return true;
}

// What the later polls bring: the audio player once the file exists, or the note saying why there
// is none; the PNG link.
function media(r) {
  const audio = $("audio"), note = $("audio-note");
  if (r.audio) {
    if (audio.getAttribute("src") !== r.audio) {
      document.body.dataset.audio = "loading";  // "ready" when the browser has read its length
      audio.src = r.audio;
      audio.hidden = false;
      note.hidden = true;
    }
  } else if (r.pending.includes("audio")) {
    if (document.body.dataset.audio !== "pending") {
      document.body.dataset.audio = "pending";
      note.textContent = "rendering the audio…";
      note.hidden = false;
    }
  } else {
    document.body.dataset.audio = "none";
    note.textContent = r.audio_note;
    note.hidden = false;
  }
  if (r.png) { $("png-link").href = r.png; $("png-link").hidden = false; }
}

$("audio").addEventListener("loadedmetadata", () => {
  if (document.body.dataset.audio === "loading") document.body.dataset.audio = "ready";
});
$("audio").addEventListener("error", () => {
  if (document.body.dataset.audio !== "loading") return;  // a src removed for the next piece
  document.body.dataset.audio = "unplayable";
  $("audio-note").textContent = "this browser could not play the audio file; the MIDI file is below";
  $("audio-note").hidden = false;
});

// The piano roll on the canvas, as remi/media/pianoroll.py draws the PNG: time in ticks left to
// right, pitch bottom to top, faint bar lines, notes shaded by velocity (viridis), the prompt's
// bars shaded and a red dashed line where the model takes over.
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

function viridis(t) {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1), i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const c = VIRIDIS[i].map((a, k) => Math.round(a + (VIRIDIS[i + 1][k] - a) * (x - i)));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

function drawRoll(canvas, roll) {
  const ratio = window.devicePixelRatio || 1, width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.fillStyle = "#fff";
  g.fillRect(0, 0, width, height);
  const pitches = roll.notes.map((n) => n[2]);
  const lo = pitches.length ? Math.max(0, Math.min(...pitches) - 2) : 48;
  const hi = pitches.length ? Math.min(127, Math.max(...pitches) + 2) : 84;
  const left = 30, top = 4, right = width - 4, bottom = height - 16;  // margins for the labels
  const x = (tick) => left + (tick / roll.end_tick) * (right - left);
  const row = (bottom - top) / (hi - lo + 1);
  const y = (pitch) => top + (hi - pitch) * row;
  const promptEnd = roll.prompt_end_tick;
  if (promptEnd !== null) { g.fillStyle = "#f0f0f0"; g.fillRect(left, top, x(promptEnd) - left, bottom - top); }
  const span = roll.span;  // bars regenerated inside the piece, as the PNG shades them
  if (span) { g.fillStyle = "#ffe9b3"; g.fillRect(x(span[0]), top, x(span[1]) - x(span[0]), bottom - top); }
  g.font = "10px system-ui, sans-serif";
  roll.bars.forEach((tick, i) => {
    g.fillStyle = "#ddd";
    g.fillRect(Math.round(x(tick)), top, 1, bottom - top);
    g.fillStyle = "#888";
    if (x(tick) + 16 < right) g.fillText(String(i + 1), x(tick) + 2, height - 4);  // bar numbers, from 1
  });
  for (let p = Math.ceil(lo / 12) * 12; p <= hi; p += 12) g.fillText(`C${p / 12 - 1}`, 2, y(p) + row / 2 + 3);
  for (const [start, end, pitch, velocity] of roll.notes) {
    g.fillStyle = viridis(0.25 + 0.75 * velocity / 127);
    g.fillRect(x(start), y(pitch) + 0.1 * row, Math.max(1, x(end) - x(start)), Math.max(1, 0.8 * row));
  }
  if (promptEnd !== null) {
    g.strokeStyle = "red";
    g.setLineDash([5, 3]);
    g.beginPath(); g.moveTo(x(promptEnd), top); g.lineTo(x(promptEnd), bottom); g.stroke();
    g.setLineDash([]);
    g.fillStyle = "red";
    g.fillText("prompt end", x(promptEnd) + 3, top + 10);
  }
  g.strokeStyle = "#ccc";
  g.strokeRect(left, top, right - left, bottom - top);
  if (span) { g.fillStyle = "#a66b00"; g.fillText("regenerated", x(span[0]) + 3, top + 10); }
  canvas.dataset.notes = String(roll.notes.length);  // what the browser test compares with the summary
  canvas.dataset.span = span ? `${span[0]}-${span[1]}` : "";
}

for (const name of SLIDERS) {
  const update = () => { $(`${name}-value`).textContent = $(name).value; };
  $(name).addEventListener("input", update);
  update();
}
$("clear-prompt").addEventListener("click", () => { $("prompt").value = ""; showInfill(); });
$("prompt").addEventListener("change", showInfill);
$("regenerate").addEventListener("click", (event) => generate(event, true));
$("controls").addEventListener("submit", (event) => generate(event));
window.addEventListener("resize", () => { if (shownRoll) drawRoll($("roll"), shownRoll); });
setState("idle");
loadInfo().catch((e) => showError(`the server cannot be reached (${e.message})`));
