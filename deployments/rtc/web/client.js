// WebRTC client: one recvonly peer connection, non-trickle offer, LiveTalking-style HTTP calls.
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

function setStatus(text) { $("status").textContent = text; }

class HttpError extends Error {
  constructor(status, msg) { super(msg); this.status = status; }
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("apikey").value.trim();
  if (key) h["x-api-key"] = key;
  if (token) h["x-session-token"] = token;
  return h;
}

async function call(method, path, body) {
  const res = await fetch(path, { method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json().catch(() => ({ code: -1, msg: res.statusText }));
  if (!res.ok) throw new HttpError(res.status, data.msg || res.statusText);
  return data;
}
const postJSON = (path, body) => call("POST", path, body);

// A session call answered 410 (its host died) or 404 (the server forgot it): start a new one.
function sessionLost(err, sid) {
  if (!(err instanceof HttpError) || (err.status !== 410 && err.status !== 404)) return false;
  if (sid === sessionid) reconnect("session lost: " + err.message);
  return true;
}

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

// One session: offer, answer, timers. Returns false (and cleans up) if the server refused it.
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
  conn.addTransceiver("audio", { direction: "recvonly" });
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
    if (pc === conn) { pc = null; sessionid = null; token = null; }
    return false;
  }
  speakingTimer = setInterval(pollSpeaking, 300);
  heartbeatTimer = setInterval(heartbeat, HEARTBEAT_MS);
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
  if (sessionid) postJSON("/close", { sessionid }).catch(() => {});
  if (pc) pc.close();
  pc = null; sessionid = null; token = null; brokenSince = null;
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
  if (!(await connect())) { wanted = false; $("start").disabled = false; return; }
  $("stop").disabled = $("send").disabled = $("interrupt").disabled = false;
}

async function stop() {
  wanted = false; reconnecting = false;
  clearTimeout(retryTimer); retryTimer = null;
  teardown();
  $("stop").disabled = $("send").disabled = $("interrupt").disabled = true;
  $("start").disabled = false;
  setStatus("stopped");
}

async function send() {
  const text = $("text").value.trim();
  const sid = sessionid;
  if (!text || !sid) return;
  try { await postJSON("/human", { text, type: "echo", interrupt: false, sessionid: sid }); }
  catch (err) { if (!sessionLost(err, sid)) setStatus("error: " + err.message); }
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
$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("send").addEventListener("click", send);
$("interrupt").addEventListener("click", interrupt);
