/** The seed server's configuration: the components' pieces, checked together. */
import { hostname } from 'node:os';

import { blobStoreConfig, blobStoreConfigProblems } from '@shoal/blobstore';
import { peerId } from '@shoal/proto';
import { registriesList, trustedRealmsList } from '@shoal/registry';
import {
  announcedUrlProblems,
  envInt,
  envListen,
  envLogLevel,
  envPieceAuth,
  httpLimitsConfig,
  loadConfig,
} from '@shoal/runtime';
import { natsConfig } from '@shoal/runtime/nats';
import { z } from 'zod';

/** A peer id made from the host name: the seed's identity in the swarm. */
const defaultId = `seed-${hostname()
  .toLowerCase()
  .replace(/[^a-z0-9_-]/g, '-')}`.slice(0, 64);

export const seedFields = z.object({
  ...natsConfig.shape,
  ...httpLimitsConfig.shape,
  ...blobStoreConfig.shape,
  /** Where pieces, /healthz, /readyz and /metrics are served (default `0.0.0.0:65010`). */
  SHOAL_SEED_LISTEN: envListen('0.0.0.0:65010'),
  /**
   * The URL agents fetch pieces from (default `http://<hostname>:<port>`, `https://` with
   * SHOAL_SEED_TLS_CERT_FILE; the listen address instead of the host name when it is not
   * 0.0.0.0 or ::, in brackets for IPv6). A default that is no valid URL stops the start.
   */
  SHOAL_SEED_URL: z.url({ protocol: /^https?$/ }).optional(),
  /** PEM certificate chain: pieces and ops are served over HTTPS (with SHOAL_SEED_TLS_KEY_FILE). */
  SHOAL_SEED_TLS_CERT_FILE: z.string().min(1).optional(),
  /** PEM private key of SHOAL_SEED_TLS_CERT_FILE. */
  SHOAL_SEED_TLS_KEY_FILE: z.string().min(1).optional(),
  /**
   * PEM CA bundle: pieces only for agents showing a client certificate of this CA (mutual
   * TLS), besides the hand-out token. Probes and /metrics need none.
   */
  SHOAL_SEED_TLS_CLIENT_CA_FILE: z.string().min(1).optional(),
  /** The seed's peer id in the swarm (default `seed-<hostname>`). */
  SHOAL_SEED_ID: peerId.default(defaultId),
  /** Registries the seed may fetch from, as `host` or `host=url`, comma-separated. */
  SHOAL_SEED_REGISTRIES: registriesList,
  /** docker config JSON with registry credentials (a `dockerconfigjson` Secret); none: anonymous. */
  SHOAL_SEED_DOCKER_CONFIG: z.string().optional(),
  /**
   * Token realms (URLs, comma-separated) the credentials of SHOAL_SEED_DOCKER_CONFIG may be
   * sent to besides an HTTPS realm on the registry's own host (GitLab, for one, puts its
   * realm on another host); none by default. `https://` only, or `http://` on loopback:
   * Basic credentials must not cross the network in cleartext.
   */
  SHOAL_SEED_TRUSTED_REALMS: trustedRealmsList,
  /** Local directory for blobs being seeded and recently seeded (default `/var/lib/shoal/seed`). */
  SHOAL_SEED_CACHE_DIR: z.string().min(1).default('/var/lib/shoal/seed'),
  /**
   * Quota of the local cache, in bytes (default 100 GiB). Past it the least recently used
   * blobs that the object gateway keeps are evicted (never one being served or seeded); a
   * later request brings one back from the gateway.
   */
  SHOAL_SEED_CACHE_MAX_BYTES: envInt(100 * 1024 ** 3),
  /**
   * Free space kept on the cache's disk, in bytes (default 1 GiB). Before a blob is seeded
   * (and once more if a write fails with ENOSPC) idle blobs the object gateway keeps are
   * evicted until it fits with this much to spare; when it cannot fit, the seed fails at once
   * and tells the agents, which read from the origin or their peers. 0: only the blob's size.
   */
  SHOAL_SEED_CACHE_MIN_FREE_BYTES: envInt(1024 ** 3),
  /**
   * Object gateway retention: blobs stored longer ago than this are deleted from the gateway,
   * in ms (default 30 days; 0: kept whatever their age). A blob pulled after it expired is
   * fetched from its registry once more.
   */
  SHOAL_SEED_GATEWAY_MAX_AGE_MS: envInt(30 * 24 * 3600 * 1000),
  /** Object gateway retention: past this many bytes the oldest blobs go (default 0: no limit). */
  SHOAL_SEED_GATEWAY_MAX_BYTES: envInt(0),
  /**
   * Object gateway breaker: after this many gateway reads, or this many writes, in a row failed
   * (down, 5xx, S3 SlowDown), the gateway is left alone for SHOAL_SEED_GATEWAY_BREAK_MS
   * (default 3; a success starts the count of its own kind again). A 403, a 507 or a full,
   * read-only or forbidden filesystem opens it at once; after a break the first failure
   * reopens it. Fewer failures only retry later (2 s, doubling per blob up to the break time).
   */
  SHOAL_SEED_GATEWAY_BREAKER_FAILURES: envInt(3).refine((n) => n >= 1, 'must be at least 1'),
  /**
   * How long an open gateway breaker leaves the gateway alone, in ms (default 30 000): seeds
   * read the origin meanwhile, and the gateway copies they owe are made after it.
   */
  SHOAL_SEED_GATEWAY_BREAK_MS: envInt(30_000).refine((n) => n >= 1000, 'must be at least 1000'),
  /**
   * Longest wait on the object gateway during a seed's intake, in ms (default 5 000). A read
   * whose answer or next bytes do not come within it is given up (a gateway failure, toward
   * its breaker) and the rest of the blob is read from the origin, from the byte the gateway
   * stopped at (not while the registry holds the seed server off after a 429: the gateway is
   * then the only source). Keep it below the agents' stall timeout
   * (SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS, 10 000): meanwhile the agents hear nothing of the
   * blob from the seed, and an agent that hears nothing for its stall timeout reads the blob
   * from the registry itself. Uploads are never waited on: a seed from the origin streams its
   * copy to the gateway from the local file as the pieces land, at the gateway's pace, and
   * finishes it in the background; they keep the S3 client's own timeouts (30 s idle), as do
   * the retention sweeps. Only a failed seed's upload is waited on this long, for its abort.
   */
  SHOAL_SEED_GATEWAY_IDLE_TIMEOUT_MS: envInt(5_000).refine((n) => n >= 100, 'must be at least 100'),
  /** Time between retention sweeps of the object gateway, in ms (default 1 h). */
  SHOAL_SEED_GATEWAY_SWEEP_INTERVAL_MS: envInt(3_600_000).refine(
    (n) => n >= 1000,
    'must be at least 1000',
  ),
  /**
   * Piece requests taken at once (default 32), those waiting their turn to be sent
   * included; past it agents get 429 and try a peer.
   */
  SHOAL_SEED_MAX_UPLOADS: envInt(32).refine((n) => n >= 1, 'must be at least 1'),
  /**
   * Piece answers sent at once (default 8), each holding its piece in memory (up to 16 MiB)
   * until it is sent; the other requests, up to SHOAL_SEED_MAX_UPLOADS, wait their turn
   * (the piece with the most refusals while it waited first, then first come; one that has
   * waited 5 s goes first), holding no memory, for 10 s at most (then 429). Each piece then arrives soon and
   * its agent passes it on, rather than every piece arriving late at once. An answer still
   * going after 10 s gives its turn up (a slow receiver does not hold the line). Eight, not
   * four: the agents' links are busy with their peers too, so four answers left a fifth of the
   * seed's link idle (12 nodes at 25 Mbit/s: 0.79 of it used while sending, 0.84–0.90 with
   * eight, the seed still sending 1.03–1.07× the image).
   */
  SHOAL_SEED_SENDS: envInt(8).refine((n) => n >= 1, 'must be at least 1'),
  /**
   * Longest piece response, from its request (its wait for a turn included) to the last
   * byte, in ms (default 60 000).
   */
  SHOAL_SEED_UPLOAD_TIMEOUT_MS: envInt(60_000).refine((n) => n >= 1, 'must be at least 1'),
  /** Upload limit for pieces served to agents, in bytes/s; 0: none (default). */
  SHOAL_SEED_UPLOAD_RATE_BYTES: envInt(0),
  /**
   * Copies of a piece sent at once (default 1; 0: no limit). A copy counts while it is being
   * sent and for the fanout window after; past the limit agents are told to get the piece
   * from a peer that already has it (429), so the seed's upload goes to pieces the swarm does
   * not have yet, as BitTorrent's super-seeding does. Copies are counted per local copy of a
   * blob: for one evicted and seeded again (nobody holds it whole), its first copy of each
   * piece is not held back by the copies sent before. While the seed server's NATS connection
   * is down nothing is refused (agents cannot learn who got a piece); the copies sent
   * meanwhile still count.
   */
  SHOAL_SEED_PIECE_FANOUT: envInt(1),
  /**
   * How long a copy sent whole keeps counting, in ms (default 10 000): time for the agent
   * that got it to announce it and pass it on, while the others ask it too. With 12 agents on
   * 25 Mbit/s links one agent took 5–10 s to pass a piece on, and with 5 s the seed sent
   * the image's pieces again (1.12× the image, against 1.04× with 10 s).
   */
  SHOAL_SEED_FANOUT_WINDOW_MS: envInt(10_000),
  /**
   * How long a copy still being sent counts at most, in ms (default 20 000): past it the
   * agent getting it is too slow for the others to wait on.
   */
  SHOAL_SEED_FANOUT_HOLD_MS: envInt(20_000),
  /**
   * How often a blob coming in is looked at, in ms (default 2 000): before its first byte, when
   * bytes came and no piece landed since the last look, or while the seed asks again for the
   * rest of a transfer that broke off, the agents following it get an intake notice (core NATS, `shoal.intake.v1.<blob>`) and count the seed's wait, or those
   * bytes, as the swarm moving, so an origin slow to answer or to send does not send them to it
   * after their stall timeout. Keep it well under the agents'
   * `SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS` (10 000).
   */
  SHOAL_SEED_INTAKE_NOTICE_MS: envInt(2_000).refine((n) => n >= 50, 'must be at least 50'),
  /**
   * The tracker's Ed25519 public keys (PEM, one or more: during a key rotation, the old and
   * the new), which sign the hand-out tokens agents must present for pieces. Required unless
   * `SHOAL_SEED_PIECE_AUTH=off`.
   */
  SHOAL_SEED_HANDOUT_PUBLIC_KEYS_FILE: z.string().min(1).optional(),
  /** `on` (default): pieces only for requests with a valid hand-out token; `off`: for anyone. */
  SHOAL_SEED_PIECE_AUTH: envPieceAuth,
  /**
   * The seed server's Ed25519 record key (PKCS#8 PEM; `shoal-handout-keygen --name seed-record`
   * makes one). With it, every blob that matched its digest gets a signed `pieces-verified`
   * record, and agents holding its public key (`SHOAL_AGENT_SEED_RECORD_PUBLIC_KEYS_FILE`) skip
   * their own whole-blob hash when every piece verified against the hashes it binds: about a
   * sixth of an agent's CPU per byte. Unset (default): no record, agents hash every blob.
   */
  SHOAL_SEED_RECORD_KEY_FILE: z.string().min(1).optional(),
  /**
   * Blobs seeded at once by this replica (default 16). A client pulls every layer of an image
   * at once (`ctr` and nerdctl do), and a blob waiting in the queue has no piece hash: past
   * the agents' stall timeout they read it from the origin, every agent. With 4, a 12-layer
   * image sent 48 downloads of six nodes to the registry (3.4× the image). Each blob seeded
   * is one origin GET at a time and holds its piece in memory. With the S3 gateway it is also
   * the number of copies streamed to the gateway at once, which go on in the background after
   * their seeds, at the gateway's pace (a blob seeded while all are busy has its copy made from
   * the file afterwards, one at a time); each holds up to 5 parts of
   * `SHOAL_S3_PART_SIZE_BYTES`: size the memory limit for them (16 copies with 8 MiB parts:
   * about 640 MiB of part buffers at worst, plus 40 MiB for the one copy made afterwards), or
   * lower this.
   */
  SHOAL_SEED_CONCURRENCY: envInt(16),
  /**
   * How long a seed request a replica took may go without word from it before JetStream hands
   * it to another replica (or to this one, restarted), in ms (default 4 000). A replica at work
   * says so four times within it, so a long seed is not taken twice.
   */
  SHOAL_SEED_REQUEST_ACK_WAIT_MS: envInt(4_000).refine((n) => n >= 1_000, 'must be at least 1000'),
  /** Connecting to the origin, in ms (default 10 000). */
  SHOAL_SEED_ORIGIN_CONNECT_TIMEOUT_MS: envInt(10_000),
  /** From request to response headers at the origin, in ms (default 30 000). */
  SHOAL_SEED_ORIGIN_HEADERS_TIMEOUT_MS: envInt(30_000),
  /**
   * Longest pause inside an origin body, in ms (default 5 000; until the body's first bytes
   * the headers timeout applies). A transfer that stops part-way, its connection left open (a
   * stuck load balancer or CDN node), is then asked again from where it stopped, on another
   * connection, and the agents are told at once that the seed waits on it. Keep it below the
   * agents' stall timeout (SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS, 10 000): an agent that hears
   * nothing from the seed for that long reads the blob from the registry itself, and a cluster
   * of them all do. For a registry whose bodies pause longer (a proxy streaming from a slow
   * upstream, a very lossy link) raise both. Before, it was 60 000.
   */
  SHOAL_SEED_ORIGIN_IDLE_TIMEOUT_MS: envInt(5_000).refine((n) => n >= 100, 'must be at least 100'),
  SHOAL_LOG_LEVEL: envLogLevel,
  /** How long a graceful shutdown may take, in ms (default 30 000). */
  SHOAL_SHUTDOWN_TIMEOUT_MS: envInt(30_000),
});

export type SeedConfig = z.infer<typeof seedFields>;

/** Reads the seed server's configuration; throws a ConfigError naming every problem. */
export function loadSeedConfig(env: Record<string, string | undefined>): SeedConfig {
  const problems = blobStoreConfigProblems(env);
  if (
    env.SHOAL_SEED_PIECE_AUTH !== 'off' &&
    (env.SHOAL_SEED_HANDOUT_PUBLIC_KEYS_FILE ?? '') === ''
  ) {
    problems.push(
      "SHOAL_SEED_HANDOUT_PUBLIC_KEYS_FILE: required to check agents' hand-out tokens (the tracker's public key), unless SHOAL_SEED_PIECE_AUTH=off",
    );
  }
  // Agents speak what the announced URL says: it must match what the listener serves.
  problems.push(
    ...announcedUrlProblems(env, {
      url: 'SHOAL_SEED_URL',
      cert: 'SHOAL_SEED_TLS_CERT_FILE',
      key: 'SHOAL_SEED_TLS_KEY_FILE',
    }),
  );
  return loadConfig(seedFields, env, problems);
}
