/**
 * The simulator's NATS: one nats-server from the test kit, or a three-node JetStream cluster
 * on loopback (routes between fixed free ports), each with its monitoring port, so the
 * simulator can read /varz, /connz and /jsz.
 */
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import {
  freePort,
  makeTempDir,
  requireBinary,
  startNats,
  startProcess,
  waitFor,
  type RunningProcess,
} from '@shoal/testkit';

export interface SimNats {
  /** Client URLs, one per server. */
  readonly urls: readonly string[];
  /** Monitoring base URLs, one per server. */
  readonly monitorUrls: readonly string[];
  /** Stream replicas to declare: 1, or 3 on the cluster. */
  readonly replicas: number;
  /** Process ids of the servers, for their CPU time. */
  readonly pids: readonly (number | undefined)[];
  stop(): Promise<void>;
}

/** One nats-server with JetStream, from the test kit. */
export async function startSingleNats(): Promise<SimNats> {
  const server = await startNats();
  return {
    urls: [server.url],
    monitorUrls: [server.monitorUrl],
    replicas: 1,
    pids: [server.process.child.pid],
    stop: () => server.stop(),
  };
}

/** Three nats-servers routed into one JetStream cluster; resolves once it has a leader. */
export async function startNatsCluster3(): Promise<SimNats> {
  const binary = requireBinary('nats-server');
  const dir = await makeTempDir('nats-cluster');
  const routePorts = [await freePort(), await freePort(), await freePort()];
  const processes: RunningProcess[] = [];
  const stop = async (): Promise<void> => {
    await Promise.all(processes.map((p) => p.stop()));
    await dir.remove();
  };
  try {
    for (const [n, port] of routePorts.entries()) {
      const name = `sim-${String(n + 1)}`;
      const configPath = join(dir.path, `${name}.conf`);
      await writeFile(
        configPath,
        [
          `server_name: ${name}`,
          'listen: 127.0.0.1:-1',
          'http: 127.0.0.1:-1',
          `jetstream { store_dir: ${JSON.stringify(join(dir.path, name))} }`,
          'cluster {',
          '  name: shoal-sim',
          `  listen: 127.0.0.1:${String(port)}`,
          `  routes: [${routePorts.map((p) => `nats-route://127.0.0.1:${String(p)}`).join(', ')}]`,
          '}',
          '',
        ].join('\n'),
      );
      const portsDir = join(dir.path, `${name}-ports`);
      await mkdir(portsDir);
      processes.push(
        startProcess(binary, ['-c', configPath, '--ports_file_dir', portsDir], {
          logPath: join(dir.path, `${name}.log`),
        }),
      );
    }
    const urls: string[] = [];
    const monitorUrls: string[] = [];
    for (const [n, proc] of processes.entries()) {
      const portsDir = join(dir.path, `sim-${String(n + 1)}-ports`);
      await waitFor(
        'nats-server ports file',
        async () => {
          const file = (await readdir(portsDir)).find((f) => f.endsWith('.ports'));
          if (file === undefined) {
            return false;
          }
          const ports = JSON.parse(await readFile(join(portsDir, file), 'utf8')) as {
            nats?: string[];
            monitoring?: string[];
          };
          const url = ports.nats?.[0];
          const monitor = ports.monitoring?.[0];
          if (url === undefined || monitor === undefined) {
            return false;
          }
          urls.push(url);
          monitorUrls.push(monitor);
          return true;
        },
        { process: proc },
      );
    }
    await waitFor(
      'JetStream cluster leader',
      async () => {
        const response = await fetch(`${monitorUrls[0] ?? ''}/jsz`);
        const jsz = (await response.json()) as { meta_cluster?: { leader?: string } };
        return (jsz.meta_cluster?.leader ?? '') !== '';
      },
      { timeoutMs: 30_000, intervalMs: 250 },
    );
    return { urls, monitorUrls, replicas: 3, pids: processes.map((p) => p.child.pid), stop };
  } catch (error) {
    await stop();
    throw error;
  }
}
