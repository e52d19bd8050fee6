// A Node.js Lambda for bench/coldstart.py: one DynamoDB GetItem per invocation with AWS SDK v3,
// the client built once at init, and a tiny Lambda Runtime API client loop (what the managed
// nodejs20.x runtime does for a handler), so it runs behind the same local runtime API as the
// Rust bootstraps. Table and key from PROBE_TABLE, PROBE_PK, PROBE_SK.
import http from "node:http";
import { DynamoDBClient, GetItemCommand } from "@aws-sdk/client-dynamodb";

const client = new DynamoDBClient({});
const table = process.env.PROBE_TABLE;
const key = { PK: { S: process.env.PROBE_PK }, SK: { S: process.env.PROBE_SK } };

async function handler(_event) {
  const out = await client.send(new GetItemCommand({ TableName: table, Key: key }));
  return { found: out.Item !== undefined };
}

const [host, port] = process.env.AWS_LAMBDA_RUNTIME_API.split(":");
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const base = "/2018-06-01/runtime/invocation";

function request(method, path, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port: Number(port), method, path, agent, headers: body ? { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) } : {} }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on("error", reject);
    });
    req.on("error", reject);
    if (body) req.write(body);
    req.end();
  });
}

for (;;) {
  const next = await request("GET", `${base}/next`);
  if (next.status !== 200) process.exit(0);
  const id = next.headers["lambda-runtime-aws-request-id"];
  try {
    const result = await handler(JSON.parse(next.body || "null"));
    await request("POST", `${base}/${id}/response`, JSON.stringify(result));
  } catch (e) {
    await request("POST", `${base}/${id}/error`, JSON.stringify({ errorType: e.name || "Error", errorMessage: String(e.message || e) }));
  }
}
