/**
 * TLS from certificate files (cert-manager's `tls.crt`, `tls.key` and `ca.crt` in Kubernetes,
 * the test kit's CA in tests). The files are read again when they change, so a renewed
 * certificate is used without a restart: connections opened after the renewal get it.
 *
 * `httpsFactory` makes a service's HTTPS listener; `watchTlsFiles` is the reloading underneath
 * it, also used by clients that present a certificate of their own.
 */
import { constants } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import type { RequestListener, ServerOptions } from 'node:http';
import { TLSSocket } from 'node:tls';

import type { Logger } from 'pino';

import { ConfigError } from './config.js';

/** The certificate files of a listener; certificate and key both or neither. */
export interface ServerTlsFiles {
  /** PEM certificate chain. */
  readonly certFile: string | undefined;
  /** PEM private key of the certificate. */
  readonly keyFile: string | undefined;
  /**
   * PEM CA bundle that clients' certificates are checked against (mutual TLS). A client
   * without a valid certificate still completes the handshake, so that probes and metrics
   * answer, and `clientVerified` tells the routes that require one.
   */
  readonly clientCaFile?: string | undefined;
}

/** How often the certificate files are checked for a renewal, in ms. */
const RELOAD_CHECK_MS = 60_000;

/** The contents of a set of PEM files, by the name they were given under (unset ones absent). */
export type TlsFileContents<K extends string> = { readonly [N in K]?: Buffer };

export interface TlsFileWatch<K extends string> {
  /** The files as last read. */
  readonly current: TlsFileContents<K>;
  /** Stops watching the files. */
  stop(): void;
}

/**
 * Reads `files` (name to path) and again whenever one of them changes (checked every
 * `reloadCheckMs`), calling `onRenewed` with the new contents. A failed re-read keeps the old
 * contents and is logged. The first read throws when a file cannot be read.
 */
export async function watchTlsFiles<K extends string>(
  files: { readonly [N in K]?: string | undefined },
  onRenewed: (contents: TlsFileContents<K>) => void,
  logger: Logger,
  reloadCheckMs = RELOAD_CHECK_MS,
): Promise<TlsFileWatch<K>> {
  const entries = (Object.entries(files) as [K, string | undefined][]).filter(
    (entry): entry is [K, string] => entry[1] !== undefined,
  );
  const read = async (): Promise<{ contents: TlsFileContents<K>; stamp: string }> => {
    const stamps = await Promise.all(entries.map(([, path]) => stat(path)));
    const buffers = await Promise.all(entries.map(([, path]) => readFile(path)));
    return {
      contents: Object.fromEntries(
        entries.map(([name], i) => [name, buffers[i]]),
      ) as TlsFileContents<K>,
      stamp: stamps.map((s) => String(s.mtimeMs)).join(':'),
    };
  };
  let last = await read();
  const timer = setInterval(() => {
    void (async () => {
      try {
        const next = await read();
        if (next.stamp === last.stamp) {
          return;
        }
        onRenewed(next.contents);
        last = next;
        logger.info({ files: entries.map(([, path]) => path) }, 'using the renewed certificate');
      } catch (error) {
        logger.warn(
          { err: error, files: entries.map(([, path]) => path) },
          'cannot reload the certificate files; keeping the old ones',
        );
      }
    })();
  }, reloadCheckMs);
  timer.unref();
  return {
    get current() {
      return last.contents;
    },
    stop: () => clearInterval(timer),
  };
}

export interface HttpsFactory {
  /**
   * For fastify's `serverFactory`: an HTTPS server with the current certificate, and the
   * server options fastify was given under `http` (`httpServerOptions`: how often request
   * timeouts are checked).
   */
  readonly serverFactory: (
    handler: RequestListener,
    options?: { readonly http?: ServerOptions | null },
  ) => Server;
  /** Whether the listener checks client certificates (mutual TLS). */
  readonly verifiesClients: boolean;
  /** Stops watching the files. */
  stop(): void;
}

/**
 * Reads the certificate and key, or returns undefined when neither is configured (plain
 * HTTP). One without the other, or a client CA without them, is a configuration error,
 * named with `names`.
 */
export async function httpsFactory(
  files: ServerTlsFiles,
  names: { readonly cert: string; readonly key: string; readonly clientCa?: string },
  logger: Logger,
  reloadCheckMs = RELOAD_CHECK_MS,
): Promise<HttpsFactory | undefined> {
  const { certFile, keyFile, clientCaFile } = files;
  if (certFile === undefined && keyFile === undefined) {
    if (clientCaFile !== undefined) {
      throw new ConfigError([
        `${names.clientCa ?? 'client CA'}: needs ${names.cert} and ${names.key} (client certificates are checked over TLS only)`,
      ]);
    }
    return undefined;
  }
  if (certFile === undefined || keyFile === undefined) {
    throw new ConfigError([`${names.cert} and ${names.key}: give both or neither`]);
  }
  const verifiesClients = clientCaFile !== undefined;
  const context = (contents: TlsFileContents<'cert' | 'key' | 'ca'>) => ({
    ...secureOptions(contents),
    // No session tickets when client certificates count: Node reports a resumed TLS 1.3
    // session as verified even when the session it resumes showed no certificate, which with
    // `rejectUnauthorized: false` would let a client without one in on its second connection.
    ...(verifiesClients ? { secureOptions: constants.SSL_OP_NO_TICKET } : {}),
  });
  const servers: Server[] = [];
  const watch = await watchTlsFiles(
    { cert: certFile, key: keyFile, ca: clientCaFile },
    (next) => {
      for (const server of servers) {
        server.setSecureContext(context(next));
      }
    },
    logger,
    reloadCheckMs,
  );
  return {
    serverFactory: (handler, options) => {
      const server = createServer(
        {
          ...(options?.http ?? {}),
          ...context(watch.current),
          // Asked for, checked against the CA, but not required at the handshake: the routes
          // that need a member's certificate refuse the others (`clientVerified`).
          ...(verifiesClients ? { requestCert: true, rejectUnauthorized: false } : {}),
        },
        handler,
      );
      servers.push(server);
      return server;
    },
    verifiesClients,
    stop: () => watch.stop(),
  };
}

/** Secure-context options from read files (`watchTlsFiles` leaves the unset ones out). */
export function secureOptions(contents: TlsFileContents<'cert' | 'key' | 'ca'>): {
  cert?: Buffer;
  key?: Buffer;
  ca?: Buffer;
} {
  return { ...contents };
}

/**
 * Whether the connection of a request came with a client certificate that chains to the
 * listener's client CA, shown in this handshake (a resumed session proves nothing here; see
 * the session tickets above). False on plain HTTP.
 */
export function clientVerified(socket: unknown): boolean {
  if (!(socket instanceof TLSSocket)) {
    return false;
  }
  return socket.authorized && !socket.isSessionReused();
}
