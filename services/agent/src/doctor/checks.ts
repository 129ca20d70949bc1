/**
 * What `shoal-doctor` checks on a node, one function per check. Each answers ok, warn, fail
 * or skip with what it saw and, when something is wrong, the fix. None throws: a check that
 * cannot look says so (skip), so one missing file never hides the rest of the report.
 */
import { connect } from 'node:net';
import { readFile, readdir, stat, statfs } from 'node:fs/promises';
import { join } from 'node:path';

import type { UpstreamRegistry } from '@shoal/registry';
import { parseNatsServers } from '@shoal/runtime/nats';

import type { AgentConfig } from '../config.js';
import { hostsMirrorUrl } from '../hosts/config.js';
import { HOSTS_FILE, isAgentHostsFile } from '../hosts/hosts-files.js';

export type CheckStatus = 'ok' | 'warn' | 'fail' | 'skip';

export interface CheckResult {
  readonly check: string;
  readonly status: CheckStatus;
  /** What was seen. */
  readonly detail: string;
  /** What to do about it (for warn and fail). */
  readonly fix?: string;
}

/** How long one network probe may take, in ms. */
const PROBE_TIMEOUT_MS = 3_000;
/** Free space under which the cache's disk is reported as a failure. */
const MIN_FREE_BYTES = 1024 ** 3;

/**
 * Where containerd's configuration lives on common distributions: plain containerd, k3s and
 * RKE2 (which generate theirs from a template; the template is what to edit).
 */
export const CONTAINERD_CONFIGS = [
  '/etc/containerd/config.toml',
  '/var/lib/rancher/k3s/agent/etc/containerd/config.toml',
  '/var/lib/rancher/rke2/agent/etc/containerd/config.toml',
] as const;

/** The `config_path` a containerd configuration sets for registries, if any. */
export function registryConfigPath(toml: string): string | undefined {
  // Both containerd 1.x ([plugins."io.containerd.grpc.v1.cri".registry]) and 2.x
  // ([plugins."io.containerd.cri.v1.images".registry]) spell the key the same way.
  for (const line of toml.split('\n')) {
    const match = /^\s*config_path\s*=\s*["']([^"']*)["']/.exec(line);
    if (match?.[1] !== undefined) {
      return match[1];
    }
  }
  return undefined;
}

/** containerd reads hosts.toml files from the directory the agent writes them to. */
export async function checkContainerdConfig(
  config: AgentConfig,
  candidates: readonly string[],
): Promise<CheckResult> {
  const check = 'containerd config_path';
  for (const path of candidates) {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch {
      continue;
    }
    const configPath = registryConfigPath(text);
    const wanted = config.SHOAL_AGENT_HOSTS_DIR ?? '/etc/containerd/certs.d';
    const section = /^version\s*=\s*3/m.test(text)
      ? '[plugins."io.containerd.cri.v1.images".registry]'
      : '[plugins."io.containerd.grpc.v1.cri".registry]';
    if (configPath === undefined) {
      return {
        check,
        status: 'fail',
        detail: `${path} sets no config_path: containerd ignores hosts.toml files`,
        fix: `add config_path = "${wanted}" under ${section} in ${path}, then restart containerd`,
      };
    }
    if (configPath.split(':').includes(wanted)) {
      return { check, status: 'ok', detail: `${path}: config_path = "${configPath}"` };
    }
    return {
      check,
      status: 'fail',
      detail: `${path}: config_path = "${configPath}", the agent writes to ${wanted}`,
      fix: `set SHOAL_AGENT_HOSTS_DIR=${configPath} (and mount it), or config_path = "${wanted}"`,
    };
  }
  return {
    check,
    status: 'skip',
    detail: `no containerd configuration found at ${candidates.join(', ')}`,
    fix: 'run on the node, or pass --containerd-config PATH',
  };
}

/** Each mirrored registry's hosts.toml: written by an agent, by someone else, or missing. */
export async function checkHostsFiles(
  config: AgentConfig,
  boundPort: number,
): Promise<CheckResult[]> {
  const dir = config.SHOAL_AGENT_HOSTS_DIR;
  if (dir === undefined) {
    return [
      {
        check: 'hosts.toml',
        status: 'warn',
        detail: 'SHOAL_AGENT_HOSTS_DIR is not set: the agent writes no hosts.toml',
        fix: 'set SHOAL_AGENT_HOSTS_DIR to containerd\'s config_path, or write the files yourself (README: "Pointing containerd at it")',
      },
    ];
  }
  const mirror = hostsMirrorUrl(
    config.SHOAL_AGENT_HOSTS_MIRROR_URL,
    config.SHOAL_AGENT_LISTEN,
    boundPort,
  );
  const results: CheckResult[] = [];
  for (const registry of config.SHOAL_AGENT_REGISTRIES) {
    const path = join(dir, registry.host, HOSTS_FILE);
    const check = `hosts.toml ${registry.host}`;
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch {
      results.push({
        check,
        status: 'fail',
        detail: `${path} is missing: containerd pulls ${registry.host} without the mirror`,
        fix: 'start the agent (it writes the file once it listens), or check the directory is mounted',
      });
      continue;
    }
    if (!isAgentHostsFile(text)) {
      results.push({
        check,
        status: 'fail',
        detail: `${path} was written by someone else: ${registry.host} gets no P2P`,
        fix: `add [host."${mirror}"] with capabilities = ["pull", "resolve"] first in that file, or remove it and let the agent write its own`,
      });
      continue;
    }
    results.push(
      text.includes(`[host.${JSON.stringify(mirror)}]`)
        ? { check, status: 'ok', detail: `${path} points at ${mirror}` }
        : {
            check,
            status: 'warn',
            detail: `${path} is the agent's but names another mirror address than ${mirror}`,
            fix: 'restart the agent to write it again, or check SHOAL_AGENT_HOSTS_MIRROR_URL',
          },
    );
  }
  return results;
}

/** The manifest types containerd accepts; a registry refuses a manifest the client cannot read. */
const MANIFEST_ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

async function get(url: string, method = 'GET'): Promise<Response> {
  return fetch(url, {
    method,
    headers: { accept: MANIFEST_ACCEPT },
    signal: AbortSignal.timeout(PROBE_TIMEOUT_MS),
    redirect: 'manual',
  });
}

/** A `/v2/` check slower than this (ms) is reported: clients that check first wait as long. */
const SLOW_PING_MS = 1_000;

/**
 * The agent answers (its `/readyz`, which asks no registry), and its readiness (with whether it
 * joined the swarm); then its `/v2/`, separately: that check is relayed to the default
 * registry and may take up to `pingTimeoutMs` (SHOAL_AGENT_AUTHZ_TIMEOUT_MS) when the registry
 * is slow or unreachable, which is not the agent being down.
 */
export async function checkMirror(
  mirrorUrl: string,
  pingTimeoutMs: number,
): Promise<{ results: CheckResult[]; swarm?: string }> {
  let ready: Response;
  let body: { status?: string; reason?: string; swarm?: string } | undefined;
  try {
    ready = await get(`${mirrorUrl}/readyz`);
    body = (await ready.json().catch(() => undefined)) as typeof body;
  } catch (error) {
    return {
      results: [
        {
          check: 'mirror',
          status: 'fail',
          detail: `${mirrorUrl} does not answer (${(error as Error).message})`,
          fix: 'the agent is not running on this node: kubectl -n shoal get pods -o wide | grep agent, and its logs',
        },
      ],
    };
  }
  if (body?.status === undefined) {
    return {
      results: [
        {
          check: 'mirror',
          status: 'fail',
          detail: `${mirrorUrl}/readyz answered ${String(ready.status)}, not the agent's readiness`,
          fix: 'something else listens on the mirror address: check SHOAL_AGENT_LISTEN',
        },
      ],
    };
  }
  const results: CheckResult[] = [
    ready.status === 200
      ? { check: 'mirror', status: 'ok', detail: `${mirrorUrl} answers and is ready` }
      : {
          check: 'mirror',
          status: 'warn',
          // The reason /readyz gives (e.g. shutting down, NATS not connected) says what to wait for.
          detail: `${mirrorUrl} answers but is not ready (${body.reason ?? body.status})`,
          fix: 'wait for the start to finish, or read the agent log',
        },
    await checkPing(mirrorUrl, pingTimeoutMs),
  ];
  return body.swarm === undefined ? { results } : { results, swarm: body.swarm };
}

/** The mirror's `/v2/` answers (200, or the default registry's challenge), and in good time. */
async function checkPing(mirrorUrl: string, pingTimeoutMs: number): Promise<CheckResult> {
  const check = 'mirror /v2/';
  const started = performance.now();
  const slowFix =
    'the default registry is slow or unreachable from this node (clients that check /v2/ first, skopeo, docker, crane, wait as long; containerd does not): check its address in SHOAL_AGENT_REGISTRIES and the network';
  try {
    const response = await fetch(`${mirrorUrl}/v2/`, {
      // The agent gives the registry `pingTimeoutMs`, then answers itself.
      signal: AbortSignal.timeout(pingTimeoutMs + PROBE_TIMEOUT_MS),
    });
    await response.arrayBuffer();
    const tookMs = Math.round(performance.now() - started);
    // A 401 with a challenge is the default registry's, passed back for clients to log in.
    const challenged = response.status === 401 && response.headers.has('www-authenticate');
    if (response.status !== 200 && !challenged) {
      return {
        check,
        status: 'fail',
        detail: `${mirrorUrl}/v2/ answered ${String(response.status)}`,
        fix: 'read the agent log',
      };
    }
    if (tookMs > SLOW_PING_MS) {
      return {
        check,
        status: 'warn',
        detail: `answered ${response.status} after ${tookMs} ms`,
        fix: slowFix,
      };
    }
    return { check, status: 'ok', detail: `answered ${response.status} in ${tookMs} ms` };
  } catch (error) {
    return {
      check,
      status: 'warn',
      detail: `no answer within ${pingTimeoutMs + PROBE_TIMEOUT_MS} ms (${(error as Error).message})`,
      fix: slowFix,
    };
  }
}

/** A manifest resolves through the mirror, as containerd would ask for it. */
export async function checkResolve(
  mirrorUrl: string,
  image: string,
  registries: readonly UpstreamRegistry[],
): Promise<CheckResult> {
  const check = `resolve ${image}`;
  const match = /^([^/]+)\/(.+?)(?::([\w][\w.-]{0,127}))?(?:@(sha256:[a-f0-9]{64}))?$/.exec(image);
  const [, host, name, tag, digest] = match ?? [];
  if (host === undefined || name === undefined || !registries.some((r) => r.host === host)) {
    return {
      check,
      status: 'fail',
      detail: `${image} is not REGISTRY/REPOSITORY[:TAG] of a mirrored registry`,
      fix: `name an image of ${registries.map((r) => r.host).join(', ')}`,
    };
  }
  const ref = digest ?? tag ?? 'latest';
  try {
    const response = await get(
      `${mirrorUrl}/v2/${name}/manifests/${ref}?ns=${encodeURIComponent(host)}`,
      'HEAD',
    );
    if (response.status === 200) {
      return {
        check,
        status: 'ok',
        detail: `HEAD through the mirror: 200, ${response.headers.get('docker-content-digest') ?? ''}`,
      };
    }
    if (response.status === 401) {
      return {
        check,
        status: 'ok',
        detail:
          'the registry asks for credentials (401 with its challenge): containerd logs in as usual',
      };
    }
    return {
      check,
      status: 'fail',
      detail: `HEAD through the mirror answered ${String(response.status)}`,
      fix:
        response.status === 404
          ? 'check the image name and tag'
          : 'read the agent log for the upstream error',
    };
  } catch (error) {
    return {
      check,
      status: 'fail',
      detail: `no answer (${(error as Error).message})`,
      fix: 'check the agent is running',
    };
  }
}

/** Each NATS server accepts a TCP connection, and whether the agent has joined the swarm. */
export async function checkSwarm(
  config: AgentConfig,
  swarm: string | undefined,
): Promise<CheckResult[]> {
  if (config.SHOAL_NATS_URL === undefined) {
    return [
      {
        check: 'swarm',
        status: 'skip',
        detail: 'SHOAL_NATS_URL is not set: a plain mirror, no P2P',
      },
    ];
  }
  const results: CheckResult[] = [];
  for (const server of parseNatsServers(config.SHOAL_NATS_URL).servers) {
    const url = new URL(server.includes('://') ? server : `nats://${server}`);
    const port = Number(url.port || 4222);
    const reachable = await tcpReachable(url.hostname, port);
    results.push(
      reachable === true
        ? { check: `nats ${url.host}`, status: 'ok', detail: 'accepts connections' }
        : {
            check: `nats ${url.host}`,
            status: 'fail',
            detail: `cannot connect (${reachable})`,
            fix: 'check the address, DNS, NetworkPolicies and that NATS runs (kubectl -n shoal get pods -l app.kubernetes.io/name=nats)',
          },
    );
  }
  results.push(
    swarm === 'joined'
      ? { check: 'swarm', status: 'ok', detail: 'the agent has joined the swarm' }
      : {
          check: 'swarm',
          status: 'fail',
          detail: `the agent has not joined the swarm (${swarm ?? 'unknown'}): pulls go to the registry`,
          fix: 'the agent log says why (swarm unreachable): NATS address, credentials, TLS files',
        },
  );
  return results;
}

/** The cache directory's disk has room for the quota, and some to spare. */
export async function checkDisk(config: AgentConfig): Promise<CheckResult> {
  const dir = config.SHOAL_AGENT_CACHE_DIR;
  let free: number;
  let used: number;
  try {
    const fs = await statfs(dir);
    free = fs.bavail * fs.bsize;
    used = await directoryBytes(dir);
  } catch (error) {
    return {
      check: 'cache disk',
      status: 'skip',
      detail: `cannot read ${dir} (${(error as Error).message})`,
    };
  }
  const quota = config.SHOAL_AGENT_CACHE_MAX_BYTES;
  const gib = (bytes: number): string => `${(bytes / 1024 ** 3).toFixed(1)} GiB`;
  const detail = `${dir}: cache ${gib(used)} of a ${gib(quota)} quota, ${gib(free)} free on its disk`;
  if (free < MIN_FREE_BYTES) {
    return {
      check: 'cache disk',
      status: 'fail',
      detail,
      fix: 'free space on the node, or lower SHOAL_AGENT_CACHE_MAX_BYTES',
    };
  }
  if (used + free < quota) {
    return {
      check: 'cache disk',
      status: 'warn',
      detail,
      fix: `the quota is larger than the disk can hold: set SHOAL_AGENT_CACHE_MAX_BYTES below ${String(Math.floor((used + free) * 0.9))}`,
    };
  }
  return { check: 'cache disk', status: 'ok', detail };
}

async function directoryBytes(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile()) {
      total += (await stat(join(entry.parentPath, entry.name))).size;
    }
  }
  return total;
}

function tcpReachable(host: string, port: number): Promise<true | string> {
  return new Promise((resolve) => {
    const socket = connect({ host, port, timeout: PROBE_TIMEOUT_MS });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('timeout', () => {
      socket.destroy();
      resolve('timed out');
    });
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
}
