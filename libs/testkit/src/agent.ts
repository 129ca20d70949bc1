/**
 * Runs the built agent (`services/agent/dist/src/main.js`, from `tsc -b`) as its own process,
 * as a node would, for integration tests, benchmarks and the local demo.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { freePort, makeTempDir, startProcess, waitFor, type RunningProcess } from './process.js';

/** The built agent's entry point. */
export const AGENT_MAIN = fileURLToPath(
  new URL('../../../../services/agent/dist/src/main.js', import.meta.url),
);

export interface AgentProcess {
  /** Mirror base URL, e.g. `http://127.0.0.1:41234`. */
  readonly url: string;
  readonly port: number;
  readonly cacheDir: string;
  readonly process: RunningProcess;
  /** The process's peak resident set size (VmHWM), in bytes. */
  peakRssBytes(): Promise<number>;
  /** Reads one counter or gauge (summed over label sets matching `labels`) from /metrics. */
  metric(name: string, labels?: Record<string, string>): Promise<number>;
  stop(): Promise<void>;
}

export interface AgentOptions {
  /** `SHOAL_AGENT_REGISTRIES` */
  readonly registries: string;
  /** Port to listen on; a free one when omitted. */
  readonly port?: number;
  /** Cache directory to use (and keep); a temporary one when omitted. */
  readonly cacheDir?: string;
  readonly defaultRegistry?: string;
  readonly env?: Record<string, string>;
}

export async function startAgent(options: AgentOptions): Promise<AgentProcess> {
  const dir = await makeTempDir('agent');
  const port = options.port ?? (await freePort());
  const cacheDir = options.cacheDir ?? join(dir.path, 'cache');
  const proc = startProcess(process.execPath, [AGENT_MAIN], {
    logPath: join(dir.path, 'agent.log'),
    env: {
      PATH: process.env.PATH ?? '',
      SHOAL_AGENT_LISTEN: `127.0.0.1:${port}`,
      SHOAL_AGENT_REGISTRIES: options.registries,
      ...(options.defaultRegistry === undefined
        ? {}
        : { SHOAL_AGENT_DEFAULT_REGISTRY: options.defaultRegistry }),
      SHOAL_AGENT_CACHE_DIR: cacheDir,
      SHOAL_LOG_LEVEL: 'info',
      ...options.env,
    },
  });
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitFor('agent /readyz', async () => (await fetch(`${url}/readyz`)).ok, {
      process: proc,
    });
  } catch (error) {
    await proc.stop();
    throw new Error(
      `${(error as Error).message}\n${await readFile(proc.logPath, 'utf8').catch(() => '')}`,
    );
  }
  return {
    url,
    port,
    cacheDir,
    process: proc,
    peakRssBytes: async () => {
      const status = await readFile(`/proc/${proc.child.pid}/status`, 'utf8');
      const match = /^VmHWM:\s+(\d+) kB$/m.exec(status);
      if (match?.[1] === undefined) {
        throw new Error('no VmHWM in /proc status');
      }
      return Number(match[1]) * 1024;
    },
    metric: async (name, labels = {}) => {
      const text = await (await fetch(`${url}/metrics`)).text();
      let total = 0;
      for (const line of text.split('\n')) {
        const match = /^([a-z_:]+)(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
        if (match?.[1] !== name) {
          continue;
        }
        const set = match[2] ?? '';
        if (Object.entries(labels).every(([k, v]) => set.includes(`${k}="${v}"`))) {
          total += Number(match[3]);
        }
      }
      return total;
    },
    stop: async () => {
      await proc.stop();
      await dir.remove();
    },
  };
}
