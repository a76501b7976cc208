// Browser side: one RTCPeerConnection receiving the avatar's audio+video,
// a data channel for events and heartbeats, and the talk controls.
"use strict";

const $ = (id) => document.getElementById(id);
const HEARTBEAT_MS = 5000;
const STATS_MS = 1000;

const client = {
  pc: null, sessionid: null, channel: null, timers: [], lastStats: null, config: null, token: readToken(),
};

// The API token (--auth-token) comes once in the URL fragment (/#token=...), which is never sent to
// the server or kept in the history; the tab remembers it for reloads.
function readToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (token) {
    sessionStorage.setItem("avatar-token", token);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("avatar-token") || "";
}

function authHeaders() {
  return client.token ? { Authorization: `Bearer ${client.token}` } : {};
}

function log(text, cls) {
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  if (cls) item.className = cls;
  $("log").prepend(item);
}

function setState(text, cls) {
  $("state").textContent = text;
  $("state").className = "pill " + (cls || "");
}

// "idle": only Connect; "connecting": nothing yet; "live": the session exists, talk is enabled.
function setControls(phase) {
  $("connect").disabled = phase !== "idle";
  $("avatar").disabled = phase !== "idle" || $("avatar").options.length < 2;
  $("voice").disabled = phase !== "idle" || $("voice").options.length < 2;
  $("disconnect").disabled = phase === "idle";
  for (const id of ["text", "mode", "barge", "send", "interrupt"]) $(id).disabled = phase !== "live";
  $("text").placeholder = phase === "live" ? "Type something for the avatar to say (Enter sends, Shift+Enter: new line)"
    : "Connect first, then type here (Enter sends, Shift+Enter: new line)";
}

// What the page can offer before connecting: engine, avatars, and whether chat has an LLM.
async function loadConfig() {
  try {
    const config = await (await fetch("/config")).json();
    client.config = config;
    $("engine").textContent = `engine: ${config.model}`;
    const wanted = new URLSearchParams(location.search).get("avatar") || config.avatar;
    const names = config.avatars && config.avatars.length ? config.avatars : [config.avatar];
    $("avatar").replaceChildren(...names.map((name) => new Option(name, name, false, name === wanted)));
    const voices = config.voices && config.voices.length ? config.voices : [{ backend: "", voice: "", label: "server default" }];
    $("voice").replaceChildren(...voices.map((v, i) => new Option(v.label, i === 0 ? "" : JSON.stringify({ backend: v.backend, voice: v.voice }))));
    const chat = $("mode").querySelector('option[value="chat"]');
    chat.disabled = config.chat === false;
    $("chat-hint").hidden = config.chat !== false;
    $("chat-hint").textContent = config.chat === false ? `chat is off: ${config.chat_problem}` : "";
  } catch (err) {
    $("engine").textContent = "engine: unknown";
    log(`cannot read /config: ${err.message}`, "error");
  }
  setControls(client.pc ? (client.sessionid ? "live" : "connecting") : "idle");
}

async function postJSON(path, body) {
  // The session id also rides in the URL so a proxy in front of many workers can route by it.
  const url = body.sessionid ? `${path}?sessionid=${encodeURIComponent(body.sessionid)}` : path;
  const response = await fetch(url, {
    method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() }, body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({ code: -1, msg: `HTTP ${response.status}` }));
  if (!response.ok || data.code !== 0 && data.code !== undefined) {
    throw new Error(data.msg || `HTTP ${response.status}`);
  }
  return data;
}

function waitForIceGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", check);
  });
}

function handleEvent(event) {
  if (typeof listenPage !== "undefined") listenPage.onEvent(event);
  if (event.type === "start") {
    $("speaking").textContent = "speaking";
    $("speaking").className = "pill talk";
    log(`▶ ${event.text || "speech"}`);
  } else if (event.type === "end") {
    $("speaking").textContent = "silent";
    $("speaking").className = "pill";
    if (event.interrupted) log("■ interrupted");
  } else if (event.type === "error") {
    log(`error: ${event.msg}`, "error");
  } else if (event.type === "reply") {
    log(`🗨 ${event.text}`);
  } else if (event.type === "draining") {
    log(`server shutting down: this session ends within ${event.within_s} s`, "error");
  } else if (event.type === "closed") {
    log(`session closed: ${event.reason}`);
  }
}

async function updateStats() {
  if (!client.pc) return;
  const report = await client.pc.getStats();
  let video = null, audio = null;
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") video = s;
    if (s.type === "inbound-rtp" && s.kind === "audio") audio = s;
  });
  if (video) {
    $("frames").textContent = video.framesDecoded ?? 0;
    $("fps").textContent = video.framesPerSecond ?? "–";
    const prev = client.lastStats;
    if (prev) {
      const kbps = (8 * (video.bytesReceived - prev.bytes)) / (video.timestamp - prev.timestamp);
      $("bitrate").textContent = kbps.toFixed(0);
    }
    client.lastStats = { bytes: video.bytesReceived, timestamp: video.timestamp };
  }
  if (audio) $("samples").textContent = audio.totalSamplesReceived ?? 0;
}

async function connect() {
  setControls("connecting");
  setState("connecting");
  try {
    const config = client.config || await (await fetch("/config")).json();
    const pc = new RTCPeerConnection(ice.config(config));
    client.pc = pc;
    ice.watch(pc);
    const uplink = typeof listenPage === "undefined" ? "recvonly" : "sendrecv";  // listen.js sends mic/camera
    pc.addTransceiver("video", { direction: uplink });
    pc.addTransceiver("audio", { direction: uplink });
    const stream = new MediaStream();
    pc.addEventListener("track", (e) => {
      stream.addTrack(e.track);
      $("video").srcObject = stream;
    });
    pc.addEventListener("connectionstatechange", () => {
      const state = pc.connectionState;
      setState(state, state === "connected" ? "ok" : (state === "failed" || state === "closed") ? "bad" : "");
      if (state === "failed") disconnect();
    });
    const channel = pc.createDataChannel("events");
    client.channel = channel;
    channel.addEventListener("message", (e) => handleEvent(JSON.parse(e.data)));
    client.timers.push(setInterval(() => {
      if (channel.readyState === "open") channel.send(JSON.stringify({ type: "ping" }));
    }, HEARTBEAT_MS));
    client.timers.push(setInterval(updateStats, STATS_MS));

    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    const avatar = $("avatar").value || undefined;
    const answer = await postJSON("/offer", {
      sdp: pc.localDescription.sdp, type: "offer", avatar, tts: $("voice").value ? JSON.parse($("voice").value) : undefined,
      listen: typeof listenPage === "undefined" ? undefined : listenPage.mode(),
      echo_cancellation: typeof listenPage === "undefined" ? undefined : listenPage.echoCancellation(),
    });
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    client.sessionid = answer.sessionid;
    document.body.dataset.sessionid = answer.sessionid;
    setControls("live");
    log(`session ${String(answer.sessionid).slice(0, 8)} (avatar ${avatar}, engine ${config.model})`);
    if (typeof listenPage !== "undefined") listenPage.connected(pc);
  } catch (err) {
    log(`connect failed: ${err.message}`, "error");
    disconnect();
  }
}

function disconnect() {
  for (const timer of client.timers) clearInterval(timer);
  client.timers = [];
  if (client.pc) client.pc.close();
  client.pc = null;
  client.sessionid = null;
  client.lastStats = null;
  if (typeof listenPage !== "undefined") listenPage.disconnected();
  $("video-hint").hidden = false;
  setControls("idle");
  setState("closed");
}

async function send(event) {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text || !client.sessionid) return;
  try {
    await postJSON("/human", {
      sessionid: client.sessionid, text, type: $("mode").value, interrupt: $("barge").checked,
    });
    $("text").value = "";
  } catch (err) {
    log(`send failed: ${err.message}`, "error");
  }
}

async function interrupt() {
  if (!client.sessionid) return;
  try {
    await postJSON("/interrupt_talk", { sessionid: client.sessionid });
  } catch (err) {
    log(`interrupt failed: ${err.message}`, "error");
  }
}

$("connect").addEventListener("click", connect);
$("disconnect").addEventListener("click", disconnect);
$("talk").addEventListener("submit", send);
$("interrupt").addEventListener("click", interrupt);
$("text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("talk").requestSubmit();
  }
});
$("video").addEventListener("playing", () => { $("video-hint").hidden = true; });
$("volume").addEventListener("input", () => {
  $("video").volume = Number($("volume").value);
  $("video").muted = $("video").volume === 0;
});
setControls("idle");
loadConfig();
