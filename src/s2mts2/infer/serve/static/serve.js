// s2mts2 serve: the page's behaviour. Plain DOM, no external code; text is set with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function getJSON(url) {
  const response = await fetch(url);
  const doc = await response.json();
  if (!response.ok) throw new Error(doc.error || response.statusText);
  return doc;
}

function fmt(value, digits = 3) {
  return value === null || value === undefined ? "n/a" : Number(value).toFixed(digits);
}

// bars of every class's probability, most probable first; `select(k)` makes them buttons
function bars(probabilities, { selected = null, select = null, truth = [], limit = null } = {}) {
  const list = el("ol", "bars");
  const order = probabilities.map((p, k) => k).sort((a, b) => probabilities[b] - probabilities[a]);
  for (const k of limit ? order.slice(0, limit) : order) {
    const name = info.classes[k];
    const row = el(select ? "button" : "div", "bar");
    if (select) {
      row.type = "button";
      row.title = `Grad-CAM of ${name}`;
      row.addEventListener("click", () => select(k, row));
    }
    if (k === selected) row.classList.add("selected");
    if (truth.includes(name)) row.classList.add("truth");
    row.dataset.class = String(k);
    const track = el("span", "track");
    const fill = el("span", "fill");
    fill.style.width = `${(100 * probabilities[k]).toFixed(1)}%`;
    track.append(fill);
    row.append(el("span", "name", name), track, el("span", "value", fmt(probabilities[k])));
    const item = el("li");
    item.append(row);
    list.append(item);
  }
  return list;
}

function figure(src, caption, className) {
  const fig = el("figure");
  const img = el("img", className);
  img.src = src;
  img.alt = caption;
  const cap = el("figcaption", "", caption);
  fig.append(img, cap);
  return fig;
}

// --- drop images ---------------------------------------------------------------------------

function showUpload(card, result) {
  card.replaceChildren(el("h3", "", result.name));
  card.title = result.name;
  card.append(el("p", "meta", `${result.width} × ${result.height}`));
  const base = `/api/uploads/${encodeURIComponent(result.id)}`;
  const pair = el("div", "pair");
  pair.append(figure(`${base}/image.png`, "image", "image"));
  let camCaption = null;
  let camImage = null;
  if (info.cam) {
    const k = result.cam_class;
    const fig = figure(`${base}/cam/${k}.png`, `Grad-CAM: ${info.classes[k]}`, "cam");
    camImage = fig.querySelector("img");
    camCaption = fig.querySelector("figcaption");
    pair.append(fig);
  }
  card.append(pair);
  const select = info.cam
    ? (k, row) => {
        camImage.src = `${base}/cam/${k}.png`;
        camCaption.textContent = `Grad-CAM: ${info.classes[k]}`;
        for (const other of card.querySelectorAll(".bar")) other.classList.remove("selected");
        row.classList.add("selected");
      }
    : null;
  card.append(bars(result.probabilities, { selected: result.cam_class, select }));
}

async function upload(file, card) {
  try {
    const response = await fetch(`/api/uploads?name=${encodeURIComponent(file.name)}`, {
      method: "POST",
      body: file,
    });
    const doc = await response.json();
    if (!response.ok) throw new Error(doc.error || response.statusText);
    showUpload(card, doc);
  } catch (error) {
    card.replaceChildren(el("h3", "", file.name), el("p", "error", error.message));
    card.classList.add("failed");
  }
}

async function uploadAll(files) {
  const error = $("drop-error");
  error.hidden = true;
  if (files.length > info.max_files) {
    error.textContent = `${files.length} files: the page takes at most ${info.max_files} at a time (s2mts2 serve --max-files)`;
    error.hidden = false;
    return;
  }
  const cards = [...files].map((file) => {
    const card = el("article", "card upload");
    card.append(el("h3", "", file.name), el("p", "spinner", "analysing…"));
    $("cards").prepend(card);
    if (file.size > info.max_file_bytes) {
      const limit = (info.max_file_bytes / 1e6).toFixed(1);
      card.replaceChildren(
        el("h3", "", file.name),
        el("p", "error", `${file.name}: larger than the ${limit} MB limit per file (s2mts2 serve --max-file-mb)`),
      );
      return null;
    }
    return card;
  });
  for (const [i, file] of [...files].entries()) {
    if (cards[i]) await upload(file, cards[i]); // one at a time: the first result comes first
  }
}

function setUpDrop() {
  const zone = $("dropzone");
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) zone.classList.remove("over");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) uploadAll(event.dataTransfer.files);
  });
  $("files").addEventListener("change", (event) => {
    uploadAll(event.target.files);
    event.target.value = "";
  });
  const mb = (info.max_file_bytes / 1e6).toFixed(0);
  $("limits").textContent =
    `Files stay in this server's memory (never written to disk): up to ${mb} MB each, the last ${info.max_files} kept.`;
  if (!info.cam) {
    $("cam-note").textContent = `Probabilities only: ${info.cam_reason}.`;
    $("cam-note").hidden = false;
  }
}

// --- browse a split ------------------------------------------------------------------------

const state = { page: 0 };

function metricRows(doc) {
  const m = doc.metrics;
  const rows = [["images", m.n_images]];
  const ci = m.mean_auc_ci95 ? ` (95 % CI ${fmt(m.mean_auc_ci95[0])}–${fmt(m.mean_auc_ci95[1])})` : "";
  rows.push([m.task === "multiclass" ? "macro AUC" : "mean AUC", fmt(m.mean_auc) + ci]);
  for (const key of ["accuracy", "balanced_accuracy", "f1"]) {
    if (key in m) rows.push([key.replace("_", " "), fmt(m[key])]);
  }
  return rows;
}

async function loadSummary() {
  const doc = await getJSON("/api/split/metrics");
  $("split-title").textContent = `${info.split.name} split: ${info.split.images} images`;
  $("metrics-source").textContent = `Metrics: ${doc.source}`;
  const table = $("metrics");
  for (const [name, value] of metricRows(doc)) {
    const row = el("tr");
    row.append(el("th", "", name), el("td", "", String(value)));
    table.append(row);
  }
  for (const [name, value] of Object.entries(doc.metrics.per_class_auc)) {
    const item = el("li");
    item.append(el("span", "", name), el("span", "value", fmt(value)));
    $("per-class").append(item);
  }
  $("roc").src = "/api/split/roc.png";
  for (const name of ["true", "pred"]) {
    const select = $("controls").elements[name];
    info.classes.forEach((c, k) => select.append(new Option(c, String(k))));
  }
}

function browseCard(item) {
  const card = el("article", "card browse-card");
  if (item.misclassified) card.classList.add("wrong");
  const img = el("img");
  img.src = `/api/split/images/${item.index}.png`;
  img.alt = `image ${item.index}`;
  const text = el("div");
  text.append(el("h3", "", `#${item.index}${item.misclassified ? " · misclassified" : ""}`));
  text.append(el("p", "labels", `true: ${item.labels.join(", ") || "none"}`));
  text.append(el("p", "labels", `predicted: ${item.predicted.join(", ") || "none"}`));
  const extra = item.unknown.length ? ` · unknown: ${item.unknown.join(", ")}` : "";
  text.append(el("p", "note", `loss ${fmt(item.loss)} · confidence ${fmt(item.confidence)}${extra}`));
  text.append(bars(item.probabilities, { truth: item.labels, limit: 4 }));
  card.append(img, text);
  return card;
}

async function loadPage() {
  const form = $("controls").elements;
  const [sort, order] = form.sort.value.split(" ");
  const query = new URLSearchParams({
    sort,
    desc: order === "desc" ? "1" : "0",
    true: form.true.value,
    pred: form.pred.value,
    wrong_first: form.wrong_first.checked ? "1" : "0",
    page: String(state.page),
  });
  const doc = await getJSON(`/api/split?${query}`);
  state.page = doc.page;
  const rule = info.task === "multilabel" ? " (a class is predicted from p ≥ 0.5)" : "";
  $("count").textContent = `${doc.total} images, ${doc.misclassified} misclassified${rule}`;
  $("page-info").textContent = `page ${doc.page + 1} of ${doc.pages}`;
  $("prev").disabled = doc.page === 0;
  $("next").disabled = doc.page + 1 >= doc.pages;
  $("grid").replaceChildren(...doc.items.map(browseCard));
}

function setUpBrowse() {
  $("browse-tab").hidden = false;
  $("browse-tab").textContent = `Browse ${info.split.name} split`;
  loadSummary().then(loadPage).catch(showFatal);
  $("controls").addEventListener("change", () => {
    state.page = 0;
    loadPage().catch(showFatal);
  });
  $("prev").addEventListener("click", () => { state.page -= 1; loadPage().catch(showFatal); });
  $("next").addEventListener("click", () => { state.page += 1; loadPage().catch(showFatal); });
}

// --- page ----------------------------------------------------------------------------------

function showFatal(error) {
  $("drop-error").textContent = error.message;
  $("drop-error").hidden = false;
}

function setUpTabs() {
  for (const button of document.querySelectorAll(".tabs button")) {
    button.addEventListener("click", () => {
      for (const other of document.querySelectorAll(".tabs button")) {
        other.classList.toggle("active", other === button);
        $(other.dataset.tab).hidden = other !== button;
      }
    });
  }
}

async function start() {
  info = await getJSON("/api/info");
  const kind = info.task === "multiclass" ? "multi-class" : "multi-label";
  $("model").textContent = `${info.model} · ${kind}, ${info.classes.length} classes, ${info.size} px`;
  setUpTabs();
  setUpDrop();
  if (info.split) setUpBrowse();
}

start().catch(showFatal);
