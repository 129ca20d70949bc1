/** The watcher's configuration: the components' pieces, checked together. */
import { hostname } from 'node:os';

import { peerId, preheatScope } from '@shoal/proto';
import { registriesList, trustedRealmsList } from '@shoal/registry';
import { envInt, envListen, envLogLevel, httpLimitsConfig, loadConfig } from '@shoal/runtime';
import { natsConfig } from '@shoal/runtime/nats';
import { z } from 'zod';

import { platformList } from './preheat/platforms.js';

const defaultId = `watcher-${hostname()
  .toLowerCase()
  .replace(/[^a-z0-9_-]/g, '-')}`.slice(0, 64);

export const watcherFields = z.object({
  ...natsConfig.shape,
  ...httpLimitsConfig.shape,
  /** Where webhooks, the preheat API, /healthz, /readyz and /metrics listen (default `0.0.0.0:65030`). */
  SHOAL_WATCHER_LISTEN: envListen('0.0.0.0:65030'),
  /** PEM certificate for HTTPS on SHOAL_WATCHER_LISTEN (with the key; none: plain HTTP). */
  SHOAL_WATCHER_TLS_CERT_FILE: z.string().min(1).optional(),
  /** PEM private key of SHOAL_WATCHER_TLS_CERT_FILE. */
  SHOAL_WATCHER_TLS_KEY_FILE: z.string().min(1).optional(),
  /** This replica's name in the schedule lock (default `watcher-<hostname>`). */
  SHOAL_WATCHER_ID: peerId.default(defaultId),
  /** Registries images are preheated from, as `host` or `host=url`, comma-separated. */
  SHOAL_WATCHER_REGISTRIES: registriesList,
  /** docker config JSON with registry credentials for reading manifests; none: anonymous. */
  SHOAL_WATCHER_DOCKER_CONFIG: z.string().optional(),
  /**
   * Token realms (URLs, comma-separated) the credentials of SHOAL_WATCHER_DOCKER_CONFIG may be
   * sent to besides an HTTPS realm on the registry's own host (GitLab, for one, puts its
   * realm on another host); none by default. `https://` only, or `http://` on loopback:
   * Basic credentials must not cross the network in cleartext.
   */
  SHOAL_WATCHER_TRUSTED_REALMS: trustedRealmsList,
  /** Shared secret webhooks send as `Authorization: Bearer <token>`. */
  SHOAL_WATCHER_WEBHOOK_TOKEN: z.string().min(16, 'use at least 16 characters').optional(),
  /** Secret for `X-Shoal-Signature-256: sha256=<hex HMAC of the body>`, for senders that sign. */
  SHOAL_WATCHER_WEBHOOK_HMAC_SECRET: z.string().min(16, 'use at least 16 characters').optional(),
  /** Bearer token of the preheat API (default: the webhook token). */
  SHOAL_WATCHER_API_TOKEN: z.string().min(16, 'use at least 16 characters').optional(),
  /** Largest webhook or API body accepted, in bytes (default 1 MiB). */
  SHOAL_WATCHER_WEBHOOK_MAX_BYTES: envInt(1024 * 1024),
  /** Scope of preheats that webhooks trigger: `seed` (default) or `nodes`. */
  SHOAL_WATCHER_WEBHOOK_SCOPE: preheatScope.default('seed'),
  /** Platforms an image index fans out to, e.g. `linux/amd64,linux/arm64` (default: all). */
  SHOAL_WATCHER_PLATFORMS: platformList,
  /** JSON file listing images preheated on a schedule; read again at every interval. */
  SHOAL_WATCHER_SCHEDULE_FILE: z.string().min(1).optional(),
  /** How often the scheduled list is checked for new digests, in ms (default 300 000). */
  SHOAL_WATCHER_SCHEDULE_INTERVAL_MS: envInt(300_000),
  /** Preheat jobs this replica runs at once (default 2). */
  SHOAL_WATCHER_PREHEAT_CONCURRENCY: envInt(2),
  /** How long a preheat job may run before it is failed, in ms (default 3 600 000). */
  SHOAL_WATCHER_PREHEAT_TIMEOUT_MS: envInt(3_600_000),
  /**
   * How long a job whose watcher died stays with it before another replica (or the same one,
   * restarted) takes it over, in ms (default 10 000). The running replica keeps its jobs alive
   * with an in-progress acknowledgement every third of it.
   */
  SHOAL_WATCHER_PREHEAT_ACK_WAIT_MS: envInt(10_000),
  /**
   * The agents' `SHOAL_AGENT_PRESENCE_INTERVAL_MS`, in ms (default 10 000). After the watcher
   * declares the presence bucket anew (a fresh install, a lost NATS store), preheats of scope
   * `nodes` wait this long (plus 2 s) so that agents that found it missing have put their
   * entries, rather than leaving those nodes out.
   */
  SHOAL_WATCHER_AGENT_PRESENCE_INTERVAL_MS: envInt(10_000),
  /** Largest manifest read from a registry, in bytes (default 4 MiB). */
  SHOAL_WATCHER_MAX_MANIFEST_BYTES: envInt(4 * 1024 * 1024),
  /** From request to response headers at a registry, in ms (default 30 000). */
  SHOAL_WATCHER_UPSTREAM_TIMEOUT_MS: envInt(30_000),
  SHOAL_LOG_LEVEL: envLogLevel,
  /** How long a graceful shutdown may take, in ms (default 30 000). */
  SHOAL_SHUTDOWN_TIMEOUT_MS: envInt(30_000),
});

export type WatcherConfig = z.infer<typeof watcherFields>;

/** Reads the watcher's configuration; throws a ConfigError naming every problem. */
export function loadWatcherConfig(env: Record<string, string | undefined>): WatcherConfig {
  const problems: string[] = [];
  if (
    (env.SHOAL_WATCHER_WEBHOOK_TOKEN ?? '') === '' &&
    (env.SHOAL_WATCHER_WEBHOOK_HMAC_SECRET ?? '') === ''
  ) {
    problems.push(
      'SHOAL_WATCHER_WEBHOOK_TOKEN or SHOAL_WATCHER_WEBHOOK_HMAC_SECRET: set at least one; webhooks are never accepted unauthenticated',
    );
  }
  return loadConfig(watcherFields, env, problems);
}
