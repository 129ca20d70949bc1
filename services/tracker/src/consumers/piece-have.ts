/** piece-have events from SHOAL_SWARM: a peer's full piece set for one blob. */
import { decodeMessage, pieceHave, pieceHaveSubject } from '@shoal/proto';

import { MAX_LOGGED_ERROR, type SwarmEvent, type SwarmEventDeps } from './swarm-event.js';

/** Applies one piece-have to the view; invalid ones are logged, counted and skipped. */
export function handlePieceHave(event: SwarmEvent, deps: SwarmEventDeps): void {
  const { metrics, logger } = deps;
  const decoded = decodeMessage(pieceHave, event.data);
  if (!decoded.ok) {
    metrics.eventsRejected.inc({ type: 'piece-have', reason: 'invalid' });
    logger.warn(
      { subject: event.subject, seq: event.seq, error: decoded.error.slice(0, MAX_LOGGED_ERROR) },
      'invalid piece-have skipped',
    );
    return;
  }
  const have = decoded.value;
  // The stream keeps one message per subject, and subjects are what NATS permissions can
  // restrict per peer: a have filed under another subject would stand for the wrong state.
  if (event.subject !== pieceHaveSubject(have.blob, have.peer.id)) {
    metrics.eventsRejected.inc({ type: 'piece-have', reason: 'subject-mismatch' });
    logger.warn(
      { subject: event.subject, seq: event.seq, blob: have.blob, peer: have.peer.id },
      'piece-have on a subject that does not match its blob and peer skipped',
    );
    return;
  }
  // Only the seed servers may claim to be one: a seed is handed out even when it holds
  // nothing useful, and its presence stops seed requests for the blob.
  if (have.seed && deps.maySeed !== undefined && !deps.maySeed(have.peer.id)) {
    metrics.eventsRejected.inc({ type: 'piece-have', reason: 'not-a-seed' });
    logger.warn(
      { subject: event.subject, seq: event.seq, blob: have.blob, peer: have.peer.id },
      'piece-have claiming a seed from a peer that is not one skipped',
    );
    return;
  }
  metrics.eventsConsumed.inc({ type: 'piece-have' });
  const outcome = deps.view.applyHave(have, event.seq, event.publishedAtMs, deps.now());
  metrics.haveOutcomes.inc({ outcome });
  if (outcome === 'applied' && (have.complete || have.pieces.length > 0)) {
    deps.onHolder?.(have.blob, have.peer.id);
  }
  if (outcome === 'applied') {
    deps.onHave?.(have);
  }
  logger.debug(
    { blob: have.blob, peer: have.peer.id, seq: event.seq, outcome, complete: have.complete },
    'piece-have',
  );
}
