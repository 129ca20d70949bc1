/** Configuration of the split of blobs between tracker replicas. */
import { envBool, envInt } from '@shoal/runtime';
import { z } from 'zod';

export const shardConfig = z.object({
  /**
   * Split the blobs between the live tracker replicas (default false, opt-in while the known
   * gaps listed in the tracker's README stay open): each replica applies
   * the haves and answers the wants of its own blobs only (rendezvous hashing of the digest
   * over the replicas that hear each other's heartbeats), forwards the wants it pulls for
   * the others' blobs to their owner, and takes over a stopped replica's blobs. Off: every
   * replica applies every have and answers every want it pulls, as one replica alone does.
   */
  SHOAL_TRACKER_SHARD_BY_BLOB: envBool(false),
  /**
   * This replica's id among the replicas, a subject token of 1-64 of [A-Za-z0-9_-]
   * (default: the host name and a random suffix, new at every start).
   */
  SHOAL_TRACKER_REPLICA_ID: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,64}$/, 'must be 1-64 of [A-Za-z0-9_-]')
    .optional(),
  /**
   * How often a replica tells the others it is live, in ms (default 1 000). One not heard
   * for 10 intervals counts as gone and its blobs move to the others; wants for them are
   * answered meanwhile by the replica that pulled them once the owner does not answer.
   */
  SHOAL_TRACKER_HEARTBEAT_INTERVAL_MS: envInt(1_000).refine(
    (ms) => ms >= 100 && ms <= 60_000,
    'must be from 100 to 60 000',
  ),
  /**
   * With the split on, most (blob, peer) haves a replica keeps undecoded, to take blobs
   * over at once when they move to it (default 1 000 000). Past it the stalest
   * go first; a blob whose haves were dropped is taken over with fewer holders until they
   * announce again. Sizing in the tracker's README ("Blobs split between replicas").
   */
  SHOAL_TRACKER_MAX_KEPT_HAVES: envInt(1_000_000).refine((n) => n > 0, 'must be positive'),
});

/** A replica id from the host name (shortened, made a subject token) and a random suffix. */
export function defaultReplicaId(hostname: string, random: string): string {
  const host = hostname.replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 48);
  return `${host === '' ? 'tracker' : host}-${random}`;
}
