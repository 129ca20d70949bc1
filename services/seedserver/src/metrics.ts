/** The seed server's Prometheus metrics, `shoal_seedserver_<thing>_<unit>`. */
import type { ServiceMetrics } from '@shoal/runtime';
import { Counter, Gauge } from 'prom-client';

export type SeedMetrics = ReturnType<typeof createSeedMetrics>;

export function createSeedMetrics({ registry, prefix }: ServiceMetrics) {
  const registers = [registry];
  return {
    seeds: new Counter({
      name: `${prefix}seeds_total`,
      help: 'Seed runs, by source (origin, store, none) and outcome (seeded, held, busy, failed)',
      labelNames: ['source', 'outcome'] as const,
      registers,
    }),
    inFlight: new Gauge({
      name: `${prefix}seeds_in_flight`,
      help: 'Blobs being seeded now',
      registers,
    }),
    ingestedBytes: new Counter({
      name: `${prefix}ingested_bytes_total`,
      help: 'Blob bytes read in, by source (origin, store)',
      labelNames: ['source'] as const,
      registers,
    }),
    storedBytes: new Counter({
      name: `${prefix}stored_bytes_total`,
      help: 'Blob bytes written to the object gateway',
      registers,
    }),
    servedBytes: new Counter({
      name: `${prefix}served_bytes_total`,
      help: 'Piece bytes served to agents',
      registers,
    }),
    pieceRequests: new Counter({
      name: `${prefix}piece_requests_total`,
      help: 'Piece requests, by result (served, rationed, missing, invalid)',
      labelNames: ['result'] as const,
      registers,
    }),
    preheatReports: new Counter({
      name: `${prefix}preheat_reports_total`,
      help: 'Preheat blobs reported to their jobs, by ok (true: held and stored)',
      labelNames: ['ok'] as const,
      registers,
    }),
    eventsConsumed: new Counter({
      name: `${prefix}events_consumed_total`,
      help: 'Valid events consumed, by type (seed-request)',
      labelNames: ['type'] as const,
      registers,
    }),
    requestsRejected: new Counter({
      name: `${prefix}seed_requests_rejected_total`,
      help: 'Seed requests dropped as invalid',
      registers,
    }),
    pieceAuthRefused: new Counter({
      name: `${prefix}piece_auth_refused_total`,
      help: 'Piece requests refused for their hand-out token, by reason (missing, malformed, bad-signature, expired, wrong-blob, wrong-peer)',
      labelNames: ['reason'] as const,
      registers,
    }),
  };
}
