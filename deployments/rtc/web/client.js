// WebRTC client: one peer connection (video recvonly, audio sendrecv), non-trickle offer,
// LiveTalking-style HTTP calls, live captions from GET /sse.
// A session that dies (its server replica died, or the connection broke) is noticed and replaced
// by a new one on its own, with a growing pause between attempts.
"use strict";
const $ = (id) => document.getElementById(id);
let pc = null;
let sessionid = null;
let token = null;           // the session's token from /offer: sent as x-session-token
let speakingTimer = null;
let heartbeatTimer = null;
let wanted = false;         // the user pressed Start and not Stop: keep a session up
let reconnecting = false;
let retryTimer = null;
let attempts = 0;           // failed or lost sessions in a row, for the back-off
let brokenSince = null;     // when the connection went failed/disconnected

const HEARTBEAT_MS = 3000;  // GET /sessions/{id}: a dead session answers 410/404
const BROKEN_GRACE_MS = 3000; // "disconnected" often recovers by itself within a few seconds
const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];
const API_KEY_STORE = "avatar.apiKey";
const MODE_STORE = "avatar.mode";

function setStatus(text) { $("status").textContent = text; }

class HttpError extends Error {
  constructor(status, msg) { super(msg); this.status = status; }
}

function authHeaders() {
  const h = {};
  const key = $("apikey").value.trim();
  if (key) h["x-api-key"] = key;
  if (token) h["x-session-token"] = token;
  return h;
}

const headers = () => ({ "Content-Type": "application/json", ...authHeaders() });

async function failure(res) {
  const data = await res.json().catch(() => ({ msg: res.statusText }));
  return new HttpError(res.status, data.msg || res.statusText);
}

async function call(method, path, body) {
  const res = await fetch(path, { method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body) });
  if (!res.ok) throw await failure(res);
  return res.json().catch(() => ({}));
}
const postJSON = (path, body) => call("POST", path, body);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A session call answered 410 (its host died) or 404 (the server forgot it): start a new one.
function sessionLost(err, sid) {
  if (!(err instanceof HttpError) || (err.status !== 410 && err.status !== 404)) return false;
  if (sid === sessionid) reconnect("session lost: " + err.message);
  return true;
}

// ---- microphone --------------------------------------------------------------------------------
// Every session offers its audio m-line as sendrecv from the start, with the microphone track or
// with none (a null track sends no packets). Turning the mic on or off is then `replaceTrack` on
// that sender: no renegotiation, no new session, and it works mid-conversation. The server sees
// one inbound audio track per session either way.
const MIC_CONSTRAINTS = { audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true } };
let micWanted = false;      // the toggle: kept across Stop/Start and reconnects
let micTrack = null;        // the open microphone while the toggle is on and a session is wanted
let audioSender = null;     // the current session's audio sender
let micBusy = false;        // getUserMedia is pending: ignore more clicks

async function openMic() {
  if (micTrack) return true;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError("the microphone needs https (or localhost)");
    return false;
  }
  try {
    micTrack = (await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS)).getAudioTracks()[0];
  } catch (err) {
    showError("microphone: " + err.message);
    return false;
  }
  micTrack.addEventListener("ended", () => { showError("microphone: the device went away"); setMic(false); });
  return true;
}

function closeMic() {
  if (micTrack) micTrack.stop(); // releases the device (the browser's recording light goes off)
  micTrack = null;
}

// Put the current microphone (or nothing) on the session's audio sender.
async function attachMic() {
  if (!audioSender) return;
  try { await audioSender.replaceTrack(micTrack); } catch (err) { showError("microphone: " + err.message); }
}

async function setMic(on) {
  if (micBusy) return;
  micBusy = true;
  try {
    // Before Start the toggle only records the choice: the device opens with the session, so
    // nothing said before the connection is up goes unheard and no light is on while idle.
    micWanted = on && (!wanted || micTrack !== null || await openMic());
    if (!micWanted) closeMic();
    await attachMic();
  } finally { micBusy = false; }
  $("mic").setAttribute("aria-pressed", String(micWanted));
  $("mic").textContent = micWanted ? "Mic on" : "Mic off";
  if (state === "idle" || state === "listening") settle();
}

// ---- conversation state ------------------------------------------------------------------------
// idle (mic off, nothing happening) / listening (mic on, nobody talking) / hearing (asr_partial
// arriving) / thinking (a turn was sent, no speech yet) / speaking (a sentence is playing).
// Transient states fall back on their own, so a lost event never leaves the badge stuck.
const STATE_TIMEOUT_MS = { hearing: 5000, thinking: 20000 };
const END_GRACE_MS = 300;   // a gap between two sentences of one answer is not "done speaking"
let state = "idle";
let stateTimer = null;

function setState(next) {
  clearTimeout(stateTimer);
  stateTimer = null;
  state = next;
  $("state").dataset.state = next;
  $("state").textContent = next;
  if (STATE_TIMEOUT_MS[next]) stateTimer = setTimeout(() => settleFrom(next), STATE_TIMEOUT_MS[next]);
}

const restState = () => (micWanted && sessionid ? "listening" : "idle");
function settle() { setState(restState()); }
function settleFrom(from) { if (state === from) settle(); }

// ---- captions ----------------------------------------------------------------------------------
const MAX_LINES = 40;       // older caption lines are dropped: the page never grows without bound
const MAX_THINKING_CHARS = 400;
let userLine = null;        // the user's turn being recognised: asr_partial rewrites it in place
let playing = [];           // avatar lines whose sentence started and has not ended, oldest first
let answerSoFar = "";       // llm_delta text of the answer being written, shown as "thinking…"

function addLine(kind, text) {
  const box = $("captions");
  const line = document.createElement("div");
  line.className = "line " + kind;
  line.textContent = text;
  box.appendChild(line);
  while (box.children.length > MAX_LINES) forget(box.firstElementChild);
  box.scrollTop = box.scrollHeight;
  return line;
}

function forget(line) {
  line.remove();
  if (line === userLine) userLine = null;
  playing = playing.filter((l) => l !== line);
}

function showError(text) {
  addLine("error", "error: " + text);
  setStatus("error: " + text);
  if (state === "thinking") settle(); // nothing is coming
}

function setThinking(text) {
  answerSoFar = text.slice(-MAX_THINKING_CHARS);
  $("thinking").textContent = answerSoFar ? "thinking… " + answerSoFar : "";
}

function heard(text, final) {
  text = (text || "").trim();
  if (!userLine && !text) return;
  if (!userLine) userLine = addLine("user partial", text);
  userLine.textContent = text;
  if (!final) { setState("hearing"); return; }
  userLine.classList.remove("partial");
  if (!text) userLine.remove(); // the recogniser heard nothing after all
  userLine = null;
  setThinking("");
  if (text) setState("thinking"); else settleFrom("hearing");
}

function sentenceStarted(text) {
  playing.push(addLine("avatar playing", text || "…"));
  setState("speaking");
}

function sentenceEnded(text, cut) {
  const line = playing.find((l) => l.textContent === text) || playing[0];
  if (line) {
    playing = playing.filter((l) => l !== line);
    line.classList.replace("playing", cut ? "cut" : "done");
  }
  if (playing.length || state !== "speaking") return;
  stateTimer = setTimeout(() => { if (!playing.length) { setThinking(""); settleFrom("speaking"); } }, END_GRACE_MS);
}

// Lines left "playing" when the event stream breaks would never get their end: close them.
function endAllPlaying() {
  playing.forEach((l) => l.classList.replace("playing", "done"));
  playing = [];
  if (state === "speaking") settle();
}

function onEvent(e) {
  if (e.status === "start") return sentenceStarted(e.text);
  if (e.status === "end") return sentenceEnded(e.text, !!e.interrupted);
  switch (e.event) {
    case "asr_partial": return heard(e.text, false);
    case "asr_final": return heard(e.text, true);
    case "llm_delta":
      setThinking(answerSoFar + (e.text || ""));
      if (state !== "speaking") setState("thinking");
      return;
    case "interrupted":
      setThinking("");
      return e.reason === "barge_in" ? setState("hearing") : settle();
    case "error": return showError(`${e.stage || "server"}: ${e.message || e.msg || "failed"}`);
  }
}

// ---- GET /sse ------------------------------------------------------------------------------------
// fetch + a stream reader, not EventSource: /sse may need the x-api-key and x-session-token headers.
// One reader per session: it reconnects while its session is current and stops with it.
let eventsAbort = null;
const SSE_RETRY_MS = [500, 1000, 2000, 5000];

function setSse(open) { $("captions").dataset.sse = open ? "open" : "closed"; }

// Split a byte stream into SSE messages and hand each `data:` JSON to `handle`.
async function readSse(body, handle) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const message = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = message.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue; // a comment (": ping") keeps the connection open
      try { handle(JSON.parse(data)); } catch (err) { console.warn("bad event", data, err); }
    }
  }
}

async function followEvents(sid, signal) {
  for (let failures = 0; !signal.aborted && sid === sessionid; failures++) {
    try {
      const res = await fetch("/sse?sessionid=" + encodeURIComponent(sid), { headers: authHeaders(), signal, cache: "no-store" });
      if (!res.ok) throw await failure(res);
      setSse(true);
      failures = 0;
      await readSse(res.body, onEvent);
    } catch (err) {
      if (signal.aborted || sessionLost(err, sid)) break;
    }
    setSse(false);
    endAllPlaying();
    await sleep(SSE_RETRY_MS[Math.min(failures, SSE_RETRY_MS.length - 1)]);
  }
  if (sid === sessionid || !sessionid) setSse(false);
}

function startEvents(sid) {
  eventsAbort = new AbortController();
  followEvents(sid, eventsAbort.signal);
}

function stopEvents() {
  if (eventsAbort) eventsAbort.abort();
  eventsAbort = null;
  setSse(false);
  endAllPlaying();
  if (userLine) { userLine.classList.remove("partial"); userLine = null; }
  setThinking("");
}

// ---- session -----------------------------------------------------------------------------------
function preferCodec(transceiver, mimeName) {
  if (!mimeName || !RTCRtpReceiver.getCapabilities) return;
  const codecs = RTCRtpReceiver.getCapabilities("video").codecs;
  const first = codecs.filter((c) => c.mimeType === "video/" + mimeName);
  const rest = codecs.filter((c) => c.mimeType !== "video/" + mimeName);
  if (first.length && transceiver.setCodecPreferences) transceiver.setCodecPreferences(first.concat(rest));
}

function waitIceComplete(conn) {
  if (conn.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => { if (conn.iceGatheringState === "complete") { conn.removeEventListener("icegatheringstatechange", check); resolve(); } };
    conn.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 3000); // whatever was gathered by then is enough on a LAN
  });
}

// One session: offer, answer, timers, event stream. Returns false (and cleans up) if the server refused it.
async function connect() {
  const conn = new RTCPeerConnection({ iceServers: [] });
  pc = conn;
  conn.addEventListener("track", (evt) => {
    if (evt.track.kind === "video") $("video").srcObject = evt.streams[0] || new MediaStream([evt.track]);
    else $("audio").srcObject = evt.streams[0] || new MediaStream([evt.track]);
  });
  conn.addEventListener("connectionstatechange", () => watchConnection(conn));
  const video = conn.addTransceiver("video", { direction: "recvonly" });
  preferCodec(video, $("codec").value);
  // sendrecv even with the mic off (see "microphone" above): the mic joins later without an offer.
  audioSender = conn.addTransceiver("audio", { direction: "sendrecv" }).sender;
  await attachMic();
  await conn.setLocalDescription(await conn.createOffer());
  await waitIceComplete(conn);
  try {
    const answer = await postJSON("/offer", { sdp: conn.localDescription.sdp, type: conn.localDescription.type });
    sessionid = answer.sessionid;
    token = answer.token || null;
    $("sessionid").value = sessionid;
    await conn.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  } catch (err) {
    setStatus("error: " + err.message);
    conn.close();
    if (pc === conn) { pc = null; sessionid = null; token = null; audioSender = null; }
    return false;
  }
  speakingTimer = setInterval(pollSpeaking, 300);
  heartbeatTimer = setInterval(heartbeat, HEARTBEAT_MS);
  startEvents(sessionid);
  settle();
  return true;
}

function watchConnection(conn) {
  if (conn !== pc) return;
  const state = conn.connectionState;
  setStatus(reconnecting ? "reconnecting: " + state : state);
  if (state === "connected") { brokenSince = null; attempts = 0; reconnecting = false; setStatus("connected"); return; }
  if (state === "failed" || state === "disconnected") {
    if (brokenSince === null) brokenSince = Date.now();
    // "failed" is final; "disconnected" gets a grace period to recover by itself.
    const wait = state === "failed" ? 0 : BROKEN_GRACE_MS;
    setTimeout(() => {
      if (conn === pc && brokenSince !== null && Date.now() - brokenSince >= wait) reconnect("connection " + conn.connectionState);
    }, wait);
  }
}

function teardown() {
  clearInterval(speakingTimer); clearInterval(heartbeatTimer);
  speakingTimer = heartbeatTimer = null;
  stopEvents();
  if (sessionid) postJSON("/close", { sessionid }).catch(() => {});
  if (pc) pc.close();
  pc = null; sessionid = null; token = null; brokenSince = null; audioSender = null;
  settle();
}

// Replace a lost session after a pause that grows with each loss in a row (never a tight loop).
function reconnect(why) {
  if (!wanted || reconnecting) return;
  reconnecting = true;
  teardown();
  const delay = BACKOFF_MS[Math.min(attempts, BACKOFF_MS.length - 1)];
  attempts += 1;
  setStatus(`${why}; reconnecting in ${Math.round(delay / 1000)} s (attempt ${attempts})…`);
  retryTimer = setTimeout(async () => {
    retryTimer = null;
    if (!wanted) return;
    setStatus(`reconnecting (attempt ${attempts})…`);
    const ok = await connect();
    reconnecting = false;
    if (!wanted) teardown();  // Stop was pressed while the offer was under way
    else if (!ok) reconnect("new session refused");
  }, delay);
}

async function start() {
  $("start").disabled = true;
  wanted = true; attempts = 0;
  setStatus("connecting…");
  if (micWanted) await setMic(true); // open the device now (denied: the session goes on without it)
  if (!(await connect())) { wanted = false; $("start").disabled = false; return; }
  $("stop").disabled = $("send").disabled = $("interrupt").disabled = false;
}

async function stop() {
  wanted = false; reconnecting = false;
  clearTimeout(retryTimer); retryTimer = null;
  teardown();
  closeMic(); // keep the choice (micWanted) for the next Start, not the device
  settle();
  $("stop").disabled = $("send").disabled = $("interrupt").disabled = true;
  $("start").disabled = false;
  setStatus("stopped");
}

async function send() {
  const text = $("text").value.trim();
  const type = $("mode").value;
  const sid = sessionid;
  if (!text || !sid) return;
  try {
    await postJSON("/human", { text, type, interrupt: false, sessionid: sid });
    if (state !== "speaking") setState("thinking");
  } catch (err) {
    if (!sessionLost(err, sid)) showError(err.message); // e.g. 501: chat without an LLM on the server
  }
}

async function interrupt() {
  const sid = sessionid;
  if (!sid) return;
  try { await postJSON("/interrupt_talk", { sessionid: sid }); }
  catch (err) { if (!sessionLost(err, sid)) setStatus("error: " + err.message); }
}

async function pollSpeaking() {
  const sid = sessionid;
  if (!sid) return;
  try {
    const res = await postJSON("/is_speaking", { sessionid: sid });
    $("speaking").textContent = res.data ? "speaking" : "silent";
    $("speaking").classList.toggle("on", !!res.data);
  } catch (err) { sessionLost(err, sid); /* anything else is transient */ }
}

async function heartbeat() {
  const sid = sessionid;
  if (!sid) return;
  try { await call("GET", "/sessions/" + sid); } catch (err) { sessionLost(err, sid); }
}

$("apikey").value = localStorage.getItem(API_KEY_STORE) || "";
$("apikey").addEventListener("input", () => localStorage.setItem(API_KEY_STORE, $("apikey").value.trim()));
$("mode").value = localStorage.getItem(MODE_STORE) === "chat" ? "chat" : "echo";
$("mode").addEventListener("change", () => localStorage.setItem(MODE_STORE, $("mode").value));
$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("mic").addEventListener("click", () => setMic(!micWanted));
$("send").addEventListener("click", send);
$("interrupt").addEventListener("click", interrupt);
