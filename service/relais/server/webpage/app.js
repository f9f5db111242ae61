// Relais live translation page: one Translate stream over the WebSocket at /v1/translate
// (protocol: docs/websocket.md). The microphone, or a dropped file played through the same
// audio graph (so it streams at real time), goes through an AudioWorklet that posts 16-bit
// PCM frames at the device rate; the server answers with caption events and translated
// speech, which is scheduled back to back for gapless playback.
//
// URL parameters: from, to, latency (LOW_LATENCY | BALANCED | HIGH_QUALITY), speech (0|1),
// overlay=1 (captions only, large, for a broadcast overlay; starts the microphone at once)
// with bg=transparent (default) | green, autostart=1 (start the microphone on load).

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const overlay = params.get("overlay") === "1";
// With auth on (docs/security.md) open the page as /?token=...: it is passed on to the server's URLs.
const tokenQuery = params.get("token") ? `?token=${encodeURIComponent(params.get("token"))}` : "";
const ui = {
  source: $("source"), target: $("target"), latency: $("latency"), speech: $("speech"),
  start: $("start"), stop: $("stop"), file: $("file"), drop: $("drop"),
  state: $("state"), lag: $("lag"), captions: $("captions"), final: $("final"), partial: $("partial"), vtt: $("vtt"),
};
const OVERLAY_KEEP_CHARS = 400;  // the overlay shows the last lines only; older text is dropped

// What the page did, for people and for the end-to-end test (tests/test_web_browser.py).
window.relais = {state: "idle", sentSeconds: 0, audioChunks: 0, audioSeconds: 0, captionLagS: null,
                 speechLagS: null, summary: null, error: null, closeCode: null};
let run = null;  // the stream in progress

// --- page set-up ------------------------------------------------------------------------------

function setState(text, notice = false) {
  // notice: something the user must see or do (the overlay shows only these)
  window.relais.state = text;
  ui.state.textContent = text;
  ui.state.parentElement.classList.toggle("notice", notice);
}

function applyParams() {
  if (overlay) {
    document.body.classList.add("overlay", params.get("bg") === "green" ? "bg-green" : "bg-transparent");
  }
  for (const [key, select] of [["from", ui.source], ["to", ui.target], ["latency", ui.latency]]) {
    const value = params.get(key);
    if (value && ![...select.options].some((o) => o.value === value)) select.add(new Option(value, value));
    if (value) select.value = value;
  }
  ui.speech.checked = (params.get("speech") ?? (overlay ? "0" : "1")) === "1";
}

async function loadCapabilities() {
  // The languages the server's models offer (ListCapabilities); the defaults stay if it is warming up.
  try {
    const response = await fetch(`v1/capabilities${tokenQuery}`);
    if (!response.ok) throw new Error(await response.text());
    const caps = await response.json();
    const names = new Intl.DisplayNames(["en"], {type: "language"});
    const fill = (select, codes, extra) => {
      const keep = select.value;
      select.replaceChildren(...extra, ...codes.map((c) => new Option(`${names.of(c) ?? c} (${c})`, c)));
      if ([...select.options].some((o) => o.value === keep)) select.value = keep;
    };
    fill(ui.source, [...caps.sourceLanguages].sort(), [new Option("detect", "auto")]);
    fill(ui.target, caps.targetLanguages, []);
  } catch (err) {
    console.info("capabilities not available yet:", err.message);
  }
}

// --- one stream -------------------------------------------------------------------------------

async function start(feed) {
  // feed: "mic", or a File to stream in real time
  if (run) return;
  ui.start.disabled = true;
  ui.vtt.hidden = true;
  ui.final.textContent = ui.partial.textContent = ui.lag.textContent = "";
  ui.captions.classList.add("empty");
  Object.assign(window.relais, {sentSeconds: 0, audioChunks: 0, audioSeconds: 0, captionLagS: null,
                                speechLagS: null, summary: null, error: null, closeCode: null});
  const ctx = new AudioContext({latencyHint: "interactive"});
  run = {ctx, ws: null, input: null, stopInput: () => {}, capture: null, ending: false, sentSamples: 0,
         held: [], started: false, playHead: 0, pendingAudio: null, cues: [], cueEnd: 0};
  try {
    if (ctx.state === "suspended") await resumeOnClick(ctx);
    await ctx.audioWorklet.addModule("capture-worklet.js");
    if (feed === "mic") {
      setState("asking for the microphone…");
      const media = await navigator.mediaDevices.getUserMedia({audio: {
        channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
      run.input = ctx.createMediaStreamSource(media);
      run.stopInput = () => media.getTracks().forEach((t) => t.stop());
    } else {
      setState(`reading ${feed.name}…`);
      const buffer = await ctx.decodeAudioData(await feed.arrayBuffer());
      run.input = new AudioBufferSourceNode(ctx, {buffer});
      run.input.onended = finish;  // the whole file was sent: end of speech
      run.stopInput = () => { try { run.input.stop(); } catch { /* not started */ } };
    }
    run.capture = new AudioWorkletNode(ctx, "pcm16-capture", {
      numberOfInputs: 1, numberOfOutputs: 0, channelCount: 1, channelCountMode: "explicit"});
    run.capture.port.onmessage = (frame) => sendAudio(frame.data);
    if (feed === "mic") run.input.connect(run.capture);  // speech while connecting is held, not lost
    connect(feed === "mic" ? "listening" : `streaming ${feed.name}`);
  } catch (err) {
    fail(err.message || String(err));
  }
}

function resumeOnClick(ctx) {
  // Autoplay rules keep an AudioContext made without a click suspended (overlay autostart).
  setState("click to start", true);
  return new Promise((resolve) => document.addEventListener("click", () => ctx.resume().then(resolve), {once: true}));
}

function connect(liveState) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/v1/translate${tokenQuery}`);
  ws.binaryType = "arraybuffer";
  run.ws = ws;
  setState("connecting…");
  ws.onopen = () => ws.send(JSON.stringify({
    sourceLanguage: ui.source.value, targetLanguage: ui.target.value, latencyMode: ui.latency.value,
    inputFormat: {encoding: "PCM_S16LE", sampleRateHz: run.ctx.sampleRate, channels: 1},
    returnText: true, returnAudio: ui.speech.checked, clientId: "relais-web"}));
  ws.onmessage = (message) => {
    if (typeof message.data !== "string") return play(message.data);
    const event = JSON.parse(message.data);
    if (event.started) onStarted(liveState);
    else if (event.text) onText(event.text);
    else if (event.audio) run.pendingAudio = event.audio;  // its PCM follows in the next binary frame
    else if (event.summary) onSummary(event.summary);
    else if (event.error) window.relais.error = event.error.message;
  };
  ws.onclose = (close) => onClosed(close);
}

function onStarted(liveState) {
  run.started = true;
  for (const frame of run.held.splice(0)) sendAudio(frame);
  if (run.input instanceof AudioBufferSourceNode) {
    run.input.connect(run.capture);
    run.input.start();
  }
  ui.stop.disabled = false;
  setState(liveState);
}

function sendAudio(frame) {
  // One PCM16 frame from the worklet: held until the session has started, then sent.
  if (!run || run.ending) return;
  if (!run.started) return void run.held.push(frame);
  if (run.ws.readyState !== WebSocket.OPEN) return;
  run.ws.send(frame);
  run.sentSamples += frame.byteLength / 2;
  window.relais.sentSeconds = sentSeconds();
}

function sentSeconds() {
  return run ? run.sentSamples / run.ctx.sampleRate : 0;  // where the speaker is now, on the source clock
}

function onText(text) {
  if (text.kind === "TRANSLATION_PARTIAL") {
    ui.partial.textContent = text.text;
  } else if (text.kind === "TRANSLATION_FINAL") {
    // a piece starting with punctuation attaches to the previous word (relais/text.py)
    const glue = /^[.,;:!?…)\]}»]/.test(text.text) ? "" : " ";
    ui.final.textContent = trimmed(`${ui.final.textContent}${glue}${text.text}`.trim());
    ui.partial.textContent = "";
    const span = text.sourceSpan;
    const start = Math.max(span.startS, run.cueEnd);
    run.cueEnd = Math.max(span.endS, start + 0.5);
    run.cues.push([start, run.cueEnd, text.text]);
    if (!run.ending) {  // after Stop the speaker's clock has stopped: no lag to tell
      window.relais.captionLagS = sentSeconds() - span.endS;
      showLag();
    }
  }
  ui.captions.classList.toggle("empty", !ui.final.textContent && !ui.partial.textContent);
  ui.captions.scrollTop = ui.captions.scrollHeight;
}

function trimmed(text) {
  if (!overlay || text.length <= OVERLAY_KEEP_CHARS) return text;
  const cut = text.indexOf(" ", text.length - OVERLAY_KEEP_CHARS);
  return text.slice(cut + 1);
}

function play(data) {
  // Translated speech, PCM16 mono: each chunk starts where the previous one ends (gapless).
  const header = run.pendingAudio;
  run.pendingAudio = null;
  if (!header) return;
  const {ctx} = run;
  const pcm = new Int16Array(data);
  const buffer = ctx.createBuffer(1, pcm.length, header.sampleRateHz);
  const samples = buffer.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
  const source = new AudioBufferSourceNode(ctx, {buffer});
  source.connect(ctx.destination);
  const at = Math.max(ctx.currentTime + 0.05, run.playHead);
  source.start(at);
  run.playHead = at + buffer.duration;
  window.relais.audioChunks += 1;
  window.relais.audioSeconds += buffer.duration;
  if (!run.ending) {  // heard at `at`: the speaker will be that much further on by then
    window.relais.speechLagS = sentSeconds() + (at - ctx.currentTime) - header.sourceSpan.endS;
    showLag();
  }
}

function showLag() {
  const {captionLagS, speechLagS} = window.relais;
  const parts = [];
  if (captionLagS !== null) parts.push(`captions ${captionLagS.toFixed(1)} s`);
  if (speechLagS !== null) parts.push(`speech ${speechLagS.toFixed(1)} s`);
  ui.lag.textContent = parts.length ? `${parts.join(" · ")} behind the speaker` : "";
}

function finish() {
  // End of speech (gRPC's half-close): the server sends what is left, then the summary.
  if (!run || run.ending) return;
  run.ending = true;
  run.stopInput();
  run.capture?.disconnect();
  if (run.ws?.readyState === WebSocket.OPEN) {
    run.ws.send(JSON.stringify({type: "end"}));
    setState("finishing…");
  }
}

function stop() {
  if (run?.ending) run.ws?.close(1000, "stopped by the user");  // a second press: do not wait
  else finish();
}

function onSummary(summary) {
  window.relais.summary = summary;
  const lag = summary.meanOutputLagS ? `, captions ${summary.meanOutputLagS.toFixed(1)} s behind on average` : "";
  setState(`done: ${summary.audioInS.toFixed(1)} s translated${lag}`);
}

function onClosed(close) {
  window.relais.closeCode = close.code;
  if (!run) return;
  const current = run;
  current.stopInput();
  if (close.code !== 1000) {
    setState(`stopped (${close.code}): ${window.relais.error || close.reason || "connection lost"}`, true);
  }
  if (current.cues.length) {
    ui.vtt.href = URL.createObjectURL(new Blob([webvtt(current.cues)], {type: "text/vtt"}));
    ui.vtt.hidden = false;
  }
  const playing = Math.max(0, current.playHead - current.ctx.currentTime);
  setTimeout(() => current.ctx.close(), playing * 1000 + 500);  // let the last speech play out
  run = null;
  ui.start.disabled = false;
  ui.stop.disabled = true;
}

function fail(message) {
  window.relais.error = message;
  setState(`error: ${message}`, true);
  if (run) {
    run.stopInput();
    run.ctx.close();
    run = null;
  }
  ui.start.disabled = false;
  ui.stop.disabled = true;
}

function webvtt(cues) {
  // Captions timed on the source (the speaker's clock from the start of the stream).
  const time = (s) => new Date(s * 1000).toISOString().slice(11, 23);
  return `WEBVTT\n\n${cues.map(([a, b, text], i) => `${i + 1}\n${time(a)} --> ${time(b)}\n${text}\n`).join("\n")}`;
}

// --- wiring -----------------------------------------------------------------------------------

applyParams();
loadCapabilities();
ui.start.addEventListener("click", () => start("mic"));
ui.stop.addEventListener("click", stop);
ui.file.addEventListener("change", () => ui.file.files[0] && start(ui.file.files[0]));
for (const name of ["dragenter", "dragover"]) {
  document.addEventListener(name, (e) => { e.preventDefault(); ui.drop.classList.add("over"); });
}
document.addEventListener("dragleave", () => ui.drop.classList.remove("over"));
document.addEventListener("drop", (e) => {
  e.preventDefault();
  ui.drop.classList.remove("over");
  const file = e.dataTransfer.files[0];
  if (file) start(file);
});
if (overlay || params.get("autostart") === "1") start("mic");
