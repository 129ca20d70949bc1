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

/**
 * How often the event-loop lag is sampled, in ms (`nodejs_eventloop_lag_*`). prom-client's
 * default, 10 ms, wakes the loop 100 times a second in every process, busy or idle: about
 * 8-10 ms of CPU a second (1% of a core) on this project's bench machine, two thirds of what
 * an idle agent cost (bench/README.md). Ten samples a second still show a loop that stalls.
 */
export const EVENT_LOOP_SAMPLE_MS = 100;

export function createMetrics(service: string): ServiceMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
  return { registry, prefix: `shoal_${service}_` };
}
