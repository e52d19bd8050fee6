// Load generator for bench/serve_load.py (Node.js: one process keeps thousands of requests a
// second in flight on one core, which a Python client on this 2-core machine does not).
//
//   node load.mjs post BASE TOKEN COUNT MEMBERS CONCURRENCY FIRST_ID AMOUNT
//     posts COUNT purchase events (admin events API), member = m-(i % MEMBERS), ids from
//     FIRST_ID, as fast as CONCURRENCY connections allow; prints one JSON line.
//   node load.mjs get BASE TOKENS_FILE RATE SECONDS OUT_CSV
//     GET /me at a fixed RATE (open loop: request i is due at start + i/RATE, and its latency is
//     counted from when it was due, so a stalled server cannot hide its queue: no coordinated
//     omission), cycling through the member tokens of TOKENS_FILE (JSON list); writes
//     "due_ms,latency_ms,status" lines to OUT_CSV, stops after SECONDS or on SIGTERM.
import http from "node:http";
import fs from "node:fs";

const [mode, base, ...rest] = process.argv.slice(2);
const url = new URL(base);
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

function request(method, path, headers, body) {
  return new Promise((resolve) => {
    const req = http.request({ host: url.hostname, port: url.port, method, path, agent, headers }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode));
      res.on("error", () => resolve(0));
    });
    req.on("error", () => resolve(0));
    if (body) req.write(body);
    req.end();
  });
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

if (mode === "post") {
  const [token, count, members, concurrency, firstId, amount] = rest;
  const n = Number(count);
  const occurred = new Date(Date.now() - 60_000).toISOString().replace(/\.\d+Z$/, "Z");
  let next = 0;
  const statuses = {};
  const latencies = [];
  const started = performance.now();
  async function worker() {
    for (;;) {
      const i = next++;
      if (i >= n) return;
      const id = Number(firstId) + i;
      const member = `m-${i % Number(members)}`;
      const body = JSON.stringify({
        type: "purchase.completed", version: 1, id: `load-${id}`, program: "kr-shop", member, occurred_at: occurred,
        data: { order_id: `load-${id}`, currency: "KRW", channel: "online", lines: [
          { line_id: "1", sku: "TEE-01", category: "apparel", quantity: 1, unit_price: String(amount) }] },
      });
      const t0 = performance.now();
      let status = 0;
      for (let attempt = 0; attempt < 20; attempt++) {
        status = await request("POST", "/v1/programs/kr-shop/events", {
          Authorization: `Bearer ${token}`, "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body),
        }, body);
        if (status !== 0 && status !== 429 && status < 500) break;
        statuses[`retry-${status}`] = (statuses[`retry-${status}`] || 0) + 1;
        await new Promise((r) => setTimeout(r, 50));
      }
      latencies.push(performance.now() - t0);
      statuses[status] = (statuses[status] || 0) + 1;
    }
  }
  await Promise.all(Array.from({ length: Number(concurrency) }, worker));
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  console.log(JSON.stringify({ count: n, seconds, per_second: n / seconds, statuses,
    latency_ms: { p50: percentile(latencies, 50), p99: percentile(latencies, 99), max: latencies[latencies.length - 1] } }));
  process.exit(0);
} else if (mode === "get") {
  const [tokensFile, rate, seconds, out] = rest;
  const tokens = JSON.parse(fs.readFileSync(tokensFile, "utf8"));
  const period = 1000 / Number(rate);
  const lines = [];
  const startWall = Date.now();
  const start = performance.now();
  const end = start + Number(seconds) * 1000;
  let i = 0;
  let inflight = 0;
  let stopping = false;
  const finish = () => {
    fs.writeFileSync(out, lines.join("\n") + "\n");
    process.exit(0);
  };
  process.on("SIGTERM", () => { stopping = true; });
  function fire(k) {
    const due = start + k * period;
    inflight++;
    request("GET", "/v1/programs/kr-shop/me", { Authorization: `Bearer ${tokens[k % tokens.length]}` }).then((status) => {
      const latency = performance.now() - due;
      lines.push(`${(startWall + k * period).toFixed(1)},${latency.toFixed(3)},${status}`);
      inflight--;
      if (stopping && inflight === 0) finish();
    });
  }
  function tick() {
    const now = performance.now();
    while (start + i * period <= now && !stopping && start + i * period < end) fire(i++);
    if (stopping || now >= end) {
      stopping = true;
      if (inflight === 0) finish();
      return;
    }
    setTimeout(tick, Math.max(0, Math.min(1, start + i * period - performance.now())));
  }
  tick();
} else {
  console.error("usage: load.mjs post|get ...");
  process.exit(2);
}
