// Talking to the avatar: the microphone (Talk), the camera, the listen mode,
// the conversation as chat bubbles, the live VAD state and whose turn it is:
// listening (the user's turn, hesitations included), thinking (the turn is over,
// the reply is coming), speaking (the avatar's voice is playing).
// avatar-client.js offers its audio and video transceivers as sendrecv when this file
// is loaded; the mic and camera tracks are attached later with replaceTrack,
// so toggling them needs no renegotiation.
"use strict";

const listenPage = (() => {
  const el = (id) => document.getElementById(id);
  const MIC_CONSTRAINTS = { audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true } };
  const CAMERA_CONSTRAINTS = { video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { max: 10 } } };
  const state = { pc: null, mic: null, camera: null, avatarBubble: null, userBubble: null, lastUserBubble: null };

  function setVad(text, cls) {
    el("vad").textContent = text;
    el("vad").className = "pill " + (cls || "");
  }

  const TURN_TEXT = { listening: "listening", thinking: "thinking…", speaking: "speaking" };
  function setTurn(turn) {
    el("turn").dataset.turn = turn;
    el("turn").textContent = TURN_TEXT[turn];
    el("turn").className = "pill turn-" + turn;
  }

  function bubble(who, text) {
    const item = document.createElement("li");
    item.className = `bubble ${who}`;
    item.textContent = text;
    el("bubbles").append(item);
    el("bubbles").scrollTop = el("bubbles").scrollHeight;
    return item;
  }

  function sender(kind) {
    const t = state.pc && state.pc.getTransceivers().find((x) => x.receiver.track.kind === kind);
    return t ? t.sender : null;
  }

  async function toggle(kind) {
    const key = kind === "audio" ? "mic" : "camera";
    const button = el(kind === "audio" ? "mic" : "camera");
    const target = sender(kind);
    if (!target) return;
    if (state[key]) {
      await target.replaceTrack(null);
      state[key].stop();
      state[key] = null;
      button.classList.remove("on");
      if (kind === "audio") setVad("mic off");
      return;
    }
    try {
      const media = await navigator.mediaDevices.getUserMedia(kind === "audio" ? MIC_CONSTRAINTS : CAMERA_CONSTRAINTS);
      state[key] = media.getTracks()[0];
      await target.replaceTrack(state[key]);
      button.classList.add("on");
      if (kind === "audio") {
        setVad("listening", "ok");
        reportEchoCancellation();
      }
    } catch (err) {
      log(`${key} unavailable: ${err.message}`, "error");
    }
  }

  // What the microphone does about the avatar's voice from the loudspeaker: the server cancels
  // the echo itself for a microphone that does not (or that says nothing).
  function echoCancellation() {
    if (!state.mic) return MIC_CONSTRAINTS.audio.echoCancellation;  // what the page will ask for
    const value = state.mic.getSettings().echoCancellation;
    return typeof value === "boolean" ? value : undefined;
  }

  async function reportEchoCancellation() {
    const value = echoCancellation();
    if (value === undefined || !client.sessionid) return;
    try {
      await postJSON("/listen", { sessionid: client.sessionid, echo_cancellation: value });
    } catch (err) {
      log(`echo cancellation: ${err.message}`, "error");
    }
  }

  function showEcho(event) {  // the server's canceller: estimated delay and echo reduction
    if (el("echo-delay")) el("echo-delay").textContent = event.delay_ms ?? "–";
    if (el("echo-erle")) el("echo-erle").textContent = event.erle_db ?? "–";
  }

  async function switchMode() {
    const mode = el("listen-mode").value;
    if (!mode || !client.sessionid) return;
    try {
      await postJSON("/listen", { sessionid: client.sessionid, listen: mode });
    } catch (err) {
      log(`listen mode: ${err.message}`, "error");
    }
  }

  function onEvent(event) {
    if (event.type === "echo") {
      showEcho(event);
    } else if (event.type === "user_start") {
      setTurn("listening");
      setVad("you speak", "talk");
      state.avatarBubble = null;
      state.userBubble = null;
      if (event.continues && state.lastUserBubble && state.lastUserBubble.isConnected) {
        // the user went on with the turn before: its reply was withdrawn, its transcript will be redone whole
        while (state.lastUserBubble.nextElementSibling) state.lastUserBubble.nextElementSibling.remove();
        state.userBubble = state.lastUserBubble;
        state.userBubble.classList.add("partial");
      }
    } else if (event.type === "user_end") {
      setTurn("thinking");
      setVad("thinking");
    } else if (event.type === "transcript") {
      // partial transcripts (final: false) fill a pending bubble that the final text replaces
      if (!state.userBubble) state.userBubble = bubble("user partial", event.text);
      state.userBubble.textContent = event.text;
      if (!event.final) return;
      state.userBubble.classList.remove("partial");
      state.lastUserBubble = state.userBubble;
      state.userBubble = null;
      setVad(state.mic ? "listening" : "mic off", state.mic ? "ok" : "");
    } else if (event.type === "start") {
      setTurn("speaking");
      if (!event.text) return;
      if (state.avatarBubble) state.avatarBubble.textContent += " " + event.text;
      else state.avatarBubble = bubble("avatar", event.text);
    } else if (event.type === "end") {
      setTurn("listening");
    } else if (event.type === "error" && event.source === "asr") {
      setTurn("listening");
      setVad("asr error", "bad");
    }
  }

  function connected(pc) {
    state.pc = pc;
    for (const id of ["mic", "camera"]) el(id).disabled = false;
  }

  function disconnected() {
    for (const key of ["mic", "camera"]) {
      if (state[key]) state[key].stop();
      state[key] = null;
      el(key).classList.remove("on");
      el(key).disabled = true;
    }
    state.pc = null;
    setVad("mic off");
  }

  el("mic").addEventListener("click", () => toggle("audio"));
  el("camera").addEventListener("click", () => toggle("video"));
  el("listen-mode").addEventListener("change", switchMode);
  return { onEvent, connected, disconnected, echoCancellation, mode: () => el("listen-mode").value || undefined };
})();
