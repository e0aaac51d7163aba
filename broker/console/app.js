// The security officers' console: sign in with a signed challenge, then read the
// officer API (/api/v1/...) and show its answers as tables.
//
// Everything from the API is put on the page as text (textContent, text nodes,
// never innerHTML), so data cannot become markup: XSS-safe by construction. The
// session token lives in sessionStorage only (gone when the tab closes) and is
// sent as a Bearer header, never as a cookie. No third-party code, no build step.
"use strict";

(function () {
  const API = "/api/v1";
  const SESSION_KEY = "ssr-console-session";
  const DAY_MS = 24 * 60 * 60 * 1000;
  const REVIEW_DAYS = 30;
  const REQUEST_TIMEOUT_MS = 15000;
  const VIEWS = ["login", "review", "trace", "audit"];

  const $ = (id) => document.getElementById(id);

  // --- building DOM from data, safely -------------------------------------------------------

  // h("td", {class: "num"}, "3"): attributes via setAttribute, children appended as
  // nodes or text nodes. Strings are never parsed as HTML.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) el.setAttribute(name, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const DASH = "—";

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function dateInputValue(ms) {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  }

  // Epoch milliseconds as local date and time, with the UTC instant for machines.
  function timeNode(ms) {
    if (typeof ms !== "number" || !Number.isFinite(ms)) return text(ms);
    const d = new Date(ms);
    const shown = `${dateInputValue(ms)} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return h("time", { datetime: d.toISOString(), title: d.toISOString() }, shown);
  }

  function text(value) {
    if (value === null || value === undefined || value === "") return h("span", { class: "none" }, DASH);
    if (typeof value === "boolean") return document.createTextNode(value ? "yes" : "no");
    if (Array.isArray(value)) {
      if (value.length === 0) return h("span", { class: "none" }, "none");
      if (value.every((v) => v === null || typeof v !== "object")) {
        return document.createTextNode(value.join(", "));
      }
      return h("ul", { class: "plain" }, value.map((v) => h("li", {}, text(v))));
    }
    if (typeof value === "object") return counts(value);
    return document.createTextNode(String(value));
  }

  // {"SEKRETESS": 3, "INTERN": 1} as "SEKRETESS 3 · INTERN 1", in the API's order.
  function counts(map) {
    const entries = Object.entries(map || {});
    if (entries.length === 0) return h("span", { class: "none" }, "none");
    if (!entries.every(([, v]) => typeof v === "number")) {
      return h("dl", { class: "nested" }, entries.map(([k, v]) => [h("dt", {}, k), h("dd", {}, text(v))]));
    }
    const list = h("ul", { class: "counts" });
    for (const [key, n] of entries) list.append(h("li", {}, h("span", { class: "k" }, key), " ", h("span", { class: "n" }, n)));
    return list;
  }

  const TIME_FIELDS = new Set([
    "at", "from", "to", "generated", "expires", "not_after", "not_before", "last_activity",
    "accepted_at", "checked_at", "delivered", "read", "acknowledged", "created",
  ]);

  function cell(key, value) {
    return TIME_FIELDS.has(key) || key.endsWith("_at") ? timeNode(value) : text(value);
  }

  function badge(label, tone) {
    return h("span", { class: `badge ${tone}` }, label);
  }

  // A table with a caption; columns are [key, heading] pairs, or a render function.
  function table(caption, columns, rows, emptyText) {
    if (!rows || rows.length === 0) {
      return h("div", { class: "block" }, h("h4", {}, caption), h("p", { class: "none" }, emptyText || "None."));
    }
    const head = h("tr", {}, columns.map(([, title]) => h("th", { scope: "col" }, title)));
    const body = rows.map((row) =>
      h("tr", {}, columns.map(([key, , render]) => h("td", {}, render ? render(row) : cell(key, row[key])))),
    );
    return h("div", { class: "block table-wrap" }, h("table", {}, h("caption", {}, caption), h("thead", {}, head), h("tbody", {}, body)));
  }

  function rowsOf(value) {
    if (!Array.isArray(value)) return [];
    return value.map((v) => (v && typeof v === "object" ? v : { value: v }));
  }

  // A two-column table of named facts: [[heading, node or value], ...].
  function facts(caption, pairs) {
    return h(
      "div",
      { class: "block table-wrap" },
      h(
        "table",
        { class: "facts" },
        h("caption", {}, caption),
        h("tbody", {}, pairs.map(([name, value, cls]) =>
          h("tr", { class: cls }, h("th", { scope: "row" }, name), h("td", {}, value instanceof Node ? value : text(value))),
        )),
      ),
    );
  }

  // --- the session --------------------------------------------------------------------------

  function loadSession() {
    try {
      const s = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
      if (s && typeof s.token === "string" && (typeof s.expires !== "number" || s.expires > Date.now())) return s;
    } catch (e) {
      /* a damaged entry is no session */
    }
    sessionStorage.removeItem(SESSION_KEY);
    return null;
  }

  function saveSession(s) {
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
  }

  function clearSession() {
    sessionStorage.removeItem(SESSION_KEY);
  }

  function scopeText(scope) {
    return scope === null || scope === undefined || scope === "" || scope === "region" || scope === "*"
      ? "the whole region"
      : String(scope);
  }

  // An officer scoped to one actor reviews that actor by default; a regional one picks.
  function ownActor(session) {
    const scope = session && session.scope;
    return typeof scope === "string" && scope !== "region" && scope !== "*" ? scope : "";
  }

  // --- talking to the API -------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, detail) {
      super(detail || code || `HTTP ${status}`);
      this.status = status;
      this.code = code || "";
      this.detail = detail || "";
    }
  }

  async function api(method, path, body, { auth = true } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const session = loadSession();
    if (auth) {
      if (!session) throw new ApiError(401, "no_session", "");
      headers.Authorization = `Bearer ${session.token}`;
    }
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    let response;
    try {
      response = await fetch(API + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit",
        cache: "no-store",
        redirect: "error",
        signal: controller.signal,
      });
    } catch (e) {
      throw new ApiError(0, "unreachable", "");
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const d = data && typeof data === "object" ? data : {};
      throw new ApiError(response.status, d.error, d.detail || d.message);
    }
    return data;
  }

  // The API's details are lower-case clauses ("the challenge has expired; ..."): as sentences.
  function sentence(detail) {
    const t = String(detail).trim();
    if (!t) return t;
    return t[0].toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? "" : ".");
  }

  // What an officer should read for a refusal: the reason first, the server's detail after.
  function describe(error, what) {
    if (!(error instanceof ApiError)) return [`Something went wrong in the console: ${error}`];
    const detail = error.detail ? [sentence(error.detail)] : [];
    switch (error.code) {
      case "unreachable":
        return ["The broker could not be reached. Check the connection and try again."];
      case "out_of_scope": {
        // The API says "your scope is nacka, not solna"; say it ourselves if it did not.
        const session = loadSession();
        return [`Out of scope: ${error.detail || `your scope is ${scopeText(session && session.scope)}`}.`];
      }
      case "not_found":
        return [`Not found: ${what || "that"} is unknown or outside your scope.`];
      case "unknown_officer":
        return ["Unknown officer: there is no säkerhetschef with that id in the directory."];
      case "unknown_actor":
        return ["Unknown actor.", ...detail];
      case "audit_unavailable":
        return ["Not answered: the query could not be recorded in the audit trail. Try again shortly."];
      case "challenge_expired":
      case "challenge_reused":
      case "bad_challenge":
        return ["Sign-in refused: ask for a new challenge.", ...detail];
      default:
        if (error.status === 401) return ["Sign-in refused.", ...detail];
        if (error.status === 400) return ["The request was not accepted.", ...detail];
        return [`The broker answered ${error.status}${error.code ? ` (${error.code})` : ""}.`, ...detail];
    }
  }

  function showError(section, lines) {
    const box = section.querySelector("[data-error]");
    box.replaceChildren(...lines.map((line, i) => h(i === 0 ? "strong" : "span", { class: i ? "detail" : null }, line)));
    box.hidden = false;
  }

  function clearError(section) {
    const box = section.querySelector("[data-error]");
    box.replaceChildren();
    box.hidden = true;
  }

  function status(message) {
    $("status").textContent = message;
  }

  // Run one API call for a view: busy state, errors shown in the view, 401 means sign in again.
  async function run(viewName, what, call, onError) {
    const section = $(`view-${viewName}`);
    const buttons = section.querySelectorAll("button");
    clearError(section);
    section.setAttribute("aria-busy", "true");
    buttons.forEach((b) => (b.disabled = true));
    try {
      return await call();
    } catch (error) {
      if (viewName !== "login" && error instanceof ApiError && error.status === 401) {
        clearSession();
        render();
        showError($("view-login"), ["Your session has ended. Please sign in again.", ...(error.detail ? [sentence(error.detail)] : [])]);
        return undefined;
      }
      if (onError) onError(error);
      showError(section, describe(error, what));
      return undefined;
    } finally {
      section.removeAttribute("aria-busy");
      buttons.forEach((b) => (b.disabled = false));
    }
  }

  // --- (a) signing in -----------------------------------------------------------------------

  let pendingChallenge = null;

  async function askChallenge(event) {
    event.preventDefault();
    const officer = $("officer").value.trim();
    if (!officer) {
      showError($("view-login"), ["Enter your officer id."]);
      $("officer").focus();
      return;
    }
    const answer = await run("login", "that officer", () =>
      api("POST", "/auth/challenge", { officer }, { auth: false }),
    );
    if (!answer) return;
    pendingChallenge = answer;
    $("login-command").textContent = `ssr officer sign --key <your key file> ${answer.challenge}`;
    $("challenge-officer").textContent = answer.officer;
    $("challenge-expires").replaceChildren(timeNode(answer.expires));
    $("signature").value = "";
    $("challenge-form").hidden = true;
    $("token-form").hidden = false;
    $("signature").focus();
    status("Challenge received. Sign it with your key and paste the signature.");
  }

  async function signIn(event) {
    event.preventDefault();
    if (!pendingChallenge) return;
    const signature = $("signature").value.replace(/\s+/g, "").toLowerCase();
    if (!/^[0-9a-f]+$/.test(signature)) {
      showError($("view-login"), ["The signature must be hexadecimal, as printed by ssr officer sign."]);
      $("signature").focus();
      return;
    }
    const answer = await run("login", "", () =>
      api(
        "POST",
        "/auth/token",
        { officer: pendingChallenge.officer, challenge: pendingChallenge.challenge, signature },
        { auth: false },
      ),
      (error) => {
        // A challenge that can no longer be redeemed: back to step 1 (the error stays shown).
        if (["challenge_expired", "challenge_reused", "bad_challenge"].includes(error.code)) resetLogin();
      },
    );
    if (!answer) return;
    saveSession({ token: answer.token, officer: answer.officer, scope: answer.scope, expires: answer.expires });
    resetLogin();
    if (!location.hash || location.hash === "#login") location.hash = "#review";
    render();
    status(`Signed in as ${answer.officer}.`);
  }

  function resetLogin() {
    pendingChallenge = null;
    $("signature").value = "";
    $("login-command").textContent = "";
    $("token-form").hidden = true;
    $("challenge-form").hidden = false;
  }

  function logout() {
    clearSession();
    resetLogin();
    for (const out of ["review-out", "trace-out", "audit-out"]) $(out).replaceChildren();
    for (const name of VIEWS) clearError($(`view-${name}`));
    $("review-actor").value = "";
    $("trace-id").value = "";
    location.hash = "";
    render();
    status("Signed out.");
  }

  // --- (b) access review --------------------------------------------------------------------

  function defaultPeriod() {
    const today = Date.now();
    $("review-to").value = dateInputValue(today);
    $("review-from").value = dateInputValue(today - REVIEW_DAYS * DAY_MS);
  }

  // Local midnight at the start of a yyyy-mm-dd date input, or of a day after it.
  function dayStart(value, plusDays = 0) {
    const [y, m, d] = value.split("-").map(Number);
    return new Date(y, m - 1, d + plusDays).getTime();
  }

  async function showReview(event) {
    if (event) event.preventDefault();
    const section = $("view-review");
    const actor = $("review-actor").value.trim();
    const fromValue = $("review-from").value;
    const toValue = $("review-to").value;
    if (!actor || !fromValue || !toValue) {
      showError(section, ["Enter an actor and a period."]);
      return;
    }
    const from = dayStart(fromValue);
    const to = Math.min(Date.now(), dayStart(toValue, 1)); // "to" is inclusive on screen
    if (!(from < to)) {
      showError(section, ["The period must start before it ends."]);
      return;
    }
    const query = new URLSearchParams({ from: String(from), to: String(to) });
    $("review-out").replaceChildren();
    const report = await run("review", `actor ${actor}`, () =>
      api("GET", `/actors/${encodeURIComponent(actor)}/review?${query}`),
    );
    if (!report) return;
    $("review-out").replaceChildren(reviewReport(report));
    focusResult("review-out");
    status(`Access review for ${report.actor} loaded.`);
  }

  const STATE_TONE = { valid: "ok", expiring: "warn", expired: "bad", revoked: "bad", pending: "muted" };

  // A message id as a button that opens its trace (shortened; the full id is its name).
  function traceButton(id) {
    if (typeof id !== "string" || id === "") return text(null);
    const button = h(
      "button",
      { type: "button", class: "link id", title: id, "aria-label": `Trace message ${id}` },
      id.length > 12 ? `${id.slice(0, 12)}…` : id,
    );
    button.addEventListener("click", () => {
      $("trace-id").value = id;
      location.hash = "#trace";
      render();
      showTrace();
    });
    return button;
  }

  // Audit events (refusals, a message's history) as one kind of table everywhere.
  function eventTable(caption, events, emptyText, { withMessage = true } = {}) {
    return table(
      caption,
      [
        ["seq", "Seq", (e) => h("span", { class: "num" }, text(e.seq))],
        ["at", "Time"],
        ["kind", "Kind", (e) => h("code", {}, text(e.kind))],
        ["actor", "Actor or officer", (e) => (e.officer ? text(`${e.officer} (about ${e.actor ?? "the region"})`) : h("code", {}, text(e.actor)))],
        ...(withMessage ? [["message", "Message", (e) => traceButton(e.message)]] : []),
        ["reason", "Reason", (e) => (e.reason ? h("code", {}, e.reason) : text(null))],
        ["detail", "Detail"],
      ],
      rowsOf(events),
      emptyText,
    );
  }

  function byReasonTable(caption, byReason, emptyText) {
    const rows = Object.entries(byReason || {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    return table(
      caption,
      [
        ["reason", "Reason", (row) => h("code", {}, row[0])],
        ["count", "Count", (row) => h("span", { class: "num" }, text(row[1]))],
      ],
      rows,
      emptyText,
    );
  }

  function reviewReport(r) {
    const clearance = r.clearance || {};
    const traffic = r.traffic || {};
    const refused = r.refused || {};
    const unused = Array.isArray(clearance.unused_levels) ? clearance.unused_levels : [];
    const unusedCategories = Array.isArray(clearance.unused_categories) ? clearance.unused_categories : [];
    const highest = clearance.highest_received;
    const overCleared = unused.length > 0;
    const compare = overCleared ? "compare over" : "compare";

    const summary = facts("Summary", [
      ["Actor", h("span", {}, h("code", {}, text(r.actor)), " ", text(r.name ? `(${r.name})` : ""))],
      ["Period", h("span", {}, timeNode(r.from), " to ", timeNode(r.to))],
      ["Directory status", r.status === undefined ? text(null) : badge(String(r.status), r.status === "active" ? "ok" : "warn")],
      ["Activity", r.dormant ? badge("Dormant: nothing in the period", "warn") : badge("Active", "ok")],
      ["Last activity", r.last_activity ? timeNode(r.last_activity) : text("none recorded")],
      ["Refused submissions", text(refused.total ?? 0)],
      ["Generated", h("span", {}, timeNode(r.generated), r.directory_version ? ` (directory version ${r.directory_version})` : "")],
    ]);

    const clearanceTable = facts("Clearance", [
      ["Held", h("strong", {}, text(clearance.held)), compare],
      ["Highest received", highest ? h("strong", {}, text(highest)) : text("nothing received"), compare],
      ["Unused levels", overCleared ? h("span", {}, badge("Review", "warn"), " ", text(unused)) : text("none"), overCleared ? "warn-row" : null],
      ["Categories held", text(clearance.categories || [])],
      ["Categories not used", text(unusedCategories), unusedCategories.length ? "warn-row" : null],
      ["Note", text(clearance.note)],
    ]);

    const keys = table(
      "Keys",
      [
        ["key_id", "Key id", (k) => h("code", { class: "id" }, text(k.key_id))],
        ["kind", "Kind"],
        ["not_before", "Valid from"],
        ["not_after", "Valid until"],
        ["days_left", "Days left", (k) => h("span", { class: "num" }, text(k.days_left))],
        ["state", "State", (k) =>
          h("span", {}, badge(String(k.state ?? DASH), STATE_TONE[k.state] || "muted"), k.revoked_at ? [" ", timeNode(k.revoked_at)] : null)],
      ],
      r.keys,
      "No keys listed.",
    );

    const flows = [
      ["sent", "Sent"],
      ["received", "Received"],
    ];
    const messages = table(
      "Messages accepted",
      [
        ["name", "Flow", (row) => h("span", { class: "rowname" }, row.name)],
        ["total", "Total", (row) => h("span", { class: "num" }, text(row.total ?? 0))],
        ["by_classification", "By classification"],
        ["by_tlp", "By TLP"],
        ["by_status", "By status"],
        ["by_category", "By category"],
      ],
      flows.map(([key, name]) => ({ name, ...(traffic[key] || {}) })),
      "No traffic in the period.",
    );
    const named = traffic.named_in_refusals || {};
    const duties = facts("Receipts and escalations", [
      ["Receipts signed", text(traffic.receipts_signed || {})],
      ["Deliveries it did not confirm in time", text(traffic.escalations ?? 0), traffic.escalations ? "warn-row" : null],
      ["Its own messages escalated", text(traffic.escalations_as_sender ?? 0)],
    ]);
    const recent = (traffic.refused && traffic.refused.recent) || [];

    return h(
      "article",
      { class: "report", "aria-labelledby": "review-title" },
      h("h3", { id: "review-title", tabindex: "-1" }, "Access review: ", text(r.name || r.actor)),
      h("div", { class: "grid" }, summary, clearanceTable),
      keys,
      messages,
      h(
        "div",
        { class: "grid" },
        byReasonTable(`Refusals by reason (total ${refused.total ?? 0})`, refused.by_reason, "Nothing it sent was refused in the period."),
        byReasonTable(`Refused messages to it (total ${named.total ?? 0})`, named.by_reason, "No message to it was refused in the period."),
      ),
      duties,
      eventTable("Attempts with revoked or invalid keys", r.revoked_key_attempts, "No attempts with revoked or invalid keys in the period."),
      eventTable(`Latest refusals (${recent.length} shown)`, recent, "No refusals in the period."),
    );
  }

  // --- (c) message trace --------------------------------------------------------------------

  async function showTrace(event) {
    if (event) event.preventDefault();
    const id = $("trace-id").value.trim();
    if (!id) {
      showError($("view-trace"), ["Enter a message id."]);
      return;
    }
    $("trace-out").replaceChildren();
    const trace = await run("trace", `message ${id}`, () => api("GET", `/messages/${encodeURIComponent(id)}`));
    if (!trace) return;
    $("trace-out").replaceChildren(traceReport(trace));
    focusResult("trace-out");
    status(`Trace of message ${trace.message} loaded.`);
  }

  function traceReport(t) {
    const label = t.label || {};
    const receipts = t.receipts || {};
    const recipients = (Array.isArray(t.recipients) ? t.recipients : Object.keys(receipts)).map((r) => ({
      recipient: r,
      ...(receipts[r] || {}),
    }));
    const escalated = new Set(Array.isArray(t.escalated) ? t.escalated.map(String) : []);
    const refusalRows = rowsOf(t.refusals);

    const summary = facts("Message", [
      ["Message id", h("code", { class: "id" }, text(t.message))],
      ["Sender", h("code", {}, text(t.sender))],
      ["Status", text(t.status)],
      ["Priority", text(t.priority)],
      ["Incident", text(t.incident)],
      ["Accepted at", timeNode(t.accepted_at)],
    ]);
    const labelTable = facts("Label", [
      ["Policy", text(label.policy)],
      ["Classification", h("strong", {}, text(label.classification))],
      ["TLP", text(label.tlp ? `TLP:${label.tlp}` : null)],
      ["Categories", text(label.categories || [])],
      ["Legal ground", text(label.legal)],
    ]);
    const recipientTable = table(
      "Recipients and receipts",
      [
        ["recipient", "Recipient", (row) => h("code", {}, text(row.recipient))],
        ["delivered", "Delivered"],
        ["read", "Read"],
        ["acknowledged", "Acknowledged"],
        ["escalated", "Escalated", (row) => (escalated.has(String(row.recipient)) ? badge("Escalated", "warn") : text(""))],
      ],
      recipients,
      "No recipients recorded.",
    );
    const refusalsTotal = typeof t.refusals_total === "number" ? t.refusals_total : refusalRows.length;
    const refusalTable = eventTable(
      refusalsTotal > refusalRows.length ? `Refusals (first ${refusalRows.length} of ${refusalsTotal})` : "Refusals",
      refusalRows,
      "No refusals for this message.",
      { withMessage: false },
    );
    const eventTableOut = eventTable(
      t.events_truncated ? `Audit events (first ${rowsOf(t.events).length})` : "Audit events",
      t.events,
      "No events listed.",
      { withMessage: false },
    );
    return h(
      "article",
      { class: "report", "aria-labelledby": "trace-title" },
      h("h3", { id: "trace-title", tabindex: "-1" }, "Trace: ", h("code", { class: "id" }, text(t.message))),
      h("div", { class: "grid" }, summary, labelTable),
      recipientTable,
      refusalTable,
      eventTableOut,
    );
  }

  // --- (d) audit status ---------------------------------------------------------------------

  async function showAudit(event) {
    if (event) event.preventDefault();
    $("audit-out").replaceChildren();
    const report = await run("audit", "the audit status", () => api("GET", "/audit/status"));
    if (!report) return;
    $("audit-out").replaceChildren(auditReport(report));
    status("Audit trail status loaded.");
  }

  function auditReport(a) {
    const verdict =
      a.verified === true
        ? h("p", { class: "alert ok verdict" }, h("strong", {}, "Verified."), " The audit trail is intact up to the last seal.")
        : a.verified === false
          ? h("p", { class: "alert bad verdict" }, h("strong", {}, "Not verified."), " The audit trail has been altered or is incomplete: see the findings.")
          : h("p", { class: "alert muted verdict" }, h("strong", {}, "Unknown."), " The trail has not been checked yet.");
    const findings = rowsOf(a.findings);
    return h(
      "article",
      { class: "report", "aria-labelledby": "audit-title" },
      h("h3", { id: "audit-title", tabindex: "-1" }, "Verification"),
      verdict,
      facts("Status", [
        ["Checked at", a.checked_at ? timeNode(a.checked_at) : text("never")],
        ["Events in the trail", text(a.events)],
        ["Sealed through sequence", text(a.sealed_through)],
        [
          "Latest checkpoint (note it outside NATS)",
          a.latest_checkpoint
            ? h("code", {}, text(a.latest_checkpoint.number + ":" + a.latest_checkpoint.hash))
            : text("none yet"),
        ],
      ]),
      table(
        "Findings",
        [
          ["seq", "Sequence", (f) => h("span", { class: "num" }, text(f.seq))],
          ["problem", "Problem", (f) => h("code", {}, text(f.problem))],
          ["detail", "Detail"],
        ],
        findings,
        "No findings.",
      ),
    );
  }

  // --- views --------------------------------------------------------------------------------

  function focusResult(outId) {
    const heading = $(outId).querySelector("h3");
    if (heading) heading.focus();
  }

  function currentView(session) {
    if (!session) return "login";
    const name = location.hash.replace(/^#/, "");
    return VIEWS.includes(name) && name !== "login" ? name : "review";
  }

  let shown = null;

  function render() {
    const session = loadSession();
    const view = currentView(session);
    for (const name of VIEWS) $(`view-${name}`).hidden = name !== view;
    $("nav").hidden = !session;
    $("session").hidden = !session;
    if (session) {
      $("session-who").replaceChildren(
        "Signed in as ",
        h("strong", {}, session.officer),
        ` · scope: ${scopeText(session.scope)}`,
        ...(typeof session.expires === "number" ? [" · until ", timeNode(session.expires)] : []),
      );
    }
    for (const link of document.querySelectorAll("#nav a")) {
      if (link.dataset.view === view) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (view !== shown) {
      shown = view;
      status("");
      if (view === "review" && !$("review-actor").value) $("review-actor").value = ownActor(session);
      if (view === "audit" && !$("audit-out").hasChildNodes()) showAudit();
      const first = $(`view-${view}`).querySelector("input:not([hidden]), textarea");
      if (first && document.activeElement !== first) first.focus();
    }
  }

  function start() {
    defaultPeriod();
    $("challenge-form").addEventListener("submit", askChallenge);
    $("token-form").addEventListener("submit", signIn);
    $("restart").addEventListener("click", () => {
      resetLogin();
      clearError($("view-login"));
      $("officer").focus();
    });
    $("logout").addEventListener("click", logout);
    $("review-form").addEventListener("submit", showReview);
    $("trace-form").addEventListener("submit", showTrace);
    $("audit-form").addEventListener("submit", showAudit);
    window.addEventListener("hashchange", render);
    render();
  }

  start();
})();
