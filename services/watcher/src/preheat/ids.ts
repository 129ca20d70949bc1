/** Preheat job ids: the same image, scope, selector and platforms always make the same id. */
import { createHash } from 'node:crypto';

export interface PreheatSpec {
  readonly registry: string;
  readonly repository: string;
  /** The manifest (or index) digest being preheated. */
  readonly digest: string;
  readonly scope: 'seed' | 'nodes';
  readonly selector: Readonly<Record<string, string>>;
  readonly platforms: readonly string[];
}

/**
 * A job id derived from what the job does, so a webhook delivered twice, the schedule and an
 * operator asking for the same digest all name one job, and JetStream's message-id window and
 * the job bucket collapse the repeats.
 */
export function jobIdFor(spec: PreheatSpec): string {
  const canonical = JSON.stringify([
    spec.registry,
    spec.repository,
    spec.digest,
    spec.scope,
    Object.entries(spec.selector).sort(([a], [b]) => a.localeCompare(b)),
    [...spec.platforms].sort(),
  ]);
  return `p-${createHash('sha256').update(canonical).digest('hex').slice(0, 40)}`;
}
