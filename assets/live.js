// Herald dashboard: live updates over the feed (SSE). Plain JS, no dependencies. The pages
// work without it; this only adds what happens after they were rendered.
"use strict";
(function () {
  const body = document.body;
  const query = body.dataset.stream;
  if (query === undefined) return;
  const indicator = document.getElementById("live");
  const onlyMessage = document.getElementById("message")?.dataset.message;
  // The dashboard follows /api/v1 with its session cookie; a customer portal page says
  // where its own stream, channel and pages are (its session is in their path).
  const streamUrl = body.dataset.streamUrl || "/api/v1/stream";
  const wsUrl = body.dataset.wsUrl || "/api/v1/admin/ws";
  const checkUrl = body.dataset.check || "/api/v1/stats";
  const linkBase = (appId) => body.dataset.links || "/apps/" + appId;
  // The feed position when the page was rendered: nothing after it is missed.
  let from = body.dataset.from || "";

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function link(href, text) {
    const a = el("a");
    a.href = href;
    a.appendChild(el("code", text));
    return a;
  }
  function stamp(iso) {
    return iso.replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC").replace(/\+00:00$/, " UTC");
  }
  function cell(row, child, cls) {
    const td = el("td", undefined, cls);
    if (typeof child === "string") td.textContent = child; else td.appendChild(child);
    row.appendChild(td);
  }
  function prepend(tableId, row, emptyId) {
    const tbody = document.querySelector("#" + tableId + " tbody");
    if (!tbody) return;
    if (row.dataset.id && tbody.querySelector('tr[data-id="' + row.dataset.id + '"]')) return;
    row.classList.add("fresh");
    tbody.insertBefore(row, tbody.firstChild);
    while (tbody.rows.length > 200) tbody.deleteRow(-1);
    document.getElementById(emptyId)?.remove();
  }

  function onAttempt(a) {
    if (!onlyMessage || a.message_id === onlyMessage) {
      const row = el("tr", undefined, a.outcome);
      row.dataset.id = a.id;
      cell(row, stamp(a.created_at), "nowrap");
      cell(row, el("span", a.outcome, "badge " + a.outcome));
      cell(row, a.event_type);
      cell(row, link(linkBase(a.app_id) + "/messages/" + a.message_id, a.message_id));
      cell(row, link(linkBase(a.app_id) + "/endpoints/" + a.endpoint_id, a.endpoint_id));
      cell(row, "#" + a.attempt + (a.trigger !== "scheduled" ? " " + a.trigger : ""), "num");
      cell(row, a.response_status == null ? "–" : String(a.response_status), "num");
      cell(row, a.duration_ms + " ms", "num");
      cell(row, a.error || "", "error-text");
      prepend("attempts", row, "attempts-empty");
    }
    const delivery = document.querySelector('tr[data-delivery="' + a.delivery_id + '"]');
    if (delivery) {
      const state = a.outcome === "retrying" ? "pending" : a.outcome;
      const badge = delivery.cells[1].firstChild;
      badge.textContent = state;
      badge.className = "badge " + state;
      delivery.cells[2].textContent = String(a.attempt);
      delivery.cells[3].textContent = a.next_attempt_at ? stamp(a.next_attempt_at) : "";
      delivery.cells[4].textContent = a.error || "";
    }
    chartAdd(a);
  }

  function onDead(d) {
    const row = el("tr");
    row.dataset.id = d.id;
    cell(row, "just now", "nowrap");
    cell(row, d.event_type);
    cell(row, link(linkBase(d.app_id) + "/messages/" + d.message_id, d.message_id));
    cell(row, link(linkBase(d.app_id) + "/endpoints/" + d.endpoint_id, d.endpoint_id));
    cell(row, String(d.attempt_count), "num");
    cell(row, d.last_error || "", "error-text");
    prepend("dead", row, "dead-empty");
  }

  // The overview's chart: per-minute counts, redrawn the same way the server drew them.
  const chart = document.getElementById("chart");
  const minutes = chart ? JSON.parse(chart.dataset.minutes || "[]") : [];
  let redraw = null;
  function chartAdd(a) {
    if (!chart || minutes.length === 0) return;
    const minute = Math.floor(Date.parse(a.created_at) / 60000) * 60;
    while (minutes[minutes.length - 1].minute < minute) {
      minutes.shift();
      minutes.push({ minute: minutes[minutes.length - 1].minute + 60, succeeded: 0, total: 0 });
    }
    const m = minutes.find((x) => x.minute === minute);
    if (!m) return;
    m.total += 1;
    if (a.outcome === "succeeded") m.succeeded += 1;
    if (!redraw) redraw = setTimeout(draw, 250);
  }
  function draw() {
    redraw = null;
    const ns = "http://www.w3.org/2000/svg";
    const max = Math.max(1, ...minutes.map((m) => m.total));
    const bars = document.getElementById("bars");
    bars.replaceChildren();
    const points = [];
    let total = 0, ok = 0;
    minutes.forEach((m, i) => {
      total += m.total; ok += m.succeeded;
      const okH = m.succeeded / max * 120, failH = (m.total - m.succeeded) / max * 120;
      const g = document.createElementNS(ns, "g");
      const title = document.createElementNS(ns, "title");
      const at = new Date(m.minute * 1000).toISOString().slice(11, 16);
      title.textContent = at + ": " + m.total + " attempts, " + (m.total - m.succeeded) + " failed";
      g.appendChild(title);
      for (const [cls, y, h] of [["ok", 130 - okH, okH], ["failed", 130 - okH - failH, failH]]) {
        const r = document.createElementNS(ns, "rect");
        r.setAttribute("class", cls);
        r.setAttribute("x", i * 10); r.setAttribute("y", y);
        r.setAttribute("width", 9); r.setAttribute("height", h);
        g.appendChild(r);
      }
      bars.appendChild(g);
      if (m.total > 0) points.push((i * 10 + 5) + "," + (130 - m.succeeded / m.total * 120).toFixed(1));
    });
    document.getElementById("rate").setAttribute("points", points.join(" "));
    const hourTotal = document.getElementById("stat-hour-total");
    if (hourTotal) hourTotal.textContent = String(total);
    const hourRate = document.getElementById("stat-hour-rate");
    if (hourRate) hourRate.textContent = total ? (100 * ok / total).toFixed(1) + "%" : "–";
  }

  // Queue depth and the oldest pending delivery change without events: refresh them.
  function age(secs) {
    if (secs < 1) return Math.round(secs * 1000) + " ms";
    if (secs < 60) return Math.floor(secs) + " s";
    if (secs < 3600) return Math.floor(secs / 60) + " min";
    if (secs < 86400) return Math.floor(secs / 3600) + " h " + Math.floor(secs % 3600 / 60) + " min";
    return Math.floor(secs / 86400) + " d " + Math.floor(secs % 86400 / 3600) + " h";
  }
  async function refreshStats() {
    try {
      const r = await fetch("/api/v1/stats", { credentials: "same-origin" });
      if (r.status === 401) { location.reload(); return; }
      if (!r.ok) return;
      const s = await r.json();
      document.getElementById("stat-pending").textContent = String(s.pending);
      document.getElementById("stat-in-flight").textContent = String(s.in_flight);
      document.getElementById("stat-oldest").textContent = s.pending > 0 ? age(s.oldest_pending_age_seconds) : "–";
    } catch (_) { /* offline for a moment; the next tick retries */ }
  }
  if (document.getElementById("stat-pending")) setInterval(refreshStats, 3000);

  function connect() {
    const params = new URLSearchParams(query);
    if (from) params.set("last_event_id", from);
    const source = new EventSource(streamUrl + "?" + params.toString());
    const track = (handler) => (e) => {
      if (e.lastEventId) from = e.lastEventId;
      handler(JSON.parse(e.data));
    };
    source.onopen = () => { indicator.hidden = false; indicator.classList.remove("off"); indicator.textContent = "live"; };
    source.onerror = () => {
      indicator.classList.add("off");
      indicator.textContent = "reconnecting";
      // The browser retries by itself (sending Last-Event-ID) unless the server refused.
      if (source.readyState === EventSource.CLOSED) {
        fetch(checkUrl, { credentials: "same-origin" }).then((r) => {
          if (r.status === 401) location.reload(); // logged out (or the link expired): say so
          else { from = ""; setTimeout(connect, 2000); } // our position expired: go live
        }, () => setTimeout(connect, 2000));
      }
    };
    source.addEventListener("attempt", track(onAttempt));
    source.addEventListener("delivery.dead", track(onDead));
    source.addEventListener("message.created", track(() => {}));
    source.addEventListener("endpoint.disabled", track(() => {}));
  }
  connect();

  // Replay buttons: commands over the admin WebSocket, with their progress and outcome
  // shown next to the form. Without a WebSocket the form is simply submitted.
  let socket = null;
  let opened = null;
  let counter = 0;
  const handlers = new Map();
  function channel() {
    if (socket && socket.readyState <= WebSocket.OPEN) return opened;
    socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + wsUrl);
    opened = new Promise((resolve, reject) => {
      socket.onopen = () => resolve(socket);
      socket.onerror = reject;
    });
    socket.onmessage = (e) => {
      const frame = JSON.parse(e.data);
      const handler = handlers.get(frame.req);
      if (handler) handler(frame);
    };
    socket.onclose = () => { socket = null; };
    return opened;
  }
  function utc(local) {
    // A datetime-local value ("2026-11-24T08:00") read as UTC, as the label says.
    return (local.length === 16 ? local + ":00" : local) + "Z";
  }
  document.querySelectorAll("form[data-ws]").forEach((form) => {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const status = form.querySelector(".ws-status");
      const bar = form.querySelector("progress");
      const req = "dash-" + (++counter) + "-" + Date.now();
      const command = { req, op: form.dataset.ws };
      if (command.op === "replay") {
        command.message_id = form.dataset.message;
        const endpoint = form.elements.endpoint_id && form.elements.endpoint_id.value;
        if (endpoint) command.endpoint_id = endpoint;
      } else {
        command.endpoint_id = form.dataset.endpoint;
        command.since = utc(form.elements.since.value);
      }
      let sent = 0;
      status.classList.remove("error");
      handlers.set(req, (f) => {
        if (f.type === "ack") status.textContent = "accepted";
        else if (f.type === "progress") {
          if (bar) { bar.hidden = false; bar.max = Math.max(f.total, 1); bar.value = f.done; }
          status.textContent = f.done + " of " + f.total + " queued";
        } else if (f.type === "done") {
          if (bar) { bar.hidden = false; bar.value = bar.max; }
          status.textContent = f.queued + " queued; outcomes follow";
        } else if (f.type === "error") {
          status.textContent = f.message;
          status.classList.add("error");
        } else if (f.type === "attempt") {
          sent += 1;
          status.textContent = sent + " sent, last " + f.outcome + (f.response_status ? " (" + f.response_status + ")" : "");
        }
      });
      try {
        (await channel()).send(JSON.stringify(command));
      } catch (_) {
        form.submit();
      }
    });
  });
})();
