/**
 * The agent's side of "members only": the verifier its peer port checks hand-out tokens
 * with, from the tracker's public keys. Read when the agent is built, so a missing or
 * placeholder key file stops the agent at start rather than when the swarm is joined.
 */
import {
  ConfigError,
  PieceTokenVerifier,
  readHandoutPublicKeys,
  type Logger,
} from '@shoal/runtime';

import type { SwarmConfig } from './config.js';

/** The verifier for the peer port, or undefined when it serves no pieces or checks no tokens. */
export async function pieceVerifier(
  config: SwarmConfig,
  logger: Logger,
): Promise<PieceTokenVerifier | undefined> {
  if (config.SHOAL_NATS_URL === undefined || config.SHOAL_AGENT_MODE === 'leecher') {
    return undefined;
  }
  if (config.SHOAL_AGENT_PIECE_AUTH === 'off') {
    logger.warn(
      'SHOAL_AGENT_PIECE_AUTH=off: this agent serves the pieces it holds to anyone who can reach its peer port',
    );
    return undefined;
  }
  const keysFile = config.SHOAL_AGENT_HANDOUT_PUBLIC_KEYS_FILE;
  if (keysFile === undefined) {
    throw new ConfigError([
      'SHOAL_AGENT_HANDOUT_PUBLIC_KEYS_FILE: required unless SHOAL_AGENT_PIECE_AUTH=off',
    ]);
  }
  return new PieceTokenVerifier(await readHandoutPublicKeys(keysFile));
}
