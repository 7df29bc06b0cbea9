// The ReMemory page: each view fills itself through the public REST API (/v1).
// Every text from the server goes in with textContent (never innerHTML): episode texts are data.
"use strict";

const KEY = "rememory.api-key";
const body = document.body;
const needsKey = body.dataset.auth === "1";
const $ = (id) => document.getElementById(id);

// --- the API, with the key from this tab's sessionStorage in the Authorization header ---

class ApiError extends Error {
  constructor(status, error) {
    super(error && error.message ? error.message : `The server answered ${status}.`);
    this.status = status;
    this.type = error && error.type;
    this.details = (error && error.details) || [];
  }
}

async function api(method, path, payload) {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (needsKey && key) headers.Authorization = `Bearer ${key}`;
  const init = { method, headers, credentials: "omit", cache: "no-store" };
  if (payload !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(payload);
  }
  const res = await fetch(path, init);
  let data = null;
  try {
    data = await res.json();
  } catch (e) {
    data = null;
  }
  if (!res.ok) {
    if (res.status === 401 && needsKey) signOut();
    throw new ApiError(res.status, data && data.error);
  }
  return data;
}

// --- small DOM helpers (text only) ---

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

function episodeLink(id) {
  const a = el("a", id, "mono");
  a.href = `/episode?id=${encodeURIComponent(id)}`;
  return a;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function when(unix) {
  return new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 16) + " UTC";
}

function snippet(text, n) {
  if (text === null) return "";
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}

function showError(node, err) {
  node.textContent = err instanceof Error ? err.message : String(err);
}

// --- signing in ---

function signOut() {
  sessionStorage.removeItem(KEY);
  $("main").hidden = true;
  $("sign-out").hidden = true;
  $("who").hidden = true;
  $("sign-in").hidden = false;
  $("api-key").focus();
}

async function signIn(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  $("sign-in-error").textContent = "";
  sessionStorage.setItem(KEY, key);
  try {
    await api("GET", "/v1/stats");
  } catch (err) {
    sessionStorage.removeItem(KEY);
    showError($("sign-in-error"), err);
    return;
  }
  $("api-key").value = "";
  start();
}

async function start() {
  $("sign-in").hidden = true;
  const view = VIEWS[body.dataset.view];
  if (view) view(); // its handlers are in place before anything can be clicked
  $("main").hidden = false;
  const first = document.querySelector("main [data-focus]");
  if (first) first.focus();
  if (needsKey) {
    $("sign-out").hidden = false;
    const stats = await api("GET", "/v1/stats").catch(() => null);
    if (stats) {
      $("who").textContent = `Namespace: ${Object.keys(stats.namespaces).join(", ") || "(empty)"}`;
      $("who").hidden = false;
    }
  }
}

// --- polling a job ---

async function followJob(job, onProgress) {
  for (;;) {
    onProgress(job);
    if (job.status === "succeeded" || job.status === "failed") return job;
    await new Promise((r) => setTimeout(r, 250));
    job = await api("GET", `/v1/jobs/${encodeURIComponent(job.id)}`);
  }
}

// --- browse, with the timeline ---

const PAGE = 20;

function drawTimeline(node, days) {
  clear(node);
  if (!days.length) {
    node.appendChild(el("p", "No episodes yet."));
    return;
  }
  // A bar per day from the first to the last, days without episodes included.
  const first = Date.parse(days[0].day + "T00:00:00Z");
  const last = Date.parse(days[days.length - 1].day + "T00:00:00Z");
  const span = Math.round((last - first) / 86400000) + 1;
  const counts = new Array(span).fill(0);
  for (const d of days) counts[Math.round((Date.parse(d.day + "T00:00:00Z") - first) / 86400000)] = d.episodes;
  const most = Math.max(...counts);
  const W = 600, H = 120, pad = 18;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  const total = counts.reduce((a, b) => a + b, 0);
  svg.setAttribute("aria-label", `${total} episodes added over ${span} days, at most ${most} a day`);
  const bw = Math.min((W - 2 * pad) / span, 40); // a few days still look like bars, not a wall
  counts.forEach((n, i) => {
    const h = most ? ((H - 2 * pad) * n) / most : 0;
    const r = document.createElementNS(ns, "rect");
    r.setAttribute("x", String(pad + i * bw + bw * 0.1));
    r.setAttribute("y", String(H - pad - h));
    r.setAttribute("width", String(Math.max(1, bw * 0.8)));
    r.setAttribute("height", String(h));
    r.setAttribute("class", "bar");
    const t = document.createElementNS(ns, "title");
    t.textContent = `${new Date(first + i * 86400000).toISOString().slice(0, 10)}: ${n}`;
    r.appendChild(t);
    svg.appendChild(r);
  });
  const axis = (x, text, anchor) => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", String(x));
    t.setAttribute("y", String(H - 4));
    t.setAttribute("text-anchor", anchor);
    t.textContent = text;
    svg.appendChild(t);
  };
  axis(pad, days[0].day, "start");
  if (span > 1) axis(W - pad, days[days.length - 1].day, "end");
  const top = document.createElementNS(ns, "text");
  top.setAttribute("x", String(pad));
  top.setAttribute("y", "12");
  top.textContent = `max ${most}/day`;
  svg.appendChild(top);
  node.appendChild(svg);
}

function browse() {
  let offset = 0;
  let contains = new URLSearchParams(location.search).get("contains") || "";
  $("filter").value = contains;
  const rows = document.querySelector("#episodes tbody");

  let latest = 0; // only the latest request's answer is shown, whatever order the answers come in

  async function load() {
    $("browse-error").textContent = "";
    const q = new URLSearchParams({ limit: String(PAGE), offset: String(offset) });
    if (contains) q.set("contains", contains);
    const mine = ++latest;
    let page;
    try {
      page = await api("GET", `/v1/browse?${q}`);
    } catch (err) {
      if (mine === latest) showError($("browse-error"), err);
      return;
    }
    if (mine !== latest) return;
    clear(rows);
    for (const ep of page.items) {
      const tr = document.createElement("tr");
      const id = el("td");
      id.appendChild(episodeLink(ep.id));
      tr.appendChild(id);
      tr.appendChild(el("td", when(ep.added_at), "nowrap"));
      tr.appendChild(el("td", ep.keywords));
      tr.appendChild(el("td", ep.verified ? snippet(ep.text, 120) : ep.damage, ep.verified ? "" : "error"));
      tr.appendChild(el("td", `${bytes(ep.text_bytes)} → ${bytes(ep.cell_bytes)}`, "nowrap"));
      const ok = el("td", ep.verified ? "✓" : "✗", ep.verified ? "ok" : "error");
      ok.title = ep.verified ? "Reconstructed and checked against its digest" : "Damaged";
      tr.appendChild(ok);
      rows.appendChild(tr);
    }
    const shown = page.items.length;
    $("browse-status").textContent = page.total
      ? `${page.total} episode${page.total === 1 ? "" : "s"}${contains ? " match" : ""}.`
      : contains ? "No episode matches." : "No episodes yet. Add some.";
    $("page-info").textContent = shown ? `${offset + 1}–${offset + shown} of ${page.total}` : "";
    $("prev").disabled = offset === 0;
    $("next").disabled = page.next_offset === null;
    $("next").dataset.offset = page.next_offset === null ? "" : String(page.next_offset);
  }

  $("filter-form").addEventListener("submit", (e) => {
    e.preventDefault();
    contains = $("filter").value.trim();
    offset = 0;
    load();
  });
  $("prev").addEventListener("click", () => {
    offset = Math.max(0, offset - PAGE);
    load();
  });
  $("next").addEventListener("click", () => {
    offset = Number($("next").dataset.offset);
    load();
  });
  load();
  api("GET", "/v1/timeline")
    .then((t) => drawTimeline($("timeline"), t.days))
    .catch((err) => showError($("timeline"), err));
}

// --- the recall playground ---

// The largest signal share among all hits: one scale for every bar, so that hits compare at a glance.
function largestShare(hits) {
  let most = 1e-12;
  for (const hit of hits) {
    if (!hit.explain || typeof hit.explain !== "object") continue;
    for (const v of Object.values(hit.explain)) most = Math.max(most, Math.abs(Number(v) || 0));
  }
  return most;
}

function explanation(hit, most) {
  const signals = hit.explain;
  if (!signals || typeof signals !== "object") return null;
  const names = Object.keys(signals);
  if (!names.length) return null;
  const table = el("table", null, "explain");
  table.appendChild(el("caption", "Why it ranked here: each signal's part of the score"));
  for (const name of names) {
    const value = Number(signals[name]) || 0;
    const tr = document.createElement("tr");
    tr.appendChild(el("th", name, "mono"));
    const cell = el("td");
    const bar = el("span", null, "signal");
    bar.style.width = `${(100 * Math.abs(value)) / most}%`;
    cell.appendChild(bar);
    tr.appendChild(cell);
    tr.appendChild(el("td", value.toFixed(4), "num"));
    table.appendChild(tr);
  }
  return table;
}

function recall() {
  const wantExplain = body.dataset.explain === "1";
  $("recall-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("recall-error").textContent = "";
    $("recall-status").textContent = "Recalling…";
    const request = { query: $("query").value, top_k: Number($("top-k").value) };
    if (wantExplain) request.explain = true;
    let out;
    try {
      out = await api("POST", "/v1/recall", request);
    } catch (err) {
      $("recall-status").textContent = "";
      showError($("recall-error"), err);
      return;
    }
    const list = $("hits");
    clear(list);
    $("recall-status").textContent = out.hits.length ? `${out.hits.length} hits, best first.` : "Nothing recalled.";
    const most = largestShare(out.hits);
    for (const hit of out.hits) {
      const li = el("li", null, "hit card");
      const head = el("div", null, "row");
      head.appendChild(el("span", hit.score.toFixed(4), "score"));
      head.appendChild(episodeLink(hit.id));
      head.appendChild(el("span", hit.keywords, "keywords"));
      if (hit.time) head.appendChild(el("span", hit.time, "muted"));
      li.appendChild(head);
      li.appendChild(el("pre", hit.text, "text"));
      const why = explanation(hit, most);
      if (why) li.appendChild(why);
      list.appendChild(li);
    }
  });
}

// --- one episode ---

function episode() {
  const id = new URLSearchParams(location.search).get("id");
  if (!id) {
    $("episode-error").textContent = "No episode id: open an episode from Browse or Recall.";
    return;
  }
  const path = encodeURIComponent(id);

  function neighbourList(node, views) {
    clear(node);
    if (!views.length) node.appendChild(el("li", "none", "muted"));
    for (const v of views) {
      const li = el("li");
      li.appendChild(episodeLink(v.id));
      li.appendChild(el("span", ` ${v.keywords} — ${snippet(v.text || v.damage, 100)}`));
      node.appendChild(li);
    }
  }

  api("GET", `/v1/browse/${path}`)
    .then((d) => {
      const ep = d.episode;
      $("episode-id").textContent = ep.id;
      $("episode-keywords").textContent = ep.keywords || "—";
      $("episode-time").textContent = ep.time || "—";
      $("episode-added").textContent = when(ep.added_at);
      const ratio = ep.text_bytes ? (ep.cell_bytes / ep.text_bytes).toFixed(1) : "—";
      $("episode-size").textContent =
        `text ${bytes(ep.text_bytes)}, stored ${bytes(ep.cell_bytes)} (${ratio} bytes per text byte)`;
      $("episode-verified").textContent = ep.verified ? "✓ reconstructed and checked against its digest" : `✗ ${ep.damage}`;
      $("episode-text").textContent = ep.text === null ? "" : ep.text;
      neighbourList($("before"), d.before);
      neighbourList($("after"), d.after);
      $("episode").hidden = false;
      $("neighbours").hidden = false;
    })
    .catch((err) => showError($("episode-error"), err));

  $("forget").addEventListener("click", () => {
    $("confirm").hidden = false;
    $("forget").hidden = true;
    $("cancel-forget").focus();
  });
  $("cancel-forget").addEventListener("click", () => {
    $("confirm").hidden = true;
    $("forget").hidden = false;
    $("forget").focus();
  });
  $("confirm-forget").addEventListener("click", async () => {
    try {
      await api("DELETE", `/v1/memories/${path}`);
    } catch (err) {
      showError($("episode-error"), err);
      return;
    }
    $("episode").hidden = true;
    $("neighbours").hidden = true;
    $("episode-status").textContent = `Forgotten: ${id}.`;
  });
}

// --- adding episodes ---

const FIELDS = ["keywords", "text", "id", "time"];

// Reads a JSON list (or {"episodes": [...]}) or JSONL; returns [{episode, where}] or throws naming the item.
function parseEpisodes(name, content) {
  const trimmed = content.trim();
  let items;
  if (!name.toLowerCase().endsWith(".jsonl") && (trimmed.startsWith("[") || trimmed.startsWith("{\"episodes\""))) {
    let data;
    try {
      data = JSON.parse(trimmed);
    } catch (err) {
      throw new Error(`${name} is not valid JSON: ${err.message}. Fix it, or save one episode a line as .jsonl.`);
    }
    if (!Array.isArray(data)) data = data.episodes;
    if (!Array.isArray(data)) throw new Error(`${name}: expected a list of episodes or {"episodes": [...]}.`);
    items = data.map((ep, i) => ({ episode: ep, where: `item ${i + 1}` }));
  } else {
    items = [];
    content.split(/\r?\n/).forEach((line, i) => {
      if (!line.trim()) return;
      let ep;
      try {
        ep = JSON.parse(line);
      } catch (err) {
        throw new Error(`${name}, line ${i + 1}: not valid JSON (${err.message}). Each line must be one episode.`);
      }
      items.push({ episode: ep, where: `line ${i + 1}` });
    });
  }
  if (!items.length) throw new Error(`${name} holds no episodes.`);
  for (const { episode: ep, where } of items) {
    if (ep === null || typeof ep !== "object" || Array.isArray(ep)) {
      throw new Error(`${name}, ${where}: an episode must be an object such as {"keywords": "...", "text": "..."}.`);
    }
    if (typeof ep.text !== "string" || !ep.text) throw new Error(`${name}, ${where}: "text" is missing or empty.`);
    const extra = Object.keys(ep).filter((k) => !FIELDS.includes(k));
    if (extra.length) {
      throw new Error(`${name}, ${where}: unknown field "${extra[0]}"; an episode has ${FIELDS.join(", ")}.`);
    }
    if (ep.keywords === undefined) ep.keywords = "";
  }
  return items;
}

// The server's error, with a rejected field's item named in the file's own terms.
function describe(err, items, name) {
  const msg = err instanceof Error ? err.message : String(err);
  if (!(err instanceof ApiError)) return msg;
  // The library names a bad episode by its place in the batch (from 0): "episode #3: ...".
  const m = /^episode #(\d+): ([\s\S]*)$/.exec(msg);
  if (m && !items) return `${name}: ${m[2]}`;
  if (m && items[Number(m[1])]) return `${name}, ${items[Number(m[1])].where}: ${m[2]}`;
  if (!items) return msg;
  for (const d of err.details) {
    const i = d.loc.indexOf("episodes");
    if (i >= 0 && Number.isInteger(Number(d.loc[i + 1]))) {
      const item = items[Number(d.loc[i + 1])];
      const field = d.loc.slice(i + 2).filter((p) => !/^Add/.test(p)).join(".");
      if (item) return `${name}, ${item.where}: ${field ? field + ": " : ""}${d.msg}.`;
    }
  }
  return msg;
}

function add() {
  const maxBatch = Number(body.dataset.maxBatch);

  async function submit(episodes, items, name) {
    $("add-error").textContent = "";
    $("job").hidden = false;
    $("job-progress").value = 0;
    clear($("job-ids"));
    let done = 0;
    for (let i = 0; i < episodes.length; i += maxBatch) {
      const chunk = episodes.slice(i, i + maxBatch);
      let answer;
      try {
        answer = await api("POST", "/v1/memories", chunk.length === 1 ? chunk[0] : { episodes: chunk });
      } catch (err) {
        const shifted = items ? items.slice(i) : null;
        $("job-status").textContent = "Not added.";
        $("add-error").textContent = describe(err, shifted, name);
        return;
      }
      const job = await followJob(answer.job, (j) => {
        const p = j.progress;
        $("job-progress").max = episodes.length;
        $("job-progress").value = done + p.episodes_done;
        $("job-status").textContent = `${j.status}: ${done + p.episodes_done} of ${episodes.length} episodes trained`;
      });
      if (job.status === "failed") {
        $("job-status").textContent = "Training failed.";
        $("add-error").textContent = job.error ? job.error.message : "Training failed.";
        return;
      }
      done += chunk.length;
      for (const id of job.ids) {
        const li = el("li");
        li.appendChild(episodeLink(id));
        $("job-ids").appendChild(li);
      }
    }
    $("job-status").textContent = `Done: ${episodes.length} episode${episodes.length === 1 ? "" : "s"} added.`;
  }

  $("add-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const ep = { keywords: $("add-keywords").value, text: $("add-text").value };
    if ($("add-id").value.trim()) ep.id = $("add-id").value.trim();
    if ($("add-time").value.trim()) ep.time = $("add-time").value.trim();
    submit([ep], null, "The episode");
  });

  async function takeFile(file) {
    $("add-error").textContent = "";
    let items;
    try {
      items = parseEpisodes(file.name, await file.text());
    } catch (err) {
      showError($("add-error"), err);
      return;
    }
    submit(items.map((x) => x.episode), items, file.name);
  }

  $("add-file").addEventListener("change", () => {
    if ($("add-file").files.length) takeFile($("add-file").files[0]);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer && e.dataTransfer.files.length) takeFile(e.dataTransfer.files[0]);
  });
}

// --- stats and verify ---

function stats() {
  api("GET", "/v1/stats")
    .then((s) => {
      const dl = $("stats");
      clear(dl);
      const facts = [
        ["Episodes", String(s.episodes)],
        ["Text", bytes(s.text_bytes)],
        ["Memory", bytes(s.memory_bytes)],
        ["Bytes per text byte", s.memory_bytes_per_text_byte.toFixed(2)],
        ["Embedder", `${s.embedder} (${s.dim} dimensions)`],
        ["Engine", s.engine],
      ];
      for (const [k, v] of facts) {
        dl.appendChild(el("dt", k));
        dl.appendChild(el("dd", v));
      }
    })
    .catch((err) => showError($("stats-error"), err));

  $("verify").addEventListener("click", async () => {
    $("stats-error").textContent = "";
    clear($("damaged"));
    $("verify").disabled = true;
    const bar = $("verify-progress");
    bar.hidden = false;
    bar.value = 0;
    try {
      const job = await followJob(await api("POST", "/v1/verify/jobs"), (j) => {
        bar.max = Math.max(1, j.progress.episodes_total);
        bar.value = j.progress.episodes_done;
        $("verify-status").textContent = `${j.status}: ${j.progress.episodes_done} of ${j.progress.episodes_total} checked`;
      });
      if (job.status === "failed") throw new Error(job.error ? job.error.message : "Verify failed.");
      const v = job.verify;
      const damaged = Object.keys(v.failed);
      $("verify-status").textContent = v.ok
        ? `✓ All ${v.checked} memories reconstruct their exact texts.`
        : `✗ ${damaged.length} of ${v.checked} memories are damaged:`;
      for (const id of damaged) {
        const li = el("li");
        li.appendChild(episodeLink(id));
        li.appendChild(el("span", ` ${v.failed[id]}`));
        $("damaged").appendChild(li);
      }
    } catch (err) {
      showError($("stats-error"), err);
    } finally {
      $("verify").disabled = false;
    }
  });
}

const VIEWS = { browse, recall, episode, add, stats };

$("sign-in-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", signOut);
if (needsKey && !sessionStorage.getItem(KEY)) {
  signOut();
} else {
  start();
}
