"use strict";
// The tgfr page: three tabs, each a form posted to its JSON endpoint; results and errors drawn here.

let info = null;

function element(tag, attributes = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.appendChild(child);
  return node;
}

function showTab(name) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const selected = tab.dataset.panel === name;
    tab.setAttribute("aria-selected", String(selected));
    document.getElementById(tab.dataset.panel).hidden = !selected;
  }
}

function showError(panel, message) {
  const box = document.getElementById(`${panel}-error`);
  box.textContent = message;
  box.hidden = !message;
  if (message) document.getElementById(`${panel}-result`).hidden = true;
}

function megabytes(bytes) {
  return `${(bytes / 1048576).toFixed(bytes < 1048576 ? 2 : 1)} MB`;
}

// A photo over the server's limit is refused here, before it is sent.
function oversizedPhoto(form) {
  const limit = info ? info.max_upload_bytes : Infinity;
  for (const input of form.querySelectorAll("input[type=file]")) {
    const file = input.files[0];
    if (file && file.size > limit) {
      return `${file.name} is ${megabytes(file.size)}, over the upload limit of ${megabytes(limit)} per photo`;
    }
  }
  return null;
}

async function post(panel, url, form) {
  const tooLarge = oversizedPhoto(form);
  if (tooLarge) {
    showError(panel, tooLarge);
    return null;
  }
  const button = document.getElementById(`${panel}-submit`);
  button.disabled = true;
  button.classList.add("busy");
  showError(panel, "");
  try {
    const response = await fetch(url, {method: "POST", body: new FormData(form)});
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = {error: `the server answered ${response.status} ${response.statusText}`};
    }
    if (!response.ok) {
      showError(panel, body.error || `the server answered ${response.status}`);
      return null;
    }
    return body;
  } catch (error) {
    showError(panel, `no answer from the server: ${error.message}`);
    return null;
  } finally {
    button.disabled = false;
    button.classList.remove("busy");
  }
}

function face(src, caption, extra = "") {
  return element("figure", {class: `face ${extra}`}, [
    element("img", {src, alt: caption}),
    element("figcaption", {text: caption}),
  ]);
}

function matchGrid(matches) {
  const grid = element("div", {class: "grid matches"});
  for (const match of matches) {
    const figure = element("figure", {class: "face match", "data-identity": match.identity}, [
      element("img", {src: match.image, alt: match.name}),
      element("figcaption", {}, [
        element("strong", {text: `#${match.rank} ${match.identity}`}),
        element("span", {class: "score", text: match.score.toFixed(3)}),
        element("span", {class: "name", text: match.name}),
      ]),
    ]);
    grid.appendChild(figure);
  }
  return grid;
}

function showResult(panel, nodes) {
  const box = document.getElementById(`${panel}-result`);
  box.replaceChildren(...nodes);
  box.hidden = false;
}

async function verify(event) {
  event.preventDefault();
  const body = await post("verify", "/api/verify", event.target);
  if (!body) return;
  let decision = "no decision: this mode has no threshold (run tgfr eval on the model)";
  let verdict = "unknown";
  if (body.same !== null) {
    decision = body.same ? "Same person" : "Different people";
    verdict = body.same ? "same" : "different";
  }
  const threshold = body.threshold === null ? "none" : body.threshold.toFixed(3);
  const nodes = [
    element("p", {class: `decision ${verdict}`, id: "verify-decision", text: decision}),
    element("p", {class: "numbers", id: "verify-score",
                  text: `score ${body.score.toFixed(3)} · threshold ${threshold} · mode ${body.mode}`}),
    element("div", {class: "grid"}, [face(body.faces[0], "Photo A"), face(body.faces[1], "Photo B")]),
  ];
  for (const view of body.attention) {
    nodes.push(element("h3", {text: `Where the words of description ${view.photo} look`}));
    nodes.push(element("p", {class: "caption", text: `“${view.caption}”`}));
    const words = element("div", {class: "grid words", id: `attention-${view.photo}`});
    for (const word of view.words) words.appendChild(face(word.image, word.word, "word"));
    nodes.push(words);
  }
  showResult("verify", nodes);
}

async function identify(event) {
  event.preventDefault();
  const body = await post("identify", "/api/identify", event.target);
  if (!body) return;
  showResult("identify", [
    element("p", {class: "numbers", text: `${body.matches.length} most similar gallery faces (mode ${body.mode})`}),
    matchGrid(body.matches),
  ]);
}

async function search(event) {
  event.preventDefault();
  const body = await post("search", "/api/search", event.target);
  if (!body) return;
  const kind = body.composed ? "photo + change description" : "description";
  showResult("search", [
    element("p", {class: "numbers", text: `${body.matches.length} best matches for the ${kind}`}),
    matchGrid(body.matches),
  ]);
}

function describeSetup() {
  const parts = [];
  if (info.model) {
    const thresholds = Object.entries(info.model.thresholds)
      .map(([mode, value]) => `${mode} ${value === null ? "n/a" : value.toFixed(3)}`).join(", ");
    parts.push(`model: ${info.model.directory} (thresholds at FAR 1e-3: ${thresholds})`);
    const select = document.getElementById("verify-mode");
    for (const mode of info.model.modes) select.appendChild(element("option", {value: mode, text: mode}));
  } else {
    parts.push("no face recognition model (start with --model RUN)");
  }
  if (info.gallery) {
    parts.push(`gallery: ${info.gallery.faces} faces${info.gallery.described ? ", described" : ""}`);
  } else if (info.gallery_error) {
    showError("identify", info.gallery_error);
  }
  parts.push(info.xmodal ? `X-Modal: ${info.xmodal.run}` : "no X-Modal model (start with --xmodal RUN)");
  document.getElementById("status").textContent = parts.join(" · ");
}

async function start() {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => showTab(tab.dataset.panel));
  }
  document.getElementById("verify-form").addEventListener("submit", verify);
  document.getElementById("identify-form").addEventListener("submit", identify);
  document.getElementById("search-form").addEventListener("submit", search);
  try {
    info = await (await fetch("/api/info")).json();
    describeSetup();
  } catch (error) {
    document.getElementById("status").textContent = `the server does not answer: ${error.message}`;
  }
  document.body.dataset.ready = "true";
}

start();
