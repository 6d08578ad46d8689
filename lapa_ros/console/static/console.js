// The operator console: live view, commands, e-stop (button or space), push-to-talk, recording,
// plots and the intent preview. Talks to the console's API (app.py) and its WebSocket /ws.
"use strict";

const WINDOW_S = 60;
const $ = id => document.getElementById(id);
const params = new URLSearchParams(location.search);
let apiKey = params.get("api_key") || sessionStorage.getItem("lapa_api_key") || "";
if (params.get("api_key")) sessionStorage.setItem("lapa_api_key", apiKey);
let steps = [], lastState = null, urls = {};
let recordingAsked = null;  // the recording state asked for by a POST still in flight

function log(text, cls) {
  const line = document.createElement("div");
  line.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  if (cls) line.className = cls;
  $("log").prepend(line);
  while ($("log").childNodes.length > 200) $("log").lastChild.remove();
}

async function api(method, path, body, contentType = "application/json") {
  const headers = apiKey ? {"X-API-Key": apiKey} : {};
  let payload = body;
  if (body !== undefined && contentType === "application/json") payload = JSON.stringify(body);
  if (body !== undefined) headers["Content-Type"] = contentType;
  const r = await fetch(path, {method, headers, body: payload});
  if (r.status === 401) {
    const key = prompt("This console needs its API key:");
    if (key) { apiKey = key; sessionStorage.setItem("lapa_api_key", key); return api(method, path, body, contentType); }
  }
  const data = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

// ---------------------------------------------------------------- state and live stream
function showState(s) {
  lastState = s;
  const badge = $("state");
  badge.textContent = s.state; badge.dataset.state = s.state; badge.className = `badge state-${s.state}`;
  $("instruction").textContent = s.instruction || "—";
  $("stop-reason").textContent = s.last_stop_reason || "—";
  $("policy-size").textContent = s.policy_image_size ? `${s.policy_image_size[1]}×${s.policy_image_size[0]}` : "";
  $("camera-size").textContent = s.camera_size ? `${s.camera_size[1]}×${s.camera_size[0]}` : "";
  const rec = s.recording;
  // While the operator's toggle is on its way, a state sent before it must not undo the click.
  if (recordingAsked === null) $("record").checked = rec.recording;
  const written = rec.written.length ? `; ${rec.written.length} written, last ${rec.written[rec.written.length - 1].path}` : "";
  $("record-status").textContent = (rec.recording ? `recording: ${rec.frames} steps` : "not recording") + written +
    (rec.errors.length ? `; error: ${rec.errors[rec.errors.length - 1]}` : "");
}

function showFrame(tag, bytes) {
  const id = tag === 1 ? "camera" : "policy-view";
  const url = URL.createObjectURL(new Blob([bytes], {type: tag === 1 ? "image/jpeg" : "image/png"}));
  const img = $(id);
  img.onload = () => { if (urls[id]) URL.revokeObjectURL(urls[id]); urls[id] = url; img.dataset.frames = (+img.dataset.frames || 0) + 1; };
  img.src = url;
}

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws${apiKey ? "?api_key=" + encodeURIComponent(apiKey) : ""}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { $("link").textContent = "live"; };
  ws.onclose = () => { $("link").textContent = "disconnected: retrying"; setTimeout(connect, 1000); };
  ws.onmessage = ev => {
    if (typeof ev.data !== "string") {
      const b = new Uint8Array(ev.data);
      showFrame(b[0], b.subarray(1));
      return;
    }
    const msg = JSON.parse(ev.data);
    if (msg.type !== "telemetry") return;
    showState(msg.state);
    steps = steps.concat(msg.steps).filter(s => s.t >= msg.now - WINDOW_S);
    Plots.actions($("plot-actions"), steps, msg.now, WINDOW_S);
    Plots.path($("plot-path"), steps);
    Plots.latency($("plot-latency"), steps, msg.now, WINDOW_S);
    Plots.rate($("plot-rate"), steps, msg.now, WINDOW_S);
  };
}

// ---------------------------------------------------------------- commands
async function command(name) {
  try {
    const r = await api("POST", `/api/command/${name}`);
    log(`${name}: ${r.message} (${r.elapsed_ms.toFixed(0)} ms)`);
    if (name === "estop") $("estop-failed").hidden = true;
  } catch (e) {
    log(`${name} failed: ${e.message}`, "rejected");
    if (name === "estop") {  // never quietly: the operator must know the robot was not stopped from here
      $("estop-failed").hidden = false;
      $("estop-failed").textContent = `EMERGENCY STOP FAILED: ${e.message}. Use the robot's own stop.`;
    }
  }
}

async function send(text) {
  try {
    const r = await api("POST", "/api/instruction", {text});
    log(`sent "${r.sent}"` + (r.task ? ` (task ${r.task})` : " (not a task the recogniser knows)"));
  } catch (e) { log(`not sent: ${e.message}`, "rejected"); }
}

let pending = null;  // the instruction waiting for a confirmation

async function submit(text) {
  text = text.trim();
  if (!text) return;
  const s = lastState || {};
  if (!s.intent_available && !s.confirm_before_motion) return send(text);
  pending = text;
  $("intent-text").textContent = text;
  $("intent-strip").replaceChildren();
  $("intent-note").textContent = s.intent_available ? "imagining…" : "confirm to send";
  $("intent-panel").hidden = false;
  if (s.intent_available) {
    try {
      const r = await api("POST", "/api/intent", {text});
      for (const png of r.frames_png) {
        const img = document.createElement("img"); img.src = `data:image/png;base64,${png}`; img.className = "intent-frame";
        $("intent-strip").append(img);
      }
      $("intent-note").textContent = `${r.frames_png.length} imagined frames, latent actions ${JSON.stringify(r.latent_tokens)} (${r.model_ms.toFixed(0)} ms)`;
    } catch (e) { $("intent-note").textContent = `no preview: ${e.message}`; }
  }
  if (!s.confirm_before_motion) send(text);  // preview only: the arm moves anyway
}

$("confirm").onclick = () => { if (pending) send(pending); pending = null; $("intent-panel").hidden = true; };
$("cancel").onclick = () => { pending = null; $("intent-panel").hidden = true; log("cancelled"); };
$("command-form").onsubmit = ev => { ev.preventDefault(); submit($("command").value); };
for (const name of ["start", "stop", "home", "estop"]) $(name).onclick = () => command(name);
// Space anywhere but in the command box is the emergency stop. On a focused button it must not
// also press that button (a browser clicks a button on space's keyup): both events are swallowed.
const typing = ev => ev.target.id === "command";
document.addEventListener("keydown", ev => {
  if (ev.code !== "Space" || typing(ev)) return;
  ev.preventDefault();
  if (!ev.repeat) command("estop");
}, true);
document.addEventListener("keyup", ev => { if (ev.code === "Space" && !typing(ev)) ev.preventDefault(); }, true);
$("record").onchange = async ev => {
  recordingAsked = ev.target.checked;
  try {
    const r = await api("POST", "/api/recording", {on: recordingAsked});
    $("record").checked = r.recording;
    showRecording(r);
  } catch (e) {
    log(`recording: ${e.message}`, "rejected");
    $("record").checked = lastState ? lastState.recording.recording : false;
  } finally {
    recordingAsked = null;
  }
};
function showRecording(r) { log(r.recording ? "recording on" : "recording off"); }

// ---------------------------------------------------------------- push-to-talk
async function talkStart(ev) {
  ev.preventDefault();
  try { await Talk.start(); $("talk").classList.add("recording"); }
  catch (e) { log(`microphone: ${e.message}`, "rejected"); }
}
async function talkStop() {
  if (!Talk.recording()) return;
  $("talk").classList.remove("recording");
  const wav = await Talk.stop();
  const box = $("recognition"); box.hidden = false; box.textContent = "recognising…"; box.className = "note";
  try {
    const r = await api("POST", "/api/speech", wav, "audio/wav");
    const conf = `confidence ${(100 * r.confidence).toFixed(0)}%`;
    if (!r.accepted) {
      box.textContent = `rejected: "${r.text || "(nothing)"}" — ${r.reason} (${conf})`; box.className = "note rejected";
    } else if (r.kind === "stop") {
      box.textContent = `heard "${r.text}" (${conf}): stopping`; box.className = "note accepted"; command("stop");
    } else {
      box.textContent = `heard "${r.command}" (${conf}): press Send to give it`; box.className = "note accepted";
      $("command").value = r.command;
    }
  } catch (e) { box.textContent = `recogniser: ${e.message}`; box.className = "note rejected"; }
}
$("talk").addEventListener("pointerdown", talkStart);
$("talk").addEventListener("pointerup", talkStop);
$("talk").addEventListener("pointerleave", talkStop);

// ---------------------------------------------------------------- start
(async () => {
  try {
    const v = await api("GET", "/api/vocabulary");
    $("vocabulary").replaceChildren(...v.suggestions.map(s => Object.assign(document.createElement("option"), {value: s})));
    showState(await api("GET", "/api/state"));
  } catch (e) { log(`console API: ${e.message}`, "rejected"); }
  connect();
})();
