// What the pages share: reading the API, and building elements without ever parsing
// text as HTML (everything shown came from a user, a model or a backend).

/** An element `tag` with attributes `attrs` and children (strings become text). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** GET `path` as JSON; throws an Error carrying the problem's detail and status. */
export async function getJson(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  if (response.status === 401 || response.status === 403) {
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new Error("sign in first");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(body?.detail ?? `${path}: ${response.status}`);
    error.status = response.status;
    error.problem = body;
    throw error;
  }
  return body;
}

/** The text of `path` (an artifact), or null if there is none. */
export async function getText(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  return response.ok ? response.text() : null;
}

/** Milliseconds as "1.234 s". */
export function seconds(ms) {
  return ms === undefined || ms === null ? "–" : `${(ms / 1000).toFixed(3)} s`;
}

/** Bytes as "12.3 KiB". */
export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

const ID = /^[0-9a-f]{32}$/;

/** Whether `text` is a turn or session id (32 lowercase hex). */
export function isId(text) {
  return ID.test(text);
}

/**
 * The search box of the operator pages: a turn id or a session id goes to its page
 * (a turn if the store knows one by that id, else a session).
 */
export function search(form) {
  const input = form.querySelector("input");
  const message = form.querySelector("[role=status]");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = input.value.trim().toLowerCase();
    if (!isId(id)) {
      message.textContent = "A turn or session id is 32 hex characters.";
      return;
    }
    const turn = await fetch(`/v1/turns/${id}`, { credentials: "same-origin" });
    if (turn.ok || turn.status === 409) location.assign(`/turns/${id}`);
    else if (turn.status === 404) location.assign(`/sessions/${id}`);
    else if (turn.status === 401 || turn.status === 403) location.assign(`/login?next=${encodeURIComponent(`/turns/${id}`)}`);
    else message.textContent = `The gateway could not look it up (${turn.status}); try again.`;
  });
}
