/**
 * The simulator's NATS: one nats-server from the test kit, or a three-node JetStream cluster
 * on loopback (client and route ports fixed, so a node can be killed and restarted on the
 * same address, as the fault suite does), each with its monitoring port, so the simulator can
 * read /varz, /connz and /jsz.
 */
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
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

/** A three-node cluster whose nodes can crash and come back. */
export interface NatsCluster3 extends SimNats {
  /** Each node's log file (the current process's). */
  readonly logPaths: readonly string[];
  /**
   * Kills node `index` at once (SIGKILL, as a crash would), waits `downMs`, and starts it again
   * on the same ports with the same JetStream store; resolves once it is back in the cluster.
   */
  crashAndRestart(index: number, downMs: number): Promise<void>;
  /** The index of the node that leads the most of `streams` (their Raft group's leader). */
  leaderOf(streams: readonly string[]): Promise<number>;
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
export async function startNatsCluster3(): Promise<NatsCluster3> {
  const binary = requireBinary('nats-server');
  const dir = await makeTempDir('nats-cluster');
  const names = ['sim-1', 'sim-2', 'sim-3'];
  const routePorts = [await freePort(), await freePort(), await freePort()];
  const clientPorts = [await freePort(), await freePort(), await freePort()];
  const processes: RunningProcess[] = [];
  const stop = async (): Promise<void> => {
    await Promise.all(processes.map((p) => p.stop()));
    await dir.remove();
  };
  const monitorUrls: string[] = [];
  /**
   * Starts node `n` as `processes[n]` (so that `stop` ends it even when it never gets ready)
   * and waits for its ports file (a fresh one: an old one is removed first).
   */
  const launch = async (n: number): Promise<void> => {
    const name = names[n] ?? '';
    const portsDir = join(dir.path, `${name}-ports`);
    await rm(portsDir, { recursive: true, force: true });
    await mkdir(portsDir);
    const proc = startProcess(
      binary,
      ['-c', join(dir.path, `${name}.conf`), '--ports_file_dir', portsDir],
      { logPath: join(dir.path, `${name}.log`) },
    );
    processes[n] = proc;
    await waitFor(
      'nats-server ports file',
      async () => {
        const file = (await readdir(portsDir)).find((f) => f.endsWith('.ports'));
        if (file === undefined) {
          return false;
        }
        const ports = JSON.parse(await readFile(join(portsDir, file), 'utf8')) as {
          monitoring?: string[];
        };
        const monitor = ports.monitoring?.[0];
        if (monitor === undefined) {
          return false;
        }
        monitorUrls[n] = monitor;
        return true;
      },
      { process: proc },
    );
  };
  const jsz = async (n: number, query = ''): Promise<unknown> => {
    const response = await fetch(`${monitorUrls[n] ?? ''}/jsz${query}`, {
      signal: AbortSignal.timeout(5_000),
    });
    return response.json();
  };
  const waitForLeader = (n: number): Promise<void> =>
    waitFor(
      'JetStream cluster leader',
      async () => {
        const answer = (await jsz(n)) as { meta_cluster?: { leader?: string } };
        return (answer.meta_cluster?.leader ?? '') !== '';
      },
      { timeoutMs: 30_000, intervalMs: 250 },
    );
  try {
    for (const [n, name] of names.entries()) {
      await writeFile(
        join(dir.path, `${name}.conf`),
        [
          `server_name: ${name}`,
          `listen: 127.0.0.1:${String(clientPorts[n])}`,
          'http: 127.0.0.1:-1',
          `jetstream { store_dir: ${JSON.stringify(join(dir.path, name))} }`,
          'cluster {',
          '  name: shoal-sim',
          `  listen: 127.0.0.1:${String(routePorts[n])}`,
          `  routes: [${routePorts.map((p) => `nats-route://127.0.0.1:${String(p)}`).join(', ')}]`,
          '}',
          '',
        ].join('\n'),
      );
    }
    // All three at once: each waits for the others' routes before JetStream is ready.
    await Promise.all(names.map((_, n) => launch(n)));
    await waitForLeader(0);
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    urls: clientPorts.map((port) => `nats://127.0.0.1:${String(port)}`),
    get monitorUrls() {
      return [...monitorUrls];
    },
    replicas: 3,
    get pids() {
      return processes.map((p) => p.child.pid);
    },
    get logPaths() {
      return processes.map((p) => p.logPath);
    },
    crashAndRestart: async (index, downMs) => {
      const proc = processes[index];
      if (proc === undefined) {
        throw new Error(`no nats-server ${String(index)}`);
      }
      await proc.kill();
      await new Promise((resolve) => setTimeout(resolve, downMs));
      await launch(index);
      await waitForLeader(index);
    },
    leaderOf: async (streams) => {
      // Any live node reports every stream's leader; ask the first that answers.
      for (const n of names.keys()) {
        const answer = (await jsz(n, '?accounts=true&streams=true').catch(() => undefined)) as
          | {
              account_details?: {
                stream_detail?: { name?: string; cluster?: { leader?: string } }[];
              }[];
            }
          | undefined;
        if (answer === undefined) {
          continue;
        }
        const led = names.map(() => 0);
        for (const account of answer.account_details ?? []) {
          for (const stream of account.stream_detail ?? []) {
            const leader = names.indexOf(stream.cluster?.leader ?? '');
            if (streams.includes(stream.name ?? '') && leader >= 0) {
              led[leader] = (led[leader] ?? 0) + 1;
            }
          }
        }
        return led.indexOf(Math.max(...led));
      }
      throw new Error('no nats-server answered /jsz');
    },
    stop,
  };
}
