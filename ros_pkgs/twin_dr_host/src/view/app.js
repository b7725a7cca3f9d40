// The fleet view: reads /view/data every second and draws the road, the twins and the
// hosts. A viewer token, when the host needs one, comes after '#token=' in the address
// (the fragment never leaves the browser) and goes in the Authorization header.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 1000;
const ROW_M = 1000; // the road is drawn in rows of at most this many metres
const token = new URLSearchParams(location.hash.slice(1)).get("token");
let updates = 0;

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function linkState(t) {
  if (!t.active) return "dormant";
  return t.connectivity && t.connectivity.connected ? "connected" : "offline";
}

function kmh(mps) { return mps == null ? "–" : Math.round(mps * 3.6) + " km/h"; }
function ms(us) { return us == null ? "–" : (us / 1000).toFixed(1) + " ms"; }
function rate(bps) {
  if (bps == null) return "–";
  if (bps >= 1e6) return (bps / 1e6).toFixed(1) + " Mb/s";
  if (bps >= 1e3) return (bps / 1e3).toFixed(0) + " kb/s";
  return bps.toFixed(0) + " b/s";
}
function age(us, now) {
  if (us == null) return "–";
  const s = Math.max(0, (now - us) / 1e6);
  if (s < 60) return s.toFixed(1) + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  return Math.floor(s / 3600) + " h ago";
}

function drawRoad(road, twins) {
  const map = document.getElementById("map");
  const length = road.length, lanes = road.lanes, lw = road.lane_width;
  const rows = Math.max(1, Math.ceil(length / ROW_M));
  const rowLen = length / rows;
  const width = 1200, left = 60, right = 20, laneH = 18, rowGap = 50;
  const scale = (width - left - right) / rowLen;
  const rowH = lanes * laneH + rowGap;
  const svg = el("svg:svg", { viewBox: `0 0 ${width} ${rows * rowH + 10}`, role: "img", "aria-label": "the road with the twins' vehicles" });
  for (let r = 0; r < rows; r++) {
    const top = r * rowH + 32;
    const s0 = r * rowLen;
    svg.appendChild(el("svg:rect", { x: left, y: top, width: rowLen * scale, height: lanes * laneH, fill: "#3f4753", class: "asphalt" }));
    for (let k = 1; k < lanes; k++) {
      svg.appendChild(el("svg:line", { x1: left, x2: left + rowLen * scale, y1: top + k * laneH, y2: top + k * laneH, stroke: "#ffffff", "stroke-dasharray": "8 8", "stroke-width": 1 }));
    }
    svg.appendChild(el("svg:text", { x: 4, y: top + lanes * laneH / 2 + 4, fill: "#5f6b7a", "font-size": 11 }, (s0 / 1000).toFixed(1) + " km"));
    for (let m = Math.ceil(s0 / 100) * 100; m <= s0 + rowLen + 1e-6; m += 100) {
      const x = left + (m - s0) * scale;
      svg.appendChild(el("svg:line", { x1: x, x2: x, y1: top + lanes * laneH, y2: top + lanes * laneH + (m % 500 === 0 ? 6 : 3), stroke: "#5f6b7a" }));
    }
  }
  const placed = twins.filter(t => t.place).sort((a, b) => a.place.s - b.place.s);
  const labelsInRow = new Array(rows).fill(0);
  for (const t of placed) {
    const s = Math.min(Math.max(t.place.s, 0), length - 1e-6);
    const r = Math.min(rows - 1, Math.floor(s / rowLen));
    const top = r * rowH + 32;
    // Neighbours' labels alternate between two lines above the row.
    const labelY = top - 6 - (labelsInRow[r]++ % 2) * 12;
    const lane = Math.min(Math.max(t.place.d / lw, -0.5), lanes - 0.5);
    // Lane 0 (rightmost) at the bottom of the band, as seen driving along +s.
    const x = left + (s - r * rowLen) * scale;
    const y = top + (lanes - 0.5 - lane) * laneH;
    const state = linkState(t);
    const g = el("svg:g", { class: "vehicle", "data-vehicle": t.vehicle, "data-link": state });
    const colour = { connected: "#1f9d55", offline: "#e08a00", dormant: "#9aa3ad" }[state];
    g.appendChild(el("svg:circle", { cx: x, cy: y, r: 7, fill: colour, stroke: "#ffffff", "stroke-width": 1.5 }));
    let label = t.vehicle;
    if (t.advice) {
      label += " · " + kmh(t.advice.target_speed);
      const now = t.place.lane;
      if (now != null && t.advice.target_lane > now) label += " ⇡";
      if (now != null && t.advice.target_lane < now) label += " ⇣";
    }
    g.appendChild(el("svg:text", { x: x + 3, y: labelY, "font-size": 11, fill: "#1d2430" }, label));
    g.appendChild(el("svg:line", { x1: x, x2: x, y1: labelY + 2, y2: y - 7, stroke: colour, "stroke-width": 1 }));
    svg.appendChild(g);
  }
  map.replaceChildren(svg);
  const withheld = twins.filter(t => !t.place);
  document.getElementById("withheld").textContent = withheld.length === 0 ? "" :
    `${withheld.length} twin(s) not on the map: ` + withheld.map(t => `${t.vehicle} (${(t.reported && t.reported.withheld) || "no state yet"})`).join(", ");
}

function drawTwins(twins, now) {
  const body = document.querySelector("#twins tbody");
  const rows = twins.map(t => {
    const c = t.connectivity || {};
    const state = linkState(t);
    const tr = el("tr", { "data-vehicle": t.vehicle, "data-link": state });
    const badge = el("span", { class: "state " + state }, state);
    const cells = [
      t.vehicle,
      t.host || "this host",
      badge,
      c.connected ? "since " + age(c.since_us, now) : (c.until_us ? "until " + age(c.until_us, now) : "–"),
      ms(c.rtt_us),
      rate(c.uplink_bottleneck_bps) + " / " + rate(c.downlink_bottleneck_bps),
      age(c.last_sync_us, now),
      t.advice ? kmh(t.advice.target_speed) + ", lane " + t.advice.target_lane : "–",
      t.advice ? t.advice.reason : (t.error || ""),
      t.desired && t.desired.max_speed_mps != null ? kmh(t.desired.max_speed_mps) : "–",
    ];
    cells.forEach((v, i) => {
      const td = el("td", i === 8 ? { class: "reason" } : {});
      if (v instanceof Node) td.appendChild(v); else td.textContent = v;
      tr.appendChild(td);
    });
    return tr;
  });
  body.replaceChildren(...rows);
}

function drawHosts(hosts, twins) {
  const body = document.querySelector("#hosts tbody");
  body.replaceChildren(...hosts.map(h => {
    const state = !h.live ? "gone" : !h.reachable ? "unreachable" : h.draining ? "draining" : "live";
    const m = h.metrics || {};
    const tr = el("tr", { "data-host": h.name || "" });
    const name = h.name || "this host";
    const served = twins.filter(t => (t.host || null) === (h.name || null)).length;
    const cells = [name, el("span", { class: "state " + state }, state), h.shards == null ? "–" : String(h.shards),
      String(served), m.active == null ? "–" : String(m.active), m.messages_total == null ? "–" : String(m.messages_total),
      m.recommendations_total == null ? "–" : String(m.recommendations_total), m.rejected_total == null ? "–" : String(m.rejected_total),
      m.mean_latency_ms == null ? "–" : m.mean_latency_ms.toFixed(2) + " ms", h.admin ? "http://" + h.admin + "/metrics" : "/metrics"];
    for (const v of cells) {
      const td = el("td");
      if (v instanceof Node) td.appendChild(v); else td.textContent = v;
      tr.appendChild(td);
    }
    return tr;
  }));
}

function show(data) {
  const twins = data.twins || [];
  const now = data.generated_us;
  drawRoad(data.road, twins);
  drawTwins(twins, now);
  drawHosts(data.hosts || [], twins);
  const live = (data.hosts || []).filter(h => h.live).length;
  const connected = twins.filter(t => linkState(t) === "connected").length;
  document.getElementById("summary").textContent =
    `${twins.length} twins, ${connected} vehicles connected, ${live} of ${(data.hosts || []).length} hosts live`;
  document.getElementById("clock").textContent = "updated " + new Date(now / 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  const banner = document.getElementById("banner");
  banner.className = "";
  banner.textContent = "";
  if (data.fleet_error) fail("The fleet's database cannot be read (" + data.fleet_error + "): this host's twins only.");
  updates += 1;
  document.body.dataset.updates = String(updates);
}

function fail(message) {
  const banner = document.getElementById("banner");
  banner.className = "shown";
  banner.textContent = message;
}

async function refresh() {
  try {
    const r = await fetch("/view/data", { headers: token ? { Authorization: "Bearer " + token } : {}, cache: "no-store" });
    if (r.status === 401 || r.status === 403) {
      fail("The host needs a viewer token: open this page as /view#token=<your token>.");
    } else if (!r.ok) {
      fail(`The host answered ${r.status}: ${(await r.text()).trim()}`);
    } else {
      show(await r.json());
    }
  } catch (e) {
    fail("The host cannot be reached (" + e.message + "); retrying every second.");
  }
  setTimeout(refresh, REFRESH_MS);
}

refresh();
