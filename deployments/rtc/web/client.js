// WebRTC client: one recvonly peer connection, non-trickle offer, LiveTalking-style HTTP calls.
"use strict";
const $ = (id) => document.getElementById(id);
let pc = null;
let sessionid = null;
let speakingTimer = null;

function setStatus(text) { $("status").textContent = text; }

async function postJSON(path, body) {
  const res = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await res.json().catch(() => ({ code: -1, msg: res.statusText }));
  if (!res.ok) throw new Error(data.msg || res.statusText);
  return data;
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

async function start() {
  $("start").disabled = true;
  setStatus("connecting…");
  pc = new RTCPeerConnection({ iceServers: [] });
  pc.addEventListener("track", (evt) => {
    if (evt.track.kind === "video") $("video").srcObject = evt.streams[0] || new MediaStream([evt.track]);
    else $("audio").srcObject = evt.streams[0] || new MediaStream([evt.track]);
  });
  pc.addEventListener("connectionstatechange", () => setStatus(pc.connectionState));
  const video = pc.addTransceiver("video", { direction: "recvonly" });
  preferCodec(video, $("codec").value);
  pc.addTransceiver("audio", { direction: "recvonly" });
  await pc.setLocalDescription(await pc.createOffer());
  await waitIceComplete(pc);
  try {
    const answer = await postJSON("/offer", { sdp: pc.localDescription.sdp, type: pc.localDescription.type });
    sessionid = answer.sessionid;
    $("sessionid").value = sessionid;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  } catch (err) {
    setStatus("error: " + err.message);
    $("start").disabled = false;
    pc.close(); pc = null;
    return;
  }
  $("stop").disabled = $("send").disabled = $("interrupt").disabled = false;
  speakingTimer = setInterval(pollSpeaking, 300);
}

async function stop() {
  clearInterval(speakingTimer);
  if (sessionid) postJSON("/close", { sessionid }).catch(() => {});
  if (pc) pc.close();
  pc = null; sessionid = null;
  $("stop").disabled = $("send").disabled = $("interrupt").disabled = true;
  $("start").disabled = false;
  setStatus("stopped");
}

async function send() {
  const text = $("text").value.trim();
  if (!text || !sessionid) return;
  try { await postJSON("/human", { text, type: "echo", interrupt: false, sessionid }); }
  catch (err) { setStatus("error: " + err.message); }
}

async function interrupt() {
  if (!sessionid) return;
  try { await postJSON("/interrupt_talk", { sessionid }); } catch (err) { setStatus("error: " + err.message); }
}

async function pollSpeaking() {
  if (!sessionid) return;
  try {
    const res = await postJSON("/is_speaking", { sessionid });
    $("speaking").textContent = res.data ? "speaking" : "silent";
    $("speaking").classList.toggle("on", !!res.data);
  } catch (err) { /* transient */ }
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("send").addEventListener("click", send);
$("interrupt").addEventListener("click", interrupt);
