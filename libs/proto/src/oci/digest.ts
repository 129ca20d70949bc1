/**
 * Content digests as defined by the OCI image spec (descriptor.md, "Digests"):
 *
 *   digest                ::= algorithm ":" encoded
 *   algorithm             ::= algorithm-component (algorithm-separator algorithm-component)*
 *   algorithm-component   ::= [a-z0-9]+
 *   algorithm-separator   ::= [+._-]
 *   encoded               ::= [a-zA-Z0-9=_-]+
 *
 * Shoal verifies what it serves, so only the registered algorithms it can compute are
 * accepted: `sha256` (64 lowercase hex characters) and `sha512` (128).
 */
import { createHash, type Hash } from 'node:crypto';

import { clip, OciParseError } from './errors.js';

/** The digest algorithms Shoal can verify. */
export const DIGEST_ALGORITHMS = { sha256: 64, sha512: 128 } as const;
export type DigestAlgorithm = keyof typeof DIGEST_ALGORITHMS;

/** A parsed, validated digest. `toString()` gives back the canonical `algorithm:hex` form. */
export interface Digest {
  readonly algorithm: DigestAlgorithm;
  /** Lowercase hex of the hash. */
  readonly hex: string;
  toString(): string;
}

const DIGEST_GRAMMAR = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
const LOWER_HEX = /^[a-f0-9]+$/;

function isDigestAlgorithm(name: string): name is DigestAlgorithm {
  return Object.hasOwn(DIGEST_ALGORITHMS, name);
}

/** Parses `algorithm:hex`, rejecting anything the spec rejects and any algorithm we cannot verify. */
export function parseDigest(input: string): Digest {
  if (!DIGEST_GRAMMAR.test(input)) {
    throw new OciParseError(
      'DIGEST_INVALID',
      `"${clip(input)}" is not a digest (algorithm:encoded)`,
    );
  }
  const colon = input.indexOf(':');
  const algorithm = input.slice(0, colon);
  const hex = input.slice(colon + 1);
  if (!isDigestAlgorithm(algorithm)) {
    throw new OciParseError('DIGEST_INVALID', `digest algorithm "${algorithm}" is not supported`);
  }
  const length = DIGEST_ALGORITHMS[algorithm];
  if (hex.length !== length || !LOWER_HEX.test(hex)) {
    throw new OciParseError(
      'DIGEST_INVALID',
      `a ${algorithm} digest is ${length} lowercase hex characters`,
    );
  }
  return makeDigest(algorithm, hex);
}

/** True when `input` parses as a digest Shoal can verify. */
export function isDigest(input: string): boolean {
  try {
    parseDigest(input);
    return true;
  } catch {
    return false;
  }
}

function makeDigest(algorithm: DigestAlgorithm, hex: string): Digest {
  const text = `${algorithm}:${hex}`;
  return { algorithm, hex, toString: () => text };
}

/** A running hash that finishes as a `Digest` of the given algorithm. */
export class DigestHasher {
  readonly #hash: Hash;
  readonly algorithm: DigestAlgorithm;

  constructor(algorithm: DigestAlgorithm) {
    this.algorithm = algorithm;
    this.#hash = createHash(algorithm);
  }

  update(chunk: Uint8Array): void {
    this.#hash.update(chunk);
  }

  digest(): Digest {
    return makeDigest(this.algorithm, this.#hash.digest('hex'));
  }
}

/** Computes the digest of bytes held in memory (manifests, pieces: never whole blobs). */
export function digestOf(bytes: Uint8Array, algorithm: DigestAlgorithm = 'sha256'): Digest {
  const hasher = new DigestHasher(algorithm);
  hasher.update(bytes);
  return hasher.digest();
}
