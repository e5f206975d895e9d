// chatd web page: plain JavaScript over the HTTP API (docs/http.md).
"use strict";
const $ = (id) => document.getElementById(id);
let token = "";
let current = null;   // chat id
let source = null;    // EventSource
let retryTimer = null;
const titles = {};    // chat id -> title, from the chat list

function loadToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) { localStorage.setItem("chatd_token", m[1]); history.replaceState(null, "", location.pathname); }
  token = localStorage.getItem("chatd_token") || "";
  $("token-form").hidden = !!token;
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + token } };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) { showProblem(data); throw data; }
  $("problem").hidden = true;
  return data;
}

function usd(micros) { return micros == null ? "-" : "$" + (micros / 1e6).toFixed(4); }

function showProblem(p) {
  const el = $("problem");
  let text = (p.title || "Error") + (p.detail ? ": " + p.detail : "");
  if (p.kind === "usage_limit") {
    text = `Usage limit reached: spent ${usd(p.spent_micros)} of ${usd(p.limit_micros)}` +
      (p.resets_at ? `, resets ${new Date(p.resets_at).toLocaleString()}` : "");
  }
  el.textContent = text; el.hidden = false;
}

async function refreshSpend() {
  try {
    const u = await api("GET", "/api/usage");
    $("spend").textContent = u.limit_micros == null ? `spend: ${usd(u.spent_micros)} (no limit)`
      : `spend: ${usd(u.spent_micros)} of ${usd(u.limit_micros)}`;
  } catch (e) { /* shown */ }
}

async function refreshChats() {
  const data = await api("GET", "/api/chats?limit=50");
  const ul = $("chats"); ul.textContent = "";
  for (const c of data.chats) {
    titles[c.id] = c.title || "untitled";
    if (c.id === current) $("chat-title").textContent = titles[c.id];
    const li = document.createElement("li");
    li.textContent = (c.title || "untitled") + " · " + c.status;
    li.dataset.id = c.id;
    if (c.id === current) li.className = "active";
    li.onclick = () => openChat(c.id);
    ul.appendChild(li);
  }
}

function textOf(content) {
  if (typeof content === "string") return content;
  return (content || []).filter((p) => p.type === "text").map((p) => p.text).join("");
}

function addMessage(m) {
  if (document.querySelector(`[data-message="${m.id}"]`)) return;
  const div = document.createElement("div");
  div.className = "msg " + m.role; div.dataset.message = m.id;
  div.textContent = textOf(m.content);
  if (m.role === "user") {
    const b = document.createElement("button"); b.className = "edit"; b.textContent = "edit";
    b.onclick = async () => {
      const text = prompt("Edit message", textOf(m.content));
      if (text) await api("PATCH", `/api/chats/${current}/messages/${m.id}`, { content: text });
    };
    div.appendChild(b);
  }
  $("messages").appendChild(div);
  $("streaming").textContent = ""; $("streaming").hidden = true;
}

function setStatus(s) {
  $("chat-status").textContent = s.status + (s.archived ? " (archived)" : "");
  $("interrupt").hidden = s.status !== "running";
  if (s.status !== "pending") clearRetry();
}

function clearRetry() { if (retryTimer) clearInterval(retryTimer); retryTimer = null; $("retry").hidden = true; }

function showRetry(r) {
  clearRetry();
  const at = r.retrying_at ? new Date(r.retrying_at).getTime() : Date.now() + (r.delay_ms || 0);
  const el = $("retry"); el.hidden = false;
  const tick = () => {
    const s = Math.max(0, Math.ceil((at - Date.now()) / 1000));
    el.textContent = `Attempt ${r.attempt} failed (${r.error ? r.error.message : "error"}); retrying in ${s}s`;
    if (s <= 0) clearRetry();
  };
  tick(); retryTimer = setInterval(tick, 250);
}

function showQueue(q) {
  const ul = $("queue"); ul.textContent = "";
  for (const m of q.queue) { const li = document.createElement("li"); li.textContent = "queued: " + textOf(m.content); ul.appendChild(li); }
}

function openChat(id) {
  if (source) source.close();
  current = id; clearRetry();
  $("messages").textContent = ""; $("queue").textContent = ""; $("problem").hidden = true;
  $("streaming").textContent = ""; $("streaming").hidden = true;
  $("chat-title").textContent = titles[id] || "chat";
  source = new EventSource(`/api/chats/${id}/stream?access_token=${encodeURIComponent(token)}`);
  source.addEventListener("message", (e) => addMessage(JSON.parse(e.data).message));
  source.addEventListener("status", (e) => { setStatus(JSON.parse(e.data)); refreshChats(); refreshSpend(); });
  source.addEventListener("parts", (e) => {
    const p = JSON.parse(e.data); const el = $("streaming"); el.hidden = false;
    el.textContent += p.parts.filter((x) => x.type === "text").map((x) => x.text).join("");
  });
  source.addEventListener("queue", (e) => showQueue(JSON.parse(e.data)));
  source.addEventListener("retry", (e) => showRetry(JSON.parse(e.data)));
  source.addEventListener("error", (e) => { if (e.data) { const d = JSON.parse(e.data); showProblem({ title: "The turn failed", detail: d.error ? `${d.error.kind}: ${d.error.message}` : "" }); } });
  source.addEventListener("title", (e) => { $("chat-title").textContent = JSON.parse(e.data).title; });
  source.addEventListener("messages_deleted", (e) => {
    for (const id of JSON.parse(e.data).message_ids) { const el = document.querySelector(`[data-message="${id}"]`); if (el) el.remove(); }
  });
  source.addEventListener("resync", () => { $("streaming").textContent = ""; });
  source.addEventListener("end", () => source.close());
  refreshChats();
}

$("send").onsubmit = async (ev) => {
  ev.preventDefault();
  const text = $("text").value.trim(); if (!text) return;
  try {
    if (!current) { const c = await api("POST", "/api/chats", { content: text, title: text.slice(0, 40) }); openChat(c.id); }
    else await api("POST", `/api/chats/${current}/messages`, { content: text, busy_behavior: $("interrupt-send").checked ? "interrupt" : "queue" });
    $("text").value = "";
  } catch (e) { /* shown */ }
};
$("new-chat").onclick = () => { if (source) source.close(); current = null; $("messages").textContent = ""; $("chat-title").textContent = "New chat"; $("chat-status").textContent = ""; $("text").focus(); };
$("interrupt").onclick = () => api("POST", `/api/chats/${current}/interrupt`).catch(() => {});
$("token-form").onsubmit = (ev) => { ev.preventDefault(); localStorage.setItem("chatd_token", $("token").value.trim()); loadToken(); start(); };

function start() { if (token) { refreshChats().catch(() => {}); refreshSpend(); } }
loadToken(); start();
