// ICE on the page: relay-only mode (?relay=1), the candidate pair carrying the media,
// and a message that says what to do when the connection cannot be made.
"use strict";

const ICE_STATS_MS = 1000;
const ICE_SLOW_MS = 15000;
const ICE_HELP = "No network path between this browser and the server. If either side is behind NAT or a " +
  "firewall, start the server with --ice-server turn:USER:SECRET@HOST:PORT (a TURN server both can reach, " +
  "e.g. coturn) and allow UDP to it.";

const ice = {
  /** RTCPeerConnection configuration: the server's ICE servers; ?relay=1 forces TURN (as a test of it). */
  config(serverConfig) {
    const relay = new URLSearchParams(location.search).get("relay") === "1";
    return { iceServers: serverConfig.iceServers || [], iceTransportPolicy: relay ? "relay" : "all" };
  },

  /** Show the selected candidate pair while connected; explain failure instead of "connecting" forever. */
  watch(pc) {
    let view = document.getElementById("ice");
    if (!view) {
      view = document.createElement("span");
      view.id = "ice";
      view.className = "pill";
      document.querySelector(".bar").appendChild(view);
    }
    view.textContent = "ice: gathering";
    const show = (text, cls, pair) => {
      view.textContent = text;
      view.className = "pill " + (cls || "");
      view.dataset.pair = pair || "";
    };
    const slow = setTimeout(() => {
      if (pc.iceConnectionState === "new" || pc.iceConnectionState === "checking") {
        show("ice: still connecting after 15 s", "bad");
        log(`still connecting: ${ICE_HELP}`, "error");
      }
    }, ICE_SLOW_MS);
    const timer = setInterval(async () => {
      if (pc.connectionState === "closed") { clearInterval(timer); return; }
      const pair = await ice.selectedPair(pc);
      if (pair) show(`ice: ${pair.local.candidateType} ⇄ ${pair.remote.candidateType} (${pair.local.protocol})`, "ok",
        `${pair.local.candidateType}/${pair.remote.candidateType}`);
    }, ICE_STATS_MS);
    pc.addEventListener("iceconnectionstatechange", () => {
      if (pc.iceConnectionState === "failed") {
        clearTimeout(slow);
        clearInterval(timer);
        show("ice: failed", "bad");
        log(`connection failed: ${ICE_HELP}`, "error");
      } else if (pc.iceConnectionState === "connected" || pc.iceConnectionState === "completed") {
        clearTimeout(slow);
      }
    });
  },

  /** The candidate pair the transport selected, with both candidates' stats, or null. */
  async selectedPair(pc) {
    const stats = await pc.getStats();
    let pairId = null;
    stats.forEach((s) => { if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId; });
    const pair = pairId && stats.get(pairId);
    if (!pair) return null;
    return { local: stats.get(pair.localCandidateId), remote: stats.get(pair.remoteCandidateId) };
  },
};
