/** Configuration of the hand-out policy and the hand-out tokens. */
import { envInt, envPieceAuth } from '@shoal/runtime';
import { z } from 'zod';

export const handoutConfig = z.object({
  /**
   * Window over which hand-outs per peer are counted to balance upload load, in ms
   * (default 10 000). Longer spreads load more evenly; shorter forgets a burst sooner.
   */
  SHOAL_TRACKER_LOAD_WINDOW_MS: envInt(10_000).refine((ms) => ms > 0, 'must be positive'),
  /**
   * The Ed25519 private key (PKCS#8 PEM) that signs hand-out tokens; every replica uses the
   * same one. Required unless `SHOAL_TRACKER_PIECE_AUTH=off`.
   */
  SHOAL_TRACKER_HANDOUT_KEY_FILE: z.string().min(1).optional(),
  /**
   * How long a hand-out token is accepted, in ms (default 600 000, 10 min). Downloads ask
   * for peers every few hundred ms, so a running download always holds a fresh token.
   */
  SHOAL_TRACKER_HANDOUT_TOKEN_TTL_MS: envInt(10 * 60_000).refine(
    (ms) => ms >= 10_000,
    'must be at least 10 000',
  ),
  /**
   * `on` (default): hand-outs carry signed tokens, which peers and the seed server require.
   * `off`: no tokens; only for a cluster whose piece endpoints also run with it off.
   */
  SHOAL_TRACKER_PIECE_AUTH: envPieceAuth,
});

/** The cross-variable problems of the hand-out configuration, as `NAME: reason`. */
export function handoutConfigProblems(env: Record<string, string | undefined>): string[] {
  return env.SHOAL_TRACKER_PIECE_AUTH !== 'off' && (env.SHOAL_TRACKER_HANDOUT_KEY_FILE ?? '') === ''
    ? [
        'SHOAL_TRACKER_HANDOUT_KEY_FILE: required to sign hand-out tokens (generate one with `openssl genpkey -algorithm ed25519`), unless SHOAL_TRACKER_PIECE_AUTH=off',
      ]
    : [];
}
