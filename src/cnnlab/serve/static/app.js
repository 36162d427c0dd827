// cnnlab explorer: upload an image, show the top classes, the layer trace and the Grad-CAM
// (classification runs), the mask and its overlay (segmentation) or the drawn boxes (detection).
// Plain DOM + fetch; every asset comes from this server.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
const MAX_LISTED = 20;  // detections listed beside the image (all are drawn)

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function loadInfo() {
  try {
    const response = await fetch("/api/info");
    info = await response.json();
    // the views averaged (`cnnlab serve RUN --tta flip`): every answer below is their mean
    const tta = info.tta && info.tta.length ? `; test-time augmentation: ${info.tta.join(", ")}` : "";
    $("model-info").textContent =
      `${info.model} (${info.task || "classification"}): ${info.num_classes} classes, ${info.in_channels}×${info.image_size}×` +
      `${info.image_size} input${tta}`;
    const limit = info.max_upload_bytes >= 1e6
      ? `${(info.max_upload_bytes / 1e6).toFixed(1)} MB`
      : `${Math.floor(info.max_upload_bytes / 1e3)} kB`;
    $("limits").textContent = `(up to ${limit}; JPEG, PNG, BMP, GIF, TIFF, WEBP, PPM)`;
    $("report-link").hidden = !info.report;
    if (info.task === "detection") {
      $("threshold").value = info.score_threshold;
      $("threshold-box").hidden = false;
    }
  } catch (err) {
    $("model-info").textContent = "model information unavailable";
  }
}

async function post(url, file) {
  const form = new FormData();
  form.append("file", file);  // the server never uses the file name
  const response = await fetch(url, { method: "POST", body: form });
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = { error: `HTTP ${response.status}` };
  }
  if (!response.ok) throw new Error(`${response.status}: ${body.error || "request failed"}`);
  return body;
}

function showTop(top) {
  const list = $("top");
  list.replaceChildren();
  for (const item of top) {
    const li = el("li", { "data-class": item.class });
    const pct = (100 * item.probability).toFixed(1);
    li.append(el("span", { class: "label" }, item.class));
    const bar = el("span", { class: "bar" });
    const fill = el("span", { class: "fill" });
    fill.style.width = `${Math.max(0.5, 100 * item.probability)}%`;
    bar.append(fill);
    li.append(bar, el("span", { class: "pct" }, `${pct}%`));
    list.append(li);
  }
}

function fmt(value) {
  if (value === null || value === undefined) return "";
  return Math.abs(value) >= 100 || (Math.abs(value) < 0.01 && value !== 0)
    ? value.toExponential(2)
    : value.toFixed(3);
}

function showLayers(layers) {
  const list = $("layers");
  list.replaceChildren();
  for (const layer of layers) {
    const kindClass = "kind-" + layer.kind.replace(/[^a-z]+/gi, "-").toLowerCase();
    const li = el("li", { class: "layer " + kindClass, "data-kind": layer.kind });
    const head = el("div", { class: "layer-head" });
    head.append(
      el("span", { class: "kind" }, layer.kind),
      el("code", {}, layer.name),
      el("span", { class: "detail" }, layer.detail || ""),
      el("span", { class: "shape" }, "→ " + layer.output_shape.join(" × ")),
    );
    li.append(head);
    const s = layer.stats;
    const stats = `mean ${fmt(s.mean)}, std ${fmt(s.std)}, min ${fmt(s.min)}, max ${fmt(s.max)}` +
      (layer.kind === "ReLU" ? `, ${(100 * s.fraction_zero).toFixed(0)}% zeros` : "");
    li.append(el("div", { class: "stats" }, stats));
    if (layer.image) {
      const img = el("img", {
        class: layer.maps_shown ? "fmap" : "fvec",
        src: layer.image,
        alt: `${layer.kind} ${layer.name}`,
      });
      li.append(img);
      const shown = layer.maps_shown
        ? `first ${layer.maps_shown} of ${layer.output_shape[0]} feature maps`
        : `first ${layer.values_shown} of ${layer.output_shape[0]} values`;
      li.append(el("div", { class: "hint" }, shown));
    }
    list.append(li);
  }
}

// Segmentation: the mask (the run's palette) and its overlay, the classes by their share of the
// pixels. Detection: the image with its boxes, the boxes by score. No layer trace: that is
// `cnnlab explain RUN IMAGE` for these tasks.
function showDense(prediction) {
  $("layers-section").hidden = true;
  const [width, height] = prediction.size;
  if (prediction.task === "segmentation") {
    $("input-image").src = prediction.mask;
    $("input-image").alt = "predicted mask";
    $("input-caption").textContent = `predicted mask (${width}×${height}, the run's colours)`;
    $("cam-overlay").src = prediction.overlay;
    $("cam-overlay").alt = "mask over the image";
    $("cam-caption").textContent = "mask over the image";
    $("top-title").textContent = "Classes by area";
    const areas = prediction.areas.filter((a) => a.fraction > 0)
      .sort((a, b) => b.fraction - a.fraction);
    showTop(areas.map((a) => ({ class: a.class, probability: a.fraction })));
    setStatus(`segmented: ${areas.map((a) => a.class).join(", ")}`, false);
  } else {
    $("input-figure").hidden = true;
    $("cam-overlay").src = prediction.image;
    $("cam-overlay").alt = "the image with the detected boxes";
    $("cam-caption").textContent =
      `${prediction.detections.length} boxes with score ≥ ${prediction.score_threshold} ` +
      `(${width}×${height})`;
    $("top-title").textContent = "Detections";
    const shown = prediction.detections.slice(0, MAX_LISTED);  // best first
    showTop(shown.map((d) => ({ class: d.category, probability: d.score })));
    const more = prediction.detections.length - shown.length;
    if (more > 0) $("top").append(el("li", { class: "hint" }, `… and ${more} more`));
    setStatus(prediction.detections.length
      ? `detected: ${prediction.detections.length} boxes`
      : "no box above the threshold: lower it and pick the image again", false);
  }
  $("result").hidden = false;
  document.body.dataset.state = "done";
}

// the run's out-of-domain check (docs/calibration.md): a warning when the upload looks unlike
// the training images; nothing for a run trained without calibration
function showDomain(ood) {
  const box = $("domain");
  box.hidden = !ood;
  if (!ood) return;
  box.className = ood.out_of_domain ? "warning" : "hint";
  box.textContent = ood.out_of_domain
    ? `Warning: this image looks out of domain (${ood.score} score ${fmt(ood.value)} > ` +
      `threshold ${fmt(ood.threshold)}): the model was not trained on images like it.`
    : `In domain (${ood.score} score ${fmt(ood.value)} ≤ threshold ${fmt(ood.threshold)}).`;
}

// the run's operating point (docs/imbalance.md): "positive" when P(class) >= its threshold
function showDecision(decision) {
  const box = $("decision");
  box.hidden = !decision;
  if (!decision) return;
  box.className = decision.positive ? "positive" : "hint";
  box.textContent =
    `${decision.class}: ${decision.positive ? "positive" : "negative"} ` +
    `(P = ${fmt(decision.probability)} ${decision.positive ? "≥" : "<"} ` +
    `threshold ${fmt(decision.threshold)}` +
    (info && info.operating_point ? `, chosen for ${info.operating_point.target})` : ")");
}

// a multi-label run: every label with its probability and threshold; the answer is the list of
// labels at or above their thresholds (docs/classification.md)
function showLabels(prediction) {
  const box = $("labels-box");
  box.hidden = !prediction.multilabel;
  if (!prediction.multilabel) return;
  const list = $("labels");
  list.replaceChildren();
  for (const item of prediction.labels.filter((x) => x.predicted)) {
    list.append(el("li", { "data-label": item.label },
      `${item.label}: ${fmt(item.probability)} ≥ ${fmt(item.threshold)}`));
  }
  if (!prediction.predicted_labels.length) {
    list.append(el("li", { class: "hint" }, "no label reaches its threshold"));
  }
  showTop(prediction.labels.map((x) => ({ class: `${x.label} (threshold ${fmt(x.threshold)})`,
                                          probability: x.probability })));
}

async function handle(file) {
  if (!file) return;
  $("result").hidden = true;
  setStatus(`predicting ${file.size} bytes…`, false);
  try {
    const threshold = $("threshold-box").hidden ? "" : $("threshold").value;
    const query = threshold === "" ? "" : `?score_threshold=${encodeURIComponent(threshold)}`;
    const prediction = await post("/api/predict" + query, file);
    if (prediction.task && prediction.task !== "classification") {
      showDense(prediction);
      return;
    }
    showTop(prediction.top);
    showDomain(prediction.out_of_domain);
    showDecision(prediction.decision);
    showLabels(prediction);
    $("result").hidden = false;
    setStatus("tracing the layers and computing the Grad-CAM…", false);
    const explained = await post("/api/explain", file);
    if (!prediction.multilabel) showTop(explained.top);  // multi-label: every label stays
    $("input-image").src = explained.input.image;
    $("input-shape").textContent = `(${explained.input.shape.join("×")})`;
    $("cam-overlay").src = explained.cam.overlay;
    $("cam-caption").textContent =
      `${explained.cam.method} for "${explained.cam.class}" at ${explained.cam.target_layer} ` +
      `(${explained.cam.target_shape.join("×")})`;
    showLayers(explained.layers);
    setStatus(prediction.multilabel
      ? `predicted labels: ${prediction.predicted_labels.join(", ") || "none"}`
      : `predicted: ${explained.predicted}`, false);
    document.body.dataset.state = "done";
  } catch (err) {
    setStatus(err.message, true);
    document.body.dataset.state = "error";
  }
}

function setup() {
  loadInfo();
  const drop = $("drop");
  $("file").addEventListener("change", (event) => handle(event.target.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.remove("over");
    });
  }
  drop.addEventListener("drop", (event) => handle(event.dataTransfer.files[0]));
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") $("file").click();
  });
}

document.addEventListener("DOMContentLoaded", setup);
