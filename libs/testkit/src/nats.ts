/**
 * nats-server with JetStream for tests: random port (`-p -1`, read back from the ports file),
 * a temporary store directory, and a teardown that always runs.
 */
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';

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
  /** The running process (a new one after `crashAndRestart`). */
  readonly process: RunningProcess;
  readonly storeDir: string;
  /** The monitoring endpoint (`/connz`, `/varz`), e.g. `http://127.0.0.1:41235`. */
  readonly monitorUrl: string;
  /**
   * With TLS: the settings a Shoal service needs to connect (`SHOAL_NATS_TLS_*`), with a client
   * certificate of its own; empty without TLS.
   */
  clientEnv(name: string): Promise<Record<string, string>>;
  /**
   * Kills the server at once (SIGKILL, as a crash would), waits `downMs`, and starts it again
   * on the same port with the same configuration and JetStream store; with `loseStore`, with
   * an empty store instead (a server replaced, its volume lost: every stream, consumer and KV
   * bucket gone).
   */
  crashAndRestart(downMs: number, options?: { readonly loseStore?: boolean }): Promise<void>;
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
  /**
   * Files written first, by path relative to the server's temporary directory (e.g.
   * `auth.conf`, or `identity/operator.conf`; directories are made).
   */
  readonly files?: Readonly<Record<string, string>>;
  /**
   * Subdirectory of the temporary directory that holds the configuration (default: the
   * directory itself), so that a relative `include ../x/y.conf`, as deploy/k8s writes it,
   * stays inside the temporary directory.
   */
  readonly configDir?: string;
  /**
   * JetStream's file storage limit, in bytes (default: the server's, most of the disk). In a
   * cluster, streams are placed only where their byte limits fit what is left of it.
   */
  readonly jetStreamMaxFileBytes?: number;
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
    await mkdir(dirname(join(dir.path, name)), { recursive: true });
    await writeFile(join(dir.path, name), text);
  }
  const configDir = join(dir.path, options.configDir ?? '');
  await mkdir(configDir, { recursive: true });
  const configPath = join(configDir, 'nats.conf');
  const host = options.host ?? '127.0.0.1';
  const tls = options.tls;
  const serverCert = tls === undefined ? undefined : await tls.ca.issue('nats-server');
  await writeFile(
    configPath,
    [
      `listen: ${host}:${String(options.port ?? -1)}`,
      `http: ${host}:-1`,
      `jetstream { store_dir: ${JSON.stringify(storeDir)}${
        options.jetStreamMaxFileBytes === undefined
          ? ''
          : `, max_file_store: ${String(options.jetStreamMaxFileBytes)}`
      } }`,
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
  let url = '';
  let monitorUrl = '';
  /** Starts the server and waits for its ports file (a fresh one: old ones are removed first). */
  const launch = async (): Promise<RunningProcess> => {
    for (const file of await readdir(dir.path)) {
      if (file.endsWith('.ports')) {
        await rm(join(dir.path, file), { force: true });
      }
    }
    const started = startProcess(binary, ['-c', configPath, '--ports_file_dir', dir.path], {
      logPath: join(dir.path, 'nats.log'),
      ...(options.netns === undefined ? {} : { netns: options.netns }),
      ...(options.env === undefined
        ? {}
        : { env: { PATH: process.env.PATH ?? '', ...options.env } }),
    });
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
        { process: started },
      );
    } catch (error) {
      await started.stop();
      throw error;
    }
    return started;
  };
  let proc = await launch();
  const port = Number(new URL(url).port);
  return {
    url,
    port,
    get process() {
      return proc;
    },
    storeDir,
    get monitorUrl() {
      return monitorUrl;
    },
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
    crashAndRestart: async (downMs, restart = {}) => {
      await proc.kill();
      if (restart.loseStore === true) {
        await rm(storeDir, { recursive: true, force: true });
      }
      await new Promise((resolve) => setTimeout(resolve, downMs));
      // The same port again (the first start may have picked a random one).
      const config = await readFile(configPath, 'utf8');
      await writeFile(configPath, config.replace(/^listen: .*$/m, `listen: ${host}:${port}`));
      proc = await launch();
    },
    stop: async () => {
      await proc.stop();
      await dir.remove();
    },
  };
}
