// The demo page: the microphone over WHIP (RFC 9725, non-trickle) with the `turngate`
// data channel; the gateway's events shown per turn as they come; images uploaded over
// the channel (image.begin, binary chunks, image.end); each turn linked to its
// inspector. Observable by a test driver: `window.turngate.events` (every event, in
// order) and `data-turn-id`/`data-state` on each turn's list item.

import { el } from "/ui/common.js";

/** Bytes of one data-channel message: 16 KiB interoperates everywhere. */
const MESSAGE = 16 * 1024;

const state = { pc: null, channel: null, stream: null, location: null, token: "", events: [] };
window.turngate = state;

const $ = (id) => document.getElementById(id);
const status = (text) => { $("status").textContent = text; };

$("connect").addEventListener("submit", (event) => {
  event.preventDefault();
  connect().catch((e) => hangUp(`Could not connect: ${e.message}`));
});
$("stop").addEventListener("click", () => hangUp());
$("talk").addEventListener("click", () => {
  const talking = $("talk").getAttribute("aria-pressed") === "true";
  state.channel?.send(JSON.stringify({ type: talking ? "turn.end" : "turn.start" }));
  talk(!talking);
});

/** Shows the push-to-talk button pressed (a client turn is held open) or not. */
function talk(pressed) {
  $("talk").setAttribute("aria-pressed", String(pressed));
  $("talk").textContent = pressed ? "End the turn" : "Start a turn";
}
$("image").addEventListener("change", () => {
  const file = $("image").files[0];
  if (file) upload(file);
  $("image").value = "";
});
document.addEventListener("dragover", (event) => { if (state.channel) event.preventDefault(); });
document.addEventListener("drop", (event) => {
  if (!state.channel) return;
  // Whatever is dropped, the page stays (a browser opens a dropped file otherwise,
  // which would end the call).
  event.preventDefault();
  const file = [...(event.dataTransfer?.files ?? [])].find((f) => f.type.startsWith("image/"));
  if (file) upload(file);
  else $("upload").textContent = "Drop an image: PNG, JPEG, WebP or GIF.";
});
document.addEventListener("paste", (event) => {
  const file = [...(event.clipboardData?.files ?? [])].find((f) => f.type.startsWith("image/"));
  if (state.channel && file) { event.preventDefault(); upload(file); }
});

function authorization() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

async function connect() {
  state.token = $("token").value.trim();
  $("start").disabled = true;
  status("Asking for the microphone…");
  state.stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
  const pc = new RTCPeerConnection({ iceServers: [] });
  state.pc = pc;
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "connected") status("Connected: speak, or show an image.");
    if (pc.connectionState === "failed") status("The connection failed.");
  });
  const channel = pc.createDataChannel("turngate", { ordered: true });
  channel.binaryType = "arraybuffer";
  channel.bufferedAmountLowThreshold = 4 * MESSAGE;
  channel.addEventListener("open", () => {
    state.channel = channel;
    $("image").disabled = false;
    $("talk").disabled = false;
  });
  channel.addEventListener("close", () => {
    $("image").disabled = true;
    $("talk").disabled = true;
    talk(false);
  });
  channel.addEventListener("message", (message) => {
    if (typeof message.data === "string") onEvent(JSON.parse(message.data));
  });
  pc.addTransceiver(state.stream.getAudioTracks()[0], { direction: "sendonly", streams: [state.stream] });
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  status("Connecting…");
  const response = await fetch("/v1/whip", {
    method: "POST",
    headers: { "Content-Type": "application/sdp", ...authorization() },
    body: pc.localDescription.sdp,
  });
  const body = await response.text();
  if (response.status !== 201) {
    let detail = body;
    try { detail = JSON.parse(body).detail; } catch { /* not problem+json */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  state.location = response.headers.get("Location");
  await pc.setRemoteDescription({ type: "answer", sdp: body });
  $("stop").disabled = false;
}

/** Resolves once ICE gathering is complete (WHIP without trickle), at most 5 s. */
function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 5000);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
}

/** Ends the call, if any, and says `message` (or that there is no call). */
async function hangUp(message = "Not connected.") {
  if (state.location) {
    await fetch(state.location, { method: "DELETE", headers: authorization() }).catch(() => {});
  }
  state.pc?.close();
  state.stream?.getTracks().forEach((t) => t.stop());
  Object.assign(state, { pc: null, channel: null, stream: null, location: null });
  $("start").disabled = false;
  $("stop").disabled = true;
  $("image").disabled = true;
  $("talk").disabled = true;
  talk(false);
  status(message);
}

/** A turn's list item, made on its first event. */
function turnItem(id) {
  let item = document.querySelector(`li[data-turn-id="${id}"]`);
  if (!item) {
    item = el("li", { "data-turn-id": id, "data-state": "open" },
      el("p", { class: "turn-head" },
        el("strong", { class: "number" }, "Turn"), " ",
        el("span", { class: "state" }, "listening…"), " ",
        el("a", { href: `/turns/${id}`, class: "inspect" }, "Inspect")),
      el("p", { class: "transcript" }),
      el("ul", { class: "vision" }),
      el("p", { class: "answer" }));
    $("turns").prepend(item);
  }
  return item;
}

function onEvent(event) {
  state.events.push(event);
  const id = event.turn_id;
  const item = id ? turnItem(id) : null;
  const set = (selector, text) => { item.querySelector(selector).textContent = text; };
  switch (event.type) {
    case "turn.started":
      set(".number", `Turn ${event.turn_number}`);
      break;
    case "turn.ended":
      set(".state", "thinking…");
      item.dataset.state = "ended";
      break;
    case "transcript":
      set(".transcript", `You said: ${event.text}`);
      break;
    case "vision.result":
      item.querySelector(".vision").append(el("li", {}, `Image ${event.blob_id.slice(0, 8)}: ${event.description}`));
      break;
    case "response.delta":
      item.querySelector(".answer").append(event.delta);
      break;
    case "turn.completed":
      set(".state", event.status);
      item.dataset.state = "completed";
      break;
    case "image.accepted":
      $("upload").textContent = `Image accepted (${event.width}×${event.height}) into turn ${event.turn_id.slice(0, 8)}.`;
      break;
    case "image.rejected":
      $("upload").textContent = `Image refused: ${event.message}`;
      break;
    case "error":
      if (item) set(".state", `error: ${event.message}`);
      else status(`Error: ${event.message}`);
      if (event.code === "no_open_turn" || event.code === "turn_already_open") talk(false);
      break;
    default:
  }
}

let uploads = 0;

/** Uploads `file` over the data channel: image.begin, chunks, image.end. */
async function upload(file) {
  const channel = state.channel;
  const bytes = new Uint8Array(await file.arrayBuffer());
  const id = `u${++uploads}`;
  const begin = { type: "image.begin", upload_id: id, mime: file.type, size: bytes.length };
  if (crypto.subtle) {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    begin.sha256 = [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
  }
  $("upload").textContent = `Uploading ${file.name}…`;
  channel.send(JSON.stringify(begin));
  const label = new TextEncoder().encode(id);
  const room = MESSAGE - 1 - label.length;
  for (let at = 0; at < bytes.length; at += room) {
    if (channel.bufferedAmount > 16 * MESSAGE) {
      await new Promise((resolve) => channel.addEventListener("bufferedamountlow", resolve, { once: true }));
    }
    const chunk = bytes.subarray(at, at + room);
    const message = new Uint8Array(1 + label.length + chunk.length);
    message[0] = label.length;
    message.set(label, 1);
    message.set(chunk, 1 + label.length);
    channel.send(message);
  }
  channel.send(JSON.stringify({ type: "image.end", upload_id: id }));
}
