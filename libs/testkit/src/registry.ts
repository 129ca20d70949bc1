/**
 * Debian's `docker-registry` (the CNCF distribution registry) for tests: random port, its own
 * storage directory, optional htpasswd auth and push notifications. It logs every request as
 * JSON, which is how tests count what the registry served, from the registry's side.
 */
import { open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import bcrypt from 'bcryptjs';

import {
  freePort,
  makeTempDir,
  requireBinary,
  startProcess,
  waitFor,
  type Placement,
  type RunningProcess,
  urlHost,
} from './process.js';

export interface RegistryOptions extends Placement {
  /** Port to listen on; a free one when omitted (5000 in a namespace of its own). */
  readonly port?: number;
  /**
   * Run as a pull-through cache of the registry at this URL (distribution's `proxy` mode),
   * as many clusters run one instead of a P2P distributor.
   */
  readonly proxyRemoteUrl?: string;
  /**
   * Require these credentials (htpasswd, Basic auth); `realm` names the challenge's realm
   * (default `shoal-test`), so tests can tell two registries' challenges apart.
   */
  readonly auth?: { readonly username: string; readonly password: string; readonly realm?: string };
  /**
   * Require bearer tokens from a token server (`startTokenServer`) instead: per-repository
   * access, as Docker Hub, Harbor or GitLab grant it.
   */
  readonly tokenAuth?: {
    readonly realm: string;
    readonly service: string;
    readonly issuer: string;
    /** PEM file of the certificate the tokens are signed with. */
    readonly rootCertBundle: string;
  };
  /**
   * Accept manifests with foreign (non-distributable) layers that name their `urls`, as
   * registries holding Windows images do; distribution refuses them by default.
   */
  readonly foreignLayerUrls?: boolean;
  /** Send push and pull notifications to this URL. */
  readonly notify?: { readonly url: string; readonly headers?: Record<string, string> };
}

/** One request the registry served, read from its log. */
export interface RegistryRequest {
  readonly method: string;
  readonly uri: string;
  readonly status: number;
  readonly userAgent: string;
  /** Bytes of body the registry wrote. */
  readonly written: number;
}

export interface Registry {
  /** `127.0.0.1:<port>` (or the placed host's): the name clients use in image references. */
  readonly host: string;
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  readonly storageDir: string;
  readonly process: RunningProcess;
  /** Every request served so far, oldest first. */
  requests(): Promise<RegistryRequest[]>;
  /** Successful `GET .../blobs/<digest>` requests, optionally for one digest. */
  blobGets(digest?: string): Promise<RegistryRequest[]>;
  /** Overwrites a stored blob's bytes so the registry serves content that fails its digest. */
  corruptBlob(digest: string): Promise<void>;
  /**
   * Gives the htpasswd user a new password (the old one stops working, as an operator revoking
   * a credential): the registry restarts on the same address and storage to read it.
   */
  changePassword(password: string): Promise<void>;
  stop(): Promise<void>;
}

export async function startRegistry(options: RegistryOptions = {}): Promise<Registry> {
  const binary = requireBinary('docker-registry');
  const dir = await makeTempDir('registry');
  const host = urlHost(options.host ?? '127.0.0.1');
  const port = options.port ?? (options.netns === undefined ? await freePort() : 5000);
  const storageDir = join(dir.path, 'data');
  const lines = [
    'version: 0.1',
    'log:',
    '  level: info',
    '  formatter: json',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${storageDir}`,
    '  delete:',
    '    enabled: true',
    '  maintenance:',
    '    uploadpurging:',
    '      enabled: false',
    'http:',
    `  addr: "${host}:${port}"`,
  ];
  if (options.proxyRemoteUrl !== undefined) {
    lines.push('proxy:', `  remoteurl: ${options.proxyRemoteUrl}`);
  }
  if (options.foreignLayerUrls === true) {
    lines.push(
      'validation:',
      '  manifests:',
      '    urls:',
      '      allow:',
      "        - '^https?://'",
    );
  }
  const htpasswd = join(dir.path, 'htpasswd');
  const writeHtpasswd = async (username: string, password: string): Promise<void> => {
    const hash = bcrypt.hashSync(password, bcrypt.genSaltSync(4));
    await writeFile(htpasswd, `${username}:${hash}\n`);
  };
  if (options.auth !== undefined) {
    await writeHtpasswd(options.auth.username, options.auth.password);
    lines.push(
      'auth:',
      '  htpasswd:',
      `    realm: ${options.auth.realm ?? 'shoal-test'}`,
      `    path: ${htpasswd}`,
    );
  }
  if (options.tokenAuth !== undefined) {
    const token = options.tokenAuth;
    lines.push(
      'auth:',
      '  token:',
      `    realm: ${token.realm}`,
      `    service: ${token.service}`,
      `    issuer: ${token.issuer}`,
      `    rootcertbundle: ${token.rootCertBundle}`,
    );
  }
  if (options.notify !== undefined) {
    lines.push(
      'notifications:',
      '  endpoints:',
      '    - name: shoal',
      `      url: ${options.notify.url}`,
      '      timeout: 2s',
      '      threshold: 10',
      '      backoff: 1s',
    );
    const headers = Object.entries(options.notify.headers ?? {});
    if (headers.length > 0) {
      lines.push('      headers:');
      for (const [name, value] of headers) {
        lines.push(`        ${name}: [${JSON.stringify(value)}]`);
      }
    }
  }
  const configPath = join(dir.path, 'config.yml');
  await writeFile(configPath, `${lines.join('\n')}\n`);
  const logPath = join(dir.path, 'registry.log');
  const url = `http://${host}:${port}`;
  const launch = async (): Promise<RunningProcess> => {
    const started = startProcess(binary, ['serve', configPath], {
      logPath,
      ...(options.netns === undefined ? {} : { netns: options.netns }),
    });
    try {
      await waitFor(
        'docker-registry to answer /v2/',
        async () => {
          const response = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1000) });
          return response.status === 200 || response.status === 401;
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

  const requests = async (): Promise<RegistryRequest[]> => {
    // The registry logs a request just after answering it: wait for the log to settle.
    let text = await readFile(logPath, 'utf8');
    for (let i = 0; i < 20; i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      const again = await readFile(logPath, 'utf8');
      if (again.length === text.length) {
        break;
      }
      text = again;
    }
    const served: RegistryRequest[] = [];
    for (const line of text.split('\n')) {
      if (!line.startsWith('{')) {
        continue;
      }
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if (entry.msg !== 'response completed' && entry.msg !== 'response completed with error') {
        continue;
      }
      served.push({
        method: String(entry['http.request.method']),
        uri: String(entry['http.request.uri']),
        status: Number(entry['http.response.status']),
        written:
          typeof entry['http.response.written'] === 'number' ? entry['http.response.written'] : 0,
        userAgent:
          typeof entry['http.request.useragent'] === 'string'
            ? entry['http.request.useragent']
            : '',
      });
    }
    return served;
  };

  return {
    host: `${host}:${port}`,
    url,
    storageDir,
    get process() {
      return proc;
    },
    requests,
    blobGets: async (digest) =>
      (await requests()).filter(
        (r) =>
          r.method === 'GET' &&
          r.status >= 200 &&
          r.status < 300 &&
          /\/blobs\/sha(256|512):/.test(r.uri) &&
          (digest === undefined || r.uri.endsWith(`/blobs/${digest}`)),
      ),
    corruptBlob: async (digest) => {
      const [algorithm = '', hex = ''] = digest.split(':');
      const path = join(
        storageDir,
        'docker/registry/v2/blobs',
        algorithm,
        hex.slice(0, 2),
        hex,
        'data',
      );
      // Flip a byte at the start, middle and end, in place: same size, wrong digest.
      const handle = await open(path, 'r+');
      try {
        const { size } = await handle.stat();
        for (const position of new Set([0, Math.floor(size / 2), Math.max(0, size - 1)])) {
          const byte = Buffer.alloc(1);
          await handle.read(byte, 0, 1, position);
          byte[0] = (byte[0] ?? 0) ^ 0xff;
          await handle.write(byte, 0, 1, position);
        }
      } finally {
        await handle.close();
      }
    },
    changePassword: async (password) => {
      if (options.auth === undefined) {
        throw new Error('changePassword needs a registry started with auth');
      }
      await proc.stop();
      await writeHtpasswd(options.auth.username, password);
      proc = await launch();
    },
    stop: async () => {
      await proc.stop();
      await rm(dir.path, { recursive: true, force: true });
    },
  };
}
