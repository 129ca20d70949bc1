/**
 * Configuration of the agent's swarm side. The swarm is on when `SHOAL_NATS_URL` is set;
 * without it the agent is a plain verifying mirror of the origin.
 */
import { hostname } from 'node:os';

import { peerId } from '@shoal/proto';
import {
  announcedUrlProblems,
  envBool,
  envInt,
  envListen,
  envPieceAuth,
  natsLivenessFields,
  natsTlsConfig,
} from '@shoal/runtime';
import { z } from 'zod';

const defaultId =
  hostname()
    .toLowerCase()
    .replace(/[^a-z0-9_-]/g, '-')
    .slice(0, 64) || 'agent';

/** Agents' NATS ping interval (SHOAL_NATS_PING_INTERVAL_MS), in ms: a fleet pings less often. */
const AGENT_NATS_PING_INTERVAL_MS = 20_000;
/** Agents' reconnect jitter (SHOAL_NATS_RECONNECT_JITTER_MS), in ms. */
const AGENT_NATS_RECONNECT_JITTER_MS = 3000;

export const swarmConfig = z.object({
  /** NATS server URLs, comma-separated; unset: no swarm, every miss goes to the origin. */
  SHOAL_NATS_URL: z.string().min(1).optional(),
  /** Credentials file for the agent's NATS user. */
  SHOAL_NATS_CREDS_FILE: z.string().optional(),
  ...natsTlsConfig.shape,
  // A fleet: pings less often than the services' 10 s, reconnects spread over 3 s.
  ...natsLivenessFields(AGENT_NATS_PING_INTERVAL_MS, AGENT_NATS_RECONNECT_JITTER_MS),
  /**
   * The agent's peer id (default: the host name, lower-cased, other characters than
   * `[a-z0-9_-]` as `-`). In the DaemonSet (node network) that is the node's host name, which
   * may differ from its Kubernetes node name.
   */
  SHOAL_AGENT_PEER_ID: peerId.default(defaultId),
  /** Where pieces are served to peers, with /healthz, /readyz and /metrics (default `0.0.0.0:65002`). */
  SHOAL_AGENT_PEER_LISTEN: envListen('0.0.0.0:65002'),
  /**
   * The URL peers fetch pieces from (default `http://<hostname>:<port>`, `https://` with
   * SHOAL_AGENT_PEER_TLS_CERT_FILE).
   */
  SHOAL_AGENT_PEER_URL: z.url({ protocol: /^https?$/ }).optional(),
  /** PEM certificate chain: the peer port serves HTTPS (with SHOAL_AGENT_PEER_TLS_KEY_FILE). */
  SHOAL_AGENT_PEER_TLS_CERT_FILE: z.string().min(1).optional(),
  /** PEM private key of SHOAL_AGENT_PEER_TLS_CERT_FILE. */
  SHOAL_AGENT_PEER_TLS_KEY_FILE: z.string().min(1).optional(),
  /**
   * PEM CA bundle: pieces only for peers showing a client certificate of this CA (mutual
   * TLS), besides the hand-out token. Probes and /metrics need none.
   */
  SHOAL_AGENT_PEER_TLS_CLIENT_CA_FILE: z.string().min(1).optional(),
  /** PEM CA bundle that `https://` peers' and seed servers' certificates must chain to (default: the system's). */
  SHOAL_AGENT_PIECE_TLS_CA_FILE: z.string().min(1).optional(),
  /** PEM client certificate shown to `https://` piece servers that verify clients (with SHOAL_AGENT_PIECE_TLS_KEY_FILE). */
  SHOAL_AGENT_PIECE_TLS_CERT_FILE: z.string().min(1).optional(),
  /** PEM private key of SHOAL_AGENT_PIECE_TLS_CERT_FILE. */
  SHOAL_AGENT_PIECE_TLS_KEY_FILE: z.string().min(1).optional(),
  /**
   * The name every `https://` piece server's certificate must carry, checked instead of the
   * URL's host (and sent as SNI): for agents that share one certificate and are announced by
   * node address. Unset: the URL's host name or address.
   */
  SHOAL_AGENT_PIECE_TLS_SERVER_NAME: z.string().min(1).max(253).optional(),
  /** Topology zone; hand-outs prefer peers in the same zone. */
  SHOAL_AGENT_ZONE: z.string().max(63).optional(),
  /** `mixed` (download and upload, default), `seeder` (the same; for nodes meant to upload), `leecher` (never uploads). */
  SHOAL_AGENT_MODE: z.enum(['mixed', 'seeder', 'leecher']).default('mixed'),
  /** Upload limit in bytes/s for pieces served to peers; 0: none. */
  SHOAL_AGENT_UPLOAD_RATE_BYTES: envInt(0),
  /** Download limit in bytes/s for pieces fetched from the swarm; 0: none. */
  SHOAL_AGENT_DOWNLOAD_RATE_BYTES: envInt(0),
  /**
   * A JSON file with `uploadRateBytes` / `downloadRateBytes`, read again when it changes, so
   * limits change without a redeploy (e.g. a mounted ConfigMap).
   */
  SHOAL_AGENT_LIMITS_FILE: z.string().min(1).optional(),
  /**
   * Pieces served to peers at once (default 16); past it peers get 429 and try another holder.
   * Each holds one piece in memory (up to 16 MiB) until it is sent.
   */
  SHOAL_AGENT_MAX_UPLOADS: envInt(16).refine((n) => n >= 1, 'must be at least 1'),
  /**
   * Pieces served at once to one peer (default 8), so that one greedy or stalled peer cannot
   * take every upload slot. A peer is known by its verified hand-out token's peer id, or its
   * address when piece authentication is off.
   */
  SHOAL_AGENT_MAX_UPLOADS_PER_PEER: envInt(8).refine((n) => n >= 1, 'must be at least 1'),
  /**
   * Longest piece answer on the peer port, in ms, from taking its upload slot to its last byte
   * (default 60 000); past it the connection is closed, so that a peer that stopped reading
   * gives its slot back.
   */
  SHOAL_AGENT_UPLOAD_TIMEOUT_MS: envInt(60_000).refine((n) => n >= 1, 'must be at least 1'),
  /**
   * Pieces fetched at once per blob (default 8), and the most to one peer: a peer starts at 4
   * and gets more only while they make it faster.
   */
  SHOAL_AGENT_PIECE_CONCURRENCY: envInt(8),
  /**
   * Longest a piece response may stay silent, in ms (default 15 000; a silence is noticed
   * within a quarter more); also the grace before the rate floor applies. There is no fixed
   * time per piece: on a slow link a piece takes what the link needs.
   */
  SHOAL_AGENT_PIECE_IDLE_TIMEOUT_MS: envInt(15_000).refine((n) => n >= 1, 'must be at least 1'),
  /**
   * Longest a new connection to a peer or seed server may take to connect, in ms (default
   * 3 000): a host that vanished (powered off, cut off by a partition or a firewall; packets
   * dropped, no refusal) answers no SYN, and is then left alone for a while by every download.
   */
  SHOAL_AGENT_PIECE_CONNECT_TIMEOUT_MS: envInt(3_000).refine((n) => n >= 1, 'must be at least 1'),
  /**
   * Shortest silence of a peer or seed server that is answering piece requests, in ms
   * (default 3 000): once no byte came on any of its connections for this long, or for 10
   * times its own recent gap between reads when that is longer (a slow, shared link), every
   * request to it is given up and the pieces asked elsewhere, and it is left alone for a
   * while by every download. Requests still waiting for their answer's head (a source's
   * upload budget may hold it back) are left to SHOAL_AGENT_PIECE_IDLE_TIMEOUT_MS. 0: off.
   */
  SHOAL_AGENT_PIECE_SILENCE_MIN_MS: envInt(3_000),
  /**
   * Slowest average rate of a piece response after the grace, in bytes/s (default 16 384);
   * below it the request is given up and the piece asked elsewhere. 0: no floor.
   */
  SHOAL_AGENT_PIECE_MIN_RATE_BYTES: envInt(16 * 1024),
  /**
   * Without progress from the swarm for this long, missing pieces come from the origin, in ms
   * (default 10 000). Progress is piece bytes received, not only a whole piece: on a slow
   * link a piece may take longer than this and still be moving. Bytes count at most at
   * SHOAL_AGENT_PIECE_MIN_RATE_BYTES (each byte holds the stall off 1/floor s), so a peer that
   * trickles cannot hold a download off the origin.
   */
  SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS: envInt(10_000),
  /**
   * Shortest gap between two wants of a download, in ms (default 500): a download asks when
   * it is starved (no known holder of a missing piece, or no piece for 4 times this), then
   * after 2, 4 … times this while it stays so; after 16 times this (at most 30 s) when the
   * tracker left a have of it unanswered; after 32 times this (at most 60 s) while the
   * tracker owes it a pushed hand-out (it named no holder).
   */
  SHOAL_AGENT_WANT_INTERVAL_MS: envInt(500),
  /**
   * How often batched piece-have announcements are sent, in ms (default 200); a download
   * announces as its held pieces double (1, 2, 4 …), then every sixty-fourth of the blob, with
   * each piece got from a seed server, and once complete.
   */
  SHOAL_AGENT_HAVE_INTERVAL_MS: envInt(200),
  /**
   * The tracker's Ed25519 public keys (PEM, one or more: during a key rotation, the old and
   * the new), which sign the hand-out tokens peers must present for pieces. Required for an
   * agent that serves pieces, unless `SHOAL_AGENT_PIECE_AUTH=off`.
   */
  SHOAL_AGENT_HANDOUT_PUBLIC_KEYS_FILE: z.string().min(1).optional(),
  /** `on` (default): pieces only for requests with a valid hand-out token; `off`: for anyone. */
  SHOAL_AGENT_PIECE_AUTH: envPieceAuth,
  /**
   * The seed servers' Ed25519 record public keys (PEM, one or more: during a rotation, the old
   * and the new). With them, a swarm download whose every piece verified against the piece
   * hashes a signed `pieces-verified` record binds skips its own whole-blob hash (about a sixth
   * of the agent's CPU per byte); a record no key signed is ignored. Unset (default): every
   * blob is hashed here.
   */
  SHOAL_AGENT_SEED_RECORD_PUBLIC_KEYS_FILE: z.string().min(1).optional(),
  /** Fault injection for tests: serve corrupted pieces. Never set it in production. */
  SHOAL_AGENT_FAULT_CORRUPT_PIECES: envBool(false),
});

export type SwarmConfig = z.infer<typeof swarmConfig>;

/** The cross-variable problems of the swarm configuration, as `NAME: reason`. */
export function swarmConfigProblems(env: Record<string, string | undefined>): string[] {
  const problems: string[] = [];
  const servesPieces = (env.SHOAL_NATS_URL ?? '') !== '' && env.SHOAL_AGENT_MODE !== 'leecher';
  if (
    servesPieces &&
    env.SHOAL_AGENT_PIECE_AUTH !== 'off' &&
    (env.SHOAL_AGENT_HANDOUT_PUBLIC_KEYS_FILE ?? '') === ''
  ) {
    problems.push(
      "SHOAL_AGENT_HANDOUT_PUBLIC_KEYS_FILE: required to check peers' hand-out tokens (the tracker's public key), unless SHOAL_AGENT_PIECE_AUTH=off",
    );
  }
  // Peers speak what the announced URL says: it must match what the peer port serves.
  problems.push(
    ...announcedUrlProblems(env, {
      url: 'SHOAL_AGENT_PEER_URL',
      cert: 'SHOAL_AGENT_PEER_TLS_CERT_FILE',
      key: 'SHOAL_AGENT_PEER_TLS_KEY_FILE',
    }),
  );
  if (
    ((env.SHOAL_AGENT_PIECE_TLS_CERT_FILE ?? '') === '') !==
    ((env.SHOAL_AGENT_PIECE_TLS_KEY_FILE ?? '') === '')
  ) {
    problems.push(
      'SHOAL_AGENT_PIECE_TLS_CERT_FILE and SHOAL_AGENT_PIECE_TLS_KEY_FILE: give both or neither',
    );
  }
  return problems;
}
