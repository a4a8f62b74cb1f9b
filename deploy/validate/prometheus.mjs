// Validates PodMonitor and PrometheusRule objects with @kubernetes-models/prometheus-operator
// (the Prometheus Operator's own CRD schemas, compiled to validators).
// Input: a JSON array of objects on stdin. Output: a JSON array of {index, kind, name, error} (error null when valid).
import { readFileSync } from "node:fs";
import * as v1 from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = objects.map((object, index) => {
  const name = object?.metadata?.name ?? null;
  if (object?.apiVersion !== "monitoring.coreos.com/v1" || typeof v1[object?.kind] !== "function") {
    return { index, kind: object?.kind ?? null, name, error: `no validator for ${object?.apiVersion} ${object?.kind}` };
  }
  try {
    new v1[object.kind](object).validate();
    return { index, kind: object.kind, name, error: null };
  } catch (error) {
    return { index, kind: object.kind, name, error: String(error?.message ?? error) };
  }
});
process.stdout.write(JSON.stringify(results));
