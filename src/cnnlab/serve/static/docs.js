// A small offline renderer of /openapi.json: paths, methods, summaries, bodies, responses.
"use strict";

function node(tag, text, cls) {
  const n = document.createElement(tag);
  if (text !== undefined) n.textContent = text;
  if (cls) n.className = cls;
  return n;
}

async function render() {
  const spec = await (await fetch("/openapi.json")).json();
  document.getElementById("title").textContent = `${spec.info.title} (v${spec.info.version})`;
  document.getElementById("description").textContent = spec.info.description || "";
  const root = document.getElementById("paths");
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const box = node("section", undefined, "layer");
      box.append(node("h2", `${method.toUpperCase()} ${path}`));
      if (op.summary) box.append(node("p", op.summary));
      if (op.requestBody) {
        const types = Object.keys(op.requestBody.content || {}).join(", ");
        box.append(node("p", `request body: ${types}`, "hint"));
      }
      const list = node("ul");
      for (const [code, resp] of Object.entries(op.responses || {})) {
        list.append(node("li", `${code}: ${resp.description || ""}`));
      }
      box.append(list);
      root.append(box);
    }
  }
}

document.addEventListener("DOMContentLoaded", render);
