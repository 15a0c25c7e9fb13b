// The rule console (docs/console.md). Plain script, no build step, no
// dependencies. Every request goes to this engine's management API with the
// token the user signed in with; data is shown with textContent only.
"use strict";

const state = { project: "", token: "", last: null, timer: null, rules: [] };
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

async function api(method, path, body) {
  const headers = { "X-Auth-Token": state.token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(`/v5/iot/${encodeURIComponent(state.project)}${path}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = response.headers.get("Content-Type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const reason = data && data.error_msg ? `${data.error_code}: ${data.error_msg}` : response.statusText;
    throw new Error(`${response.status} ${reason}`);
  }
  return data;
}

// ------------------------------------------------------------------ sign in

async function signIn(event) {
  event.preventDefault();
  state.project = $("project").value.trim();
  state.token = $("token").value;
  $("signin-error").textContent = "";
  try {
    await api("GET", "/routing-rule/rules?limit=1");  // proves the token and the project
  } catch (err) {
    $("signin-error").textContent = `Sign-in failed: ${err.message}`;
    return;
  }
  sessionStorage.setItem("console", JSON.stringify({ project: state.project, token: state.token }));
  start();
}

function signOut() {
  sessionStorage.removeItem("console");
  location.reload();
}

function start() {
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  $("who").textContent = `project ${state.project}`;
  refreshRules();
  state.timer = setInterval(refreshRules, 2000);
  loadSamples();
}

// ------------------------------------------------------------------ rules and rates

async function allRules() {
  const rules = [];
  let marker = "";
  for (;;) {
    const page = await api("GET", `/routing-rule/rules?limit=50${marker ? `&marker=${marker}` : ""}`);
    rules.push(...page.rules);
    if (!page.marker || page.rules.length < 50) return rules;
    marker = page.marker;
  }
}

function rate(now, before, key, seconds) {
  if (!before || seconds <= 0) return "—";
  return ((now[key] - before[key]) / seconds).toFixed(1);
}

async function refreshRules() {
  try {
    const rules = await allRules();
    state.rules = rules;
    const metrics = await Promise.all(rules.map((r) =>
      api("GET", `/routing-rule/rules/${encodeURIComponent(r.rule_id)}/metrics`)));
    const at = performance.now() / 1000;
    const now = {};
    metrics.forEach((m) => {
      now[m.rule_id] = {
        matched: m.matched, failed: m.failed,
        forwarded: m.actions.reduce((s, a) => s + a.forwarded, 0),
        actionFailed: m.actions.reduce((s, a) => s + a.failed, 0),
      };
    });
    const seconds = state.last ? at - state.last.at : 0;
    const rows = $("rule-rows");
    rows.replaceChildren();
    rules.forEach((rule, i) => {
      const m = metrics[i];
      const before = state.last && state.last.counts[rule.rule_id];
      const tr = el("tr");
      tr.dataset.rule = rule.rule_id;
      tr.append(el("td", rule.rule_name || rule.rule_id),
        el("td", `${rule.subject.resource}/${rule.subject.event}`),
        el("td", rule.active ? "yes" : "no"),
        el("td", rate(now[rule.rule_id], before, "matched", seconds), "matched"),
        el("td", rate(now[rule.rule_id], before, "forwarded", seconds), "forwarded"),
        el("td", rate(now[rule.rule_id], before, "actionFailed", seconds), "failed"));
      const actions = el("td");
      m.actions.forEach((a) => actions.append(el("div",
        `${a.action_id}: ${a.forwarded} · ${a.failed} · ${a.backlogged}`, "action")));
      tr.append(actions);
      const total = el("td", `${m.matched} matched in all`, "total");
      total.hidden = true;
      tr.append(total);
      rows.append(tr);
    });
    $("attached").textContent = metrics.length && !metrics[0].worker_attached
      ? "No worker attached to this API (engine api): counters are zero." : "";
    state.last = { at, counts: now };
    $("rules-error").textContent = "";
    fillStored(rules);
  } catch (err) {
    $("rules-error").textContent = `Could not refresh: ${err.message}`;
  }
}

// ------------------------------------------------------------------ tester

let samples = {};

async function loadSamples() {
  const response = await fetch("/console/samples.json");
  samples = await response.json();
  const select = $("sample");
  Object.keys(samples).forEach((kind) => select.append(new Option(kind, kind)));
}

function fillStored(rules) {
  const select = $("stored");
  const chosen = select.value;
  select.replaceChildren(new Option("— none —", ""));
  rules.forEach((r) => select.append(new Option(r.rule_name || r.rule_id, r.rule_id)));
  select.value = chosen;
}

function pickSample() {
  const kind = $("sample").value;
  if (kind) $("event").value = JSON.stringify(samples[kind], null, 2);
  scheduleTest();
}

function pickStored() {
  const rule = state.rules.find((r) => r.rule_id === $("stored").value);
  if (!rule) return;
  $("select").value = rule.select || "";
  $("where").value = rule.where || "";
  $("stored").dataset.subject = JSON.stringify(rule.subject);
  scheduleTest();
}

let pending = null;
function scheduleTest() {
  clearTimeout(pending);
  pending = setTimeout(runTest, 250);  // as you type, not per keystroke
}

async function runTest() {
  const result = $("result");
  let event;
  try {
    event = JSON.parse($("event").value || "null");
  } catch (err) {
    show("err", "the notification is not valid JSON", null, [], null);
    return;
  }
  if (!event || typeof event !== "object" || Array.isArray(event)) {
    show("err", "the notification must be a JSON object", null, [], null);
    return;
  }
  try {
    // A rule picked from the project brings its subject: checked, and used by the lint.
    const subject = $("stored").value ? JSON.parse($("stored").dataset.subject || "null") : null;
    const answer = await api("POST", "/routing-rule/test", {
      select: $("select").value || null, where: $("where").value || null, event, explain: true,
      subject,
    });
    if (answer.result === "error") {
      const e = answer.error;
      show("err", `error in ${e.clause}, line ${e.line} column ${e.column}: ${e.message}`,
        e.snippet, answer.warnings || [], answer.explain);
    } else {
      show(answer.result, answer.result === "match" ? "match" : "no match",
        answer.result === "match" ? JSON.stringify(answer.output, null, 2) : null,
        answer.warnings || [], answer.explain);
    }
  } catch (err) {
    show("err", err.message, null, [], null);
  }
  result.dataset.done = "1";
}

function show(cls, text, output, warnings, explain) {
  const result = $("result");
  result.className = cls;
  result.textContent = text;
  $("output").textContent = output || "";
  const list = $("warnings");
  list.replaceChildren(...warnings.map((w) => el("li", w.message || w)));
  const rows = $("explain-rows");
  rows.replaceChildren();
  if (explain && explain.nodes) {
    explain.nodes.forEach((n) => {
      const tr = el("tr");
      tr.append(el("td", n.text), el("td", n.type === "MISSING" ? "" : JSON.stringify(n.value)),
        el("td", n.type), el("td", n.truth || "", n.truth || ""));
      rows.append(tr);
    });
    if (explain.summary) rows.append(el("tr")), rows.lastChild.append(el("td", explain.summary));
  }
}

// ------------------------------------------------------------------ wiring

function selectTab(name) {
  document.querySelectorAll(".tab").forEach((b) => b.setAttribute("aria-selected", String(b.dataset.tab === name)));
  $("rules").hidden = name !== "rules";
  $("tester").hidden = name !== "tester";
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => selectTab(b.dataset.tab)));
  $("sample").addEventListener("change", pickSample);
  $("stored").addEventListener("change", pickStored);
  ["event", "select", "where"].forEach((id) => $(id).addEventListener("input", scheduleTest));
  const saved = sessionStorage.getItem("console");
  if (saved) {
    Object.assign(state, JSON.parse(saved));
    start();
  }
});
