/** The watcher's Prometheus metrics, `shoal_watcher_<thing>_<unit>`. */
import type { ServiceMetrics } from '@shoal/runtime';
import { Counter, Gauge } from 'prom-client';

export type WatcherMetrics = ReturnType<typeof createWatcherMetrics>;

export function createWatcherMetrics({ registry, prefix }: ServiceMetrics) {
  const registers = [registry];
  return {
    webhooks: new Counter({
      name: `${prefix}webhooks_total`,
      help: 'Webhook deliveries, by format and outcome (accepted, ignored, rejected)',
      labelNames: ['format', 'outcome'] as const,
      registers,
    }),
    webhooksRejected: new Counter({
      name: `${prefix}webhooks_rejected_total`,
      help: 'Webhook deliveries refused, and pushes in them ignored, by reason (unauthorized, too-large, malformed, invalid, unknown-registry, unknown-format)',
      labelNames: ['reason'] as const,
      registers,
    }),
    webhookEvents: new Counter({
      name: `${prefix}webhook_events_total`,
      help: 'Events inside webhook deliveries, by result (preheat, ignored)',
      labelNames: ['result'] as const,
      registers,
    }),
    commands: new Counter({
      name: `${prefix}preheat_commands_total`,
      help: 'Preheat jobs queued, by origin (webhook, schedule, api)',
      labelNames: ['origin'] as const,
      registers,
    }),
    duplicates: new Counter({
      name: `${prefix}preheat_duplicates_total`,
      help: 'Preheat requests for a job that already exists, by origin; no work is repeated',
      labelNames: ['origin'] as const,
      registers,
    }),
    jobs: new Counter({
      name: `${prefix}preheat_jobs_total`,
      help: 'Preheat jobs this replica finished, by state (done, failed)',
      labelNames: ['state'] as const,
      registers,
    }),
    jobsRunning: new Gauge({
      name: `${prefix}preheat_jobs_running`,
      help: 'Preheat jobs running on this replica now',
      registers,
    }),
    reports: new Counter({
      name: `${prefix}preheat_reports_total`,
      help: 'Blob reports received from seeds and agents, by role and ok',
      labelNames: ['role', 'ok'] as const,
      registers,
    }),
    reportReaderReopens: new Counter({
      name: `${prefix}preheat_report_reader_reopens_total`,
      help: 'Times a preheat job read its reports again from the start of the stream because its consumer ended (the stream or the consumer gone: deleted and declared again, or NATS back with an empty store)',
      registers,
    }),
    eventsRejected: new Counter({
      name: `${prefix}events_rejected_total`,
      help: 'Invalid messages terminated, by type',
      labelNames: ['type'] as const,
      registers,
    }),
    registryRefusals: new Counter({
      name: `${prefix}registry_refusals_total`,
      help: 'Manifest reads the registry refused (401, 403), by registry and status: credentials missing or refused (SHOAL_WATCHER_DOCKER_CONFIG), or a token realm not trusted (SHOAL_WATCHER_TRUSTED_REALMS)',
      labelNames: ['registry', 'status'] as const,
      registers,
    }),
    scheduleLeader: new Gauge({
      name: `${prefix}schedule_leader`,
      help: '1 while this replica holds the schedule lock',
      registers,
    }),
    scheduleChecks: new Counter({
      name: `${prefix}schedule_checks_total`,
      help: 'Scheduled images checked for a new digest, by result (queued, unchanged, failed)',
      labelNames: ['result'] as const,
      registers,
    }),
    agentsBucketFailures: new Counter({
      name: `${prefix}agents_bucket_failures_total`,
      help: 'Failed declarations of the agents presence bucket (retried in the background)',
      registers,
    }),
  };
}
