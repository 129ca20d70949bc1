/**
 * `tracker-replica`: a tracker replica's heartbeat. Replicas that hear each other split the
 * blobs between them (rendezvous hashing of the blob digest over the live replicas), so each
 * applies the haves and answers the wants of its own blobs only. Core NATS, not stored: a
 * replica that stops beating drops out of the others' set after a few intervals.
 */
import { z } from 'zod';

import { peerId } from './common.js';

export const trackerReplica = z.strictObject({
  type: z.literal('tracker-replica'),
  /** The replica's id, unique among the live replicas (a subject token). */
  id: peerId,
  /** True in the last heartbeat of a replica that stops: the others take its blobs at once. */
  leaving: z.boolean().default(false),
});
export type TrackerReplica = z.infer<typeof trackerReplica>;

/** Subject of one replica's heartbeats. */
export const trackerReplicaSubject = (id: string): string => `shoal.tracker.v1.replica.${id}`;

/** Subjects of every replica's heartbeats. */
export const TRACKER_REPLICA_SUBJECTS = 'shoal.tracker.v1.replica.*';

/**
 * Subject where a replica takes wants for its blobs that another replica pulled from the
 * shared want consumer (request-reply: the answer is a `want-forwarded`).
 */
export const forwardedWantSubject = (id: string): string => `shoal.tracker.v1.want.${id}`;
