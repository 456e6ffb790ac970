// Kiosk web portal: choose or drop files, upload them with progress, follow each job live,
// show the overlay previews and link the label images. A tracking job (a movie) shows its
// frames being segmented, then the linking, then its animated preview and results zip.
// Plain JS against /api/v1, no build.
"use strict";

const API = "/api/v1";
const STORE_KEY = "kiosk.portal.jobs";   // this browser's jobs: [{id, name}]
const POLL_MS = 1000;
const MAX_REMEMBERED = 100;
const FINAL = new Set(["done", "failed", "gone"]);
const ENDED = new Set([...FINAL, "refused"]);  // no progress bar, can be cleared
const STATUS_TEXT = {
  loading: "Checking",
  uploading: "Uploading",
  refused: "Refused",
  new: "Queued",
  started: "Started",
  "pre-processing": "Pre-processing",
  predicting: "Predicting",
  "post-processing": "Post-processing",
  "saving-results": "Saving results",
  waiting: "Images in progress",
  done: "Done",
  failed: "Failed",
  gone: "No longer on the server",
};
const MOVIE_STATUS_TEXT = { waiting: "Segmenting frames", "post-processing": "Linking" };
const MOVIE_HINT = "A movie per file: a multi-page TIFF (TYX, or TCYX with the channel " +
  "chosen below), a zip of its frames (in the order of their names), a zip of several " +
  "movies, or a .trk/.trks. Every frame is segmented, then the cells are linked over time; " +
  "the results zip holds the tracked labels, lineage.json and Cell Tracking Challenge files.";

const $ = (id) => document.getElementById(id);
const state = {
  limits: null,       // GET /api/v1/limits
  movieTypes: new Set(),  // job types that take a whole movie (tracking)
  compartmentTypes: new Set(),  // job types that take a compartment (mesmer)
  chosen: [],         // Files accepted and waiting for "Upload and start"
  jobs: new Map(),    // id -> {id, name, job, children, shown}
  uploading: false,
  session: null,      // GET /api/v1/session when signed in: {name, group, admin, csrf_token}
};

// ------------------------------------------------------------------ small helpers

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-") || key.startsWith("aria-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function humanBytes(n) {
  const units = ["bytes", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return i === 0 ? `${n} bytes` : `${n.toFixed(1)} ${units[i]}`;
}

function extensionOf(name) {
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(dot).toLowerCase() : "";
}

// The server's URLs start with KIOSK_PUBLIC_URL; this page is on the same frontend, so use the
// path (it also works when the page was opened under another host name).
function samePath(url) {
  try {
    const u = new URL(url, location.href);
    return u.pathname + u.search;
  } catch (_) {
    return url;
  }
}

// A job on a movie (tracking): its children are frames, linked once they are segmented.
function isMovie(job) {
  if (job.children && job.children.unit) return job.children.unit === "frames";
  return state.movieTypes.has(job.job_type);
}

function statusText(job) {
  return (isMovie(job) && MOVIE_STATUS_TEXT[job.status]) || STATUS_TEXT[job.status] ||
    job.status;
}

function jobUrl(id) {
  return `${API}/jobs/${encodeURIComponent(id)}`;
}

function announce(text) {
  $("announcer").textContent = text;
}

async function getJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const error = new Error(messageOf(response.status, body));
    error.status = response.status;
    throw error;
  }
  return body;
}

function messageOf(status, body) {
  if (status === 401) {
    if (body && body.message && state.session) return body.message;
    return "This Kiosk needs you to sign in: paste the API token your administrator gave " +
      "you above, and press Sign in.";
  }
  if (body && body.message) return body.message;
  return `The server answered ${status}; try again in a moment.`;
}

// ------------------------------------------------------------------ remembered jobs

function loadRemembered() {
  try {
    const list = JSON.parse(localStorage.getItem(STORE_KEY) || "[]");
    return Array.isArray(list) ? list.filter((item) => item && item.id) : [];
  } catch (_) {
    return [];
  }
}

function saveRemembered() {
  const list = [...state.jobs.values()]
    .filter((entry) => !entry.upload && !entry.fromServer)  // a signed-in user's stay there
    .map((entry) => ({ id: entry.id, name: entry.name }))
    .slice(0, MAX_REMEMBERED);
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify(list));
  } catch (_) { /* private mode: the list lasts until the page closes */ }
}

// ------------------------------------------------------------------ choosing files

function refusal(file) {
  const limits = state.limits;
  const ext = extensionOf(file.name);
  if (limits && !limits.extensions.includes(ext)) {
    return `'${file.name}' is not a supported file type (${ext || "no extension"}): Kiosk ` +
      `takes ${limits.accepted}. Convert the file, or zip the images, and add it again.`;
  }
  if (file.size === 0) return `'${file.name}' is empty: choose the file again.`;
  if (limits && file.size > limits.max_upload_bytes) {
    return `'${file.name}' (${humanBytes(file.size)}) is larger than the ` +
      `${humanBytes(limits.max_upload_bytes)} this Kiosk accepts per upload: split the ` +
      "images across several zips, or ask the operator to raise the limit.";
  }
  return null;
}

function addFiles(files) {
  const refusals = $("refusals");
  refusals.replaceChildren();
  for (const file of files) {
    const why = refusal(file);
    if (why) refusals.append(el("p", { class: "refused", text: why }));
    else state.chosen.push(file);
  }
  renderChosen();
}

function renderChosen() {
  const list = $("chosen");
  list.replaceChildren(...state.chosen.map((file, index) => {
    const remove = el("button", {
      type: "button",
      class: "quiet",
      text: "Remove",
      "aria-label": `Remove ${file.name}`,
    });
    remove.addEventListener("click", () => {
      state.chosen.splice(index, 1);
      renderChosen();
      $("dropzone").focus();
    });
    return el("li", {},
      el("span", { class: "name", text: file.name }),
      el("span", { class: "hint", text: humanBytes(file.size) }),
      remove);
  }));
  $("start").disabled = state.chosen.length === 0 || state.uploading;
}

// ------------------------------------------------------------------ uploading

function formOptions() {
  const options = { job_type: $("job-type").value };
  for (const [field, id] of [["scale", "scale"], ["channels", "channels"],
    ["dimension_order", "dimension-order"]]) {
    const value = $(id).value.trim();
    if (value) options[field] = value;
  }
  if (state.compartmentTypes.has(options.job_type)) options.compartment = $("compartment").value;
  return options;
}

function checkOptions(options, files) {
  if (!options.job_type) return ["job-type", "Choose a job type."];
  const movieOnly = (state.limits && state.limits.movie_extensions) || [];
  const movie = files.find((file) => movieOnly.includes(extensionOf(file.name)));
  if (movie && !state.movieTypes.has(options.job_type)) {
    return ["job-type", `'${movie.name}' is a tracked movie (.trk/.trks), which only the ` +
      `${[...state.movieTypes].join(" or ")} job type reads: choose it, or remove the file.`];
  }
  if (options.scale !== undefined && !(Number(options.scale) > 0)) {
    return ["scale", "Scale must be a number of microns per pixel greater than 0, e.g. 0.65."];
  }
  return null;
}

async function startUploads(event) {
  event.preventDefault();
  const message = $("form-message");
  const options = formOptions();
  const problem = checkOptions(options, state.chosen);
  if (problem) {
    message.textContent = problem[1];
    message.className = "message error";
    $(problem[0]).focus();
    return;
  }
  message.textContent = "";
  message.className = "message";
  const files = state.chosen.splice(0);
  state.uploading = true;
  renderChosen();
  for (const file of files) {
    await uploadOne(file, options);
  }
  state.uploading = false;
  renderChosen();
}

function uploadOne(file, options) {
  const entry = { id: `upload-${Date.now()}-${Math.random()}`, name: file.name, upload: true,
    job: { status: "uploading", progress: 0 } };
  state.jobs.set(entry.id, entry);
  renderJobs();
  announce(`Uploading ${file.name}`);
  return new Promise((resolve) => {
    const form = new FormData();
    for (const [key, value] of Object.entries(options)) form.append(key, value);
    form.append("file", file, file.name);  // after the options: the server checks them first
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${API}/jobs`);
    xhr.setRequestHeader("Accept", "application/json");
    if (state.session) xhr.setRequestHeader("X-CSRF-Token", state.session.csrf_token);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) {
        entry.job = { status: "uploading", progress: Math.round((100 * e.loaded) / e.total) };
        renderJob(entry);
      }
    });
    const finish = (body, status) => {
      state.jobs.delete(entry.id);
      if (status === 201 && body && body.id) {
        const job = { id: body.id, name: file.name, job: body };
        state.jobs = new Map([[job.id, job], ...state.jobs]);  // newest first
        saveRemembered();
        announce(`${file.name}: uploaded, ${statusText(body)}`);
      } else {
        entry.id = `refused-${entry.id}`;
        entry.job = { status: "refused", progress: 0, reason: messageOf(status, body) };
        state.jobs.set(entry.id, entry);
        announce(`${file.name} was refused: ${entry.job.reason}`);
      }
      renderJobs();
      resolve();
    };
    xhr.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      finish(body, xhr.status);
    });
    xhr.addEventListener("error", () => finish(
      { message: "The upload failed: the connection to Kiosk was lost. Check it and try again." },
      0));
    xhr.send(form);
  });
}

// ------------------------------------------------------------------ following jobs

async function poll() {
  const open = [...state.jobs.values()].filter(
    (entry) => !entry.upload && (!entry.job || !FINAL.has(entry.job.status) || !entry.settled));
  await Promise.all(open.map(refresh));
  setTimeout(poll, POLL_MS);
}

async function refresh(entry) {
  const before = entry.job ? entry.job.status : null;
  try {
    entry.job = await getJson(jobUrl(entry.id));
    entry.error = null;
    // A movie shows its own preview; a zip, those of its first images (the only ones drawn).
    const thumbnails = state.limits ? state.limits.zip_previews : 0;
    if (entry.job.children && !isMovie(entry.job) && thumbnails) {
      const page = await getJson(
        `${API}/jobs?parent=${encodeURIComponent(entry.id)}&limit=${thumbnails}`);
      entry.children = page.jobs;
    }
  } catch (error) {
    if (error.status === 404) {
      entry.job = { status: "gone", progress: 0,
        reason: "This job is no longer on the server: finished jobs expire (after a day by " +
          "default) or it was deleted. Remove it from the list." };
    } else {
      entry.error = error.message;
    }
  }
  // A final job is read once more after it ends, so its children's last state shows; a zip
  // waits for the limits (how many thumbnails) before its children can be read.
  const childrenRead = !entry.job || !entry.job.children || isMovie(entry.job) || entry.children;
  entry.settled = FINAL.has(entry.job && entry.job.status) && before === entry.job.status &&
    Boolean(childrenRead);
  if (entry.job && before !== entry.job.status) {
    announce(`${entry.name}: ${statusText(entry.job)}`);
  }
  renderJob(entry);
}

function forget(id) {
  state.jobs.delete(id);
  saveRemembered();
  renderJobs();
}

// ------------------------------------------------------------------ drawing jobs

function renderJobs() {
  const list = $("jobs");
  const entries = [...state.jobs.values()];
  const cards = entries.map((entry) => {
    if (!entry.card) entry.card = el("li", { class: "job" });
    return entry.card;
  });
  list.replaceChildren(...cards);
  entries.forEach(renderJob);
  $("no-jobs").hidden = entries.length > 0;
}

function inWords(seconds) {
  if (seconds < 1) return "under a second";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

// Where a job stands: its place in the queue under fair share and when it should start, or
// when it should finish; "" when the Kiosk has no estimate.
function whereText(job) {
  const left = (iso) => inWords(Math.max(0, (Date.parse(iso) - Date.now()) / 1000));
  if (job.position !== null && job.position !== undefined) {
    const place = job.position === 0 ? "Next in line"
      : `${job.position} ${job.position === 1 ? "job" : "jobs"} ahead`;
    return job.eta_start ? `${place}, starts in ~${left(job.eta_start)}` : place;
  }
  if (job.eta_finish && !ENDED.has(job.status)) return `Done in ~${left(job.eta_finish)}`;
  return "";
}

function renderJob(entry) {
  if (!entry.card) return renderJobs();
  const job = entry.job || { status: "loading", progress: 0 };
  const signature = JSON.stringify([job, entry.children, entry.error]);
  if (signature === entry.shown) return;  // unchanged: leave the images alone
  entry.shown = signature;

  const card = entry.card;
  card.setAttribute("data-status", job.status);
  card.setAttribute("data-id", entry.id);
  const remove = el("button", { type: "button", class: "quiet", text: "Remove",
    "aria-label": `Remove ${entry.name} from the list` });
  remove.addEventListener("click", () => forget(entry.id));
  const parts = [
    el("div", { class: "job-head" },
      el("h3", { text: entry.name }),
      el("span", { class: "status", "data-status": job.status, text: statusText(job) }),
      entry.upload && job.status === "uploading" ? null : remove),
  ];

  const children = job.children;
  const movie = isMovie(job);
  const linking = movie && job.status === "post-processing";
  let percent = job.progress || 0;
  if (children && children.total && job.status !== "done" && !linking) {
    percent = Math.round((100 * (children.done + children.failed)) / children.total);
  }
  if (!ENDED.has(job.status) && job.status !== "loading") {
    const what = job.status === "uploading" ? "Upload" : "Progress";
    parts.push(el("progress",
      { max: 100, value: percent, "aria-label": `${what} of ${entry.name}` }));
  }
  if (job.status === "uploading") {
    parts.push(el("p", { class: "detail", text: `${percent}% uploaded` }));
  }
  const where = whereText(job);
  if (where) parts.push(el("p", { class: "detail where", text: where }));
  if (children && movie) {
    const failed = children.failed ? `, ${children.failed} failed` : "";
    parts.push(el("p", { class: "detail children",
      text: `Frames segmented ${children.done} / ${children.total}${failed}` }));
    if (linking) {
      parts.push(el("p", { class: "detail linking", text: "Linking cells over time" }));
    }
  } else if (children) {
    const unit = children.unit === "movies" ? "movies" : "images";
    parts.push(el("p", { class: "detail children",
      text: `${children.done} of ${children.total} ${unit} done, ${children.failed} failed` }));
  } else if (movie && job.status !== "done") {
    if (linking) {
      parts.push(el("p", { class: "detail linking", text: "Linking cells over time" }));
    }
  } else if (job.objects !== null && job.objects !== undefined && !movie) {
    parts.push(el("p", { class: "detail", text: `${job.objects} objects found` }));
  }
  if (movie && job.status === "done" && job.objects != null) {
    parts.push(el("p", { class: "detail tracks", text: `${job.objects} tracks` }));
  }
  if (job.reason) parts.push(el("p", { class: "reason", text: job.reason }));
  if (entry.error) parts.push(el("p", { class: "reason", text: entry.error }));
  if (job.failures && job.failures.length) {
    const what = movie ? "Frames" : children && children.unit === "movies" ? "Movies" : "Images";
    parts.push(el("p", { class: "detail", text: `${what} that gave no result:` }));
    parts.push(el("ul", { class: "failures" },
      ...job.failures.map((f) => el("li", { text: `${f.name}: ${f.reason}` }))));
  }

  if (job.status === "done") {
    parts.push(el("div", { class: "downloads" }, el("a", {
      href: `${jobUrl(entry.id)}/result`,
      download: "",
      class: "result",
      text: children || movie ? "Download results zip" : "Download labels (TIFF)",
    })));
  }
  const previews = previewsOf(entry, job);
  if (previews.length) {
    parts.push(el("div", { class: children && !movie ? "previews" : "previews single" },
      ...previews.map(figure)));
    if (children && !movie && children.total > previews.length) {
      parts.push(el("p", { class: "hint",
        text: `Previews of ${previews.length} of ${children.total} images.` }));
    }
  }
  card.replaceChildren(...parts);
}

// What to show over the image: the job's own overlay, or those of a zip's finished images.
function previewsOf(entry, job) {
  if (job.preview_url) {
    return [{ name: entry.name, preview: job.preview_url, id: entry.id, movie: isMovie(job) }];
  }
  return (entry.children || [])
    .filter((child) => child.status === "done" && child.preview_url)
    .map((child) => ({ name: child.name, preview: child.preview_url, id: child.id,
      objects: child.objects, movie: isMovie(child) }));
}

function figure(item) {
  const movie = item.movie;
  const src = samePath(item.preview);
  const image = el("img", { src, loading: "lazy", decoding: "async",
    alt: movie ? `Tracked cell outlines over ${item.name}, animated through its frames`
      : `Segmentation outlines over ${item.name}` });
  const caption = el("figcaption", {},
    el("span", { text: item.objects != null
      ? `${item.name} (${item.objects} ${movie ? "tracks" : "objects"}) ` : `${item.name} ` }),
    el("a", { href: `${jobUrl(item.id)}/result`, download: "",
      text: movie ? "results zip" : "labels",
      "aria-label": movie ? `Download the tracking results of ${item.name}`
        : `Download the labels of ${item.name}` }));
  const open = el("a", { href: src, target: "_blank", rel: "noopener",
    "aria-label": `Open the preview of ${item.name}` }, image);
  return el("figure", {}, open, caption);
}

// ------------------------------------------------------------------ signing in

// Signed in, the browser holds an HttpOnly session cookie (so previews and downloads work
// with authentication on) and this page the session's CSRF token, sent with every change.
async function showSession(session) {
  state.session = session;
  $("sign-in-form").hidden = Boolean(session);
  $("signed-in").hidden = !session;
  if (!session) {  // what came from the server was the user's: it goes with them
    for (const entry of [...state.jobs.values()]) {
      if (entry.fromServer) state.jobs.delete(entry.id);
    }
    renderJobs();
    return;
  }
  const group = session.group ? `, group ${session.group}` : "";
  $("who").textContent = `Signed in as ${session.name}${group}`;
  try {
    const page = await getJson(`${API}/jobs?limit=50`);
    for (const job of page.jobs.filter((j) => !j.parent).reverse()) {
      if (!state.jobs.has(job.id)) {
        const entry = { id: job.id, name: job.name, job, fromServer: true };
        state.jobs = new Map([[job.id, entry], ...state.jobs]);
      }
    }
    renderJobs();
    const usage = await getJson(`${API}/usage?user=${encodeURIComponent(session.name)}`);
    const mine = usage.users.find((row) => row.name === session.name);
    $("usage").textContent = mine
      ? `${mine.jobs} jobs, about $${mine.cost.toFixed(2)} of compute so far` : "";
  } catch (error) {
    $("usage").textContent = error.message;
  }
}

async function signIn(event) {
  event.preventDefault();
  const message = $("sign-in-message");
  const response = await fetch(`${API}/session`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ token: $("token").value.trim() }),
  });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    message.textContent = (body && body.message) || `The server answered ${response.status}.`;
    message.className = "message error";
    $("token").focus();
    return;
  }
  $("token").value = "";
  message.textContent = "";
  announce(`Signed in as ${body.name}`);
  if (!state.limits) await loadForm();  // first: the jobs shown next need its limits
  await showSession(body);
}

async function endSession() {
  const csrf = state.session ? state.session.csrf_token : "";
  return fetch(`${API}/session`, { method: "DELETE", headers: { "X-CSRF-Token": csrf } });
}

async function signOut() {
  let response = await endSession();
  if (response.status === 403) {  // signed in again in another tab: a newer CSRF token
    await restoreSession();
    response = await endSession();
  }
  if (!response.ok) {
    $("usage").textContent = messageOf(response.status, null);
    return;
  }
  announce("Signed out");
  await showSession(null);
}

async function restoreSession() {
  const response = await fetch(`${API}/session`, { headers: { Accept: "application/json" } });
  if (response.status === 401) await endSession();  // clears a cookie whose session ended
  await showSession(response.ok ? await response.json() : null);
}

// ------------------------------------------------------------------ start

function wireDropzone() {
  const zone = $("dropzone");
  const input = $("file-input");
  zone.addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    addFiles([...input.files]);
    input.value = "";  // choosing the same file again fires change again
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    addFiles([...(e.dataTransfer ? e.dataTransfer.files : [])]);
  });
  // A file dropped beside the zone must not make the browser navigate away from the page.
  for (const name of ["dragover", "drop"]) {
    window.addEventListener(name, (e) => e.preventDefault());
  }
}

// Under the job type: what a movie job type takes and gives, and a mesmer job type's choice
// of labels, when one is chosen.
function showJobTypeHint() {
  const hint = $("job-type-hint");
  hint.hidden = !state.movieTypes.has($("job-type").value);
  hint.textContent = hint.hidden ? "" : MOVIE_HINT;
  $("compartment-field").hidden = !state.compartmentTypes.has($("job-type").value);
}

// What the form offers: the job types and the upload limits (with authentication on, once
// signed in).
async function loadForm() {
  try {
    const [limits, types] = await Promise.all(
      [getJson(`${API}/limits`), getJson(`${API}/job-types`)]);
    state.limits = limits;
    state.movieTypes = new Set(limits.movie_job_types || []);
    state.compartmentTypes = new Set(limits.compartment_job_types || []);
    $("file-input").accept = limits.extensions.join(",");
    $("accepted").textContent =
      `Kiosk takes ${limits.accepted}, up to ${humanBytes(limits.max_upload_bytes)} each.`;
    $("job-type").replaceChildren(
      ...types.job_types.map((name) => el("option", { value: name, text: name })));
    $("tracking-intro").hidden = state.movieTypes.size === 0;
    showJobTypeHint();
    $("form-message").textContent = "";
    $("form-message").className = "message";
  } catch (error) {
    const message = $("form-message");
    message.textContent = error.message;
    message.className = "message error";
  }
}

async function start() {
  wireDropzone();
  $("job-type").addEventListener("change", showJobTypeHint);
  $("submit-form").addEventListener("submit", startUploads);
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("clear-finished").addEventListener("click", () => {
    for (const entry of [...state.jobs.values()]) {
      if (entry.job && ENDED.has(entry.job.status)) {
        state.jobs.delete(entry.id);
      }
    }
    saveRemembered();
    renderJobs();
  });
  for (const item of loadRemembered()) {
    state.jobs.set(item.id, { id: item.id, name: item.name || item.id, job: null });
  }
  renderJobs();
  await restoreSession();
  await loadForm();
  document.body.setAttribute("data-ready", "true");
  renderChosen();
  poll();
}

document.addEventListener("DOMContentLoaded", start);
