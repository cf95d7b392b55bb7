// The dashboard's live parts: each page polls the JSON API once a second and redraws what changed.
"use strict";

const POLL_MS = 1000;

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function percentOf(task) {
  if (task.progress.percent !== null && task.progress.percent !== undefined) return task.progress.percent;
  return task.status === "Complete" ? 100 : null;  // an orchestrator's row has no steps of its own
}

function progressBar(task) {
  const percent = percentOf(task);
  const bar = el("progress", { max: "100" });
  if (percent !== null) bar.value = percent;
  else if (task.status !== "In Progress") return "";  // queued, failed, cancelled: no bar, the status says it
  return bar;
}

function statusCell(task) {
  return el("span", { class: `status status-${task.status.replace(" ", "-")}` }, task.status_text);
}

function label(task) {
  if (!task.role) return task.task_type;
  return task.segment_index === null ? `${task.role}: ${task.task_type}` : `${task.role} ${task.segment_index}: ${task.task_type}`;
}

async function getJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

function poll(draw) {
  const tick = async () => {
    try { await draw(); } catch (error) { console.error(error); }
    setTimeout(tick, POLL_MS);
  };
  tick();
}

// ------------------------------------------------------------------------------------------------ the queue page

async function drawQueue() {
  const filters = new FormData(document.getElementById("filters"));
  const query = new URLSearchParams();
  for (const [name, value] of filters) if (value) query.set(name, value);
  const [stats, tasks, throughput] = await Promise.all([
    getJson("/api/stats"), getJson(`/api/tasks?${query}`), getJson("/api/throughput"),
  ]);
  const counts = document.getElementById("counts");
  counts.replaceChildren(
    ...Object.entries(stats.by_status).map(([status, count]) => el("span", { "data-status": status }, `${status}: ${count}`)),
    el("span", {}, `ready: ${stats.ready}`),
  );
  const body = document.querySelector("#tasks tbody");
  body.replaceChildren(...tasks.map((task) => el("tr", { "data-task-id": task.id, "data-status": task.status },
    el("td", {}, el("a", { href: `/tasks/${task.id}` }, task.id.slice(0, 8))),
    el("td", {}, label(task)),
    el("td", {}, task.model),
    el("td", {}, statusCell(task)),
    el("td", {}, progressBar(task), " ", task.progress_text),
    el("td", { class: "eta" }, duration(task.eta_seconds)),
    task.error ? el("td", { class: "error" }, task.error.split("\n")[0])
      : el("td", {}, task.output_url ? el("a", { href: task.output_url }, "video") : ""),
  )));
  document.querySelector("#throughput tbody").replaceChildren(...throughput.map((row) => el("tr", {},
    el("td", {}, row.model), el("td", {}, String(row.completed_last_hour)), el("td", {}, row.median_seconds === null ? "" : row.median_seconds.toFixed(1)),
  )));
}

// ------------------------------------------------------------------------------------------------ the task page

function childItem(child) {
  const item = el("li", { "data-task-id": child.id, "data-status": child.status },
    el("a", { href: `/tasks/${child.id}` }, label(child)), " ", statusCell(child), " ",
    child.status === "In Progress" ? progressBar(child) : "", " ",
    child.status === "In Progress" ? child.progress_text : "",
    child.error ? el("span", { class: "error" }, ` ${child.error.split("\n")[0]}`) : "",
  );
  if (child.children.length) item.append(el("ul", { class: "tree" }, ...child.children.map(childItem)));
  return item;
}

async function drawTask() {
  const taskId = document.getElementById("task").dataset.taskId;
  const task = await getJson(`/api/tasks/${encodeURIComponent(taskId)}`);
  document.getElementById("task-type").textContent = label(task);
  document.getElementById("task-status").replaceChildren(statusCell(task));
  document.getElementById("task-model").textContent = task.model;
  const bar = document.getElementById("task-progress");
  const percent = percentOf(task);
  if (percent !== null) bar.value = percent; else bar.removeAttribute("value");
  document.getElementById("task-progress-text").textContent = task.progress_text;
  document.getElementById("task-eta").textContent = task.eta_seconds === null ? "" : `ETA ${duration(task.eta_seconds)}`;
  const error = document.getElementById("error");
  error.hidden = !task.error_full;
  error.textContent = task.error_full;
  const output = document.getElementById("output");
  if (task.output_url && !output.querySelector("video, a")) {  // drawn once: a redraw would restart the video
    const video = /\.(mp4|webm|mov)$/i.test(task.output_location || task.output_url);
    output.replaceChildren(
      video ? el("video", { controls: "", preload: "metadata", src: task.output_url, poster: task.thumbnail_url })
        : el("a", { href: task.output_url }, "output"),
      task.thumbnail_url ? el("img", { class: "thumbnail", src: task.thumbnail_url, alt: "thumbnail" }) : "",
    );
  }
  const contract = task.frame_contract;
  document.getElementById("contract").replaceChildren(...(contract ? [el("p", {},
    `frame contract: segments ${JSON.stringify(contract.segment_frames)} − overlaps ${JSON.stringify(contract.overlaps)} = `
    + `${contract.expected_final_frames} frames` + (contract.delivered_frames === null || contract.delivered_frames === undefined
      ? "" : `; delivered ${contract.delivered_frames}`))] : []));
  document.getElementById("children").replaceChildren(...task.children.map(childItem));
  document.getElementById("row").textContent = JSON.stringify(task.row, null, 2);
}

async function act(verb) {
  const taskId = document.getElementById("task").dataset.taskId;
  const token = window.prompt(`admin token to ${verb} this task`);
  if (token === null) return;
  const response = await fetch(`/api/tasks/${encodeURIComponent(taskId)}/${verb}`, {
    method: "POST", headers: { Authorization: `Bearer ${token}` },
  });
  const answer = await response.json();
  document.getElementById("action-result").textContent = response.ok ? `${verb}: ${answer.touched.length} task(s)` : answer.error;
}

// ------------------------------------------------------------------------------------------------ the workers page

async function drawWorkers() {
  const workers = await getJson("/api/workers");
  document.querySelector("#workers tbody").replaceChildren(...workers.map((worker) => el("tr", { "data-worker-id": worker.id },
    el("td", {}, worker.id), el("td", {}, worker.status), el("td", {}, duration(worker.heartbeat_age_seconds)),
    el("td", {}, worker.current_task_id ? el("a", { href: `/tasks/${worker.current_task_id}` }, worker.current_task_id.slice(0, 8)) : ""),
    el("td", {}, worker.current_model || ""), el("td", {}, worker.started_at || ""),
  )));
}

document.addEventListener("DOMContentLoaded", () => {
  const page = window.dashboardPage;
  if (page === "queue") {
    document.getElementById("filters").addEventListener("change", () => drawQueue());
    poll(drawQueue);
  } else if (page === "task") {
    const readOnly = document.body.dataset.readOnly === "true";
    for (const verb of ["cancel", "retry"]) {
      const button = document.getElementById(verb);
      button.disabled = readOnly;
      button.addEventListener("click", () => act(verb));
    }
    poll(drawTask);
  } else if (page === "workers") {
    poll(drawWorkers);
  }
});
