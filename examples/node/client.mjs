// A skulens client in Node.js, built from the .proto files alone (proto/skulens/v1, and grpc.health.v1 from the
// grpc-health-check package). It walks the contract the way an application would and prints one JSON report.
//
//   npm install --prefix examples/node          (once)
//   node examples/node/client.mjs 127.0.0.1:50051 photo.png
//
// proto-loader options worth knowing: keepCase (field names as in the .proto: product_id, not productId),
// longs: String (uint64 catalog versions and int64 reference ids arrive as strings: no precision loss),
// enums: String (VERDICT_KNOWN, not 1), defaults (unset fields present with their zero value).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const here = dirname(fileURLToPath(import.meta.url));
const protoRoot = join(here, "..", "..", "proto");
const healthProto = join(dirname(createRequire(import.meta.url).resolve("grpc-health-check/package.json")),
  "proto", "health", "v1", "health.proto");
const options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
const defs = protoLoader.loadSync(
  ["skulens/v1/recognition.proto", "skulens/v1/catalog.proto", healthProto],
  { ...options, includeDirs: [protoRoot] },
);
const api = grpc.loadPackageDefinition(defs);

const [addr, imagePath] = process.argv.slice(2);
if (!addr || !imagePath) {
  console.error("usage: node client.mjs HOST:PORT IMAGE_FILE");
  process.exit(2);
}
const creds = grpc.credentials.createInsecure();
const recognition = new api.skulens.v1.RecognitionService(addr, creds);
const catalog = new api.skulens.v1.CatalogService(addr, creds);
const health = new api.grpc.health.v1.Health(addr, creds);
const deadline = () => new Date(Date.now() + 30_000);
const call = (client, method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, { deadline: deadline() }, (err, resp) => (err ? reject(err) : resolve(resp))));

const report = {};
const image = readFileSync(imagePath);

// 1. What the server is, and whether it serves
const info = await call(recognition, "GetServerInfo", {});
report.model = { fingerprint: info.model.fingerprint, dim: info.model.dim, modalities: info.model.modalities };
report.max_images_per_request = info.limits.max_images_per_request;
report.health = (await call(health, "Check", { service: "" })).status;
report.health_list = Object.keys((await call(health, "List", {})).statuses).sort();
report.watch_first = await new Promise((resolve, reject) => {
  const stream = health.Watch({ service: "skulens.v1.RecognitionService" });
  stream.on("data", (msg) => { resolve(msg.status); stream.cancel(); });
  stream.on("error", (err) => { if (err.code !== grpc.status.CANCELLED) reject(err); });
});

// 2. Enrol: a product (only the name given: update_mask-less upserts touch only what is sent), then its image
const up = await call(catalog, "UpsertProduct", { product_id: "js-oat", display_name: "Oat drink", category: "drinks" });
const renamed = await call(catalog, "UpsertProduct", { product_id: "js-oat", display_name: "Oat drink 1 l" });
report.upsert = { created: up.created, category_kept: renamed.product.category, version: renamed.catalog_version };
const added = await new Promise((resolve, reject) => {
  const stream = catalog.AddReferenceImages({ deadline: deadline() }, (err, resp) => (err ? reject(err) : resolve(resp)));
  stream.write({ product_id: "js-oat", content: image, source: "node example" });
  stream.end();
});
report.added = { added: added.added, reference_id: added.results[0].reference_id, version: added.catalog_version };

// 3. Recognise it (read-your-writes: at least the version of the enrolment), and a stream with positions
const rec = await call(recognition, "Recognize", {
  images: [{ id: "photo", content: image }],
  options: { top_k: 3, min_catalog_version: added.catalog_version },
});
const r = rec.results[0].recognition;
report.recognize = { product: r.matches[0]?.product_id, verdict: r.verdict, version: rec.catalog_version };
report.stream = await new Promise((resolve, reject) => {
  const out = [];
  const stream = recognition.RecognizeStream({ deadline: deadline() });
  stream.on("data", (m) => out.push([m.message_index, m.image_index, m.result.status.code]));
  stream.on("end", () => resolve(out.sort()));
  stream.on("error", reject);
  stream.write({ images: [{ id: "a", content: image }] });
  stream.write({ images: [{ id: "b", content: image }], options: { top_k: 999 } }); // refused, answered in-stream
  stream.end();
});

// 4. Errors a client can parse: the code, the field, and the standard google.rpc.Status trailer
try {
  await call(recognition, "Recognize", { images: [{ id: "x", content: image }], options: { top_k: 999 } });
  report.error = "no error";
} catch (err) {
  report.error = {
    code: grpc.status[err.code],
    field: err.metadata.get("skulens-error-field")[0],
    status_details_bytes: (err.metadata.get("grpc-status-details-bin")[0] ?? Buffer.alloc(0)).length,
  };
}

// 5. Idempotent delete: a retry after a lost response is OK
await call(catalog, "DeleteProduct", { product_id: "js-oat" });
const again = await call(catalog, "DeleteProduct", { product_id: "js-oat", allow_missing: true });
report.delete_retry = { deleted_references: again.deleted_references };

console.log(JSON.stringify(report));
for (const c of [recognition, catalog, health]) c.close();
