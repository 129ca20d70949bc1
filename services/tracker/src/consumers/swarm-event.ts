/** What the SHOAL_SWARM handlers need from a stored message and from the app. */
import type { PieceHave } from '@shoal/proto';
import type { Logger } from '@shoal/runtime';

import type { TrackerMetrics } from '../metrics.js';
import type { SwarmView } from '../swarm/view.js';

/** A message read back from SHOAL_SWARM. */
export interface SwarmEvent {
  readonly subject: string;
  readonly data: Uint8Array;
  /** Stream sequence. */
  readonly seq: number;
  /** JetStream timestamp of the publication, in ms since the epoch. */
  readonly publishedAtMs: number;
}

export interface SwarmEventDeps {
  readonly view: SwarmView;
  readonly metrics: TrackerMetrics;
  readonly logger: Logger;
  /** Current time in ms since the epoch. */
  readonly now: () => number;
  /** Whether a peer may announce itself as a seed (default: any). */
  readonly maySeed?: (peer: string) => boolean;
  /** Called when an applied have says `peer` holds pieces of `blob` (after the replay only). */
  readonly onHolder?: (blob: string, peer: string) => void;
  /** Called with every applied have (after the replay only), after `onHolder`. */
  readonly onHave?: (have: PieceHave) => void;
}

/** Longest decode error quoted in a log line; a hostile message must not flood the logs. */
export const MAX_LOGGED_ERROR = 500;
