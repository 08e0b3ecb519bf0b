// The page of `python -m pianolm serve`: POST the settings (and a prompt file) to /api/generate,
// poll /api/jobs/<id> until the piece is ready, then show its piano roll, audio and MIDI link.
// document.body.dataset.state is idle | working | done | error (the browser test waits on it).
"use strict";

const $ = (id) => document.getElementById(id);
const SLIDERS = ["temperature", "top_p", "bars", "prompt_bars"];
const POLL_MS = 150;  // the token count every 0.15 s, and the finished piece within 0.15 s of it

function setState(state) { document.body.dataset.state = state; }

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("progress-box").hidden = true;
  $("generate").disabled = false;
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
}

function query() {
  const q = new URLSearchParams();
  for (const name of ["temperature", "top_p", "bars"]) q.set(name, $(name).value);
  if ($("seed").value !== "") q.set("seed", $("seed").value);
  const file = $("prompt").files[0];
  if (file) { q.set("name", file.name); q.set("prompt_bars", $("prompt_bars").value); }
  return { q, file };
}

async function generate(event) {
  event.preventDefault();
  $("error").hidden = true;
  $("generate").disabled = true;
  $("progress").removeAttribute("value");  // indeterminate until the first tokens arrive
  $("status").textContent = "sending…";
  $("progress-box").hidden = false;
  setState("working");
  const { q, file } = query();
  let response;
  try {
    response = await fetch(`/api/generate?${q}`, { method: "POST", body: file || null,
      headers: { "Content-Type": file ? "audio/midi" : "application/octet-stream" } });
  } catch (e) { showError(`the server cannot be reached (${e.message})`); return; }
  if (!response.ok) { showError(await errorText(response)); return; }
  const { job } = await response.json();
  poll(job);
}

async function poll(job) {
  let response;
  try { response = await fetch(`/api/jobs/${job}`); } catch (e) { showError(`the server cannot be reached (${e.message})`); return; }
  if (!response.ok) { showError(await errorText(response)); return; }
  const s = await response.json();
  if (s.state === "queued") {
    $("status").textContent = "waiting for the generation before this one…";
  } else if (s.state === "running") {
    $("status").textContent = `generating ${s.bars} bars: ${s.tokens} tokens so far (${s.seconds} s)`;
  } else if (s.state === "error") {
    showError(s.error); return;
  } else if (s.state === "done") {
    show(s); return;
  }
  setTimeout(() => poll(job), POLL_MS);
}

function show(s) {
  const r = s.result;
  $("roll").src = r.png;
  if (r.audio) {
    $("audio").src = r.audio;
    $("audio").hidden = false;
    $("audio-note").hidden = true;
  } else {
    $("audio").removeAttribute("src");
    $("audio").hidden = true;
    $("audio-note").textContent = r.audio_note;
    $("audio-note").hidden = false;
  }
  $("download").href = r.midi;
  $("summary").textContent = `${r.bars} bars · ${r.notes} notes · ${r.seconds} s · ${r.tokens} tokens in ${s.seconds} s`
    + (r.seed !== null && r.seed !== undefined ? ` · seed ${r.seed}` : "");
  $("progress-box").hidden = true;
  $("result").hidden = false;
  $("generate").disabled = false;
  setState("done");
}

for (const name of SLIDERS) {
  const update = () => { $(`${name}-value`).textContent = $(name).value; };
  $(name).addEventListener("input", update);
  update();
}
$("clear-prompt").addEventListener("click", () => { $("prompt").value = ""; });
$("controls").addEventListener("submit", generate);
setState("idle");
loadInfo().catch((e) => showError(`the server cannot be reached (${e.message})`));
