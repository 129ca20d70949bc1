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
  type Placement,
  type RunningProcess,
} from './process.js';
import type { TestCa } from './tls.js';

export interface NatsServer {
  /** Client URL, e.g. `nats://127.0.0.1:41234`. */
  readonly url: string;
  readonly port: number;
  readonly process: RunningProcess;
  readonly storeDir: string;
  /** The monitoring endpoint (`/connz`, `/varz`), e.g. `http://127.0.0.1:41235`. */
  readonly monitorUrl: string;
  /**
   * With TLS: the settings a Shoal service needs to connect (`SHOAL_NATS_TLS_*`), with a client
   * certificate of its own; empty without TLS.
   */
  clientEnv(name: string): Promise<Record<string, string>>;
  stop(): Promise<void>;
}

export interface NatsOptions extends Placement {
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
  /**
   * TLS for clients, with certificates from this CA: every client must use TLS and, with
   * `verifyClients`, show a certificate the CA issued (mutual TLS).
   */
  readonly tls?: { readonly ca: TestCa; readonly verifyClients?: boolean };
}

export async function startNats(options: NatsOptions = {}): Promise<NatsServer> {
  const binary = requireBinary('nats-server');
  const dir = await makeTempDir('nats');
  const storeDir = join(dir.path, 'jetstream');
  for (const [name, text] of Object.entries(options.files ?? {})) {
    await writeFile(join(dir.path, name), text);
  }
  const configPath = join(dir.path, 'nats.conf');
  const host = options.host ?? '127.0.0.1';
  const tls = options.tls;
  const serverCert = tls === undefined ? undefined : await tls.ca.issue('nats-server');
  await writeFile(
    configPath,
    [
      `listen: ${host}:${String(options.port ?? -1)}`,
      `http: ${host}:-1`,
      `jetstream { store_dir: ${JSON.stringify(storeDir)} }`,
      serverCert === undefined || tls === undefined
        ? ''
        : [
            'tls {',
            `  cert_file: ${JSON.stringify(serverCert.certFile)}`,
            `  key_file: ${JSON.stringify(serverCert.keyFile)}`,
            `  ca_file: ${JSON.stringify(tls.ca.caFile)}`,
            `  verify: ${tls.verifyClients === true ? 'true' : 'false'}`,
            '  timeout: 2',
            '}',
          ].join('\n'),
      options.config ?? '',
      '',
    ].join('\n'),
  );
  const proc = startProcess(binary, ['-c', configPath, '--ports_file_dir', dir.path], {
    logPath: join(dir.path, 'nats.log'),
    ...(options.netns === undefined ? {} : { netns: options.netns }),
    ...(options.env === undefined ? {} : { env: { PATH: process.env.PATH ?? '', ...options.env } }),
  });
  let url = '';
  let monitorUrl = '';
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
          monitoring?: string[];
        };
        // A TLS server lists `tls://` URLs; clients find TLS from the server's INFO either way.
        url = (ports.nats?.[0] ?? '').replace(/^tls:/, 'nats:');
        monitorUrl = ports.monitoring?.[0] ?? '';
        return url !== '' && monitorUrl !== '';
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
    monitorUrl,
    clientEnv: async (name) => {
      if (tls === undefined) {
        return {};
      }
      const cert = await tls.ca.issue(name);
      return {
        SHOAL_NATS_TLS_CA_FILE: tls.ca.caFile,
        SHOAL_NATS_TLS_CERT_FILE: cert.certFile,
        SHOAL_NATS_TLS_KEY_FILE: cert.keyFile,
      };
    },
    stop: async () => {
      await proc.stop();
      await dir.remove();
    },
  };
}
