/**
 * A Prometheus registry per service. Metric names follow `shoal_<service>_<thing>_<unit>`;
 * the process and Node.js defaults keep their standard names so stock dashboards work.
 */
import { collectDefaultMetrics, Registry } from 'prom-client';

export interface ServiceMetrics {
  readonly registry: Registry;
  /** `shoal_<service>_` — the prefix every service metric starts with. */
  readonly prefix: string;
}

export function createMetrics(service: string): ServiceMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  collectDefaultMetrics({ register: registry });
  return { registry, prefix: `shoal_${service}_` };
}
