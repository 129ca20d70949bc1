/**
 * Parses the path of a pull request: `/v2/<name>/manifests/<reference>` or
 * `/v2/<name>/blobs/<digest>`. The raw path is parsed, not a decoded one, so an encoded `/`
 * or `..` cannot sneak past the name grammar, which allows neither `%` nor `..`.
 */
import {
  parseDigest,
  parseManifestReference,
  parseRepositoryName,
  type Digest,
  type ManifestReference,
} from '@shoal/proto';

import { MirrorError } from './errors.js';

export type PullTarget =
  | { readonly kind: 'manifest'; readonly name: string; readonly reference: ManifestReference }
  | { readonly kind: 'blob'; readonly name: string; readonly digest: Digest };

/** Longest request path accepted, in characters. */
const MAX_PATH_LENGTH = 1024;

export function parsePullPath(rawPath: string): PullTarget {
  if (rawPath.length > MAX_PATH_LENGTH) {
    throw new MirrorError('NAME_INVALID', 414, 'request path too long');
  }
  const match = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(rawPath);
  if (match === null) {
    throw new MirrorError('UNSUPPORTED', 404, 'not a pull endpoint of the distribution API');
  }
  const [, rawName = '', kind, ref = ''] = match;
  const name = parseRepositoryName(rawName);
  if (kind === 'manifests') {
    return { kind: 'manifest', name, reference: parseManifestReference(ref) };
  }
  return { kind: 'blob', name, digest: parseDigest(ref) };
}

/** The referrers API's `/v2/<name>/referrers/<digest>`, or undefined for any other path. */
export function parseReferrersPath(
  rawPath: string,
): { readonly kind: 'referrers'; readonly name: string; readonly digest: Digest } | undefined {
  if (rawPath.length > MAX_PATH_LENGTH) {
    return undefined;
  }
  const match = /^\/v2\/(.+)\/referrers\/([^/]+)$/.exec(rawPath);
  if (match === null) {
    return undefined;
  }
  const [, rawName = '', ref = ''] = match;
  return { kind: 'referrers', name: parseRepositoryName(rawName), digest: parseDigest(ref) };
}
