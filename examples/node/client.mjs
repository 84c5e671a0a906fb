// A skulens client in Node.js, built from the .proto files alone (proto/skulens/v1, grpc.health.v1 from the
// grpc-health-check package, google.rpc's status and error details from google-proto-files). It walks the contract
// the way an application would and prints one JSON report.
//
//   npm install --prefix examples/node          (once)
//   node examples/node/client.mjs 127.0.0.1:50051 photo.png
//
// proto-loader options worth knowing: keepCase (field names as in the .proto: product_id, not productId),
// longs: String (uint64 catalog versions and int64 reference ids arrive as strings: no precision loss),
// enums: String (VERDICT_KNOWN, not 1), defaults (unset fields present with their zero value).
//
// Errors: a failed call carries a google.rpc.Status in the `grpc-status-details-bin` trailer, and a failed item
// (an image of a batch, an enrolment message) the same details in its ItemStatus.details (google.protobuf.Any):
// ErrorInfo (reason, domain "skulens.v1", metadata.field = the field path, metadata.stream_index = the stream
// message's position in a streaming call), BadRequest (the field violation) for INVALID_ARGUMENT, RetryInfo when the
// server knows when to retry. `unpack` below decodes them with protobufjs from google/rpc/error_details.proto.
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const protoRoot = join(here, "..", "..", "proto");
const healthProto = join(dirname(require.resolve("grpc-health-check/package.json")), "proto", "health", "v1",
  "health.proto");
const options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
const defs = protoLoader.loadSync(
  ["skulens/v1/recognition.proto", "skulens/v1/catalog.proto", healthProto],
  { ...options, includeDirs: [protoRoot] },
);
const api = grpc.loadPackageDefinition(defs);

// google.rpc.Status and its details (ErrorInfo, BadRequest, RetryInfo, ...), from google-proto-files
const googleProtos = dirname(require.resolve("google-proto-files/package.json"));
const rpc = new protobuf.Root();
rpc.resolvePath = (origin, target) =>
  target.startsWith("google/rpc/") ? join(googleProtos, target) : protobuf.util.path.resolve(origin, target);
rpc.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const Status = rpc.lookupType("google.rpc.Status");

/** google.protobuf.Any values (type_url + bytes) as plain objects, each with its "@type". */
const unpack = (anys) => anys.map((any) => {
  const type = rpc.lookupType(any.type_url.slice(any.type_url.lastIndexOf("/") + 1));
  return { "@type": type.fullName.slice(1), ...type.toObject(type.decode(any.value), { longs: String }) };
});
/** What a client shows of an error's details: the reason, the field path, the stream position, the violations. */
const describe = (details) => {
  const all = unpack(details);
  const info = all.find((d) => d["@type"] === "google.rpc.ErrorInfo") ?? { metadata: {} };
  const bad = all.find((d) => d["@type"] === "google.rpc.BadRequest");
  return {
    reason: info.reason,
    domain: info.domain,
    field: info.metadata.field ?? "",
    stream_index: info.metadata.stream_index ?? null,
    violations: (bad?.field_violations ?? []).map((v) => v.field),
  };
};
/** The google.rpc.Status of a failed call, from its `grpc-status-details-bin` trailer. */
const statusOf = (err) => {
  const bin = err.metadata.get("grpc-status-details-bin")[0];
  return bin ? Status.decode(bin) : null;
};

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
const enrolOnce = (messages) => new Promise((resolve, reject) => {
  const stream = catalog.AddReferenceImages({ deadline: deadline() }, (err, resp) => (err ? reject(err) : resolve(resp)));
  for (const m of messages) stream.write(m);
  stream.end();
});
// each image with its own request id (AIP-155): sending the same message again is a safe retry
const requestId = randomUUID();
const added = await enrolOnce([
  { product_id: "js-oat", content: image, source: "node example", request_id: requestId },
  { product_id: "js-oat", content: Buffer.alloc(0), source: "empty" }, // fails alone, named relative to the message
]);
report.added = { added: added.added, reference_id: added.results[0].reference_id, version: added.catalog_version };
const failed = added.results[1];
report.enrol_item_error = { index: failed.index, code: grpc.status[failed.status.code], field: failed.status.field,
  details: describe(failed.status.details) };
const retried = (await enrolOnce([{ product_id: "js-oat", content: image, source: "node example",
  request_id: requestId }])).results[0];
report.retry = { same_reference: retried.reference_id === added.results[0].reference_id, duplicate: retried.duplicate };

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

// 4. Errors a client can parse: the code, the field, and the standard google.rpc.Status trailer ...
try {
  await call(recognition, "Recognize", { images: [{ id: "x", content: image }], options: { top_k: 999 } });
  report.error = "no error";
} catch (err) {
  const status = statusOf(err);
  report.error = {
    code: grpc.status[err.code],
    field: err.metadata.get("skulens-error-field")[0],
    status_code: status?.code,
    details: describe(status?.details ?? []),
  };
}
// ... and per item: one bad image of a batch (a whole image, and a region outside the picture)
const batch = await call(recognition, "Recognize", { images: [
  { id: "good", content: image },
  { id: "broken", content: Buffer.from("not an image") },
  { id: "boxes", content: image, regions: [{ x: 0, y: 0, width: 32, height: 32 }, { x: 0, y: 0, width: 4096, height: 8 }] },
] });
const broken = batch.results[1].recognition.status;
const box = batch.results[2].regions[1].recognition.status;
report.item_errors = [
  { code: grpc.status[broken.code], field: broken.field, details: describe(broken.details) },
  { code: grpc.status[box.code], field: box.field, details: describe(box.details) },
];

// 5. Idempotent delete: a retry after a lost response is OK
await call(catalog, "DeleteProduct", { product_id: "js-oat" });
const again = await call(catalog, "DeleteProduct", { product_id: "js-oat", allow_missing: true });
report.delete_retry = { deleted_references: again.deleted_references };

console.log(JSON.stringify(report));
for (const c of [recognition, catalog, health]) c.close();
