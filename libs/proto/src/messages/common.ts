/** Building blocks shared by the v1 message schemas. */
import { z } from 'zod';

import { isDigest, parseDigest } from '../oci/digest.js';
import { parseRepositoryName } from '../oci/name.js';
import { parseRegistryHost } from '../oci/reference.js';

/** A digest Shoal can verify, as text (`sha256:<64 hex>` or `sha512:<128 hex>`). */
export const digestText = z.string().refine(isDigest, { message: 'not a sha256/sha512 digest' });

/** True when `parse` accepts `input`; the OCI parsers throw on what they reject. */
function accepts(parse: (input: string) => unknown, input: string): boolean {
  try {
    parse(input);
    return true;
  } catch {
    return false;
  }
}

/**
 * A repository name by the OCI distribution grammar, as strict as the mirror's HTTP path: a
 * name in a message is used with the seed server's credentials and in request paths.
 */
export const repositoryName = z
  .string()
  .max(255)
  .refine((name) => accepts(parseRepositoryName, name), {
    message: 'not an OCI repository name',
  });

/**
 * A registry host (`name[:port]`), as agents name registries (`ns=`). Whether it is one this
 * service mirrors is for the service to check against its configured registries.
 */
export const registryHost = z
  .string()
  .max(255)
  .refine((host) => accepts(parseRegistryHost, host), { message: 'not a registry host' });

/** A peer id: the node's stable name, safe to use as a NATS subject token. */
export const peerId = z
  .string()
  .regex(/^[A-Za-z0-9_-]{1,64}$/, 'peer id must be 1-64 of [A-Za-z0-9_-]');

/** A preheat job id: safe as a NATS subject token and a KV key. */
export const jobId = z
  .string()
  .regex(/^[A-Za-z0-9_-]{1,64}$/, 'job id must be 1-64 of [A-Za-z0-9_-]');

/** A label selector: every pair must be among the node's labels (empty: every node). */
export const labelSelector = z.record(z.string().min(1).max(253), z.string().max(63));

/** Where a peer serves pieces, and where it runs. */
export const peerInfo = z.strictObject({
  id: peerId,
  /** Base URL of the peer's piece server, e.g. `http://10.0.0.7:65002`. */
  url: z.url({ protocol: /^https?$/ }),
  /** Topology zone (`topology.kubernetes.io/zone`); hand-outs prefer the asker's zone. */
  zone: z.string().max(63).optional(),
});
export type PeerInfo = z.infer<typeof peerInfo>;

/**
 * A set of piece indexes as sorted, disjoint, half-open ranges `[start, end)`. A swarm's
 * piece sets are nearly always a few runs, so this stays small where a bitfield would not.
 */
/** The most ranges a piece set may have in a message. */
export const MAX_PIECE_RANGES = 4096;

export const pieceRanges = z
  .array(z.tuple([z.int().nonnegative(), z.int().positive()]))
  .max(MAX_PIECE_RANGES)
  .refine(
    (ranges) =>
      ranges.every(
        ([start, end], i) => start < end && (i === 0 || start > (ranges[i - 1]?.[1] ?? -1)),
      ),
    { message: 'ranges must be sorted, disjoint, non-adjacent and non-empty' },
  );
export type PieceRanges = z.infer<typeof pieceRanges>;

/** Turns a digest into the two subject tokens `<algorithm>.<hex>`. */
export function digestSubjectTokens(digest: string): string {
  const parsed = parseDigest(digest);
  return `${parsed.algorithm}.${parsed.hex}`;
}
