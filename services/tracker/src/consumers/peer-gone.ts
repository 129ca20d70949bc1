/** peer-gone events from SHOAL_SWARM: a peer left every swarm (graceful shutdown). */
import { decodeMessage, peerGone, peerGoneSubject } from '@shoal/proto';

import { MAX_LOGGED_ERROR, type SwarmEvent, type SwarmEventDeps } from './swarm-event.js';

/** Removes the peer from the view; invalid events are logged, counted and skipped. */
export function handlePeerGone(event: SwarmEvent, deps: SwarmEventDeps): void {
  const { metrics, logger } = deps;
  const decoded = decodeMessage(peerGone, event.data);
  if (!decoded.ok) {
    metrics.eventsRejected.inc({ type: 'peer-gone', reason: 'invalid' });
    logger.warn(
      { subject: event.subject, seq: event.seq, error: decoded.error.slice(0, MAX_LOGGED_ERROR) },
      'invalid peer-gone skipped',
    );
    return;
  }
  const gone = decoded.value;
  // Subjects are what NATS permissions can restrict per peer, so body and subject must agree.
  if (event.subject !== peerGoneSubject(gone.peer)) {
    metrics.eventsRejected.inc({ type: 'peer-gone', reason: 'subject-mismatch' });
    logger.warn(
      { subject: event.subject, seq: event.seq, peer: gone.peer },
      'peer-gone on a subject that does not match its peer skipped',
    );
    return;
  }
  metrics.eventsConsumed.inc({ type: 'peer-gone' });
  const removed = deps.view.applyGone(gone.peer, event.seq, event.publishedAtMs);
  logger.debug({ peer: gone.peer, seq: event.seq, removed }, 'peer-gone');
}
