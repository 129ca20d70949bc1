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
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  server.close();
  await once(server, 'close');
  if (address === null || typeof address === 'string') {
    throw new Error('could not find a free port');
  }
  return address.port;
}

export interface RunningProcess {
  readonly child: ChildProcess;
  readonly logPath: string;
  /** Ends the process: SIGTERM, and SIGKILL after `graceMs`. Safe to call twice. */
  stop(graceMs?: number): Promise<void>;
  /** Kills at once, as a crash would. */
  kill(): Promise<void>;
}

/** Spawns `command` with stdout and stderr appended to `logPath`. */
export function startProcess(
  command: string,
  args: readonly string[],
  options: { logPath: string; env?: NodeJS.ProcessEnv; cwd?: string },
): RunningProcess {
  const log = createWriteStream(options.logPath, { flags: 'a' });
  const child = spawn(command, args, {
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
  const ended = async (): Promise<void> => {
    await exited;
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
  options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<{ stdout: string; stderr: string }> {
  try {
    return await execFileAsync(command, args, {
      timeout: options.timeoutMs ?? 300_000,
      maxBuffer: 64 * 1024 * 1024,
      env: options.env ?? process.env,
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
