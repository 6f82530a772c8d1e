// Motet's admin page: plain DOM code, no build step, nothing loaded from elsewhere.
// It polls /status and /projections, draws the lag, browses streams and
// builds a form per command and query from /openapi.json.
"use strict";

const POLL_MS = 1000;
const HISTORY = 120; // samples kept for the lag chart
const COLORS = ["#2f6fde", "#d1495b", "#2a9d8f", "#e9a23b", "#7b4fc9", "#5a6272"];
const ACTIONS = ["pause", "resume", "retry", "skip", "rebuild"];

const lagHistory = new Map(); // projection name -> [lag_events, ...]
let streamPage = { stream: "", from: 0, starts: [] };

function $(selector) {
  return document.querySelector(selector);
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function token() {
  return sessionStorage.getItem("motet-token") || "";
}

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || { code: "internal", message: String(status) };
    super(`${status} ${error.code}: ${error.message}`);
    this.status = status;
    this.code = error.code;
  }
}

async function api(method, path, body, headers = {}) {
  const options = { method, headers: { ...headers } };
  if (token()) options.headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch (error) {
    parsed = { error: { code: "internal", message: text } };
  }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

// --- status and projections ---------------------------------------------------

function showConnection(ok, message) {
  const node = $("#connection");
  node.textContent = message;
  node.className = ok ? "muted" : "error";
}

async function refresh() {
  try {
    const [status, projections] = await Promise.all([
      api("GET", "/status"),
      api("GET", "/projections"),
    ]);
    $("#head").textContent = status.head_position;
    $("#durability").textContent = status.durability;
    $("#actors").textContent = status.actors;
    renderProjections(projections.projections);
    showConnection(true, `updated ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    showConnection(false, error.code === "unauthorized" ? "enter the token" : error.message);
  }
}

function stateOf(projection) {
  if (projection.state !== "running") return projection.state;
  return projection.paused ? "paused" : "running";
}

function projectionRow(name) {
  // Rows are made once and updated in place, so a button is never replaced
  // under the pointer between a poll and a click.
  const existing = document.querySelector(`#projections tr[data-name="${CSS.escape(name)}"]`);
  if (existing) return existing;
  const actions = element("td");
  for (const action of ACTIONS) {
    const button = element("button", {
      type: "button",
      "data-projection": name,
      "data-action": action,
      text: action,
    });
    button.addEventListener("click", () => control(name, action));
    actions.append(button, " ");
  }
  const row = element(
    "tr",
    { "data-name": name },
    element("td", { text: name }),
    element("td", { class: "state" }),
    element("td", { class: "num position" }),
    element("td", { class: "num lag-events" }),
    element("td", { class: "num lag-seconds" }),
    element("td", { class: "error projection-error" }),
    actions,
  );
  $("#projections tbody").append(row);
  return row;
}

function renderProjections(projections) {
  for (const projection of projections) {
    const history = lagHistory.get(projection.name) || [];
    history.push(projection.lag_events);
    if (history.length > HISTORY) history.shift();
    lagHistory.set(projection.name, history);

    const row = projectionRow(projection.name);
    const state = stateOf(projection);
    const failed = projection.failed_position == null ? "" : ` (at ${projection.failed_position})`;
    const stateCell = row.querySelector(".state");
    stateCell.textContent = state;
    stateCell.className = `state state-${state}`;
    row.querySelector(".position").textContent = projection.position;
    row.querySelector(".lag-events").textContent = projection.lag_events;
    row.querySelector(".lag-seconds").textContent = projection.lag_seconds.toFixed(1);
    row.querySelector(".projection-error").textContent = (projection.error || "") + failed;
  }
  drawChart();
}

async function control(name, action) {
  const message = $("#projection-message");
  message.textContent = `${action} ${name}…`;
  try {
    await api("POST", `/projections/${encodeURIComponent(name)}/${action}`);
    message.textContent = `${action} ${name}: done`;
    message.className = "muted";
  } catch (error) {
    message.textContent = `${action} ${name}: ${error.message}`;
    message.className = "error";
  }
  refresh();
}

function drawChart() {
  const canvas = $("#lag-chart");
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  let top = 1;
  for (const history of lagHistory.values()) top = Math.max(top, ...history);
  context.fillStyle = "#7a8291";
  context.font = "11px sans-serif";
  context.fillText(`lag (events), max ${top}`, 6, 12);
  let index = 0;
  for (const [name, history] of lagHistory) {
    const color = COLORS[index % COLORS.length];
    context.strokeStyle = color;
    context.beginPath();
    history.forEach((value, i) => {
      const x = (i / (HISTORY - 1)) * (width - 10) + 5;
      const y = height - 5 - (value / top) * (height - 25);
      if (i === 0) context.moveTo(x, y);
      else context.lineTo(x, y);
    });
    context.stroke();
    context.fillStyle = color;
    context.fillText(name, width - 120, 14 + 13 * index);
    index += 1;
  }
}

// --- stream browser ----------------------------------------------------------

async function loadStream(stream, from) {
  const limit = Number($("#stream-limit").value) || 20;
  const message = $("#stream-message");
  const body = $("#stream-events tbody");
  try {
    const query = new URLSearchParams({ from: String(from), limit: String(limit) });
    const page = await api("GET", `/streams/${encodeURIComponent(stream)}?${query}`);
    body.replaceChildren();
    for (const event of page.events) {
      body.append(
        element(
          "tr",
          { "data-position": event.position },
          element("td", { class: "num", text: event.version }),
          element("td", { class: "num", text: event.position }),
          element("td", { class: "type", text: event.type }),
          element("td", { text: event.time }),
          element("td", {}, element("pre", { text: JSON.stringify(event.metadata || {}) })),
          element("td", {}, element("pre", { text: JSON.stringify(event.data, null, 1) })),
        ),
      );
    }
    if (streamPage.stream !== stream) streamPage = { stream, from, starts: [] };
    streamPage.from = from;
    streamPage.next = page.next;
    message.className = "muted";
    message.textContent = page.events.length
      ? `${stream}: versions ${page.events[0].version}–${page.next}`
      : `${stream}: no events after version ${from}`;
    $("#stream-prev").disabled = streamPage.starts.length === 0;
    $("#stream-next").disabled = page.events.length < limit;
  } catch (error) {
    message.className = "error";
    message.textContent = error.message;
  }
}

function setUpStreams() {
  $("#stream-form").addEventListener("submit", (event) => {
    event.preventDefault();
    streamPage = { stream: "", from: 0, starts: [] };
    loadStream($("#stream-id").value.trim(), Number($("#stream-from").value) || 0);
  });
  $("#stream-next").addEventListener("click", () => {
    streamPage.starts.push(streamPage.from);
    loadStream(streamPage.stream, streamPage.next);
  });
  $("#stream-prev").addEventListener("click", () => {
    loadStream(streamPage.stream, streamPage.starts.pop() || 0);
  });
}

// --- forms from the OpenAPI document ------------------------------------------

function resolve(schema, components) {
  if (schema && schema.$ref) return components[schema.$ref.split("/").pop()];
  return schema || {};
}

function kindOf(schema) {
  // "anyOf: [X, null]" is an optional X; the first non-null type decides the input.
  const options = schema.anyOf || [schema];
  const types = options.map((option) => option.type).filter((type) => type && type !== "null");
  if (schema.enum) return "enum";
  return types[0] || "json";
}

function fieldInput(name, schema, required) {
  const kind = kindOf(schema);
  const attributes = { name, "data-kind": kind };
  if (kind === "integer" || kind === "number") {
    attributes.type = "number";
    attributes.step = kind === "integer" ? "1" : "any";
  } else if (kind === "boolean") {
    attributes.type = "checkbox";
  } else {
    attributes.type = "text";
  }
  if (schema.default !== undefined && schema.default !== null) {
    attributes.placeholder = String(schema.default);
  }
  if (required && kind !== "boolean") attributes.required = "";
  return element("label", { text: `${name}${required ? "" : " (optional)"} ` }, element("input", attributes));
}

function formData(form) {
  const data = {};
  for (const input of form.querySelectorAll("input[data-kind]")) {
    const kind = input.dataset.kind;
    if (kind === "boolean") {
      data[input.name] = input.checked;
      continue;
    }
    if (input.value === "") continue; // left out: the field's default applies
    if (kind === "integer" || kind === "number") data[input.name] = Number(input.value);
    else if (kind === "string" || kind === "enum") data[input.name] = input.value;
    else {
      try {
        data[input.name] = JSON.parse(input.value);
      } catch (error) {
        data[input.name] = input.value;
      }
    }
  }
  return data;
}

function messageForm(kind, type, schema, components) {
  const properties = schema.properties || {};
  const required = new Set(schema.required || []);
  const form = element("form", { [`data-${kind}`]: type });
  form.append(element("h3", { text: type }));
  if (schema.description) form.append(element("p", { class: "muted", text: schema.description }));
  for (const [name, property] of Object.entries(properties)) {
    if (property.enum && property.enum.length === 1 && property.enum[0] === type) continue; // tag
    form.append(fieldInput(name, resolve(property, components), required.has(name)));
  }
  if (kind === "command") {
    form.append(
      element("label", { text: "Idempotency-Key (optional) " }, element("input", { name: "_idempotency", type: "text" })),
      element("label", { text: "If-Match version (optional) " }, element("input", { name: "_if_match", type: "number", min: "0" })),
    );
  }
  const result = element("pre", { class: "result" });
  form.append(element("button", { type: "submit", text: kind === "command" ? "Send" : "Ask" }), result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const headers = {};
    if (kind === "command") {
      const key = form.querySelector("[name=_idempotency]").value;
      const version = form.querySelector("[name=_if_match]").value;
      if (key) headers["Idempotency-Key"] = key;
      if (version !== "") headers["If-Match"] = `"${version}"`;
    }
    result.className = "result";
    result.textContent = "…";
    try {
      const path = kind === "command" ? `/commands/${type}` : `/queries/${type}`;
      const answer = await api("POST", path, formData(form), headers);
      result.textContent = JSON.stringify(answer, null, 1);
      if (kind === "command" && answer && answer.stream) {
        $("#stream-id").value = answer.stream;
      }
    } catch (error) {
      result.className = "result error";
      result.textContent = error.message;
    }
  });
  return form;
}

async function buildForms() {
  let document_;
  try {
    document_ = await api("GET", "/openapi.json");
  } catch (error) {
    $("#command-forms").textContent = `the API description is not available: ${error.message}`;
    return;
  }
  const components = document_.components.schemas;
  const commands = $("#command-forms");
  const queries = $("#query-forms");
  commands.replaceChildren();
  queries.replaceChildren();
  for (const [path, item] of Object.entries(document_.paths)) {
    const [, section, type] = path.split("/");
    if (section === "commands" && item.post) {
      const schema = resolve(item.post.requestBody.content["application/json"].schema, components);
      commands.append(messageForm("command", type, schema, components));
    } else if (section === "queries" && item.post) {
      const schema = resolve(item.post.requestBody.content["application/json"].schema, components);
      queries.append(messageForm("query", type, schema, components));
    }
  }
}

function start() {
  $("#token").value = token();
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("motet-token", $("#token").value);
    buildForms();
    refresh();
  });
  setUpStreams();
  buildForms();
  refresh();
  setInterval(refresh, POLL_MS);
}

start();
