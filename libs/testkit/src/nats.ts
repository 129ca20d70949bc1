/**
 * nats-server with JetStream for tests: random port (`-p -1`, read back from the ports file),
 * a temporary store directory, and a teardown that always runs.
 */
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import {
  makeTempDir,
  requireBinary,
  startProcess,
  waitFor,
  type RunningProcess,
} from './process.js';

export interface NatsServer {
  /** Client URL, e.g. `nats://127.0.0.1:41234`. */
  readonly url: string;
  readonly port: number;
  readonly process: RunningProcess;
  readonly storeDir: string;
  stop(): Promise<void>;
}

export interface NatsOptions {
  /** Port to listen on (e.g. one an agent was told before the server existed); random when omitted. */
  readonly port?: number;
  /**
   * Extra configuration (e.g. `include ./auth.conf`), appended to the server's own: loopback,
   * a random port, JetStream in the temporary directory.
   */
  readonly config?: string;
  /** Files written beside the configuration first, by name (e.g. `auth.conf`). */
  readonly files?: Readonly<Record<string, string>>;
  /** Environment of the server (the configuration may read `$VARIABLES`). */
  readonly env?: Readonly<Record<string, string>>;
}

export async function startNats(options: NatsOptions = {}): Promise<NatsServer> {
  const binary = requireBinary('nats-server');
  const dir = await makeTempDir('nats');
  const storeDir = join(dir.path, 'jetstream');
  for (const [name, text] of Object.entries(options.files ?? {})) {
    await writeFile(join(dir.path, name), text);
  }
  const configPath = join(dir.path, 'nats.conf');
  await writeFile(
    configPath,
    [
      `listen: 127.0.0.1:${String(options.port ?? -1)}`,
      `jetstream { store_dir: ${JSON.stringify(storeDir)} }`,
      options.config ?? '',
      '',
    ].join('\n'),
  );
  const proc = startProcess(binary, ['-c', configPath, '--ports_file_dir', dir.path], {
    logPath: join(dir.path, 'nats.log'),
    ...(options.env === undefined ? {} : { env: { PATH: process.env.PATH ?? '', ...options.env } }),
  });
  let url = '';
  try {
    await waitFor(
      'nats-server ports file',
      async () => {
        const file = (await readdir(dir.path)).find((f) => f.endsWith('.ports'));
        if (file === undefined) {
          return false;
        }
        const ports = JSON.parse(await readFile(join(dir.path, file), 'utf8')) as {
          nats?: string[];
        };
        url = ports.nats?.[0] ?? '';
        return url !== '';
      },
      { process: proc },
    );
  } catch (error) {
    await proc.stop();
    throw error;
  }
  return {
    url,
    port: Number(new URL(url).port),
    process: proc,
    storeDir,
    stop: async () => {
      await proc.stop();
      await dir.remove();
    },
  };
}
