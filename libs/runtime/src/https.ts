/**
 * HTTPS for a service's listener, from certificate files (cert-manager's `tls.crt` and
 * `tls.key` in Kubernetes, the test kit's CA in tests). The files are read again when they
 * change, so a renewed certificate is served without a restart: connections opened after the
 * renewal get it.
 */
import { readFile, stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import type { RequestListener } from 'node:http';

import type { Logger } from 'pino';

import { ConfigError } from './config.js';

/** The certificate files of a listener; both or neither. */
export interface ServerTlsFiles {
  /** PEM certificate chain. */
  readonly certFile: string | undefined;
  /** PEM private key of the certificate. */
  readonly keyFile: string | undefined;
}

/** How often the certificate files are checked for a renewal, in ms. */
const RELOAD_CHECK_MS = 60_000;

export interface HttpsFactory {
  /** For fastify's `serverFactory`: an HTTPS server with the current certificate. */
  readonly serverFactory: (handler: RequestListener) => Server;
  /** Stops watching the files. */
  stop(): void;
}

/**
 * Reads the certificate and key, or returns undefined when neither is configured (plain
 * HTTP). One without the other is a configuration error, named with `names`.
 */
export async function httpsFactory(
  files: ServerTlsFiles,
  names: { readonly cert: string; readonly key: string },
  logger: Logger,
  reloadCheckMs = RELOAD_CHECK_MS,
): Promise<HttpsFactory | undefined> {
  const { certFile, keyFile } = files;
  if (certFile === undefined && keyFile === undefined) {
    return undefined;
  }
  if (certFile === undefined || keyFile === undefined) {
    throw new ConfigError([`${names.cert} and ${names.key}: give both or neither`]);
  }
  const read = async (): Promise<{ cert: Buffer; key: Buffer; stamp: string }> => {
    const [certInfo, keyInfo] = await Promise.all([stat(certFile), stat(keyFile)]);
    return {
      cert: await readFile(certFile),
      key: await readFile(keyFile),
      stamp: `${String(certInfo.mtimeMs)}:${String(keyInfo.mtimeMs)}`,
    };
  };
  let current = await read();
  const servers: Server[] = [];
  const timer = setInterval(() => {
    void (async () => {
      try {
        const next = await read();
        if (next.stamp === current.stamp) {
          return;
        }
        for (const server of servers) {
          server.setSecureContext({ cert: next.cert, key: next.key });
        }
        current = next;
        logger.info({ certFile }, 'serving the renewed certificate');
      } catch (error) {
        logger.warn({ err: error, certFile }, 'cannot reload the certificate; keeping the old one');
      }
    })();
  }, reloadCheckMs);
  timer.unref();
  return {
    serverFactory: (handler) => {
      const server = createServer({ cert: current.cert, key: current.key }, handler);
      servers.push(server);
      return server;
    },
    stop: () => clearInterval(timer),
  };
}
