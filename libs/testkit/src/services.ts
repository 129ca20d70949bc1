/**
 * Runs Shoal's built services (`services/<name>/dist/src/main.js`, from `tsc -b`) as their own
 * processes, as a cluster would, for integration tests, benchmarks and the local demo.
 */
import { copyFile, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  writeHandoutPrivateKey,
  writeHandoutPublicKeys,
  writeRecordPrivateKey,
  writeRecordPublicKeys,
} from './handout-keys.js';
import { getText } from './http-get.js';
import { scrapeMetrics } from './metrics.js';
import {
  freePort,
  makeTempDir,
  startProcess,
  waitFor,
  type Placement,
  type RunningProcess,
  urlHost,
} from './process.js';
import type { TestCa } from './tls.js';

/**
 * The built entry point of a service: this checkout's, or that of another checkout built with
 * `tsc -b` at `buildRoot` (a benchmark's baseline, e.g. made by seedserver's `build-at.sh`).
 */
export function serviceMain(service: ShoalService, buildRoot?: string): string {
  return buildRoot === undefined
    ? fileURLToPath(new URL(`../../../../services/${service}/dist/src/main.js`, import.meta.url))
    : join(buildRoot, 'services', service, 'dist', 'src', 'main.js');
}

/** Which build of a service runs. */
export interface BuildChoice {
  /** The root of another checkout built with `tsc -b`, whose service runs instead of this one's. */
  readonly buildRoot?: string;
}

type ShoalService = 'agent' | 'tracker' | 'seedserver' | 'watcher';

/**
 * The Node flags a service's entry point names on its `#!/usr/bin/env -S node ...` line (the
 * agent's memory settings), so that services run here as they run in production.
 */
export async function serviceNodeFlags(service: ShoalService): Promise<string[]> {
  const source = await readFile(serviceMain(service), 'utf8');
  const first = source.slice(0, source.indexOf('\n'));
  const match = /^#!\/usr\/bin\/env -S node( .*)?$/.exec(first);
  return match?.[1]?.trim().split(/\s+/) ?? [];
}

/** The built `shoal-preheat` command line. */
export const PREHEAT_CLI = fileURLToPath(
  new URL('../../../../services/watcher/dist/src/cli.js', import.meta.url),
);

/** The built agent's entry point. */
export const AGENT_MAIN = serviceMain('agent');

/** A running Shoal service. */
export interface ServiceProcess {
  /** Base URL of its HTTP listener (the mirror for an agent), e.g. `http://127.0.0.1:41234`. */
  readonly url: string;
  readonly port: number;
  readonly process: RunningProcess;
  /** Its temporary directory (log, caches). */
  readonly dir: string;
  /** The process's peak resident set size (VmHWM), in bytes. */
  peakRssBytes(): Promise<number>;
  /** Reads one counter or gauge (summed over label sets matching `labels`) from /metrics. */
  metric(name: string, labels?: Record<string, string>): Promise<number>;
  stop(): Promise<void>;
}

export interface AgentProcess extends ServiceProcess {
  readonly cacheDir: string;
  /** The agent's peer id, when it is in a swarm. */
  readonly peerId: string | undefined;
  /** Where it serves pieces (`SHOAL_AGENT_PEER_URL`), when it is in a swarm. */
  readonly peerUrl: string | undefined;
}

export interface AgentOptions extends Placement, BuildChoice {
  /** `SHOAL_AGENT_REGISTRIES` */
  readonly registries: string;
  /** Port to listen on; a free one when omitted (65001 in a namespace of its own). */
  readonly port?: number;
  /** Cache directory to use (and keep); a temporary one when omitted. */
  readonly cacheDir?: string;
  readonly defaultRegistry?: string;
  /** Joins the swarm through this NATS server, serving pieces on a free port. */
  readonly natsUrl?: string;
  /** Peer id in the swarm (default `agent-<port>`). */
  readonly peerId?: string;
  readonly env?: Record<string, string>;
  /** Pieces over TLS: the peer port serves HTTPS and the piece client trusts only `ca`. */
  readonly pieceTls?: PieceTls;
}

/** TLS on the data path, with certificates from a test CA. */
export interface PieceTls {
  readonly ca: TestCa;
  /** Mutual TLS: pieces only for clients with a certificate of `ca` (each gets one). */
  readonly verifyClients?: boolean;
}

/** Starts a service process and waits for its /readyz; `env` is all it gets besides PATH. */
/**
 * A port for a service placed at `placement`: `fixed` in a network namespace of its own
 * (every port there is free), else one free a moment ago on loopback.
 */
async function portFor(placement: Placement, fixed: number): Promise<number> {
  return placement.netns === undefined ? freePort() : fixed;
}

async function startService(
  service: ShoalService,
  dir: { path: string; remove(): Promise<void> },
  port: number,
  env: Record<string, string>,
  placement: Placement & BuildChoice = {},
  /** The listener serves HTTPS with a certificate of this CA. */
  ca?: Buffer,
  main?: string,
): Promise<ServiceProcess> {
  const argv = [
    ...(await serviceNodeFlags(service)),
    main ?? serviceMain(service, placement.buildRoot),
  ];
  const proc = startProcess(process.execPath, argv, {
    logPath: join(dir.path, `${service}.log`),
    env: {
      PATH: process.env.PATH ?? '',
      // `SHOAL_TEST_LOG_LEVEL=debug` to see more of a failing or flaky run.
      SHOAL_LOG_LEVEL: process.env.SHOAL_TEST_LOG_LEVEL ?? 'info',
      // A test cluster of a few processes, restarting NATS on purpose: back at once, not
      // spread over the seconds a fleet of thousands needs (the default, 1 s; agents 3 s).
      SHOAL_NATS_RECONNECT_JITTER_MS: String(TEST_RECONNECT_JITTER_MS),
      ...env,
    },
    ...(placement.netns === undefined ? {} : { netns: placement.netns }),
  });
  const url = `${ca === undefined ? 'http' : 'https'}://${urlHost(placement.host ?? '127.0.0.1')}:${port}`;
  try {
    await waitFor(
      `${service} /readyz`,
      async () => (await getText(`${url}/readyz`, ca === undefined ? {} : { ca })).status === 200,
      { process: proc, timeoutMs: 30_000 },
    );
  } catch (error) {
    await proc.stop();
    throw new Error(
      `${(error as Error).message}\n${await readFile(proc.logPath, 'utf8').catch(() => '')}`,
    );
  }
  return {
    url,
    port,
    process: proc,
    dir: dir.path,
    peakRssBytes: async () => {
      const status = await readFile(`/proc/${String(proc.child.pid)}/status`, 'utf8');
      const match = /^VmHWM:\s+(\d+) kB$/m.exec(status);
      if (match?.[1] === undefined) {
        throw new Error('no VmHWM in /proc status');
      }
      return Number(match[1]) * 1024;
    },
    metric: async (name, labels = {}) =>
      (await scrapeMetrics(url, undefined, ca)).get(name, labels),
    stop: async () => {
      await proc.stop();
      await keepLog(proc.logPath, `${service}-${String(port)}.log`);
      await dir.remove();
    },
  };
}

/**
 * With `SHOAL_TEST_LOG_DIR` set, a stopped service's log is copied there as `name` before its
 * directory goes, to read after a failed or flaky run.
 */
async function keepLog(logPath: string, name: string): Promise<void> {
  const keepDir = process.env.SHOAL_TEST_LOG_DIR;
  if (keepDir === undefined || keepDir === '') {
    return;
  }
  await mkdir(keepDir, { recursive: true });
  await copyFile(logPath, join(keepDir, name)).catch(() => undefined);
}

/** Starts an agent: a mirror of `registries`, and a swarm member when `natsUrl` is given. */
export async function startAgent(options: AgentOptions): Promise<AgentProcess> {
  const dir = await makeTempDir('agent');
  const host = urlHost(options.host ?? '127.0.0.1');
  const port = options.port ?? (await portFor(options, 65001));
  const cacheDir = options.cacheDir ?? join(dir.path, 'cache');
  const env: Record<string, string> = {
    SHOAL_AGENT_LISTEN: `${host}:${port}`,
    SHOAL_AGENT_REGISTRIES: options.registries,
    SHOAL_AGENT_CACHE_DIR: cacheDir,
  };
  if (options.defaultRegistry !== undefined) {
    env.SHOAL_AGENT_DEFAULT_REGISTRY = options.defaultRegistry;
  }
  let peerId: string | undefined;
  if (options.natsUrl !== undefined) {
    const peerPort = await portFor(options, 65002);
    peerId = options.peerId ?? `agent-${port}`;
    Object.assign(env, {
      SHOAL_NATS_URL: options.natsUrl,
      SHOAL_AGENT_PEER_ID: peerId,
      SHOAL_AGENT_PEER_LISTEN: `${host}:${peerPort}`,
      SHOAL_AGENT_PEER_URL: `http://${host}:${peerPort}`,
      SHOAL_AGENT_HANDOUT_PUBLIC_KEYS_FILE: await writeHandoutPublicKeys(dir.path),
      // Test seed servers sign pieces-verified records: agents trust them, as in production.
      SHOAL_AGENT_SEED_RECORD_PUBLIC_KEYS_FILE: await writeRecordPublicKeys(dir.path),
      // Test watchers wait one presence interval after declaring the presence bucket anew:
      // both sides use the test kit's shorter one (`TEST_PRESENCE_INTERVAL_MS`).
      SHOAL_AGENT_PRESENCE_INTERVAL_MS: String(TEST_PRESENCE_INTERVAL_MS),
    });
    if (options.pieceTls !== undefined) {
      const { ca, verifyClients } = options.pieceTls;
      const cert = await ca.issue(`agent-${peerId}`);
      Object.assign(env, {
        SHOAL_AGENT_PEER_URL: `https://${host}:${peerPort}`,
        SHOAL_AGENT_PEER_TLS_CERT_FILE: cert.certFile,
        SHOAL_AGENT_PEER_TLS_KEY_FILE: cert.keyFile,
        SHOAL_AGENT_PIECE_TLS_CA_FILE: ca.caFile,
        // The same certificate as a client's, for peers and seed servers that verify clients.
        SHOAL_AGENT_PIECE_TLS_CERT_FILE: cert.certFile,
        SHOAL_AGENT_PIECE_TLS_KEY_FILE: cert.keyFile,
        ...(verifyClients === true ? { SHOAL_AGENT_PEER_TLS_CLIENT_CA_FILE: ca.caFile } : {}),
      });
    }
  }
  const running = await startService('agent', dir, port, { ...env, ...options.env }, options);
  return {
    ...running,
    cacheDir,
    peerId,
    peerUrl: options.env?.SHOAL_AGENT_PEER_URL ?? env.SHOAL_AGENT_PEER_URL,
  };
}

/** Starts a tracker on `natsUrl`. */
export async function startTracker(
  options: {
    natsUrl: string;
    env?: Record<string, string>;
    /** Port to listen on; a free one when omitted (65020 in a namespace). */
    port?: number;
  } & Placement &
    BuildChoice,
): Promise<ServiceProcess> {
  const dir = await makeTempDir('tracker');
  const port = options.port ?? (await portFor(options, 65020));
  return startService(
    'tracker',
    dir,
    port,
    {
      SHOAL_NATS_URL: options.natsUrl,
      SHOAL_TRACKER_LISTEN: `${urlHost(options.host ?? '127.0.0.1')}:${port}`,
      SHOAL_TRACKER_HANDOUT_KEY_FILE: await writeHandoutPrivateKey(dir.path),
      ...options.env,
    },
    options,
  );
}

export interface SeedServerOptions extends Placement, BuildChoice {
  readonly natsUrl: string;
  /** `SHOAL_SEED_REGISTRIES` */
  readonly registries: string;
  /** Object gateway settings (`SHOAL_STORE_*`, `SHOAL_S3_*`); a local directory by default. */
  readonly storeEnv?: Record<string, string>;
  readonly id?: string;
  /** Port to listen on (a restart keeps its address); a free one when omitted. */
  readonly port?: number;
  readonly env?: Record<string, string>;
  /** Pieces (and ops) over HTTPS with a certificate of this CA. */
  readonly pieceTls?: PieceTls;
  /**
   * The seed server's main.js to run instead of this checkout's (another build, e.g. from
   * `services/seedserver/tools/build-at.sh`, for a benchmark's before and after).
   */
  readonly main?: string;
}

/** Starts a seed server on `natsUrl`, with its cache and (by default) its store in its own directory. */
export async function startSeedServer(options: SeedServerOptions): Promise<ServiceProcess> {
  const dir = await makeTempDir('seedserver');
  const port = options.port ?? (await portFor(options, 65010));
  const host = urlHost(options.host ?? '127.0.0.1');
  const tls = options.pieceTls;
  const cert = tls === undefined ? undefined : await tls.ca.issue(`seed-${port}`);
  const tlsEnv: Record<string, string> =
    tls === undefined || cert === undefined
      ? {}
      : {
          SHOAL_SEED_TLS_CERT_FILE: cert.certFile,
          SHOAL_SEED_TLS_KEY_FILE: cert.keyFile,
          ...(tls.verifyClients === true ? { SHOAL_SEED_TLS_CLIENT_CA_FILE: tls.ca.caFile } : {}),
        };
  const env = {
    SHOAL_NATS_URL: options.natsUrl,
    SHOAL_SEED_LISTEN: `${host}:${port}`,
    SHOAL_SEED_URL: `${tls === undefined ? 'http' : 'https'}://${host}:${port}`,
    SHOAL_SEED_ID: options.id ?? `seed-${port}`,
    SHOAL_SEED_REGISTRIES: options.registries,
    SHOAL_SEED_CACHE_DIR: join(dir.path, 'cache'),
    SHOAL_STORE_DIR: join(dir.path, 'store'),
    SHOAL_SEED_HANDOUT_PUBLIC_KEYS_FILE: await writeHandoutPublicKeys(dir.path),
    SHOAL_SEED_RECORD_KEY_FILE: await writeRecordPrivateKey(dir.path),
    ...tlsEnv,
    ...options.storeEnv,
    ...options.env,
  };
  return startService(
    'seedserver',
    dir,
    port,
    env,
    options,
    tls === undefined ? undefined : await readFile(tls.ca.caFile),
    options.main,
  );
}

export interface WatcherOptions {
  readonly natsUrl: string;
  /** `SHOAL_WATCHER_REGISTRIES` */
  readonly registries: string;
  /** Port to listen on (a registry's notifications need it before the watcher starts). */
  readonly port?: number;
  readonly id?: string;
  /** The webhook and API bearer token (default `WATCHER_TOKEN`). */
  readonly token?: string;
  readonly env?: Record<string, string>;
}

/** Test services' and agents' NATS reconnect jitter, in ms (the client library's default). */
export const TEST_RECONNECT_JITTER_MS = 100;

/**
 * Test agents refresh their presence entry this often, and test watchers know it
 * (`SHOAL_WATCHER_AGENT_PRESENCE_INTERVAL_MS`): production's 10 s would hold every `nodes`
 * preheat right after a watcher declared the presence bucket for 12 s.
 */
export const TEST_PRESENCE_INTERVAL_MS = 1000;

/** The bearer token test watchers accept unless told otherwise. */
export const WATCHER_TOKEN = 'shoal-test-token-0123456789';

/** Starts a watcher on `natsUrl`. */
export async function startWatcher(options: WatcherOptions): Promise<ServiceProcess> {
  const dir = await makeTempDir('watcher');
  const port = options.port ?? (await freePort());
  return startService('watcher', dir, port, {
    SHOAL_NATS_URL: options.natsUrl,
    SHOAL_WATCHER_LISTEN: `127.0.0.1:${port}`,
    SHOAL_WATCHER_ID: options.id ?? `watcher-${port}`,
    SHOAL_WATCHER_REGISTRIES: options.registries,
    SHOAL_WATCHER_WEBHOOK_TOKEN: options.token ?? WATCHER_TOKEN,
    SHOAL_WATCHER_AGENT_PRESENCE_INTERVAL_MS: String(TEST_PRESENCE_INTERVAL_MS),
    ...options.env,
  });
}

/** Settings that make a test swarm react within seconds rather than production minutes. */
export const FAST_SWARM_ENV: Readonly<Record<string, string>> = {
  SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS: '4000',
  SHOAL_AGENT_WANT_INTERVAL_MS: '300',
  SHOAL_AGENT_HAVE_INTERVAL_MS: '100',
};
