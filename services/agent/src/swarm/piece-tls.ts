/**
 * TLS on the agent's data path: the peer port's HTTPS listener (with optional mutual TLS) and
 * the piece client's trust and certificate for `https://` peers and seed servers. Files are
 * read when the agent is built, so a missing one stops the agent at start, and read again
 * when they change (cert-manager renewals).
 */
import { createSecureContext, type SecureContext } from 'node:tls';

import {
  httpsFactory,
  secureOptions,
  watchTlsFiles,
  type HttpsFactory,
  type Logger,
} from '@shoal/runtime';

import type { RawTlsOptions } from '@shoal/runtime/raw-http';
import type { SwarmConfig } from './config.js';

/** The peer port's HTTPS listener, or undefined for plain HTTP. */
export function peerHttps(config: SwarmConfig, logger: Logger): Promise<HttpsFactory | undefined> {
  return httpsFactory(
    {
      certFile: config.SHOAL_AGENT_PEER_TLS_CERT_FILE,
      keyFile: config.SHOAL_AGENT_PEER_TLS_KEY_FILE,
      clientCaFile: config.SHOAL_AGENT_PEER_TLS_CLIENT_CA_FILE,
    },
    {
      cert: 'SHOAL_AGENT_PEER_TLS_CERT_FILE',
      key: 'SHOAL_AGENT_PEER_TLS_KEY_FILE',
      clientCa: 'SHOAL_AGENT_PEER_TLS_CLIENT_CA_FILE',
    },
    logger,
  );
}

/** The piece client's TLS settings, with `stop` for the file watch. */
export interface PieceClientTls extends RawTlsOptions {
  stop(): void;
}

/**
 * How the piece client reaches `https://` sources: the configured CA (instead of the system's)
 * and client certificate, kept current as the files change.
 */
export async function pieceClientTls(config: SwarmConfig, logger: Logger): Promise<PieceClientTls> {
  const files = {
    ca: config.SHOAL_AGENT_PIECE_TLS_CA_FILE,
    cert: config.SHOAL_AGENT_PIECE_TLS_CERT_FILE,
    key: config.SHOAL_AGENT_PIECE_TLS_KEY_FILE,
  };
  const servername = config.SHOAL_AGENT_PIECE_TLS_SERVER_NAME;
  if (Object.values(files).every((file) => file === undefined)) {
    return { secureContext: () => undefined, servername, stop: () => undefined };
  }
  let context: SecureContext | undefined;
  const watch = await watchTlsFiles(
    files,
    (next) => {
      context = createSecureContext(secureOptions(next));
    },
    logger,
  );
  context = createSecureContext(secureOptions(watch.current));
  return { secureContext: () => context, servername, stop: () => watch.stop() };
}
