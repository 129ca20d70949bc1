/** The seed server's Prometheus metrics, `shoal_seedserver_<thing>_<unit>`. */
import type { ServiceMetrics } from '@shoal/runtime';
import { Counter, Gauge } from 'prom-client';

export type SeedMetrics = ReturnType<typeof createSeedMetrics>;

export function createSeedMetrics({ registry, prefix }: ServiceMetrics) {
  const registers = [registry];
  return {
    seeds: new Counter({
      name: `${prefix}seeds_total`,
      help: 'Seed runs, by source (origin, store, none), outcome (seeded, held, busy, failed) and, for a failed one, reason (disk-full, origin, verification, other)',
      labelNames: ['source', 'outcome', 'reason'] as const,
      registers,
    }),
    inFlight: new Gauge({
      name: `${prefix}seeds_in_flight`,
      help: 'Blobs being seeded now',
      registers,
    }),
    originRateLimited: new Counter({
      name: `${prefix}origin_rate_limited_total`,
      help: 'Registry rate limits (429) met by origin reads, by registry and outcome (answered: a 429 with Retry-After started a hold; held: a seed failed at once during that hold, without asking the registry)',
      labelNames: ['registry', 'outcome'] as const,
      registers,
    }),
    intakeNotices: new Counter({
      name: `${prefix}intake_notices_total`,
      help: 'Intake notices sent to the agents following a blob so that they stay in the swarm, every SHOAL_SEED_INTAKE_NOTICE_MS, by what the seed was doing (while: waiting, no byte of the blob yet, its source slow to answer, or no byte since a transfer broke off and was asked again; receiving, bytes kept coming while no piece landed since the last look, a slow origin)',
      labelNames: ['while'] as const,
      registers,
    }),
    originResumes: new Counter({
      name: `${prefix}origin_resumes_total`,
      help: 'Origin blob transfers that broke off before their end and were asked again from the byte they stopped at (a range request)',
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
    piecesCut: new Counter({
      name: `${prefix}pieces_cut_total`,
      help: 'Pieces counted in served_bytes_total cut off before the agent had all of them (it gave the request up, or the connection broke or timed out); each still counted in full there',
      registers,
    }),
    pieceRequests: new Counter({
      name: `${prefix}piece_requests_total`,
      help: 'Piece requests, by result (served, rationed, busy, missing, invalid, aborted)',
      labelNames: ['result'] as const,
      registers,
    }),
    rationExempt: new Counter({
      name: `${prefix}ration_exemptions_total`,
      help: 'Pieces sent although the fan-out rationing had counted its copies of them, because those copies went where the asker cannot get the piece from, by reason: asked-again (to the asker itself: it was restarted, or its request failed on its side), not-from (to agents the asker cannot get it from: it could not connect to them, they went silent, or its request to them for the piece is late), unheard (the asker said the swarm does not hear it now: its haves or wants refused or unacknowledged, NATS down for it, or its want unanswered, so it could not learn who got the piece), starved (the download of the asker had no piece for a while with every request late, and the copies went out before that)',
      labelNames: ['reason'] as const,
      registers,
    }),
    uploadsInFlight: new Gauge({
      name: `${prefix}uploads_in_flight`,
      help: 'Piece requests being answered now (capped by SHOAL_SEED_MAX_UPLOADS), those waiting their turn to send included',
      registers,
    }),
    uploadsWaiting: new Gauge({
      name: `${prefix}uploads_waiting`,
      help: 'Piece requests waiting their turn to send (SHOAL_SEED_SENDS are sent at once)',
      registers,
    }),
    natsConnected: new Gauge({
      name: `${prefix}nats_connected`,
      help: 'Whether the seed server is connected to NATS now (1), or its connection is down and being made anew (0); while 0 it serves every piece asked for, without rationing',
      registers,
    }),
    cacheBytes: new Gauge({
      name: `${prefix}cache_bytes`,
      help: 'Bytes of the blobs in the local cache, those being seeded at their full size',
      registers,
    }),
    cacheBlobs: new Gauge({
      name: `${prefix}cache_blobs`,
      help: 'Blobs in the local cache, complete or being seeded',
      registers,
    }),
    evictedBytes: new Counter({
      name: `${prefix}cache_evicted_bytes_total`,
      help: 'Bytes of blobs evicted from the local cache (the object gateway keeps them)',
      registers,
    }),
    noRoom: new Counter({
      name: `${prefix}cache_no_room_total`,
      help: 'Blobs that did not fit on the cache disk (with SHOAL_SEED_CACHE_MIN_FREE_BYTES to spare) even with every idle blob evicted: not seeded, agents told at once',
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
    gatewayFailures: new Counter({
      name: `${prefix}gateway_failures_total`,
      help: 'Object gateway requests of a seed that failed (down, 5xx): the blob read from the origin instead, or its copy there left for a later request',
      registers,
    }),
    gatewayReadsContinued: new Counter({
      name: `${prefix}gateway_reads_continued_total`,
      help: "Object gateway reads of a blob that broke off (or ended short, or sent nothing for SHOAL_SEED_GATEWAY_IDLE_TIMEOUT_MS) before the blob's end: the rest is asked of the origin from the byte the gateway stopped at (an answer that ended short also has the gateway's copy written again)",
      registers,
    }),
    gatewayBreakerTrips: new Counter({
      name: `${prefix}gateway_breaker_trips_total`,
      help: 'Times the object gateway breaker opened: SHOAL_SEED_GATEWAY_BREAKER_FAILURES gateway requests failed in a row, and the gateway was left alone for SHOAL_SEED_GATEWAY_BREAK_MS',
      registers,
    }),
    gatewayUploads: new Gauge({
      name: `${prefix}gateway_uploads`,
      help: "Copies of blobs seeded from the origin being streamed to an S3 object gateway now, each at the gateway's pace (at most SHOAL_SEED_CONCURRENCY; a blob seeded while they are all busy has its copy made afterwards from the local file, one at a time)",
      registers,
    }),
    gatewayBreakerOpen: new Gauge({
      name: `${prefix}gateway_breaker_open`,
      help: '1 while the object gateway breaker is open (the gateway left alone, seeds read the origin), else 0',
      registers,
    }),
    gatewayDeleted: new Counter({
      name: `${prefix}gateway_deleted_blobs_total`,
      help: 'Blobs deleted from the object gateway by its retention (SHOAL_SEED_GATEWAY_MAX_AGE_MS, SHOAL_SEED_GATEWAY_MAX_BYTES)',
      registers,
    }),
    gatewayDeletedBytes: new Counter({
      name: `${prefix}gateway_deleted_bytes_total`,
      help: 'Bytes of the blobs deleted from the object gateway by its retention',
      registers,
    }),
    gatewayBytes: new Gauge({
      name: `${prefix}gateway_bytes`,
      help: 'Bytes of blobs in the object gateway after the last retention sweep this seed server ran',
      registers,
    }),
    gatewayBlobs: new Gauge({
      name: `${prefix}gateway_blobs`,
      help: 'Blobs in the object gateway after the last retention sweep this seed server ran',
      registers,
    }),
    gatewaySweepFailures: new Counter({
      name: `${prefix}gateway_sweep_failures_total`,
      help: 'Object gateway retention sweeps that failed (listing or deleting)',
      registers,
    }),
    requestsRejected: new Counter({
      name: `${prefix}seed_requests_rejected_total`,
      help: 'Seed requests dropped as invalid',
      registers,
    }),
    pieceAuthRefused: new Counter({
      name: `${prefix}piece_auth_refused_total`,
      help: 'Piece requests refused for their hand-out token or client certificate, by reason (missing, malformed, bad-signature, expired, wrong-blob, wrong-peer; client-certificate with mutual TLS)',
      labelNames: ['reason'] as const,
      registers,
    }),
  };
}
