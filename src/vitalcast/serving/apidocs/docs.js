// Renders /api/v1/openapi.json: operations grouped by tag, their parameters, body schema,
// responses, and a form that sends the request (with the API key typed above, if any).
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function resolve(doc, schema) {
  if (schema && schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return { name, schema: doc.components.schemas[name] };
  }
  return { name: null, schema };
}

function schemaBlock(doc, schema) {
  const { name, schema: body } = resolve(doc, schema);
  return el("div", {}, name ? el("p", {}, "Schema ", el("code", {}, name)) : "",
    el("pre", {}, JSON.stringify(body, null, 2)));
}

function tryForm(path, method, op) {
  const inputs = {};
  const form = el("form", {});
  for (const p of op.parameters || []) {
    const input = el("input", { name: p.name, placeholder: p.in + (p.required ? ", required" : "") });
    inputs[p.name] = [p, input];
    form.append(el("label", {}, p.name + " ", input), " ");
  }
  let body = null;
  if (op.requestBody) {
    body = el("textarea", { placeholder: "JSON body" });
    form.append(body);
  }
  const out = el("pre", {});
  form.append(el("button", { type: "submit" }, "Send"), out);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let url = path;
    const query = new URLSearchParams();
    for (const [name, [p, input]] of Object.entries(inputs)) {
      if (!input.value) continue;
      if (p.in === "path") url = url.replace("{" + name + "}", encodeURIComponent(input.value));
      else query.set(name, input.value);
    }
    if ([...query].length) url += "?" + query;
    const headers = { Accept: "application/json" };
    const key = document.getElementById("key").value.trim();
    if (key) headers.Authorization = "Bearer " + key;
    if (body) headers["Content-Type"] = "application/json";
    const response = await fetch(url, {
      method: method.toUpperCase(), headers, body: body ? body.value : undefined,
      credentials: key ? "omit" : "same-origin",
    });
    const text = await response.text();
    let shown = text;
    try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* not JSON */ }
    out.textContent = response.status + " " + response.statusText + "\n" + shown;
  });
  return form;
}

function render(doc) {
  document.getElementById("version").textContent = doc.info.version;
  const byTag = {};
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const tag = (op.tags || ["other"])[0];
      (byTag[tag] = byTag[tag] || []).push([path, method, op]);
    }
  }
  const main = document.getElementById("ops");
  const toc = document.getElementById("toc");
  main.textContent = "";
  for (const tag of Object.keys(byTag).sort()) {
    toc.append(el("a", { href: "#tag-" + tag }, tag));
    main.append(el("h2", { id: "tag-" + tag }, tag));
    for (const [path, method, op] of byTag[tag]) {
      const params = el("table", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "in"),
        el("th", {}, "schema"), el("th", {}, "description")));
      for (const p of op.parameters || []) {
        params.append(el("tr", {}, el("td", {}, p.name + (p.required ? " *" : "")), el("td", {}, p.in),
          el("td", {}, el("code", {}, JSON.stringify(p.schema))), el("td", {}, p.description || "")));
      }
      const responses = el("div", {});
      for (const [status, r] of Object.entries(op.responses)) {
        const content = r.content ? Object.values(r.content)[0] : null;
        const item = el("details", {}, el("summary", {}, el("span", { class: "status" }, status), " " + r.description));
        if (content) item.append(schemaBlock(doc, content.schema));
        responses.append(item);
      }
      const box = el("details", { class: "op" },
        el("summary", {}, el("span", { class: "method " + method }, method), " ", el("code", {}, path), " — " + op.summary),
        el("p", {}, op.description || ""),
        (op.parameters || []).length ? params : "",
        op.requestBody ? el("div", {}, el("h4", {}, "Request body"),
          schemaBlock(doc, Object.values(op.requestBody.content)[0].schema)) : "",
        el("h4", {}, "Responses"), responses,
        el("h4", {}, "Try it"), tryForm(path, method, op));
      main.append(box);
    }
  }
}

fetch("/api/v1/openapi.json").then((r) => r.json()).then(render).catch((e) => {
  document.getElementById("ops").textContent = "Could not load the API description: " + e;
});
