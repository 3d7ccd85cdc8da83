// llmroute dashboard: small vanilla JavaScript (no framework, no network beyond this gateway).
"use strict";

function onReady(fn) {
  if (document.readyState !== "loading") fn();
  else document.addEventListener("DOMContentLoaded", fn);
}

// decision explorer: filters apply on change; a row opens its decision
function initExplorer() {
  const form = document.getElementById("filters");
  if (form) {
    form.querySelectorAll("select").forEach((s) => s.addEventListener("change", () => form.submit()));
  }
  document.querySelectorAll("tr[data-href]").forEach((tr) => {
    tr.addEventListener("click", (ev) => {
      if (ev.target.closest("a")) return;
      window.location.href = tr.dataset.href;
    });
  });
}

// slider position (0..100) -> trade-off lambda: 0 at the left end, then 0.1 .. 1000 on a log scale
function tradeoffOf(pos) {
  const p = Number(pos);
  if (p <= 0) return 0;
  const v = Math.pow(10, p / 25 - 1);
  return Number(v.toPrecision(v < 10 ? 2 : 3));
}

function fmtCost(v) {
  if (typeof v !== "number") return "-";
  return "$" + v.toPrecision(3);
}

function initPlayground() {
  const form = document.getElementById("playground");
  if (!form) return;
  const slider = document.getElementById("tradeoff");
  const out = document.getElementById("tradeoff-value");
  const table = document.getElementById("ranked");
  const reason = document.getElementById("route-reason");
  const err = document.getElementById("route-error");
  let timer = null;
  let seq = 0;

  async function route() {
    const mine = ++seq;
    const lam = tradeoffOf(slider.value);
    const headers = { "content-type": "application/json" };
    const key = document.getElementById("apikey");
    if (key && key.value) headers["authorization"] = "Bearer " + key.value;
    const body = {
      model: document.getElementById("alias").value,
      prompt: document.getElementById("prompt").value,
      llmroute: { tradeoff: lam },
    };
    form.dataset.state = "routing";
    let resp, data;
    try {
      resp = await fetch("/v1/route", { method: "POST", headers, body: JSON.stringify(body) });
      data = await resp.json();
    } catch (e) {
      if (mine !== seq) return;
      err.textContent = "The gateway did not answer: " + e;
      err.hidden = false;
      form.dataset.state = "error";
      return;
    }
    if (mine !== seq) return;
    if (!resp.ok) {
      err.textContent = (data && data.error && data.error.message) || "HTTP " + resp.status;
      err.hidden = false;
      table.hidden = true;
      form.dataset.state = "error";
      return;
    }
    err.hidden = true;
    reason.textContent = data.reason || "";
    const tbody = table.querySelector("tbody");
    tbody.replaceChildren();
    const qs = data.ranked.map((c) => (typeof c.expected_quality === "number" ? c.expected_quality : 0));
    const qmax = Math.max(1e-9, ...qs);
    data.ranked.forEach((c, i) => {
      const tr = document.createElement("tr");
      if (c.model === data.model) tr.className = "chosen";
      const q = typeof c.expected_quality === "number" ? c.expected_quality : null;
      const cells = [String(i + 1), c.model, q === null ? "-" : q.toFixed(3), fmtCost(c.expected_cost), c.model === data.model ? "chosen" : ""];
      cells.forEach((text, j) => {
        const td = document.createElement("td");
        td.textContent = text;
        if (j === 2 && q !== null) {
          const bar = document.createElement("span");
          bar.className = "bar";
          bar.style.width = Math.round((60 * q) / qmax) + "px";
          bar.style.marginLeft = "8px";
          td.appendChild(bar);
        }
        tr.appendChild(td);
      });
      tbody.appendChild(tr);
    });
    table.hidden = false;
    table.dataset.model = data.model;
    table.dataset.tradeoff = String(lam);
    form.dataset.state = "done";
  }

  function show() {
    out.textContent = String(tradeoffOf(slider.value));
  }
  slider.addEventListener("input", () => {
    show();
    clearTimeout(timer);
    timer = setTimeout(route, 150);
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    route();
  });
  show();
  const key = document.getElementById("apikey");
  if (key) {
    // the gateway has API keys: route once one is given
    key.addEventListener("change", () => route());
    form.dataset.state = "needs-key";
  } else {
    route();
  }
}

onReady(() => {
  initExplorer();
  initPlayground();
});
