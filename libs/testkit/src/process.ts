/**
 * Child processes for tests: real servers spawned with their output captured to a log file,
 * and a teardown that always ends them (SIGTERM, then SIGKILL).
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** Debian packages that provide the binaries the kit runs; `scripts/setup.sh` installs them. */
const PACKAGES: Record<string, string> = {
  'nats-server': 'nats-server',
  'docker-registry': 'docker-registry',
  containerd: 'containerd',
  ctr: 'containerd',
  skopeo: 'skopeo',
  ip: 'iproute2',
  iptables: 'iptables',
};

/** Throws a clear error when a binary the kit needs is not installed. */
export function requireBinary(name: string): string {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/usr/bin'])) {
    const candidate = join(dir, name);
    if (existsSync(candidate)) {
      return candidate;
    }
  }
  const pkg = PACKAGES[name] ?? name;
  throw new Error(`${name} is not installed: run scripts/setup.sh (Debian package "${pkg}")`);
}

/** A temporary directory removed by `remove()`. */
export async function makeTempDir(
  prefix: string,
): Promise<{ path: string; remove(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), `shoal-${prefix}-`));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}

/** A TCP port that was free a moment ago on 127.0.0.1 (for servers that cannot take port 0). */
/**
 * Ports this process handed out recently: the kernel may offer a port again as soon as it is
 * closed, and two calls in a row (an agent's mirror and peer ports) must not get the same one.
 */
const recentPorts: number[] = [];
const RECENT_PORTS = 256;

export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const server = createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const address = server.address();
    server.close();
    await once(server, 'close');
    if (address === null || typeof address === 'string') {
      throw new Error('could not find a free port');
    }
    if (!recentPorts.includes(address.port)) {
      recentPorts.push(address.port);
      if (recentPorts.length > RECENT_PORTS) {
        recentPorts.shift();
      }
      return address.port;
    }
  }
  throw new Error('could not find a free port not handed out a moment ago');
}

export interface RunningProcess {
  readonly child: ChildProcess;
  readonly logPath: string;
  /** Ends the process: SIGTERM, and SIGKILL after `graceMs`. Safe to call twice. */
  stop(graceMs?: number): Promise<void>;
  /** Kills at once, as a crash would. */
  kill(): Promise<void>;
}

/**
 * Where a server runs: by default on 127.0.0.1 in this network namespace; for a cluster of
 * network namespaces (the shaped-network bench), inside `netns` on its address `host`.
 */
export interface Placement {
  /** Network namespace to run in (`ip netns exec`); this one when omitted. */
  readonly netns?: string;
  /** Address to listen on and to be reached at (default `127.0.0.1`). */
  readonly host?: string;
}

/** The host part of a URL for address `host` (IPv6 in brackets). */
export function urlHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/**
 * `command` and `args` as run inside network namespace `netns` (`ip netns exec`, which execs
 * the command: the process id is the command's own), or unchanged without one.
 */
export function inNetns(
  netns: string | undefined,
  command: string,
  args: readonly string[],
): [string, string[]] {
  return netns === undefined
    ? [command, [...args]]
    : [requireBinary('ip'), ['netns', 'exec', netns, command, ...args]];
}

/**
 * Spawns `command` with stdout and stderr appended to `logPath`; inside network namespace
 * `netns` when given.
 */
export function startProcess(
  command: string,
  args: readonly string[],
  options: { logPath: string; env?: NodeJS.ProcessEnv; cwd?: string; netns?: string },
): RunningProcess {
  const log = createWriteStream(options.logPath, { flags: 'a' });
  const [file, argv] = inNetns(options.netns, command, args);
  const child = spawn(file, argv, {
    env: options.env ?? process.env,
    cwd: options.cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.pipe(log, { end: false });
  child.stderr.pipe(log, { end: false });
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve();
    } else {
      child.once('exit', () => resolve());
      child.once('error', () => resolve());
    }
  });
  // Output can still arrive after 'exit' (until 'close': the pipes drained). The log ends once
  // they are closed, or a moment after exit if something else holds them; anything later is
  // dropped rather than written to an ended log.
  const closed = new Promise<void>((resolve) => {
    child.once('close', () => resolve());
  });
  const ended = async (): Promise<void> => {
    await exited;
    await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 1_000).unref())]);
    child.stdout.unpipe(log);
    child.stderr.unpipe(log);
    log.end();
  };
  return {
    child,
    logPath: options.logPath,
    stop: async (graceMs = 5000) => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
        await exited;
        clearTimeout(timer);
      }
      await ended();
    },
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
      }
      await ended();
    },
  };
}

/** Polls `probe` until it returns true; throws after `timeoutMs` with `what` in the message. */
export async function waitFor(
  what: string,
  probe: () => Promise<boolean>,
  options: { timeoutMs?: number; intervalMs?: number; process?: RunningProcess } = {},
): Promise<void> {
  const deadline = Date.now() + (options.timeoutMs ?? 15_000);
  for (;;) {
    if (options.process !== undefined && options.process.child.exitCode !== null) {
      throw new Error(
        `${what}: process exited with ${options.process.child.exitCode}; see ${options.process.logPath}`,
      );
    }
    if (await probe().catch(() => false)) {
      return;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, options.intervalMs ?? 100));
  }
}

/** Runs a command to completion; throws with its output when it fails. */
export async function run(
  command: string,
  args: readonly string[],
  options: {
    timeoutMs?: number;
    env?: NodeJS.ProcessEnv;
    netns?: string;
    /** Ends the command (SIGTERM) when aborted. */
    signal?: AbortSignal;
  } = {},
): Promise<{ stdout: string; stderr: string }> {
  const [file, argv] = inNetns(options.netns, command, args);
  try {
    return await execFileAsync(file, argv, {
      timeout: options.timeoutMs ?? 300_000,
      maxBuffer: 64 * 1024 * 1024,
      env: options.env ?? process.env,
      ...(options.signal === undefined ? {} : { signal: options.signal }),
    });
  } catch (error) {
    const e = error as Error & { stdout?: string; stderr?: string };
    throw new Error(
      `${command} ${args.join(' ')} failed: ${e.message}\n${e.stderr ?? ''}${e.stdout ?? ''}`,
      {
        cause: error,
      },
    );
  }
}
