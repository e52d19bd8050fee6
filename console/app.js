// The operator console: one page over the public admin API, no framework and no build step.
// Pages are functions of the route (#/members/m-1); every request goes through `api`, so every
// failure is shown as the API's problem (title, detail and field errors), never a blank page.

import { TEXT } from "./i18n.js";

const state = {
  token: sessionStorage.getItem("loyalty.token") || "",
  program: localStorage.getItem("loyalty.program") || "",
  programs: [],
  lang: localStorage.getItem("loyalty.lang") || (navigator.language.startsWith("ko") ? "ko" : "en"),
  config: { auth: "token" },
  // Each drawing of a page counts one up: a page whose answers come after a later one's is
  // not drawn over it.
  drawing: 0,
};

// ---------- text, numbers, dates ----------

const t = (key, vars = {}) =>
  (TEXT[state.lang][key] ?? TEXT.en[key] ?? key).replace(/\{(\w+)\}/g, (_, k) => vars[k] ?? "");
const locale = () => (state.lang === "ko" ? "ko-KR" : "en-US");
// `{key}_one` or `{key}_other` by the language's plural of n (Korean has `_other` alone).
const plural = (key, n) => t(`${key}_${new Intl.PluralRules(locale()).select(n) === "one" ? "one" : "other"}`, { n: num(n) });
const program = () => state.programs.find((p) => p.id === state.program) || { currency: "KRW", time_zone: "UTC" };
const num = (n) => (n == null ? "–" : new Intl.NumberFormat(locale()).format(n));
const points = (n) => (n == null ? "–" : t("pts", { n: num(n) }));
const money = (amount) => {
  if (amount == null || amount === "") return "–";
  return new Intl.NumberFormat(locale(), { style: "currency", currency: program().currency }).format(Number(amount));
};
// An amount in minor units (integers: cents, won) as money, exactly: its digits placed around
// the currency's decimal point, never divided as a float.
const minor = (amount) => {
  if (amount == null || amount === "") return "–";
  const digits = new Intl.NumberFormat("en", { style: "currency", currency: program().currency }).resolvedOptions().maximumFractionDigits;
  const text = String(BigInt(amount) < 0n ? -BigInt(amount) : BigInt(amount)).padStart(digits + 1, "0");
  const decimal = digits ? `${text.slice(0, -digits)}.${text.slice(-digits)}` : text;
  return money(`${BigInt(amount) < 0n ? "-" : ""}${decimal}`);
};
// Points at a point value ("0.01"), as a decimal string, exactly.
const worth = (pts, value) => {
  const [whole, fraction = ""] = String(value).split(".");
  const product = BigInt(pts) * BigInt(whole + fraction);
  const sign = product < 0n ? "-" : "";
  const text = String(product < 0n ? -product : product).padStart(fraction.length + 1, "0");
  return fraction.length ? `${sign}${text.slice(0, -fraction.length)}.${text.slice(-fraction.length)}` : `${sign}${text}`;
};
// What tiers measure: spend (minor units) or points.
const measured = (value) => (program().tier_measure === "points" ? points(value) : minor(value));
const percent = (rate) => (rate == null ? "–" : new Intl.NumberFormat(locale(), { style: "percent", maximumFractionDigits: 1 }).format(Number(rate)));
// Instants are shown in the program's zone; plain dates (2026-12-02) are already the program's.
const when = (instant) =>
  instant ? new Intl.DateTimeFormat(locale(), { dateStyle: "medium", timeStyle: "short", timeZone: program().time_zone }).format(new Date(instant)) : "–";
const day = (date) =>
  date ? new Intl.DateTimeFormat(locale(), { dateStyle: "medium", timeZone: "UTC" }).format(new Date(`${date}T00:00:00Z`)) : "–";
const month = (m) =>
  new Intl.DateTimeFormat(locale(), { year: "numeric", month: "short", timeZone: "UTC" }).format(new Date(`${m}-01T00:00:00Z`));
const today = () => new Intl.DateTimeFormat("en-CA", { timeZone: program().time_zone }).format(new Date());

// ---------- DOM ----------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "testid") el.dataset.testid = v;
    // Through the CSSOM: the console's content security policy refuses style attributes.
    else if (k === "style") el.style.cssText = v;
    else if (k === "value" && "value" in el) el.value = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const $ = (sel) => document.querySelector(sel);
const main = () => $("#main");

function table(columns, rows, attrs = {}) {
  return h("div", { class: "table-wrap" },
    h("table", attrs,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.label)))),
      h("tbody", {}, rows.length
        ? rows.map((r) => h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.cell(r)))))
        : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, t("none"))))));
}

// ---------- the API ----------

class ProblemError extends Error {
  constructor(problem) {
    super(problem.detail || problem.title);
    this.problem = problem;
  }
}

async function api(method, path, body, headers = {}) {
  const init = { method, headers: { Authorization: `Bearer ${state.token}`, ...headers } };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    init.headers["Content-Type"] ??= "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ProblemError({ title: t("offline"), detail: String(e) });
  }
  const type = response.headers.get("content-type") || "";
  const payload = type.includes("json") ? await response.json().catch(() => null) : await response.text();
  if (!response.ok) {
    // Not every answer is a problem: API Gateway says `{"message"}` (a throttle, a timeout), and
    // CloudFront answers a 502 or 504 with a page of its own (over HTTP/2 with no status text).
    const problem = payload && typeof payload === "object"
      ? { ...payload, title: payload.title ?? `${response.status} ${response.statusText}`.trim(), detail: payload.detail ?? payload.message }
      : { title: `${response.status} ${response.statusText}`.trim(), detail: type.includes("html") ? "" : String(payload || "") };
    problem.status ??= response.status;
    if (response.status === 401) signOut(false);
    throw new ProblemError(problem);
  }
  return payload;
}
const inProgram = (path) => `/v1/programs/${encodeURIComponent(state.program)}${path}`;

function showProblem(error) {
  const box = $("#problem");
  box.replaceChildren();
  if (!error) {
    box.hidden = true;
    return;
  }
  const p = error.problem || { title: t("error"), detail: String(error.message || error) };
  box.append(h("strong", { testid: "problem-title" }, p.title || t("error")), h("span", { testid: "problem-detail" }, p.detail || ""));
  if (Array.isArray(p.errors) && p.errors.length) {
    box.append(h("ul", { testid: "problem-fields", class: "fields" },
      p.errors.map((e) => h("li", { "data-field": e.field }, h("code", {}, e.field), " ", e.message))));
  }
  box.hidden = false;
  box.scrollIntoView({ block: "nearest" });
}
window.addEventListener("unhandledrejection", (e) => showProblem(e.reason));
window.addEventListener("error", (e) => showProblem(e.error || e.message));

// A confirmation that asks for what the action needs; a reason is always required.
// A button that sends something is disabled while it does: a second click (a double click) is
// not a second request, which would be refused as saved meanwhile after the first was saved.
function busy(f) {
  return async (e) => {
    const button = e?.currentTarget;
    if (button?.disabled) return;
    if (button) button.disabled = true;
    try {
      await f(e);
    } finally {
      if (button) button.disabled = false;
    }
  };
}

function ask({ title, text = "", fields = [], danger = false }) {
  const dialog = $("#ask");
  $("#ask-title").textContent = title;
  $("#ask-text").textContent = text;
  const inputs = fields.map((f) => {
    // Each label names its field (`for`): a screen reader says what a field is for.
    const id = `ask-field-${f.name}`;
    const common = { id, name: f.name, required: f.required !== false, testid: `field-${f.name}` };
    const input = f.type === "textarea"
      ? h("textarea", { ...common, rows: 3 })
      : f.type === "select"
        ? h("select", common, f.options.map((o) => h("option", { value: o.value, selected: o.value === f.value }, o.label)))
        : h("input", { ...common, type: f.type || "text", pattern: f.pattern, inputmode: f.inputmode, value: f.value });
    return [h("label", { for: id }, f.label), input];
  });
  $("#ask-fields").replaceChildren(...inputs.flat());
  $("#ask-ok").className = danger ? "danger" : "";
  $("#ask-ok").textContent = t("confirm");
  $("#ask-cancel").textContent = t("cancel");
  // Esc closes a dialog without touching its return value: the last confirmation's "ok" would
  // confirm this one.
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (dialog.returnValue !== "ok") return resolve(null);
      const values = {};
      for (const f of fields) values[f.name] = dialog.querySelector(`[name="${f.name}"]`).value.trim();
      resolve(values);
    }, { once: true });
  });
}
const reasonField = () => ({ name: "reason", label: t("reason"), type: "textarea" });

// ---------- charts (SVG, numbers on hover, a table view beside) ----------

const COLORS = ["#2f5bea", "#f08c2e", "#12805c", "#9e77ed", "#c4320a", "#0e9384"];
let tip;
function hover(el, text) {
  el.addEventListener("mousemove", (e) => {
    tip ??= document.body.appendChild(h("div", { class: "tip", testid: "tooltip" }));
    tip.textContent = text;
    tip.style.left = `${e.clientX + 12}px`;
    tip.style.top = `${e.clientY + 12}px`;
    tip.hidden = false;
  });
  el.addEventListener("mouseleave", () => { if (tip) tip.hidden = true; });
}

// rows: [{label, values: [..]}]; series: [{name}]; intervals (optional): [[lo, hi], ..] per row.
function barChart({ id, title, series, rows, format = num, intervals }) {
  const svgNS = "http://www.w3.org/2000/svg";
  const s = (tag, attrs = {}) => {
    const el = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    return el;
  };
  const W = 560, H = 240, left = 64, bottom = 40, top = 12;
  const values = rows.flatMap((r) => r.values).concat((intervals || []).flat().filter((v) => v != null));
  const max = Math.max(1, ...values.map(Math.abs));
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const y = (v) => top + (H - top - bottom) * (1 - v / max);
  for (const f of [0, 0.5, 1]) {
    svg.append(s("line", { x1: left, x2: W, y1: y(max * f), y2: y(max * f), stroke: "#e4e7ec" }));
    const label = s("text", { x: left - 6, y: y(max * f) + 4, "text-anchor": "end", "font-size": 11, fill: "#667085" });
    label.textContent = format(max * f);
    svg.append(label);
  }
  const band = (W - left) / Math.max(1, rows.length);
  const bar = Math.min(36, (band * 0.8) / series.length);
  rows.forEach((r, i) => {
    r.values.forEach((v, j) => {
      const x = left + band * i + (band - bar * series.length) / 2 + bar * j;
      const rect = s("rect", { class: "bar", x, y: y(Math.max(0, v)), width: bar - 2, height: Math.max(0, y(0) - y(Math.max(0, v))), fill: COLORS[j % COLORS.length], "data-value": v, "data-label": r.label, "data-series": series[j].name });
      const text = `${r.label} · ${series[j].name}: ${format(v)}`;
      rect.append(Object.assign(s("title"), { textContent: text }));
      hover(rect, text);
      svg.append(rect);
      const ci = intervals?.[i];
      if (ci && ci[0] != null && ci[1] != null) {
        const cx = x + (bar - 2) / 2;
        svg.append(s("line", { x1: cx, x2: cx, y1: y(ci[1]), y2: y(ci[0]), stroke: "#1d2330", "stroke-width": 1.5, class: "interval" }));
      }
    });
    const label = s("text", { x: left + band * i + band / 2, y: H - bottom + 16, "text-anchor": "middle", "font-size": 11, fill: "#1d2330" });
    label.textContent = r.label;
    svg.append(label);
  });
  const tableView = table(
    [{ label: "", cell: (r) => r.label }, ...series.map((se, j) => ({ label: se.name, num: true, cell: (r) => format(r.values[j]) }))],
    rows, { "data-testid": `${id}-table` });
  tableView.hidden = true;
  const chart = h("div", { class: "chart", testid: `${id}-chart` }, svg);
  const toggle = h("button", { class: "quiet", type: "button", testid: `${id}-toggle`, onclick: () => {
    tableView.hidden = !tableView.hidden;
    chart.hidden = !tableView.hidden;
    toggle.textContent = tableView.hidden ? t("table") : t("chart");
  } }, t("table"));
  return h("section", { class: "card", testid: id },
    h("div", { class: "chart-head" }, h("h2", {}, title), toggle),
    series.length > 1 ? h("div", { class: "legend" }, series.map((se, j) => h("span", {}, h("i", { style: `background:${COLORS[j]}` }), se.name))) : null,
    chart, tableView);
}

// ---------- pages ----------

const tile = (id, label, value, raw) => h("div", { class: "tile", testid: `kpi-${id}`, "data-value": raw ?? "" }, h("div", { class: "label" }, label), h("div", { class: "value" }, value));

async function overview(params) {
  // Dates from the address only as dates: anything else there would reach the API's query.
  const date = (v) => (/^\d{4}-\d{2}-\d{2}$/.test(v || "") ? v : null);
  const to = date(params.get("to")) || today();
  const fromDefault = new Date(`${to}T00:00:00Z`);
  fromDefault.setUTCDate(fromDefault.getUTCDate() - 29);
  const from = date(params.get("from")) || fromDefault.toISOString().slice(0, 10);
  const [kpis, liability] = await Promise.all([
    api("GET", inProgram(`/reports/kpis?from=${from}&to=${to}`)),
    api("GET", inProgram(`/reports/liability?as_of=${to}`)),
  ]);
  const period = h("form", { class: "row", onsubmit: (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    location.hash = `#/overview?from=${f.get("from")}&to=${f.get("to")}`;
  } },
  h("label", {}, t("from"), " ", h("input", { type: "date", name: "from", value: from, testid: "from" })),
  h("label", {}, t("to"), " ", h("input", { type: "date", name: "to", value: to, testid: "to" })),
  h("button", {}, t("show")));
  const tiers = Object.entries(kpis.tiers || {});
  return [
    h("h1", {}, t("overview")), period,
    h("div", { class: "tiles" },
      tile("members", t("kpi_members"), num(kpis.members), kpis.members),
      tile("new_members", t("kpi_new_members"), num(kpis.new_members), kpis.new_members),
      tile("active_30", t("kpi_active_30"), num(kpis.active_30), kpis.active_30),
      tile("orders", t("kpi_orders"), num(kpis.orders), kpis.orders),
      tile("order_points", t("kpi_order_points"), points(kpis.order_points), kpis.order_points),
      tile("repurchase", t("kpi_repurchase"), percent(kpis.repurchase?.rate), kpis.repurchase?.rate),
      tile("redemption", t("kpi_redemption"), percent(kpis.redemption?.rate), kpis.redemption?.rate),
      tile("outstanding", t("kpi_outstanding"), points(liability.outstanding), liability.outstanding),
      tile("value", t("kpi_value"), money(liability.value), liability.value),
      tile("pending", t("kpi_pending"), points(liability.pending), liability.pending)),
    h("div", { class: "grid" },
      barChart({ id: "issued-redeemed", title: t("issued_vs_redeemed"), series: [{ name: t("issued") }, { name: t("redeemed") }],
        rows: (liability.movements || []).map((m) => ({ label: month(m.month), values: [m.issued, m.redeemed] })) }),
      barChart({ id: "liability-expiry", title: t("liability_by_expiry"), series: [{ name: t("points") }],
        rows: (liability.by_expiry_month || []).map((m) => ({ label: month(m.month), values: [m.points] })) }),
      barChart({ id: "tiers", title: t("tier_distribution"), series: [{ name: t("kpi_members") }],
        rows: tiers.map(([tier, n]) => ({ label: tier, values: [n] })) })),
  ];
}

// What support staff type, as the names of a member to try in turn. As typed first: a member's
// own id may look like an email or a phone number. Then as the identity it looks like, with the
// value as written, since the API stores it so (`phone:010-5555-6666`; a till's member is
// `pos:010-1234-5678`); only then the number's digits alone.
function memberRefs(text) {
  const q = text.trim();
  const refs = [q];
  if (/^[^:\s]+@[^\s]+$/.test(q)) refs.push(`email:${q}`);
  if (/^\+?[\d\s-]{7,}$/.test(q)) {
    const digits = q.replace(/[\s-]/g, "");
    refs.push(`phone:${q}`, `pos:${q}`, `phone:${digits}`, `pos:${digits}`);
  }
  return [...new Set(refs)];
}

// The member a text names, for search and merge alike: the first name the API knows, with the
// member's view. None known: the 404 for the text as typed.
async function findMember(text) {
  let missing = null;
  for (const ref of memberRefs(text)) {
    try {
      return { ref, view: await api("GET", inProgram(`/members/${encodeURIComponent(ref)}`)) };
    } catch (e) {
      // A name the API refuses as an id (400: spaces in a phone number) is not this member
      // either: the forms after it may still name one. None found: the first answer is shown.
      if (![400, 404].includes(e.problem?.status)) throw e;
      missing ??= e;
    }
  }
  throw missing;
}

async function members(params, id) {
  // Read (and dropped) before anything can fail: a notice is for the page drawn next only.
  const notice = sessionStorage.getItem("loyalty.notice");
  sessionStorage.removeItem("loyalty.notice");
  // A status: screen readers say it without moving the reader there.
  const noticeBox = notice ? h("div", { class: "notice", role: "status", testid: "notice" }, notice) : null;
  const search = h("form", { class: "row", onsubmit: (e) => {
    e.preventDefault();
    // As typed first: a member's own id may look like an email or a phone number.
    const q = e.target.q.value.trim();
    if (q) location.hash = `#/members/${encodeURIComponent(q)}`;
  } },
  h("input", { name: "q", class: "grow", placeholder: t("search_placeholder"), value: id || "", testid: "member-search", "aria-label": t("search") }),
  h("button", { testid: "member-find" }, t("search")));
  if (!id) return [h("h1", {}, t("members")), noticeBox, search, h("p", { class: "muted" }, t("search_help"))];
  const { view } = await findMember(id);
  const member = view.member;
  const memberPath = inProgram(`/members/${encodeURIComponent(member)}`);
  const exported = await api("GET", `${memberPath}/export`);
  // One key per page: an adjustment sent again after a lost answer is applied once. The page
  // is drawn again (with a new key) once one is applied.
  const adjustKey = globalThis.crypto?.randomUUID?.() ?? `adjust-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  // `gone`: the member is no more once it is done (an erasure), so the search page is drawn
  // next, with the notice, instead of the member's page (which would be a 404).
  // `told`: what the notice adds from the answer.
  const act = async (title, fields, send, { danger = false, gone = false, told = (answer) => (answer?.status ? ` (${answer.status})` : "") } = {}) => {
    const values = await ask({ title, fields: [...fields, reasonField()], danger });
    if (!values) return;
    try {
      const answer = await send(values);
      showProblem(null);
      sessionStorage.setItem("loyalty.notice", t("done", { what: title }) + told(answer));
      if (gone) location.hash = "#/members";
      else await route();
    } catch (e) {
      showProblem(e);
    }
  };
  const actions = h("div", { class: "actions" },
    h("button", { testid: "action-adjust", onclick: () => act(t("adjust"), [{ name: "points", label: t("points_signed"), inputmode: "numeric", pattern: "-?[0-9]+" }],
      (v) => api("POST", `${memberPath}/adjustments`, { points: Number(v.points), reason: v.reason }, { "Idempotency-Key": adjustKey })) }, t("adjust")),
    view.suspended
      ? h("button", { testid: "action-resume", onclick: () => act(t("resume"), [{ name: "events", label: t("resume_events"), type: "select", value: "apply",
        options: [{ value: "apply", label: t("resume_apply") }, { value: "cancel", label: t("resume_cancel") }] }],
      (v) => api("POST", `${memberPath}/resume`, { reason: v.reason, events: v.events }), { told: resumed }) }, t("resume"))
      : h("button", { testid: "action-suspend", onclick: () => act(t("suspend"), [], (v) => api("POST", `${memberPath}/suspend`, { reason: v.reason })) }, t("suspend")),
    // The name the API knew, not the member id its view gives: asked again after the merge, that
    // is the survivor's, and the API says `repeated` only for the name merged.
    h("button", { testid: "action-merge", onclick: () => act(t("merge"), [{ name: "from", label: t("merge_from") }],
      async (v) => api("POST", `${memberPath}/merge`, { from: (await findMember(v.from)).ref, reason: v.reason })) }, t("merge")),
    h("button", { testid: "action-export", class: "quiet", onclick: () => download(`${member}-export.json`, exported) }, t("export")),
    h("button", { testid: "action-erase", class: "danger", onclick: () => act(t("erase"), [{ name: "confirm", label: t("erase_confirm", { member }), pattern: escapeRegex(member) }],
      (v) => api("DELETE", `${memberPath}?reason=${encodeURIComponent(v.reason)}`), { danger: true, gone: true }) }, t("erase")));
  const tier = view.tier || {};
  const next = view.next_tier;
  const progress = next && tier.qualifying != null ? tier.qualifying / (tier.qualifying + next.needed) : 1;
  const ledger = h("div", { testid: "ledger" });
  const more = h("button", { class: "quiet", testid: "ledger-more" }, t("more"));
  let cursor = null;
  const loadLedger = async () => {
    const page = await api("GET", `${memberPath}/ledger?limit=20${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    cursor = page.next_cursor;
    ledger.append(table([
      { label: t("when"), cell: (e) => when(e.recorded_at) },
      { label: t("kind"), cell: (e) => h("span", { class: "badge" }, e.kind) },
      { label: t("points"), num: true, cell: (e) => h("span", { "data-value": e.points }, num(e.points)) },
      { label: t("pending"), num: true, cell: (e) => num(e.pending) },
      { label: t("balance_after"), num: true, cell: (e) => num(e.balance_after) },
      { label: t("reason"), cell: (e) => h("span", { class: "reason" }, e.reason) },
    ], page.entries, { "data-testid": "ledger-table" }));
    more.hidden = !cursor;
  };
  // One page at a time: a second click while one loads would append the same page twice.
  more.addEventListener("click", () => {
    more.disabled = true;
    loadLedger().catch(showProblem).finally(() => { more.disabled = false; });
  });
  await loadLedger();
  const redemptions = exported.redemptions || [];
  return [
    h("h1", {}, t("member"), " ", h("span", { testid: "member-id" }, member)), search,
    noticeBox,
    view.merged_into ? h("div", { class: "warn" }, t("merged_into", { member: view.merged_into })) : null,
    view.suspended ? h("div", { class: "warn", testid: "suspended" }, t("suspended_since", { reason: view.suspended.reason || "" })) : null,
    h("div", { class: "tiles" },
      tile("balance", t("balance"), points(view.balance), view.balance),
      program().point_value ? tile("cash", t("worth"), money(worth(view.balance, program().point_value)), null) : null,
      tile("pending", t("pending"), points(view.pending), view.pending),
      tile("tier", t("tier"), tier.name || tier.id, tier.id),
      view.membership ? tile("membership", view.membership.name, `${t(`membership_${view.membership.status}`)}${view.membership.renews_on ? ` · ${t("renews", { date: day(view.membership.renews_on) })}` : ""}`, view.membership.status) : null),
    h("div", { class: "grid" },
      h("section", { class: "card" }, h("h2", {}, t("tier_progress")),
        h("dl", { class: "facts" },
          h("dt", {}, t("tier")), h("dd", {}, `${tier.name || tier.id} (×${(tier.multiplier_bp / 10000).toFixed(2)})`),
          h("dt", {}, t("qualifying")), h("dd", { testid: "qualifying" }, measured(tier.qualifying)),
          h("dt", {}, t("next_tier")), h("dd", {}, next ? t("needed", { tier: next.id, amount: measured(next.needed) }) : t("top_tier")),
          h("dt", {}, t("review_date")), h("dd", {}, day(tier.review_date))),
        h("div", { class: "progress" }, h("div", { style: `width:${Math.round(progress * 100)}%` }))),
      h("section", { class: "card" }, h("h2", {}, t("actions")), actions,
        h("p", { class: "muted" }, t("actions_help")))),
    h("div", { class: "grid" },
      h("section", { class: "card" }, h("h2", {}, t("pending_releases")),
        table([{ label: t("release_date"), cell: (r) => day(r.date) }, { label: t("points"), num: true, cell: (r) => num(r.points) }], view.pending_releases || [])),
      h("section", { class: "card" }, h("h2", {}, t("lots")),
        table([{ label: t("expires"), cell: (r) => day(r.date) }, { label: t("points"), num: true, cell: (r) => num(r.points) }], view.lots || [], { "data-testid": "lots" }))),
    h("section", { class: "card" }, h("h2", {}, t("ledger")), ledger, more),
    h("section", { class: "card" }, h("h2", {}, t("redemptions")),
      table([
        { label: t("when"), cell: (r) => when(r.created_at) },
        { label: t("reward"), cell: (r) => r.reward },
        { label: t("points"), num: true, cell: (r) => num(r.points) },
        { label: t("status"), cell: (r) => h("span", { class: "badge" }, r.status) },
        { label: t("coupon"), cell: (r) => couponText(r, exported.coupons) },
        { label: "", cell: (r) => ["issued", "captured"].includes(r.status) ? h("button", { class: "quiet", testid: `reverse-${r.id}`, onclick: () => act(t("reverse"), [],
          (v) => api("POST", `${memberPath}/redemptions/${encodeURIComponent(r.id)}/reverse`, { reason: v.reason })) }, t("reverse")) : null },
      ], redemptions, { "data-testid": "redemptions" })),
  ];
}

// A resume's answer counts the events that waited, but the earn queue applies or cancels them
// after it: the page drawn next may not show them yet, so they are told as under way.
function resumed(answer) {
  const told = [];
  if (answer?.applied) told.push(plural("resume_applying", answer.applied));
  if (answer?.cancelled) told.push(plural("resume_cancelling", answer.cancelled));
  return `. ${told.length ? told.join(" ") : t("resume_none")}`;
}

function couponText(redemption, coupons = []) {
  const c = coupons.find((x) => x.redemption === redemption.id);
  if (!c) return "–";
  const state_ = c.revoked ? t("revoked") : c.consumed ? t("used") : t("until", { date: when(c.expires_at) });
  return `${c.code} · ${state_}`;
}
const escapeRegex = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
function download(name, data) {
  const url = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)], { type: "application/json" }));
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function editor(id, value) {
  return h("textarea", { class: "code", id, testid: id, spellcheck: "false" }, value);
}
// A label naming an editor (or any control with an id), for screen readers and a click target.
const labelFor = (control, text) => h("label", { for: control.id, class: "for-editor" }, text);
/** A 412 from a save: said plainly, with what to do (the operator's text stays in the editor). */
function changedMeanwhile(error) {
  if (error?.problem?.status !== 412) return error;
  return new ProblemError({ ...error.problem, title: t("changed_meanwhile"), detail: t("changed_meanwhile_detail") });
}
function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ProblemError({ title: t("not_json"), detail: String(e.message) });
  }
}

async function programPage(params) {
  const [current, versions] = await Promise.all([api("GET", inProgram("")), api("GET", inProgram("/versions"))]);
  const text = editor("program-editor", JSON.stringify(current.file, null, 2));
  const viewer = h("pre", { class: "card", testid: "version-view", hidden: true });
  const notice = h("div", { class: "notice", role: "status", testid: "notice", hidden: true });
  const badge = h("span", { class: "badge" }, `v${current.version}`);
  const versionsTable = (list) => table([
    { label: t("version"), cell: (v) => `v${v.version}` },
    { label: t("saved_at"), cell: (v) => when(v.saved_at) },
    { label: "", cell: (v) => h("span", { class: "actions" },
      h("button", { class: "quiet", testid: `view-v${v.version}`, onclick: async () => {
        const version = await api("GET", inProgram(`/versions/${v.version}`));
        viewer.textContent = JSON.stringify(version.file, null, 2);
        viewer.hidden = false;
      } }, t("view")),
      h("button", { class: "quiet", onclick: async () => {
        const version = await api("GET", inProgram(`/versions/${v.version}`));
        text.value = JSON.stringify(version.file, null, 2);
        text.scrollIntoView();
      } }, t("load"))) },
  ], list, { "data-testid": "versions" });
  let shown = versionsTable(versions.versions || []);
  const save = async () => {
    try {
      // Saved only over the version this page read: another operator's save is never lost.
      const saved = await api("PUT", inProgram(""), JSON.stringify(parseJson(text.value)), { "If-Match": `"${current.version}"` });
      current.version = saved.version;
      showProblem(null);
      notice.textContent = t("saved_version", { version: saved.version });
      notice.hidden = false;
      // The page stays (the editor keeps the operator's text), so what names the version is
      // redrawn here from the answer: the badge, and the list read again for the times (with
      // the saved version in it even if that read does not see it yet).
      badge.textContent = `v${saved.version}`;
      const [list] = await Promise.all([api("GET", inProgram("/versions")), loadPrograms()]);
      const rows = list.versions || [];
      if (!rows.some((v) => v.version === saved.version)) rows.unshift({ version: saved.version });
      const next = versionsTable(rows);
      shown.replaceWith(next);
      shown = next;
    } catch (e) {
      showProblem(changedMeanwhile(e));
    }
  };
  return [
    h("h1", {}, t("program"), " ", state.program, " ", badge),
    notice,
    labelFor(text, t("program_file")),
    h("p", { class: "muted" }, t("program_help")),
    text,
    h("div", { class: "row" }, h("button", { testid: "program-save", onclick: busy(save) }, t("save"))),
    h("section", { class: "card" }, h("h2", {}, t("versions")), shown, viewer),
  ];
}

const CAMPAIGN_TEMPLATE = () => {
  const start = new Date();
  const end = new Date(start.getTime() + 14 * 86400000);
  return {
    name: "", kind: "on_exposure", status: "draft",
    start: start.toISOString().slice(0, 19) + "Z", end: end.toISOString().slice(0, 19) + "Z",
    hash_seed: `seed-${start.getTime().toString(36)}`, goal: "purchase",
    variants: [
      { key: "control", weight: 0.5, effect: { type: "none" } },
      { key: "double", weight: 0.5, effect: { type: "multiplier", basis_points: 20000 } },
    ],
  };
};

async function campaigns(params, id) {
  if (id) return campaign(id);
  const list = await api("GET", inProgram("/campaigns"));
  return [
    h("h1", {}, t("campaigns")),
    h("div", { class: "row" }, h("a", { href: "#/campaigns/new", testid: "campaign-new" }, h("button", { type: "button" }, t("new_campaign")))),
    h("section", { class: "card" }, table([
      { label: t("campaign"), cell: (c) => h("a", { href: `#/campaigns/${encodeURIComponent(c.id)}` }, c.name || c.id) },
      { label: t("kind"), cell: (c) => c.kind },
      { label: t("status"), cell: (c) => h("span", { class: `badge ${c.status}` }, t(`status_${c.status}`)) },
      { label: t("window"), cell: (c) => `${when(c.start)} – ${when(c.end)}` },
      { label: t("goal"), cell: (c) => c.goal },
    ], list.campaigns || [], { "data-testid": "campaign-list" })),
  ];
}

async function campaign(id) {
  const creating = id === "new";
  let current = null;
  if (!creating) current = await api("GET", inProgram(`/campaigns/${encodeURIComponent(id)}`));
  const body = current ? Object.fromEntries(Object.entries(current).filter(([k]) => k !== "id" && k !== "version")) : CAMPAIGN_TEMPLATE();
  const idInput = h("input", { name: "id", value: creating ? "" : id, disabled: !creating, testid: "campaign-id", placeholder: "spring-double", pattern: "[a-z0-9][a-z0-9-]*" });
  const text = editor("campaign-editor", JSON.stringify(body, null, 2));
  // `from`: the campaign to change (a start or a stop changes the stored one, not the draft in
  // the editor, whose edits are saved by Save alone).
  const put = async (change = (b) => b, from = null) => {
    const campaignId = creating ? idInput.value.trim() : id;
    if (!campaignId) throw new ProblemError({ title: t("error"), detail: t("campaign_id_needed") });
    // A new campaign never replaces one of the same id (a running one would get the template),
    // and a save, start or stop is made only over the version this page read. The id is looked
    // up first so that a taken one is said before any field of the draft (the API checks the
    // body first); If-None-Match makes it hold against a save in between.
    if (creating) {
      const taken = await api("GET", inProgram(`/campaigns/${encodeURIComponent(campaignId)}`))
        .then(() => true, (e) => (e.problem?.status === 404 ? false : Promise.reject(e)));
      if (taken) throw new ProblemError({ title: t("error"), detail: t("campaign_id_taken", { id: campaignId }) });
    }
    const precondition = creating ? { "If-None-Match": "*" } : { "If-Match": `"${current.version}"` };
    const saved = await api("PUT", inProgram(`/campaigns/${encodeURIComponent(campaignId)}`), change(from ?? parseJson(text.value)), precondition)
      .catch((e) => Promise.reject(creating && e.problem?.status === 412
        ? new ProblemError({ title: t("error"), detail: t("campaign_id_taken", { id: campaignId }) }) : changedMeanwhile(e)));
    showProblem(null);
    sessionStorage.setItem("loyalty.notice", t("saved_version", { version: saved.version }));
    if (creating) location.hash = `#/campaigns/${encodeURIComponent(campaignId)}`;
    else await route();
  };
  const guarded = (f) => () => f().catch(showProblem);
  const notice = sessionStorage.getItem("loyalty.notice");
  sessionStorage.removeItem("loyalty.notice");
  const parts = [
    h("h1", {}, creating ? t("new_campaign") : `${t("campaign")} ${id}`, " ", current ? h("span", { class: `badge ${current.status}`, testid: "campaign-status" }, t(`status_${current.status}`)) : null),
    notice ? h("div", { class: "notice", role: "status", testid: "notice" }, notice) : null,
    h("div", { class: "row" }, h("label", {}, t("campaign_id"), " ", idInput)),
    labelFor(text, t("campaign_file")),
    text,
    h("div", { class: "row" },
      h("button", { testid: "campaign-save", onclick: busy(guarded(() => put())) }, t("save")),
      current && current.status !== "running" ? h("button", { testid: "campaign-start", onclick: busy(guarded(() => put((b) => ({ ...b, status: "running" }), body))) }, t("start")) : null,
      current && current.status === "running" ? h("button", { class: "danger", testid: "campaign-stop", onclick: busy(guarded(async () => {
        // Stopping a running test is for every member at once: asked first.
        if (!(await ask({ title: `${t("stop")}: ${current.name || id}`, danger: true }))) return;
        await put((b) => ({ ...b, status: "stopped" }), body);
      })) }, t("stop")) : null),
  ];
  if (current) parts.push(...(await campaignReport(id)));
  return parts;
}

async function campaignReport(id) {
  const report = await api("GET", inProgram(`/campaigns/${encodeURIComponent(id)}/report`));
  const variants = report.variants || [];
  const pct = (v) => percent(v);
  return [
    h("section", { class: "card", testid: "campaign-report" },
      h("h2", {}, t("results")),
      h("p", { testid: "verdict" }, h("strong", {}, t("verdict"), ": "), report.verdict),
      report.sample_ratio?.mismatch ? h("div", { class: "warn", testid: "srm-warning" }, t("srm", { p: report.sample_ratio.p_value })) : null,
      table([
        { label: t("variant"), cell: (v) => v.variant },
        { label: t("weight"), num: true, cell: (v) => pct(v.weight) },
        { label: t("members_col"), num: true, cell: (v) => num(v.members) },
        { label: t("converters"), num: true, cell: (v) => num(v.converters) },
        { label: t("conversion"), num: true, cell: (v) => `${pct(v.conversion_rate)} [${pct(v.conversion_interval?.[0])}, ${pct(v.conversion_interval?.[1])}]` },
        { label: t("revenue"), num: true, cell: (v) => minor(v.revenue) },
        { label: t("uplift"), num: true, cell: (v) => v.conversion_uplift ? `${pct(v.conversion_uplift.difference)} (p=${v.conversion_uplift.p_value?.toFixed?.(3) ?? "–"})` : "–" },
      ], variants, { "data-testid": "report-table" })),
    barChart({ id: "report", title: t("conversion_by_variant"), series: [{ name: t("conversion") }], format: pct,
      rows: variants.map((v) => ({ label: v.variant, values: [v.conversion_rate] })),
      intervals: variants.map((v) => v.conversion_interval || []) }),
  ];
}

// The rejected events, a page of 50 at a time: "More" reads the next page after the last.
function rejectedSection(first, read, confirmThen) {
  const columns = [
    { label: t("when"), cell: (e) => when(e.rejected_at) },
    { label: t("event"), cell: (e) => h("code", {}, e.id) },
    { label: t("reason"), cell: (e) => e.reason },
    { label: t("replays"), num: true, cell: (e) => h("span", { testid: `replays-${e.id}` }, num(e.replays)) },
    { label: "", cell: (e) => h("button", { class: "quiet", testid: `replay-${e.id}`, onclick: confirmThen(t("replay"),
      () => api("POST", inProgram(`/rejected-events/${encodeURIComponent(e.id)}/replay`))) }, t("replay")) },
  ];
  const pages = h("div", {}, table(columns, first.events || [], { "data-testid": "rejected" }));
  const more = h("button", { class: "quiet", testid: "rejected-more" }, t("more"));
  let cursor = first.next_cursor;
  more.hidden = !cursor;
  more.addEventListener("click", () => {
    more.disabled = true;
    read(`/rejected-events?limit=50&cursor=${encodeURIComponent(cursor)}`)
      .then((page) => {
        cursor = page.next_cursor;
        pages.append(table(columns, page.events || [], { "data-testid": "rejected-more-page" }));
        more.hidden = !cursor;
      })
      .catch(showProblem)
      .finally(() => { more.disabled = false; });
  });
  return h("section", { class: "card" }, h("h2", {}, t("rejected_events")), pages, more);
}

async function operations() {
  const p = (path) => api("GET", inProgram(path));
  const [rejected, reviews, approvals, jobs, deadLetters] = await Promise.all([
    p("/rejected-events?limit=50"), p("/reviews"), p("/approvals"), p("/jobs"),
    api("GET", "/v1/dead-letters").catch((e) => ({ error: e })),
  ]);
  const run = (what, send) => async () => {
    try {
      await send();
      showProblem(null);
      await route();
    } catch (e) {
      showProblem(e);
    }
  };
  const confirmThen = (title, send) => async () => {
    if (!(await ask({ title, text: t("are_you_sure") }))) return;
    await run(title, send)();
  };
  // Declining and cancelling say why (the API refuses them without a reason).
  const withReason = (title, send) => async () => {
    const values = await ask({ title, fields: [reasonField()] });
    if (!values) return;
    await run(title, () => send(values.reason))();
  };
  const held = reviews.events || reviews.reviews || [];
  const pending = approvals.adjustments || approvals.approvals || [];
  return [
    h("h1", {}, t("operations")),
    rejectedSection(rejected, p, confirmThen),
    h("section", { class: "card" }, h("h2", {}, t("dead_letters")),
      deadLetters.error
        ? h("p", { class: "muted" }, deadLetters.error.problem?.detail || String(deadLetters.error.message))
        : table([
          { label: t("queue"), cell: (q) => q.queue },
          { label: t("depth"), num: true, cell: (q) => h("span", { testid: `dlq-${q.queue}`, "data-value": q.depth }, num(q.depth)) },
          { label: "", cell: (q) => q.depth > 0 ? h("button", { class: "quiet", testid: `redrive-${q.queue}`, onclick: confirmThen(t("redrive"),
            () => api("POST", `/v1/dead-letters/${encodeURIComponent(q.queue)}/redrive`)) }, t("redrive")) : null },
        ], deadLetters.queues || [], { "data-testid": "dead-letters" })),
    h("div", { class: "grid" },
      h("section", { class: "card" }, h("h2", {}, t("held_events")),
        table([
          { label: t("event"), cell: (e) => h("code", {}, e.id || e.event_id) },
          { label: t("reason"), cell: (e) => e.reason || "" },
          { label: "", cell: (e) => h("span", { class: "actions" },
            h("button", { class: "quiet", onclick: confirmThen(t("release"), () => api("POST", inProgram(`/reviews/${encodeURIComponent(e.id || e.event_id)}/release`))) }, t("release")),
            h("button", { class: "quiet", testid: `cancel-${e.id || e.event_id}`, onclick: withReason(t("cancel_event"), (reason) => api("POST", inProgram(`/reviews/${encodeURIComponent(e.id || e.event_id)}/cancel`), { reason })) }, t("cancel_event"))) },
        ], held)),
      h("section", { class: "card" }, h("h2", {}, t("approvals")),
        table([
          { label: t("member"), cell: (a) => a.member },
          { label: t("points"), num: true, cell: (a) => num(a.points) },
          { label: t("reason"), cell: (a) => a.reason || "" },
          { label: "", cell: (a) => h("span", { class: "actions" },
            h("button", { class: "quiet", onclick: confirmThen(t("approve"), () => api("POST", inProgram(`/approvals/${encodeURIComponent(a.id)}/approve`))) }, t("approve")),
            h("button", { class: "quiet", testid: `decline-${a.id}`, onclick: withReason(t("decline"), (reason) => api("POST", inProgram(`/approvals/${encodeURIComponent(a.id)}/decline`), { reason })) }, t("decline"))) },
        ], pending))),
    h("section", { class: "card" }, h("h2", {}, t("job_runs")),
      table([
        { label: t("job"), cell: (j) => j.job },
        { label: t("finished"), cell: (j) => when(j.finished_at) },
        { label: t("outcome"), cell: (j) => j.error ? h("span", { class: "badge stopped" }, j.error) : j.report ? h("span", { class: `badge ${j.report.failed ? "stopped" : "running"}` }, j.report.complete ? t("complete") : t("partial")) : t("never") },
        { label: t("members_col"), num: true, cell: (j) => num(j.report?.members) },
        { label: t("changed"), num: true, cell: (j) => num(j.report?.changed) },
        { label: t("failed"), num: true, cell: (j) => num(j.report?.failed) },
      ], jobs.jobs || [], { "data-testid": "job-runs" })),
  ];
}

// ---------- signing in ----------

function signOut(reload = true) {
  sessionStorage.removeItem("loyalty.token");
  sessionStorage.removeItem("loyalty.pkce");
  state.token = "";
  // With Cognito, its own session ends too: else the next "Sign in" on this browser would be
  // let in as the operator who just left.
  if (reload && state.config.auth === "cognito") {
    const q = new URLSearchParams({ client_id: state.config.client_id, logout_uri: redirectUri() });
    location.assign(`https://${state.config.cognito_domain}/logout?${q}`);
    return;
  }
  if (reload) route();
}

function signInPage() {
  if (state.config.auth === "cognito") {
    return [h("div", { class: "card signin" }, h("h1", {}, t("signin")), h("p", {}, t("signin_cognito")),
      h("button", { testid: "signin-cognito", onclick: () => cognitoSignIn() }, t("signin")))];
  }
  const form = h("form", { class: "card signin", onsubmit: async (e) => {
    e.preventDefault();
    state.token = e.target.token.value.trim();
    sessionStorage.setItem("loyalty.token", state.token);
    try {
      await loadPrograms();
      showProblem(null);
      location.hash = "#/overview";
      await route();
    } catch (err) {
      showProblem(err);
    }
  } },
  h("h1", {}, t("signin")), h("label", { class: "muted", for: "token" }, t("signin_token")),
  h("textarea", { id: "token", name: "token", required: true, testid: "token", placeholder: "eyJ…" }),
  h("div", { class: "row" }, h("button", { testid: "signin" }, t("signin"))));
  return [form];
}

const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const redirectUri = () => `${location.origin}${location.pathname}`;

async function cognitoSignIn() {
  const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
  const nonce = b64url(crypto.getRandomValues(new Uint8Array(16)));
  sessionStorage.setItem("loyalty.pkce", verifier);
  sessionStorage.setItem("loyalty.oauth_state", nonce);
  const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const q = new URLSearchParams({ response_type: "code", client_id: state.config.client_id, redirect_uri: redirectUri(),
    scope: "openid email loyalty/admin", code_challenge: challenge, code_challenge_method: "S256", state: nonce });
  location.assign(`https://${state.config.cognito_domain}/oauth2/authorize?${q}`);
}

// Only a sign-in this browser started is finished: a link carrying someone else's code (and no
// state of ours) would sign the operator in as that someone.
async function finishCognito(code, returned) {
  const verifier = sessionStorage.getItem("loyalty.pkce");
  const expected = sessionStorage.getItem("loyalty.oauth_state");
  sessionStorage.removeItem("loyalty.pkce");
  sessionStorage.removeItem("loyalty.oauth_state");
  if (!verifier || !expected || returned !== expected) {
    history.replaceState(null, "", redirectUri());
    throw new ProblemError({ title: t("signin_failed"), detail: "this sign-in was not started from this console" });
  }
  const body = new URLSearchParams({ grant_type: "authorization_code", client_id: state.config.client_id, code,
    redirect_uri: redirectUri(), code_verifier: verifier });
  const response = await fetch(`https://${state.config.cognito_domain}/oauth2/token`, { method: "POST", body,
    headers: { "Content-Type": "application/x-www-form-urlencoded" } });
  if (!response.ok) throw new ProblemError({ title: t("signin_failed"), detail: await response.text() });
  state.token = (await response.json()).access_token;
  sessionStorage.setItem("loyalty.token", state.token);
  history.replaceState(null, "", redirectUri() + "#/overview");
}

async function loadPrograms() {
  const list = await api("GET", "/v1/programs");
  state.programs = list.programs || [];
  if (!state.programs.some((p) => p.id === state.program)) state.program = state.config.program || state.programs[0]?.id || "";
  localStorage.setItem("loyalty.program", state.program);
  const select = $("#program");
  select.replaceChildren(...state.programs.map((p) => h("option", { value: p.id, selected: p.id === state.program }, `${p.name} (${p.id})`)));
}

// ---------- the router ----------

const PAGES = { overview, members, program: programPage, campaigns, operations };

function translateStatic() {
  document.documentElement.lang = state.lang;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  $("#lang").textContent = state.lang === "ko" ? "English" : "한국어";
}

// Focus in the content being replaced (an action's button, back from its dialog) or lost with it
// goes to the same control drawn again, else to the page's heading: left on the body, a keyboard
// or screen-reader user would start again from the top of the document.
function draw(content) {
  const was = document.activeElement;
  const inMain = main().contains(was);
  const lost = !was || was === document.body;
  const testid = inMain ? was.dataset?.testid : null;
  main().replaceChildren(...content);
  if (!inMain && !lost) return;
  const again = testid ? main().querySelector(`[data-testid="${CSS.escape(testid)}"]`) : null;
  const target = again || main().querySelector("h1");
  if (!target) return;
  if (!again) target.tabIndex = -1;
  target.focus();
}

async function route() {
  translateStatic();
  const [path, query] = (location.hash.slice(1) || "/overview").split("?");
  const [, page = "overview", ...rest] = path.split("/");
  const raw = rest.length ? rest.join("/") : null;
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.page === page);
  const drawing = ++state.drawing;
  const latest = () => drawing === state.drawing;
  const signedIn = Boolean(state.token);
  $("#tabs").hidden = !signedIn;
  $("#signout").hidden = !signedIn;
  $(".program-pick").hidden = !signedIn;
  if (!signedIn) {
    draw(signInPage());
    return;
  }
  const render = PAGES[page] || overview;
  main().setAttribute("aria-busy", "true");
  try {
    // A malformed escape in the address (%E0) is the page's problem, shown as any other.
    const id = raw === null ? null : decodeURIComponent(raw);
    if (!state.programs.length) await loadPrograms();
    const content = await render(new URLSearchParams(query || ""), id);
    if (!latest()) return;
    draw([content].flat().filter(Boolean));
    main().dataset.page = page;
  } catch (e) {
    if (!latest()) return;
    showProblem(e);
    draw([h("p", { class: "muted", testid: "page-failed" }, t("page_failed"))]);
  } finally {
    if (latest()) main().removeAttribute("aria-busy");
  }
}

async function start() {
  try {
    state.config = await (await fetch("config.json")).json();
  } catch {
    state.config = { auth: "token" };
  }
  const query = new URLSearchParams(location.search);
  const code = query.get("code");
  if (code && state.config.auth === "cognito") await finishCognito(code, query.get("state")).catch(showProblem);
  $("#lang").addEventListener("click", () => {
    state.lang = state.lang === "ko" ? "en" : "ko";
    localStorage.setItem("loyalty.lang", state.lang);
    route();
  });
  $("#signout").addEventListener("click", () => signOut());
  $("#ask-cancel").addEventListener("click", () => $("#ask").close("cancel"));
  $("#program").addEventListener("change", (e) => {
    state.program = e.target.value;
    localStorage.setItem("loyalty.program", state.program);
    route();
  });
  window.addEventListener("hashchange", () => {
    showProblem(null);
    route();
  });
  await route();
}

start();
