// Drives Debian's Chromium (playwright-core) as a newcomer and then an operator would:
// open the gateway's demo page, connect with a fake microphone playing a speech
// fixture, upload an image while the first turn is open, follow the turn's link to the
// inspector (signing in on the way), and read what the inspector shows.
//
// Environment: BASE (the gateway, http://127.0.0.1:PORT), CLIENT_TOKEN, ADMIN_TOKEN,
// AUDIO (a WAV for the fake microphone), IMAGE (a PNG to upload), SCREENSHOT (where to
// save the inspector). Prints one JSON object of facts for the Rust test to check;
// exits non-zero (with the page's console) if a step fails.

import { chromium } from "playwright-core";

const { BASE, CLIENT_TOKEN, ADMIN_TOKEN, AUDIO, IMAGE, SCREENSHOT } = process.env;
const console_ = [];
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    `--use-file-for-fake-audio-capture=${AUDIO}%noloop`,
    "--allow-loopback-in-peer-connection",
    "--disable-quic",
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.on("console", (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console_.push(`pageerror: ${e.message}`));
  page.on("response", (r) => { if (r.status() >= 400) console_.push(`http ${r.status()} ${r.url()}`); });

  // The demo: connect, then an image into the first turn while it is open.
  await page.goto(`${BASE}/`);
  await page.getByLabel("Client token").fill(CLIENT_TOKEN);
  await page.getByRole("button", { name: "Start microphone and connect" }).click();
  await page.waitForFunction(() => window.turngate.events.some((e) => e.type === "turn.started"), null, { timeout: 20000 });
  await page.getByLabel("Choose an image").setInputFiles(IMAGE);
  const accepted = await page.waitForFunction(
    () => window.turngate.events.find((e) => e.type === "image.accepted" || e.type === "image.rejected"),
    null, { timeout: 15000 }).then((h) => h.jsonValue());
  if (accepted.type !== "image.accepted") throw new Error(`image refused: ${JSON.stringify(accepted)}`);
  const turnId = accepted.turn_id;
  await page.waitForFunction(
    (id) => window.turngate.events.some((e) => e.type === "turn.completed" && e.turn_id === id),
    turnId, { timeout: 30000 });
  const shown = await page.locator(`li[data-turn-id="${turnId}"]`).innerText();
  // Push to talk: a client turn held open by the button, ended by it.
  await page.getByRole("button", { name: "Start a turn" }).click();
  const held = await page.waitForFunction(
    () => window.turngate.events.find((e) => e.type === "turn.started" && e.cause === "client"),
    null, { timeout: 10000 }).then((h) => h.jsonValue());
  await page.getByRole("button", { name: "End the turn" }).click();
  const released = await page.waitForFunction(
    (id) => window.turngate.events.find((e) => e.type === "turn.ended" && e.turn_id === id),
    held.turn_id, { timeout: 10000 }).then((h) => h.jsonValue());
  const events = await page.evaluate(() => window.turngate.events);
  // Layout shifts of the pages from here on (CLS, as Chromium counts them).
  await page.addInitScript(() => {
    window.layoutShift = 0;
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) if (!entry.hadRecentInput) window.layoutShift += entry.value;
    }).observe({ type: "layout-shift", buffered: true });
  });

  // The turn's link, through the sign-in form, to its inspector.
  await page.locator(`li[data-turn-id="${turnId}"] a.inspect`).click();
  await page.waitForURL(/\/login\?next=/);
  await page.getByLabel("Operator token").fill(ADMIN_TOKEN);
  await Promise.all([
    page.waitForURL(new RegExp(`/turns/${turnId}$`)),
    page.getByRole("button", { name: "Sign in" }).click(),
  ]);
  // The record is written once the turn ends: reload until the inspector has it.
  for (let i = 0; i < 50; i++) {
    const ready = await page.waitForFunction(
      () => document.querySelector("#prompt li") || !document.querySelector("#problem").hidden,
      null, { timeout: 10000 }).then(() => page.locator("#prompt li").count());
    if (ready > 0) break;
    await page.waitForTimeout(200);
    await page.reload();
  }
  await page.waitForFunction(() => {
    const img = document.querySelector("#images img");
    const audio = document.querySelector("audio#received");
    return img && img.complete && audio && Number.isFinite(audio.duration) && audio.duration > 0;
  }, null, { timeout: 15000 });
  // The playhead follows the player over the received audio's bar.
  await page.evaluate(() => new Promise((resolve) => {
    const audio = document.querySelector("audio#received");
    audio.addEventListener("timeupdate", resolve, { once: true });
    audio.currentTime = audio.duration / 2;
  }));
  const facts = await page.evaluate(async (turnId) => {
    const audio = document.querySelector("audio#received");
    const ranged = await fetch(audio.src, { headers: { Range: "bytes=0-99" } });
    const bar = document.querySelector("#timeline .bar.audio").getBoundingClientRect();
    const playhead = document.querySelector("#timeline .playhead").getBoundingClientRect();
    return {
      playhead_offset_px: playhead.left - (bar.left + bar.width / 2),
      layout_shift: window.layoutShift,
      trace: document.querySelector("#links a[target=_blank]")?.href,
      title: document.querySelector("#title").textContent,
      transcript: document.querySelector("#transcript").textContent,
      answer: document.querySelector("#answer").textContent,
      image_natural_width: document.querySelector("#images img").naturalWidth,
      image_caption: document.querySelector("#images figcaption").textContent,
      audio_src: audio.src,
      audio_duration_s: audio.duration,
      range_status: ranged.status,
      range_content_range: ranged.headers.get("content-range"),
      prompt: document.querySelector("#prompt").innerText,
      timeline_rows: document.querySelectorAll("#timeline .rows li").length,
      links: [...document.querySelectorAll("#links a")].map((a) => a.textContent),
      turn_id: turnId,
    };
  }, turnId);
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  console.log(JSON.stringify({ ...facts, demo_text: shown, held, released, events, console: console_ }));
} catch (e) {
  console.error(`${e.stack}\n--- page console ---\n${console_.join("\n")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
