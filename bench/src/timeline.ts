/**
 * The timeline of one cold blob pull through an agent, read from the spans every process
 * exported (agent, tracker, seed server): when each phase of the pull happened, in ms since
 * the agent received the mirror request. Every process runs on this machine, so their clocks
 * agree. A phase the trace does not hold (a hand-out that named no holder yet, a seed that
 * was not asked) is left out rather than guessed.
 */
import type { CollectedSpan } from '@shoal/testkit';

/** One phase: its label and when it happened, in ms since the mirror request. */
export interface Phase {
  readonly label: string;
  readonly atMs: number;
}

/** The phases in the order of the pull path (design: "The pull path"). */
export const PHASES = [
  'swarm download started',
  'first piece-want stored',
  'tracker took the want',
  'seed request stored',
  'seed took the request',
  'origin answered the seed (headers)',
  'origin first bytes at the seed',
  'first piece hashes published',
  'first hand-out at the agent',
  'first piece hashes at the agent',
  'blob size known to the mirror',
  'first piece GET sent',
  'first piece verified in',
  'first byte to the client',
  'last byte to the client',
] as const;

export type PhaseLabel = (typeof PHASES)[number];

const toMs = (ns: bigint, zero: bigint): number => Number(ns - zero) / 1e6;

/**
 * The phases of the pull of `digest` whose mirror request `root` is (the agent's
 * `mirror GET blob` SERVER span), from `spans`, the spans of its trace.
 */
export function pullTimeline(root: CollectedSpan, spans: readonly CollectedSpan[]): Phase[] {
  const zero = root.startNs;
  const at = new Map<PhaseLabel, number>();
  const earliest = (label: PhaseLabel, ns: bigint | undefined): void => {
    if (ns === undefined || ns <= 0n) {
      return;
    }
    const ms = toMs(ns, zero);
    const known = at.get(label);
    if (known === undefined || ms < known) {
      at.set(label, ms);
    }
  };
  const named = (service: string, name: string): CollectedSpan[] =>
    spans.filter((s) => s.service === service && s.name === name);
  const firstEvent = (list: readonly CollectedSpan[], event: string): bigint | undefined => {
    let best: bigint | undefined;
    for (const span of list) {
      for (const e of span.events) {
        if (e.name === event && (best === undefined || e.timeNs < best)) {
          best = e.timeNs;
        }
      }
    }
    return best;
  };
  const earliestOf = (
    list: readonly CollectedSpan[],
    pick: (s: CollectedSpan) => bigint,
  ): bigint | undefined =>
    list.reduce<bigint | undefined>(
      (m, s) => (m === undefined || pick(s) < m ? pick(s) : m),
      undefined,
    );
  const firstStart = (list: readonly CollectedSpan[]): bigint | undefined =>
    earliestOf(list, (s) => s.startNs);
  const firstEnd = (list: readonly CollectedSpan[]): bigint | undefined =>
    earliestOf(list, (s) => s.endNs);

  const downloads = named('agent', 'swarm download');
  earliest('swarm download started', firstStart(downloads));
  earliest('first piece-want stored', firstEvent(downloads, 'piece-want stored'));
  earliest('tracker took the want', firstStart(named('tracker', 'piece-want process')));
  const seedPublished = named('tracker', 'seed-request publish').filter(
    (s) => s.attributes['shoal.outcome'] === 'published',
  );
  earliest('seed request stored', firstEnd(seedPublished));
  earliest('seed took the request', firstStart(named('seedserver', 'seed-request process')));
  earliest('origin answered the seed (headers)', firstEnd(named('seedserver', 'origin GET blob')));
  const fetches = named('seedserver', 'seed fetch');
  earliest('origin first bytes at the seed', firstEvent(fetches, 'first bytes in'));
  earliest(
    'first piece hashes published',
    firstEvent(
      spans.filter((s) => s.service === 'seedserver'),
      'piece hashes published',
    ),
  );
  earliest('first hand-out at the agent', firstEvent(downloads, 'first hand-out received'));
  earliest('first piece hashes at the agent', firstEvent(downloads, 'piece hashes received'));
  earliest('blob size known to the mirror', firstEvent([root], 'blob size known'));
  const pieces = named('agent', 'piece GET');
  earliest('first piece GET sent', firstStart(pieces));
  earliest('first piece verified in', firstEnd(pieces));
  earliest('first byte to the client', firstEvent([root], 'first body bytes sent'));
  earliest('last byte to the client', root.endNs);
  return PHASES.flatMap((label) => {
    const ms = at.get(label);
    return ms === undefined ? [] : [{ label, atMs: ms }];
  });
}

/** The agent's mirror request for `digest` (its root span), if it was exported. */
export function mirrorRoot(
  spans: readonly CollectedSpan[],
  digest: string,
): CollectedSpan | undefined {
  return spans.find(
    (s) =>
      s.service === 'agent' &&
      s.name === 'mirror GET blob' &&
      s.attributes['oci.digest'] === digest &&
      s.endNs > 0n,
  );
}

/** Median of `values` (NaN for none). */
export function median(values: readonly number[]): number {
  if (values.length === 0) {
    return Number.NaN;
  }
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[mid] ?? Number.NaN)
    : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}
