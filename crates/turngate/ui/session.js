// A session's recorded turns, from the store (so an ended session is listed after a
// restart), a page at a time, each linked to its inspector.

import { el, getJson, search, seconds } from "/ui/common.js";

const $ = (id) => document.getElementById(id);
search($("search"));

const sessionId = location.pathname.split("/").pop();
let after = 0;

$("title").textContent = `Session ${sessionId}`;
$("more").addEventListener("click", () => page().catch(show));
page().catch(show);

function show(e) {
  $("summary").textContent = "";
  $("problem").hidden = false;
  $("problem").textContent = e.message;
}

async function page() {
  const answer = await getJson(`/v1/sessions/${sessionId}/turns?after=${after}&limit=100`);
  const rows = answer.turns.map((t) => el("tr", {},
    // With the session: a client-given turn id may be in another session too.
    el("td", {}, el("a", { href: `/turns/${t.turn_id}?session=${sessionId}` }, `Turn ${t.number}`)),
    el("td", {}, el("span", { class: `badge ${t.status ?? "none"}` }, t.status ?? "not completed")),
    el("td", {}, el("span", { class: `badge ${t.record_state}` }, t.record_state)),
    el("td", {}, t.cause),
    el("td", {}, t.started),
    el("td", {}, seconds(t.input_ms)),
    el("td", { class: "text" }, t.transcript ?? "")));
  $("turns").tBodies[0].append(...rows);
  const shown = $("turns").tBodies[0].rows.length;
  $("summary").textContent = `${shown} recorded turn${shown === 1 ? "" : "s"}${answer.next ? " so far" : ""}.`;
  after = answer.next ?? after;
  $("more").hidden = !answer.next;
}
