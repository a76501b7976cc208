// The avatar page: upload a photo/video as a task, poll its progress, preview the idle loop,
// then open the main page with that avatar. Talks to /api/avatar/* (see README).
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 500;
const PREVIEW_FRAMES = 50;  // at most this many frames fetched for the preview
const token = readToken();

// The --auth-token, as the main page keeps it: once in the URL fragment, then in this tab's storage.
function readToken() {
  const fromFragment = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromFragment) {
    sessionStorage.setItem("avatar-token", fromFragment);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("avatar-token") || "";
}

function authHeaders() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function withToken(url) {
  return token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url;
}

function log(text, cls) {
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  if (cls) item.className = cls;
  $("log").prepend(item);
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  const data = await response.json().catch(() => ({ code: -1, msg: `HTTP ${response.status}` }));
  if (!response.ok || data.code !== 0) throw new Error(data.msg || `HTTP ${response.status}`);
  return data.data;
}

function showTask(task) {
  $("progress").value = task.progress;
  $("status").textContent = `${task.avatar_id}: ${task.status} ${Math.round(task.progress)}%`;
  $("status").className = "pill " + ({ completed: "ok", failed: "bad", cancelled: "bad" }[task.status] || "talk");
  $("error").hidden = !task.error_msg;
  $("error").textContent = task.error_msg || "";
}

async function refreshList() {
  const tasks = await api("/api/avatar/tasks").then((data) => data.tasks).catch(() => []);
  $("tasks").replaceChildren(...tasks.map((task) => {
    const item = document.createElement("li");
    item.textContent = `${task.avatar_id} (${task.kind}, ${task.model_type}): ${task.status} ${Math.round(task.progress)}%`;
    return item;
  }));
}

async function preview(avatarId) {
  const first = await fetch(withToken(`/api/avatar/preview/${encodeURIComponent(avatarId)}?frame=0`));
  if (!first.ok) return;
  const count = Number(first.headers.get("X-Frame-Count")) || 1;
  const step = Math.max(1, Math.ceil(count / PREVIEW_FRAMES));
  const urls = [];
  for (let i = 0; i < count; i += step) {
    urls.push(withToken(`/api/avatar/preview/${encodeURIComponent(avatarId)}?frame=${i}`));
  }
  await Promise.all(urls.map((url) => new Promise((done) => {
    const image = new Image();
    image.onload = image.onerror = done;
    image.src = url;
  })));
  const order = urls.concat(urls.slice(1, -1).reverse());  // ping-pong, as the server plays it
  let index = 0;
  $("preview").hidden = false;
  clearInterval(preview.timer);
  preview.timer = setInterval(() => {
    $("preview").src = order[index++ % order.length];
  }, 40 * step);
  $("use").href = `/?avatar=${encodeURIComponent(avatarId)}`;  // the token stays in this tab's storage
  $("use").hidden = false;
}

async function follow(taskId) {
  for (;;) {
    const task = await api(`/api/avatar/task/${taskId}`);
    showTask(task);
    if (["completed", "failed", "cancelled"].includes(task.status)) {
      log(`${task.avatar_id}: ${task.status}${task.error_msg ? ` (${task.error_msg})` : ` ${task.message}`}`,
        task.status === "completed" ? "" : "error");
      if (task.status === "completed") await preview(task.avatar_id);
      refreshList();
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function submit(event) {
  event.preventDefault();
  $("start").disabled = true;
  $("use").hidden = true;
  try {
    const form = new FormData($("task"));
    if (!form.get("file").type.startsWith("image/")) form.delete("loop_seconds");
    const task = await api("/api/avatar/task", { method: "POST", body: form });
    log(`task ${task.task_id} queued for ${task.avatar_id}`);
    showTask(task);
    refreshList();
    await follow(task.task_id);
  } catch (err) {
    log(`failed: ${err.message}`, "error");
    $("error").hidden = false;
    $("error").textContent = err.message;
  } finally {
    $("start").disabled = false;
  }
}

$("task").addEventListener("submit", submit);
refreshList();
