/**
 * containerd for tests: its own root, state and socket in a temporary directory, the CRI
 * plugin off, driven with `ctr`. Pulls go through a hosts directory, as a node's containerd
 * would read `/etc/containerd/certs.d`.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import {
  makeTempDir,
  requireBinary,
  run,
  startProcess,
  waitFor,
  type RunningProcess,
} from './process.js';

export interface Containerd {
  readonly address: string;
  /** Directory passed as `--hosts-dir`; `writeMirrorHosts` fills it. */
  readonly hostsDir: string;
  readonly process: RunningProcess;
  /** Runs `ctr` against this containerd in the `shoal-test` namespace. */
  ctr(args: readonly string[], timeoutMs?: number): Promise<string>;
  /** `ctr images pull` through the hosts directory; `signal` ends it. */
  pull(
    ref: string,
    options?: { user?: string; timeoutMs?: number; signal?: AbortSignal },
  ): Promise<string>;
  /** Digests in containerd's content store. */
  contentDigests(): Promise<Set<string>>;
  stop(): Promise<void>;
}

/**
 * Writes `<hostsDir>/<registry>/hosts.toml` sending pulls of `registry` to `mirrorUrl` first;
 * `headers` are sent with every request to the mirror (a node-wide `Authorization`, say).
 */
export async function writeMirrorHosts(
  hostsDir: string,
  registry: string,
  registryUrl: string,
  mirrorUrl: string,
  headers: Readonly<Record<string, string>> = {},
): Promise<string> {
  const dir = join(hostsDir, registry);
  await mkdir(dir, { recursive: true });
  const path = join(dir, 'hosts.toml');
  const headerLines = Object.entries(headers).map(
    ([name, value]) => `    ${name} = ${JSON.stringify(value)}`,
  );
  await writeFile(
    path,
    [
      `server = "${registryUrl}"`,
      '',
      `[host."${mirrorUrl}"]`,
      '  capabilities = ["pull", "resolve"]',
      ...(headerLines.length === 0 ? [] : [`  [host."${mirrorUrl}".header]`, ...headerLines]),
      '',
    ].join('\n'),
  );
  return path;
}

/** Writes `<hostsDir>/<registry>/hosts.toml` sending pulls of `registry` to itself only (plain HTTP). */
export async function writeDirectHosts(
  hostsDir: string,
  registry: string,
  registryUrl: string,
): Promise<string> {
  const dir = join(hostsDir, registry);
  await mkdir(dir, { recursive: true });
  const path = join(dir, 'hosts.toml');
  await writeFile(path, `server = "${registryUrl}"\n`);
  return path;
}

/**
 * Starts containerd; with `netns`, it and every `ctr` run inside that network namespace
 * (`ctr images pull` fetches from the client side in containerd 1.6, so both must be there).
 */
export async function startContainerd(options: { netns?: string } = {}): Promise<Containerd> {
  const netns = options.netns === undefined ? {} : { netns: options.netns };
  const binary = requireBinary('containerd');
  const ctrBinary = requireBinary('ctr');
  const dir = await makeTempDir('containerd');
  const address = join(dir.path, 'containerd.sock');
  const hostsDir = join(dir.path, 'certs.d');
  await mkdir(hostsDir, { recursive: true });
  const configPath = join(dir.path, 'config.toml');
  await writeFile(
    configPath,
    [
      'version = 2',
      `root = "${join(dir.path, 'root')}"`,
      `state = "${join(dir.path, 'state')}"`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      '[grpc]',
      `  address = "${address}"`,
      '[ttrpc]',
      `  address = "${address}.ttrpc"`,
      '[debug]',
      `  address = ""`,
      '',
    ].join('\n'),
  );
  const proc = startProcess(binary, ['--config', configPath], {
    logPath: join(dir.path, 'containerd.log'),
    ...netns,
  });
  const ctr = async (
    args: readonly string[],
    timeoutMs?: number,
    signal?: AbortSignal,
  ): Promise<string> =>
    (
      await run(ctrBinary, ['--address', address, '--namespace', 'shoal-test', ...args], {
        ...(timeoutMs === undefined ? {} : { timeoutMs }),
        ...(signal === undefined ? {} : { signal }),
        ...netns,
      })
    ).stdout;
  try {
    await waitFor(
      'containerd to answer',
      async () => (await ctr(['version'], 2000)).includes('Server'),
      {
        process: proc,
      },
    );
  } catch (error) {
    await proc.stop();
    await dir.remove();
    throw error;
  }
  return {
    address,
    hostsDir,
    process: proc,
    ctr,
    pull: (ref, options = {}) =>
      ctr(
        [
          'images',
          'pull',
          '--hosts-dir',
          hostsDir,
          '--snapshotter',
          'native',
          ...(options.user === undefined ? [] : ['--user', options.user]),
          ref,
        ],
        options.timeoutMs ?? 300_000,
        options.signal,
      ),
    contentDigests: async () =>
      new Set(
        (await ctr(['content', 'ls', '-q']))
          .split('\n')
          .map((line) => line.trim())
          .filter((line) => line !== ''),
      ),
    stop: async () => {
      await proc.stop(10_000);
      await dir.remove();
    },
  };
}
