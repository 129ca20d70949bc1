/** The agent's Prometheus metrics, `shoal_agent_<thing>_<unit>`. */
import type { ServiceMetrics } from '@shoal/runtime';
import { Counter, Gauge, Histogram } from 'prom-client';

export type AgentMetrics = ReturnType<typeof createAgentMetrics>;

/**
 * Upper bounds of `piece_fetch_seconds`, in s: from a small piece on loopback (milliseconds)
 * to a large one queued behind others on a slow link (tens of seconds). The shaped bench reads
 * the histogram at these bounds (`PIECE_SECONDS_BOUNDS` in bench/src/net/waves.ts): change
 * both together.
 */
const PIECE_SECONDS_BUCKETS = [
  0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
] as const;

export function createAgentMetrics({ registry, prefix }: ServiceMetrics) {
  const registers = [registry];
  return {
    requests: new Counter({
      name: `${prefix}mirror_requests_total`,
      help: 'Mirror requests answered, by kind (manifest, blob, other), method and status',
      labelNames: ['kind', 'method', 'status'] as const,
      registers,
    }),
    rejected: new Counter({
      name: `${prefix}mirror_rejected_total`,
      help: 'Mirror requests refused for bad input or an unmirrored registry, by OCI code',
      labelNames: ['code'] as const,
      registers,
    }),
    fetchedBytes: new Counter({
      name: `${prefix}fetched_bytes_total`,
      help: 'Blob bytes the agent got for its clients, by source: origin, peer, seed (received, each verified byte once) and cache (sent from a blob already cached)',
      labelNames: ['source'] as const,
      registers,
    }),
    servedBytes: new Counter({
      name: `${prefix}served_bytes_total`,
      help: 'Blob bytes sent to mirror clients, by where they were read (cache, download, origin: passed through uncached because the disk was full)',
      labelNames: ['from'] as const,
      registers,
    }),
    authzDecisions: new Counter({
      name: `${prefix}authz_decisions_total`,
      help: 'Authorization checks of content by digest, by result (allow, deny, unavailable; upstream: the registry redirected the check, so the content is read from the registry, not from what the node holds) and cache (hit: decided from cached registry answers; miss: the registry was asked)',
      labelNames: ['result', 'cache'] as const,
      registers,
    }),
    rateLimitHolds: new Counter({
      name: `${prefix}upstream_rate_limited_total`,
      help: 'Registry rate limits (429) met, by registry and outcome (answered: the registry answered 429 with a Retry-After and a hold started; held: a request answered 429 by the agent during that hold, without asking the registry)',
      labelNames: ['registry', 'outcome'] as const,
      registers,
    }),
    upstreamRequests: new Counter({
      name: `${prefix}upstream_requests_total`,
      help: 'Requests sent to upstream registries, by registry, kind and status (or error)',
      labelNames: ['registry', 'kind', 'status'] as const,
      registers,
    }),
    verificationFailures: new Counter({
      name: `${prefix}verification_failures_total`,
      help: 'Content that did not match its digest or size, by kind (manifest, blob; cached-manifest, cached-blob: content read back from the cache that no longer matched, dropped and fetched again)',
      labelNames: ['kind'] as const,
      registers,
    }),
    downloadsInFlight: new Gauge({
      name: `${prefix}downloads_in_flight`,
      help: 'Blob downloads in progress',
      registers,
    }),
    downloadSeconds: new Histogram({
      name: `${prefix}download_duration_seconds`,
      help: 'Time to download and verify a blob, by outcome',
      labelNames: ['outcome'] as const,
      buckets: [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600],
      registers,
    }),
    cacheBytes: new Gauge({
      name: `${prefix}cache_size_bytes`,
      help: 'Bytes of verified content in the cache',
      registers,
    }),
    cacheMaxBytes: new Gauge({
      name: `${prefix}cache_max_bytes`,
      help: 'The cache quota in bytes (SHOAL_AGENT_CACHE_MAX_BYTES)',
      registers,
    }),
    passThroughs: new Counter({
      name: `${prefix}cache_pass_throughs_total`,
      help: 'Blobs and manifests served uncached because the cache disk was full, by reason (low-free-space: below SHOAL_AGENT_CACHE_MIN_FREE_BYTES; write-failed: a write failed with ENOSPC or EDQUOT)',
      labelNames: ['reason'] as const,
      registers,
    }),
    cacheEvictions: new Counter({
      name: `${prefix}cache_evictions_total`,
      help: 'Cache entries evicted to stay under the quota',
      registers,
    }),
    eventsPublished: new Counter({
      name: `${prefix}events_published_total`,
      help: 'Control-plane events published, by type',
      labelNames: ['type'] as const,
      registers,
    }),
    eventsReceived: new Counter({
      name: `${prefix}events_received_total`,
      help: 'Control-plane events received, by type',
      labelNames: ['type'] as const,
      registers,
    }),
    pieceHashReads: new Counter({
      name: `${prefix}piece_hash_reads_total`,
      help: 'Piece-hash batches received, by how: stored (a direct get), live (the subject, while the seed hashes), consumer (a consumer per blob, where direct gets are not available)',
      labelNames: ['path'] as const,
      registers,
    }),
    streamsMadeAnew: new Counter({
      name: `${prefix}streams_made_anew_total`,
      help: 'Streams found made anew under a reader (deleted and declared again, or a NATS server back with an empty store: their sequence started over), which then read them from their first message, by reader',
      labelNames: ['reader'] as const,
      registers,
    }),
    blobChecks: new Counter({
      name: `${prefix}swarm_blob_checks_total`,
      help: "Swarm downloads checked at their end, by how: seed-record (every piece verified against the hashes the seed server's pieces-verified record binds: no whole-blob hash), digest (the agent hashed the blob itself)",
      labelNames: ['by'] as const,
      registers,
    }),
    blobHashedBytes: new Counter({
      name: `${prefix}swarm_blob_hashed_bytes_total`,
      help: "Bytes of swarm downloads fed to their whole-blob hash, from memory or read back from disk: little or none for a blob the seed server's signed record vouched for",
      registers,
    }),
    eventsRejected: new Counter({
      name: `${prefix}events_rejected_total`,
      help: 'Control-plane events dropped as invalid, by type',
      labelNames: ['type'] as const,
      registers,
    }),
    pieces: new Counter({
      name: `${prefix}pieces_total`,
      help: 'Pieces fetched, by source (peer, seed, origin) and result (ok, bad, failed, deferred)',
      labelNames: ['source', 'result'] as const,
      registers,
    }),
    pieceSeconds: new Histogram({
      name: `${prefix}piece_fetch_seconds`,
      help: 'Time from sending a piece request to the piece verified and written, for each piece kept, by source (peer, seed); a wait for the download rate budget before the request is not counted',
      labelNames: ['source'] as const,
      buckets: [...PIECE_SECONDS_BUCKETS],
      registers,
    }),
    silentSources: new Counter({
      name: `${prefix}piece_sources_silent_total`,
      help: 'Times a piece source (peer, seed) went silent while answering or accepted no connection in time (vanished: packets dropped, no refusal) and was left alone for a while, by source',
      labelNames: ['source'] as const,
      registers,
    }),
    pieceAuthRefused: new Counter({
      name: `${prefix}piece_auth_refused_total`,
      help: 'Piece requests from peers refused for their hand-out token or client certificate, by reason (missing, malformed, bad-signature, expired, wrong-blob, wrong-peer; client-certificate with mutual TLS)',
      labelNames: ['reason'] as const,
      registers,
    }),
    uploadsRefused: new Counter({
      name: `${prefix}uploads_refused_total`,
      help: 'Piece requests answered 429 for want of an upload slot, by reason (busy: SHOAL_AGENT_MAX_UPLOADS in use; peer-busy: that peer holds SHOAL_AGENT_MAX_UPLOADS_PER_PEER)',
      labelNames: ['reason'] as const,
      registers,
    }),
    uploadedBytes: new Counter({
      name: `${prefix}uploaded_bytes_total`,
      help: 'Piece bytes served to peers',
      registers,
    }),
    uploadsCut: new Counter({
      name: `${prefix}uploads_cut_total`,
      help: 'Pieces counted in uploaded_bytes_total cut off before the peer had all of them (it gave the request up, or the connection broke or timed out); each still counted in full there',
      registers,
    }),
    rateLimitWaits: new Counter({
      name: `${prefix}rate_limit_waits_total`,
      help: 'Times a transfer waited for the rate limit, by direction (upload, download, preheat)',
      labelNames: ['direction'] as const,
      registers,
    }),
    limitsFileRejected: new Counter({
      name: `${prefix}limits_file_rejected_total`,
      help: 'Versions of the limits file (SHOAL_AGENT_LIMITS_FILE) not applied, by reason (unreadable, invalid); the limits in force stay',
      labelNames: ['reason'] as const,
      registers,
    }),
    originResumes: new Counter({
      name: `${prefix}origin_resumes_total`,
      help: 'Origin blob transfers that broke off before their end and were asked again from the byte they stopped at (a range request)',
      registers,
    }),
    originSourceMoves: new Counter({
      name: `${prefix}origin_source_moves_total`,
      help: "Moves of an origin blob read to another client's credential at its own registry, from the byte the read stopped at, by reason (refused: the registry answered 401 or 403 to the credential reading, the first or one moved to, as when a token expires mid-transfer; failed: a source moved to failed otherwise, with no answer, a 5xx or another range)",
      labelNames: ['reason'] as const,
      registers,
    }),
    swarmFallbacks: new Counter({
      name: `${prefix}swarm_fallbacks_total`,
      help: 'Downloads that read the rest from the origin, by reason (stall: no piece bytes, counted at the rate floor, for SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS; seed-failed: the seed server gave the blob up and no peer holds what is missing; nats-down: the connection to NATS down for the stall timeout and no known source able to go on)',
      labelNames: ['reason'] as const,
      registers,
    }),
    swarmUnheard: new Counter({
      name: `${prefix}swarm_unheard_total`,
      help: 'Times a download became unheard, so that its piece requests tell the seed server, whose fan-out rationing then does not refuse it (shoal-unheard), by reason (publish: a have or want of this agent refused, NATS down for it, or one waiting for its acknowledgement past 1.5 s; unanswered-want: its want unanswered for 4 s)',
      labelNames: ['reason'] as const,
      registers,
    }),
    swarmJoined: new Gauge({
      name: `${prefix}swarm_joined`,
      help: 'Whether the agent has joined the swarm (1) or serves as a plain mirror while NATS is out of reach (0)',
      registers,
    }),
    natsConnected: new Gauge({
      name: `${prefix}nats_connected`,
      help: 'Whether the joined agent is connected to NATS now (1), or its connection is down and being made anew (0); a burst of origin reads with reason nats-down in swarm_fallbacks_total follows a long 0',
      registers,
    }),
    swarmJoinFailures: new Counter({
      name: `${prefix}swarm_join_failures_total`,
      help: 'Attempts to join the swarm (connect to NATS and JetStream) that failed',
      registers,
    }),
    swarmPeers: new Gauge({
      name: `${prefix}swarm_peers`,
      help: 'Peers known for the downloads in progress',
      registers,
    }),
    preheatBlobs: new Counter({
      name: `${prefix}preheat_blobs_total`,
      help: 'Blobs of node preheats, by result (cached: already here, pulled, failed)',
      labelNames: ['result'] as const,
      registers,
    }),
    cacheHits: new Counter({
      name: `${prefix}cache_requests_total`,
      help: 'Content requests by digest, by result (hit, miss)',
      labelNames: ['kind', 'result'] as const,
      registers,
    }),
    hostsFiles: new Gauge({
      name: `${prefix}hosts_files`,
      help: 'containerd hosts.toml files written by this agent and not yet removed',
      registers,
    }),
    hostsFilesSkipped: new Counter({
      name: `${prefix}hosts_files_skipped_total`,
      help: 'Registries whose existing hosts.toml was not written by a Shoal agent, so left alone',
      registers,
    }),
    hostsFileErrors: new Counter({
      name: `${prefix}hosts_file_errors_total`,
      help: 'hosts.toml files that could not be written or removed, by operation (write, remove)',
      labelNames: ['operation'] as const,
      registers,
    }),
  };
}
