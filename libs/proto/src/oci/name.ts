/**
 * Repository names and tags as the OCI distribution spec defines them ("Pulling manifests"):
 *
 *   <name>      [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
 *   <reference> a tag [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}, or a digest
 *
 * The spec notes that many clients limit the registry host, `/` and name together to 255
 * characters; we apply that limit to the name alone, which is what reaches the mirror.
 */
import { parseDigest, type Digest } from './digest.js';
import { clip, OciParseError } from './errors.js';

const NAME_COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const NAME = new RegExp(`^${NAME_COMPONENT}(?:/${NAME_COMPONENT})*$`);
const TAG = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;

/** The longest repository name accepted, in characters. */
export const MAX_NAME_LENGTH = 255;

/** Validates a repository name such as `library/alpine`; returns it unchanged. */
export function parseRepositoryName(input: string): string {
  if (input.length === 0 || input.length > MAX_NAME_LENGTH || !NAME.test(input)) {
    throw new OciParseError('NAME_INVALID', `"${clip(input)}" is not a valid repository name`);
  }
  return input;
}

/** Validates a tag such as `v1.2.3`; returns it unchanged. */
export function parseTag(input: string): string {
  if (!TAG.test(input)) {
    throw new OciParseError('TAG_INVALID', `"${clip(input)}" is not a valid tag`);
  }
  return input;
}

/** A manifest reference from a `/v2/<name>/manifests/<reference>` path: a tag or a digest. */
export type ManifestReference =
  | { readonly kind: 'tag'; readonly tag: string }
  | { readonly kind: 'digest'; readonly digest: Digest };

/** Parses the `<reference>` of a manifest path: a digest when it contains `:`, else a tag. */
export function parseManifestReference(input: string): ManifestReference {
  if (input.includes(':')) {
    return { kind: 'digest', digest: parseDigest(input) };
  }
  return { kind: 'tag', tag: parseTag(input) };
}
