/**
 * nats-server with JetStream for tests: random port (`-p -1`, read back from the ports file),
 * a temporary store directory, and a teardown that always runs.
 */
import { readdir, readFile } from 'node:fs/promises';
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

export async function startNats(): Promise<NatsServer> {
  const binary = requireBinary('nats-server');
  const dir = await makeTempDir('nats');
  const storeDir = join(dir.path, 'jetstream');
  const proc = startProcess(
    binary,
    ['-a', '127.0.0.1', '-p', '-1', '-js', '-sd', storeDir, '--ports_file_dir', dir.path],
    { logPath: join(dir.path, 'nats.log') },
  );
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
