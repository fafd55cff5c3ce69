// The gateway's pages in Debian's Firefox ESR, driven over WebDriver BiDi (Firefox
// speaks it natively; playwright-core drives only its own Firefox build): the demo page
// loads clean, the inspector of a recorded turn (TURN) shows it whole after the
// sign-in form and links the next turn (BROKEN), whose LLM request the test deleted
// from the store: that page still shows the rest of its record. Firefox gathers no loopback ICE candidate in the suite's network
// namespace (its `media.peerconnection.ice.loopback` has no effect there), so the
// demo's call itself is exercised in Chromium only.
//
// Run with `node --experimental-websocket` (Node.js 20). Environment: BASE,
// ADMIN_TOKEN, TURN, BROKEN. Prints one JSON object of facts; exits non-zero if a step fails.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

const { BASE, ADMIN_TOKEN, TURN, BROKEN } = process.env;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A loopback TCP port free just now. */
async function freePort() {
  const server = createServer().listen(0, "127.0.0.1");
  await new Promise((resolve) => server.once("listening", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const profile = mkdtempSync(join(tmpdir(), "turngate-firefox-"));
writeFileSync(join(profile, "user.js"), [
  'user_pref("browser.shell.checkDefaultBrowser", false);',
  'user_pref("datareporting.policy.dataSubmissionEnabled", false);',
  "",
].join("\n"));
const port = await freePort();
const firefox = spawn("firefox-esr", ["--headless", "--no-remote", "--profile", profile, "--remote-debugging-port", String(port)],
  { stdio: ["ignore", "ignore", "pipe"] });
let stderr = "";
const listening = new Promise((resolve) => firefox.stderr.on("data", (d) => {
  stderr += d;
  if (stderr.includes("WebDriver BiDi listening")) resolve();
}));

const consoleLines = [];
let ws;
let next = 0;
const waiting = new Map();

/** One BiDi command; its result, or throws its error. */
function command(method, params = {}) {
  const id = ++next;
  ws.send(JSON.stringify({ id, method, params }));
  return new Promise((resolve, reject) => waiting.set(id, (m) =>
    m.type === "error" ? reject(new Error(`${method}: ${m.error}: ${m.message}`)) : resolve(m.result)));
}

let context;

/** Evaluates `expression` in the page (promises awaited); its value, via JSON. */
async function evaluate(expression) {
  const result = await command("script.evaluate", {
    expression: `(async () => JSON.stringify(await (${expression})))()`,
    target: { context }, awaitPromise: true,
  });
  if (result.type === "exception") throw new Error(`${expression}: ${result.exceptionDetails.text}`);
  return result.result.value === undefined ? undefined : JSON.parse(result.result.value);
}

/** Polls `expression` until it is truthy (errors while a page loads count as not yet). */
async function until(expression, what, ms = 20000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const value = await evaluate(expression).catch(() => null);
    if (value) return value;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function navigate(url) {
  await command("browsingContext.navigate", { context, url, wait: "complete" });
}

try {
  await Promise.race([listening, sleep(30000).then(() => { throw new Error(`Firefox did not start: ${stderr}`); })]);
  ws = new WebSocket(`ws://127.0.0.1:${port}/session`);
  ws.onmessage = (message) => {
    const m = JSON.parse(message.data);
    if (m.id && waiting.has(m.id)) {
      waiting.get(m.id)(m);
      waiting.delete(m.id);
    } else if (m.method === "log.entryAdded") {
      consoleLines.push(`${m.params.level}: ${m.params.text}`);
    }
  };
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  await command("session.new", { capabilities: {} });
  await command("session.subscribe", { events: ["log.entryAdded"] });
  context = (await command("browsingContext.getTree")).contexts[0].context;

  // The demo page loads, its controls ready.
  await navigate(`${BASE}/`);
  const demo = await until(`document.getElementById("start") && !document.getElementById("start").disabled && document.title`, "the demo page");
  const turnId = TURN;

  // Sign in, on the way to the inspector.
  await navigate(`${BASE}/login?next=/turns/${turnId}`);
  await evaluate(`(document.getElementById("token").value = ${JSON.stringify(ADMIN_TOKEN)}, document.querySelector("form").submit(), true)`);
  await until(`location.pathname === "/turns/${turnId}" && document.readyState === "complete"`, "the inspector");
  for (let i = 0; i < 50; i++) {
    const ready = await until(`document.querySelector("#prompt li") ? "ready" : (!document.querySelector("#problem").hidden && "problem")`, "the inspector's content");
    if (ready === "ready") break;
    await sleep(200);
    await navigate(`${BASE}/turns/${turnId}`);
  }
  await until(`(() => {
    const img = document.querySelector("#images img");
    const audio = document.querySelector("audio#received");
    return img && img.complete && audio && Number.isFinite(audio.duration) && audio.duration > 0;
  })()`, "the image and the audio");
  const facts = await evaluate(`(async () => {
    const audio = document.querySelector("audio#received");
    const ranged = await fetch(audio.src, { headers: { Range: "bytes=0-99" } });
    return {
      transcript: document.querySelector("#transcript").textContent,
      image_natural_width: document.querySelector("#images img").naturalWidth,
      audio_duration_s: audio.duration,
      range_status: ranged.status,
      prompt: document.querySelector("#prompt").innerText,
      user_agent: navigator.userAgent,
      next: document.querySelector("#links a[rel=next]")?.getAttribute("href"),
    };
  })()`);
  // The next turn, through its link: its prompt cannot be read, the rest is shown.
  await navigate(new URL(facts.next, BASE).href);
  await until(`!document.getElementById("content").hidden`, "the broken record's page");
  const broken = await evaluate(`({
    turn: location.pathname.split("/").pop(),
    problems: [...document.querySelectorAll("main .problem")].map((p) => p.textContent),
    record_facts: document.querySelectorAll("#record dt").length,
    transcript: document.querySelector("#transcript").textContent,
    artifacts: document.querySelectorAll("#artifacts tbody tr").length,
  })`);
  console.log(JSON.stringify({ ...facts, turn_id: turnId, demo_title: demo, broken, console: consoleLines }));
} catch (e) {
  console.error(`${e.stack}\n--- console ---\n${consoleLines.join("\n")}\n--- firefox ---\n${stderr.slice(-2000)}`);
  process.exitCode = 1;
} finally {
  try { await command("session.end"); } catch { /* gone already */ }
  firefox.kill();
  await new Promise((resolve) => firefox.once("exit", resolve));
  rmSync(profile, { recursive: true, force: true });
  process.exit();
}
