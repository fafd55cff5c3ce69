// The turn inspector: one turn's record, read through the API. The timeline puts the
// turn's moments (speech started, input ended, …), its audio and its spans on one time
// axis, a row each in time order (milliseconds from the turn's start); the audio
// players move a playhead across it.

import { bytes, el, getJson, getText, search, seconds } from "/ui/common.js";

const $ = (id) => document.getElementById(id);
search($("search"));

const turnId = location.pathname.split("/").pop();
const params = new URLSearchParams(location.search);
const which = params.get("session") ? `?session=${encodeURIComponent(params.get("session"))}` : "";

/** The API address of artifact `name` of this turn. */
function artifact(name) {
  return `/v1/turns/${turnId}/artifacts/${name.split("/").map(encodeURIComponent).join("/")}${which}`;
}

main().catch((e) => {
  $("summary").textContent = "";
  const problem = $("problem");
  problem.hidden = false;
  problem.textContent = e.message;
  if (e.problem?.sessions) {
    problem.append(" ", ...e.problem.sessions.map((s) =>
      el("a", { href: `/turns/${turnId}?session=${s}` }, `session ${s}`)));
  }
});

/** The inspector page of turn `id` of session `session`. */
function turnPage(id, session) {
  return `/turns/${id}?session=${session}`;
}

/**
 * Renders every section, then shows them at once (nothing moves once shown); a section
 * whose part of the record cannot be read says so, and the others are still shown.
 */
async function main() {
  const m = await getJson(`/v1/turns/${turnId}${which}`);
  document.title = `turn ${m.number} · ${m.turn_id.slice(0, 8)} · turngate`;
  $("title").textContent = `Turn ${m.number} of session ${m.session_id}`;
  $("summary").replaceChildren(
    el("span", { class: `badge ${m.status ?? "none"}` }, m.status ?? "not completed"), " ",
    el("span", { class: `badge ${m.record_state}` }, `record ${m.record_state}`), " ",
    `${m.cause} turn`, m.reason ? `, input ended by ${m.reason.replaceAll("_", " ")}` : "",
    `, ${seconds(m.counters.audio_ms)} of audio`);
  const [config, turns, spans, request] = await Promise.all([
    getJson("/ui/config.json").catch(() => ({})),
    around(m).catch(() => []),
    spansOf(m).catch(() => []),
    requestOf(m).catch((e) => ({ error: e.message })),
  ]);
  const sections = [
    ["links", () => links(m, config, turns)],
    ["timeline", () => timeline(m, spans)],
    ["audio-title", () => audio(m)],
    ["said-title", () => said(m)],
    ["prompt", () => prompt(m, turns, request)],
    ["record", () => record(m)],
  ];
  for (const [id, render] of sections) {
    try {
      render();
    } catch (e) {
      $(id).after(el("p", { class: "problem" }, `This part of the record cannot be shown: ${e.message}`));
    }
  }
  $("content").hidden = false;
}

/**
 * The session's recorded turns around this one (the one before and the one after, past
 * up to ten numbers without a record) and those its prompt held, by number.
 */
async function around(m) {
  const page = (after, limit) =>
    getJson(`/v1/sessions/${m.session_id}/turns?after=${Math.max(0, after)}&limit=${Math.max(1, Math.min(1000, limit))}`)
      .then((p) => p.turns);
  const history = m.history ?? [];
  const [near, held] = await Promise.all([
    page(m.number - 11, 22),
    history.length ? page(history[0] - 1, history[history.length - 1] - history[0] + 1) : [],
  ]);
  const byNumber = new Map([...held, ...near].map((t) => [t.number, t]));
  return [...byNumber.values()].sort((a, b) => a.number - b.number);
}

function has(m, name) {
  return m.artifacts.some((a) => a.name === name);
}

function links(m, config, turns) {
  const before = turns.filter((t) => t.number < m.number).pop();
  const after = turns.find((t) => t.number > m.number);
  const page = (id) => turnPage(id, m.session_id);
  const nav = [el("a", { href: `/sessions/${m.session_id}` }, "All turns of the session")];
  if (before) nav.push(el("a", { href: page(before.turn_id), rel: "prev" }, `← Turn ${before.number}`));
  if (after) nav.push(el("a", { href: page(after.turn_id), rel: "next" }, `Turn ${after.number} →`));
  if (m.chain?.continues) nav.push(el("a", { href: page(m.chain.continues) }, "Continues turn…"));
  if (m.chain?.successor) nav.push(el("a", { href: page(m.chain.successor) }, "Answered by turn…"));
  if (config.trace_url_template) {
    const href = config.trace_url_template.replaceAll("{trace_id}", m.trace_id);
    nav.push(el("a", { href, rel: "noopener noreferrer", target: "_blank" }, "Trace"));
  }
  $("links").replaceChildren(...nav);
}

/** The turn's spans from `spans.otlp.json`: name, start and end in ms from the turn's start. */
async function spansOf(m) {
  if (!has(m, "spans.otlp.json")) return [];
  const text = await getText(artifact("spans.otlp.json"));
  if (!text) return [];
  const start = Date.parse(m.timings.started.at);
  const ms = (nanos) => Number(nanos) / 1e6 - start;
  const spans = [];
  for (const resource of JSON.parse(text).resourceSpans ?? []) {
    for (const scope of resource.scopeSpans ?? []) {
      for (const s of scope.spans ?? []) {
        spans.push({ name: s.name, start: ms(s.startTimeUnixNano), end: ms(s.endTimeUnixNano), error: s.status?.code === 2 || s.status?.code === "STATUS_CODE_ERROR" });
      }
    }
  }
  return spans.sort((a, b) => a.start - b.start || b.end - a.end);
}

/** The length of the ASR input, from its WAV size (16 kHz, 16-bit mono, 44-byte header). */
function asrMs(m) {
  const wav = m.artifacts.find((a) => a.name === "audio.asr.wav");
  return wav ? Math.max(0, (wav.size - 44) / 32) : null;
}

function timeline(m, spans) {
  const t = m.timings;
  const moments = [
    ["speech started", t.speech_started], ["speech ended", t.speech_ended],
    ["input ended", t.input_ended], ["processing started", t.processing_started],
    ["completed", t.completed],
  ].filter(([, at]) => at).map(([label, at]) => [label, at.offset_ms]);
  const rows = moments.map(([label, at]) => ({ name: label, start: at, end: at, kind: "moment" }));
  if (m.counters.audio_ms) rows.push({ name: "audio as received", start: 0, end: m.counters.audio_ms, kind: "audio" });
  const asr = asrMs(m);
  if (asr !== null) rows.push({ name: "audio given to ASR", start: 0, end: asr, kind: "audio" });
  rows.push(...spans.map((s) => ({ ...s, kind: s.error ? "span error" : "span" })));
  rows.sort((a, b) => a.start - b.start || (b.end - b.start) - (a.end - a.start));
  const total = Math.max(1, ...rows.map((r) => r.end), ...moments.map(([, at]) => at));
  const pct = (ms) => `${Math.min(100, Math.max(0, (ms / total) * 100))}%`;
  const box = $("timeline");
  const axis = el("div", { class: "axis", "aria-hidden": "true" });
  for (let i = 0; i <= 4; i++) {
    const tick = el("span", { class: "tick" }, seconds((total * i) / 4));
    tick.style.left = pct((total * i) / 4);
    axis.append(tick);
  }
  const list = el("ol", { class: "rows" });
  for (const r of rows) {
    const bar = el("span", { class: `bar ${r.kind}` });
    bar.style.left = pct(r.start);
    bar.style.width = pct(Math.max(r.end - r.start, total / 500));
    list.append(el("li", {},
      el("span", { class: "label", title: r.name }, `${r.name} `, el("span", { class: "hint" },
        r.kind === "moment" ? `at ${seconds(r.start)}` : `${seconds(r.start)} + ${seconds(r.end - r.start)}`)),
      el("span", { class: "track" }, bar)));
  }
  // Over the tracks only, so that its percentages are the bars'.
  const playhead = el("div", { class: "playhead" });
  const overlay = el("div", { class: "overlay", "aria-hidden": "true" }, playhead);
  box.replaceChildren(axis, list, overlay);
  for (const id of ["received", "asr"]) {
    $(id).addEventListener("timeupdate", (event) => {
      playhead.style.left = pct(event.target.currentTime * 1000);
      playhead.classList.add("shown");
    });
  }
}

function audio(m) {
  if (has(m, "audio.received.ogg")) $("received").src = artifact("audio.received.ogg");
  else $("received").replaceWith(el("p", { class: "hint" }, "Not in the record."));
  if (has(m, "audio.asr.wav")) $("asr").src = artifact("audio.asr.wav");
  else $("asr").replaceWith(el("p", { class: "hint" }, "Not in the record."));
}

function said(m) {
  $("transcript").textContent = m.transcript ?? "–";
  $("answer").textContent = m.answer ?? "–";
  const described = new Map((m.descriptions ?? []).map((d) => [d.blob_id, d.description]));
  const figures = m.artifacts.filter((a) => a.name.startsWith("images/")).map((a) => {
    const blob = a.name.slice("images/".length).replace(/\.[a-z]+$/, "");
    const img = el("img", { src: artifact(a.name), alt: `image ${blob} as uploaded`, loading: "lazy" });
    img.addEventListener("error", () =>
      img.replaceWith(el("p", { class: "problem" }, "This image could not be read from the record.")), { once: true });
    return el("figure", { class: "image" },
      img,
      el("figcaption", {},
        el("code", {}, blob), ` · ${bytes(a.size)} · ${a.content_type}`,
        described.has(blob) ? el("p", { class: "description" }, `Vision: ${described.get(blob)}`) : null));
  });
  $("images").replaceChildren(...(figures.length ? figures : [el("p", { class: "hint" }, "No images in this turn.")]));
}

/** The LLM request of the last attempt: its name and body, or null if there is none. */
async function requestOf(m) {
  const requests = m.artifacts.map((a) => /^backends\/llm\.(\d+)\.request\.json$/.exec(a.name)).filter(Boolean);
  if (!requests.length) return null;
  const name = requests.sort((a, b) => Number(b[1]) - Number(a[1]))[0][0];
  const text = await getText(artifact(name));
  if (text === null) throw new Error(`${name} could not be read`);
  return { name, body: JSON.parse(text) };
}

/** The LLM request, message by message. */
function prompt(m, turns, sent) {
  const list = $("prompt");
  if (sent?.error) throw new Error(sent.error);
  if (!sent) {
    list.replaceWith(el("p", { class: "hint" }, "No LLM request in this record."));
    return;
  }
  const { name: last, body: request } = sent;
  const byNumber = new Map(turns.map((t) => [t.number, t.turn_id]));
  const history = m.history ?? [];
  (request.messages ?? []).forEach((message, i) => {
    // After the system prompt, each history turn is a user and an assistant message.
    const turn = i >= 1 && i <= 2 * history.length ? history[Math.floor((i - 1) / 2)] : null;
    const from = turn === null ? null : byNumber.has(turn)
      ? el("a", { href: turnPage(byNumber.get(turn), m.session_id) }, `from turn ${turn}`)
      : `from turn ${turn}`;
    list.append(el("li", { class: `message ${message.role}` },
      el("p", { class: "role" }, message.role, from ? " · " : "", from ?? ""),
      ...content(message.content)));
  });
  list.after(el("details", {}, el("summary", {}, `${last} as sent`), el("pre", {}, JSON.stringify(request, null, 2))));
}

function content(c) {
  if (typeof c === "string") return [el("p", { class: "text" }, c)];
  return (c ?? []).map((part) => part.type === "image_url"
    ? el("img", { class: "thumb", src: part.image_url?.url, alt: "an image in the prompt" })
    : el("p", { class: "text" }, part.text ?? ""));
}

function record(m) {
  const facts = [
    ["state", `${m.record_state}${m.missing?.length ? "" : " (nothing missing)"}`],
    ...(m.missing ?? []).map((x) => ["missing", `${x.name}: ${x.reason.replaceAll("_", " ")}`]),
    ["turn id / trace id", m.turn_id], ["root span", m.root_span_id], ["node", m.node_id],
    ["started", m.timings.started.at],
    ...Object.entries(m.stages ?? {}).map(([k, v]) => {
      const ms = m.timings.stages_ms?.[k === "llm" ? "llm_total" : k];
      return [`stage ${k}`, `${v}${ms !== undefined ? ` in ${seconds(ms)}` : ""}`];
    }),
    ...Object.entries(m.counters).map(([k, v]) => [k.replaceAll("_", " "), String(v)]),
    ...["asr", "vision", "llm"].filter((k) => m.config?.[k]).map((k) => [`${k} model`, `${m.config[k].model} at ${m.config[k].base_url}`]),
    ...Object.entries(m.claims ?? {}).map(([k, v]) => [k, v]),
  ];
  $("record").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  $("artifacts").tBodies[0].replaceChildren(...m.artifacts.map((a) => el("tr", {},
    el("td", {}, el("a", { href: artifact(a.name) }, a.name)),
    el("td", {}, bytes(a.size)), el("td", {}, a.content_type),
    el("td", {}, seconds(a.offset_ms)), el("td", {}, el("code", {}, a.sha256.slice(0, 16) + "…")))));
}
